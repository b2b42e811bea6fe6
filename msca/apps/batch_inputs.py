"""The (label, exemplar, exemplar_label, out) jobs of `msca synthesize` in batch mode.

Two forms: a folder of label maps rendered against one exemplar, or a CSV of pairs:

    label,exemplar,exemplar_label,out          <- header; `out` is optional
    scenes/a.png,photos/beach.jpg,photos/beach_label.png,a_beach.png

CSV paths are relative to the CSV's folder, `out` to the output folder; without `out` a result
is named after its label map. Two jobs may not write the same file.
"""
from __future__ import annotations

import csv
import os

LABEL_EXTS = (".png",)
CSV_COLUMNS = ("label", "exemplar", "exemplar_label")


def _unique(jobs: list[tuple[str, str, str, str]], source: str) -> list[tuple[str, str, str, str]]:
    seen: dict[str, str] = {}
    for lab, _, _, out in jobs:
        key = os.path.abspath(out)
        if key in seen:
            raise ValueError(f"{source}: {seen[key]!r} and {lab!r} would both write {out!r}")
        seen[key] = lab
    return jobs


def jobs_from_folder(label_dir: str, exemplar: str, exemplar_label: str | None,
                     out_dir: str) -> list[tuple[str, str, str, str]]:
    """Every label PNG of `label_dir` (sorted) against one exemplar; out_dir/<name>.png."""
    names = sorted(n for n in os.listdir(label_dir) if n.lower().endswith(LABEL_EXTS))
    if not names:
        raise ValueError(f"--label {label_dir!r}: a folder without label maps (*.png)")
    if os.path.isfile(out_dir):
        raise ValueError(f"--out {out_dir!r}: with a folder of label maps --out must be a "
                         "folder, and this is a file")
    return _unique([(os.path.join(label_dir, n), exemplar, exemplar_label,
                     os.path.join(out_dir, os.path.splitext(n)[0] + ".png")) for n in names],
                   f"--label {label_dir!r}")


def jobs_from_csv(path: str, out_dir: str) -> list[tuple[str, str, str, str]]:
    """The rows of the CSV `path` (see the module docstring); errors name the file and row."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--pairs {path!r}: no such file")
    base = os.path.dirname(os.path.abspath(path))
    jobs = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"--pairs {path!r}: the header must name the columns "
                             f"{', '.join(CSV_COLUMNS)} (and optionally out); missing "
                             f"{', '.join(missing)}")
        for row_no, row in enumerate(reader, 2):
            empty = [c for c in CSV_COLUMNS if not (row.get(c) or "").strip()]
            if empty:
                raise ValueError(f"--pairs {path!r} row {row_no}: empty {', '.join(empty)}")
            lab, ex, ex_lab = (os.path.join(base, row[c].strip()) for c in CSV_COLUMNS)
            out = (row.get("out") or "").strip() or (
                os.path.splitext(os.path.basename(lab))[0] + ".png")
            jobs.append((lab, ex, ex_lab, os.path.join(out_dir, out)))
    if not jobs:
        raise ValueError(f"--pairs {path!r}: no rows after the header")
    return _unique(jobs, f"--pairs {path!r}")
