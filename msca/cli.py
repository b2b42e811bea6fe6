"""The `msca` console script.

    msca train --config configs/demo.json [--steps N] [--out DIR] [--resume] [--set key=value]
    msca synthesize --label L.png --exemplar X.jpg --exemplar-label XL.png --out out.png
    msca synthesize --label LABELS/ --exemplar X.jpg --exemplar-label XL.png --out OUT/
    msca synthesize --pairs pairs.csv --out OUT/ [--device cuda] [--palette P.txt]
    msca classes [--out palette.txt]
    msca swap --n 4 --out grid.png
    msca demo --out out/demo
    msca interpolate --out interp.png [--steps 6]       (procedural scenes, or your own files)
    msca spatial-interpolate --out spatial.png
    msca extrapolate --out extrap.png
    msca attention --out attention.png [--scale 0]
    msca label-transfer --out transfer.png [--pairs 200]
    msca retrieve --label L.png --pool DIR [--k 20] [--out top.png]
    msca evaluate --config demo [--out out/eval/table1.md]

Errors are reported as one line naming the file or argument at fault (exit status 2, argument
errors included); set MSCA_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

DEFAULT_CHECKPOINT = os.path.join("checkpoints", "demo.pt")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def _repo_path(rel: str) -> str:
    """`rel` relative to this checkout (next to the package): the shipped models. Never the
    working directory: a `checkpoints/demo.pt` planted in whatever folder the command runs in
    must not be picked up silently."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(repo, rel)


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one line naming the argument, exit status 2 (argparse
    prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _check_output(path: str | None, name: str, *, directory: bool = False) -> None:
    """Fails early, naming the argument, when `path` cannot be written: a parent that is a
    file, or (for a file) a path that is a directory. Missing parents are created later."""
    if not path:
        return
    if directory and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{name} {path}: exists and is not a directory")
    if not directory and os.path.isdir(path):
        raise UserError(f"{name} {path}: is a directory, expected a file name")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{name} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{name} {path}: cannot write in {parent} (permission denied)")


def _threads(n: int | None) -> None:
    if n:
        import torch
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from msca.train import Trainer, init_distributed, load_config

    train_overrides = {}
    if args.steps is not None:
        train_overrides["steps"] = args.steps
    if args.checkpoint_every is not None:
        train_overrides["checkpoint_every"] = args.checkpoint_every
    if args.bf16:
        train_overrides["bf16"] = True
    opt, settings = load_config(args.config, args.set, train_overrides)
    out = args.out or os.path.join("runs", opt.name)
    _check_output(out, "--out", directory=True)
    _check_output(args.export, "--export")
    rank, world = init_distributed()
    trainer = Trainer(opt, settings, out, resume=args.resume, force=args.force)
    if rank == 0:
        print(f"msca train: {args.config} -> {out} | steps {trainer.step}..{settings.steps} "
              f"(pretrain < {trainer.pretrain_end} <= patch < {trainer.patch_end} <= "
              f"patch+global) | alignment {opt.alignment} | backend {opt.backend} | "
              f"{world} process(es)", flush=True)
    trainer.train()
    if args.export:
        trainer.export(args.export)
        if rank == 0:
            print(f"msca train: exported the generator to {args.export}")
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------- apps
def cmd_synthesize(args) -> int:
    import warnings

    from msca.apps.batch_inputs import jobs_from_csv, jobs_from_folder
    from msca.apps.synthesize import synthesize_batch, synthesize_files
    from msca.apps.working_size import WorkingSizeWarning

    common = dict(checkpoint=args.checkpoint or _repo_path(DEFAULT_CHECKPOINT),
                  backend=args.backend, size=args.size, device=args.device,
                  palette=args.palette)
    if args.pairs is not None and (args.label or args.exemplar or args.exemplar_label):
        raise UserError("--pairs: a CSV of pairs replaces --label, --exemplar and "
                        "--exemplar-label; give either the CSV or the files")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WorkingSizeWarning)
        if args.pairs is not None or (args.label and os.path.isdir(args.label)):
            if args.attention:
                raise UserError("--attention: only for a single label map, not a batch")
            jobs = (jobs_from_csv(args.pairs, args.out) if args.pairs is not None else
                    jobs_from_folder(args.label, args.exemplar, args.exemplar_label, args.out))
            written = synthesize_batch(jobs, **common)
            print(f"msca synthesize: wrote {len(written)} images to {args.out}")
        else:
            for name in ("label", "exemplar"):
                if not getattr(args, name):
                    raise UserError(f"--{name}: missing (or give --pairs CSV)")
            synthesize_files(label=args.label, exemplar=args.exemplar,
                             exemplar_label=args.exemplar_label, out=args.out,
                             attention_out=args.attention, **common)
            print(f"msca synthesize: wrote {args.out}")
        _print_warnings(caught)
    return 0


def _print_warnings(caught: list) -> None:
    """Each recorded warning once, as one line on stderr."""
    for w in caught:
        print(f"msca: warning: {w.message}", file=sys.stderr)
    caught.clear()


def cmd_classes(args) -> int:
    from msca.apps.class_legend import builtin_palette, legend_text
    from msca.train.checkpoint import read_checkpoint
    from msca.options import Options

    path = args.checkpoint or _repo_path(DEFAULT_CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint {path!r}: no such file")
    opt = Options.from_dict(read_checkpoint(path)["options"])
    text = legend_text(builtin_palette(opt.dataset, opt.num_classes))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"msca classes: wrote the palette file {args.out}")
    else:
        print(f"# {os.path.basename(path)}: {opt.num_classes} classes, dataset {opt.dataset}, "
              f"trained at {opt.crop_size}x{opt.crop_size}")
        print(text, end="")
    return 0


def cmd_swap(args) -> int:
    from msca.apps.swap import swap_grid_files
    swap_grid_files(out=args.out, n=args.n, checkpoint=args.checkpoint or
                    _repo_path(DEFAULT_CHECKPOINT), images=args.images, labels=args.labels,
                    backend=args.backend, seed=args.seed, size=args.size)
    print(f"msca swap: wrote {args.out}")
    return 0


def cmd_demo(args) -> int:
    from msca.demo import run_demo
    run_demo(out=args.out, checkpoint=args.checkpoint or _repo_path(DEFAULT_CHECKPOINT),
             gap_checkpoint=args.gap_checkpoint or _repo_path(
                 os.path.join("checkpoints", "demo_gap.pt")),
             pairs=args.pairs, backend=args.backend)
    return 0


def _ckpt(args) -> str:
    return args.checkpoint or _repo_path(DEFAULT_CHECKPOINT)


def _five(args):
    return (args.label, args.exemplar_a, args.exemplar_a_label, args.exemplar_b,
            args.exemplar_b_label)


def cmd_interpolate(args) -> int:
    from msca.apps.interpolate import interpolate_files
    interpolate_files(out=args.out, checkpoint=_ckpt(args), steps=args.steps,
                      files=_five(args), backend=args.backend, size=args.size,
                      seed=args.seed, index=args.index)
    print(f"msca interpolate: wrote {args.out}")
    return 0


def cmd_spatial_interpolate(args) -> int:
    from msca.apps.interpolate import spatial_interpolate_files
    spatial_interpolate_files(out=args.out, checkpoint=_ckpt(args), files=_five(args),
                              backend=args.backend, size=args.size, seed=args.seed,
                              index=args.index)
    print(f"msca spatial-interpolate: wrote {args.out}")
    return 0


def cmd_extrapolate(args) -> int:
    from msca.apps.extrapolate import extrapolate_files
    extrapolate_files(out=args.out, checkpoint=_ckpt(args), label=args.label,
                      exemplar=args.exemplar, exemplar_label=args.exemplar_label,
                      factor=args.factor, n_random=args.random, backend=args.backend,
                      seed=args.seed, index=args.index)
    print(f"msca extrapolate: wrote {args.out}")
    return 0


def cmd_attention(args) -> int:
    from msca.apps.label_transfer import attention_files
    attention_files(out=args.out, checkpoint=_ckpt(args), label=args.label,
                    exemplar=args.exemplar, exemplar_label=args.exemplar_label,
                    scale=args.scale, backend=args.backend, seed=args.seed, index=args.index)
    print(f"msca attention: wrote {args.out}")
    return 0


def cmd_label_transfer(args) -> int:
    from msca.apps.label_transfer import label_transfer_files
    label_transfer_files(out=args.out, checkpoint=_ckpt(args), pairs=args.pairs,
                         backend=args.backend, seed=args.seed, scale=args.scale)
    print(f"msca label-transfer: wrote {args.out} and "
          f"{os.path.splitext(args.out)[0]}.json")
    return 0


def cmd_retrieve(args) -> int:
    from msca.apps.retrieve import retrieve_files
    res = retrieve_files(label=args.label, pool=args.pool, k=args.k,
                         num_classes=args.num_classes, out=args.out)
    print(f"msca retrieve: top {len(res['ranked'])} for {res['target']} "
          f"(label-histogram intersection):")
    for rank, (name, score) in enumerate(res["ranked"], 1):
        star = "  <- best match" if name == res["best"] else ""
        print(f"  {rank:3d}. {score:.4f}  {name}{star}")
    print(f"best match: {res['best']} (label agreement {res['agreement']:.3f})")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from msca.eval.evaluate import evaluate
    if args.checkpoint_dir is not None and not os.path.isdir(args.checkpoint_dir):
        raise UserError(f"--checkpoint-dir {args.checkpoint_dir}: no such directory")
    if args.dataroot is not None and not os.path.isdir(args.dataroot):
        raise UserError(f"--dataroot {args.dataroot}: no such directory")
    evaluate(config=args.config, out=args.out, pairs=args.pairs, pool=args.pool, k=args.k,
             color_correction=not args.no_color_correction,
             checkpoint_dir=args.checkpoint_dir, dataroot=args.dataroot,
             lpips_vgg16=args.lpips_vgg16, lpips_lin=args.lpips_lin,
             fid_inception=args.fid_inception, backend=args.backend)
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="msca", description="Example-guided image synthesis across arbitrary scenes "
        "(MSCA): training, synthesis on your own files, style-structure swap grids, "
        "interpolation, extrapolation, attention analysis, retrieval, evaluation, demo.")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="self-supervised training (paper Sec. 3.4)",
                       description="Train the generator: MSCA pretraining with the feature "
                       "decoder, then patch cross-reconstruction, then patch + global "
                       "self-reconstruction. Multi-process: torchrun --nproc_per_node N "
                       "-m msca.cli train ...")
    t.add_argument("--config", required=True,
                   help="an options or training config file, or a name: 'demo' finds "
                   "configs/demo_train.json (else configs/demo.json)")
    t.add_argument("--steps", type=positive_int, help="total steps (overrides the config)")
    t.add_argument("--out", help="run directory for checkpoint.pt and log.jsonl "
                   "(default runs/<name>)")
    t.add_argument("--force", action="store_true",
                   help="train into a folder that holds a run: without --resume, delete that "
                   "run and start over; with --resume, continue even though options changed "
                   "(no longer an exact continuation)")
    t.add_argument("--resume", action="store_true",
                   help="continue exactly from OUT/checkpoint.pt")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option, e.g. --set alignment=gap (repeatable)")
    t.add_argument("--checkpoint-every", type=positive_int,
                   help="checkpoint interval in steps")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    t.add_argument("--export", help="also write the small inference checkpoint here "
                   "(options + generator), e.g. checkpoints/demo.pt")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("synthesize", help="synthesize from your own label map and exemplar",
                       description="Render the label map LABEL in the style of EXEMPLAR. The "
                       "exemplar needs its own label map (--exemplar-label): the paper gets it "
                       "from a COCO-stuff DeepLab-v2 segmentation network, which is not part "
                       "of this package. Label PNGs hold class ids (0..num_classes-1; 255 = "
                       "unlabelled), single channel, or are colour pictures painted with the "
                       "colours of `msca classes` (or of --palette FILE). Any size and aspect "
                       "ratio: inputs are scaled to the working size (shorter side), padded, "
                       "and the output restored to the label map's size. Batch: --label DIR "
                       "(every PNG against one exemplar) or --pairs CSV, with --out DIR.")
    s.add_argument("--label", help="target label map PNG, or a folder of them (batch)")
    s.add_argument("--exemplar", help="exemplar image (PNG/JPEG)")
    s.add_argument("--exemplar-label", help="the exemplar's label map PNG (required)")
    s.add_argument("--pairs", metavar="CSV", help="batch: a CSV with the columns label, "
                   "exemplar, exemplar_label[, out] (paths relative to the CSV)")
    s.add_argument("--out", required=True, help="output PNG (a folder in batch mode)")
    s.add_argument("--checkpoint", help=f"model checkpoint (default {DEFAULT_CHECKPOINT})")
    s.add_argument("--size", type=positive_int, default=None,
                   help="working size of the shorter side, a multiple of 16 (default: the "
                   "size the model was trained at; others warn)")
    s.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU if torch sees one, else the CPU), cpu or cuda[:N]")
    s.add_argument("--palette", help="palette file for colour label maps (lines 'id r g b "
                   "name'; default the legend of `msca classes`)")
    s.add_argument("--attention", help="also write the attention maps of scale 0 here")
    s.add_argument("--backend", default=None,
                   help="kernel backend: auto (default), cpu, reference, ...")
    s.set_defaults(func=cmd_synthesize)

    cl = sub.add_parser("classes", help="the class legend of a model: ids, names, colours",
                        description="Print the class ids a model's label maps use, their "
                        "names and the colours for colour label maps; --out writes them as a "
                        "palette file for synthesize --palette.")
    cl.add_argument("--checkpoint", help=f"model checkpoint (default {DEFAULT_CHECKPOINT})")
    cl.add_argument("--out", help="write the legend as a palette file instead of printing it")
    cl.set_defaults(func=cmd_classes)

    w = sub.add_parser("swap", help="style-structure swap grid (paper Fig. 9)",
                       description="Grid of N scenes: row r = the style of scene r (its "
                       "exemplar), column c = the layout of scene c. The first row and column "
                       "show the scenes themselves. Procedural test scenes by default, or "
                       "your own with --images and --labels.")
    w.add_argument("--n", type=positive_int, default=4, help="number of scenes (default 4)")
    w.add_argument("--out", required=True, help="output PNG")
    w.add_argument("--images", nargs="+", help="your own scene images (N of them)")
    w.add_argument("--labels", nargs="+", help="their label map PNGs, same order")
    w.add_argument("--checkpoint", help=f"model checkpoint (default {DEFAULT_CHECKPOINT})")
    w.add_argument("--seed", type=int, default=0, help="procedural scene seed")
    w.add_argument("--size", type=positive_int, default=None, help="working resolution")
    w.add_argument("--backend", default=None,
                   help="kernel backend (default auto: the fused kernels)")
    w.set_defaults(func=cmd_swap)

    d = sub.add_parser("demo", help="the README demo: synthesis on unseen procedural pairs, "
                       "PSNR vs exact ground truth and two baselines")
    d.add_argument("--out", default=os.path.join("out", "demo"), help="output directory")
    d.add_argument("--checkpoint", help=f"model (default {DEFAULT_CHECKPOINT})")
    d.add_argument("--gap-checkpoint", help="GAP ablation (default checkpoints/demo_gap.pt)")
    d.add_argument("--pairs", type=positive_int, default=100, help="unseen test pairs (default 100)")
    d.add_argument("--backend", default=None,
                   help="kernel backend (default auto: the fused kernels)")
    d.set_defaults(func=cmd_demo)

    def common(q, procedural_what):
        q.add_argument("--checkpoint", help=f"model (default {DEFAULT_CHECKPOINT})")
        q.add_argument("--backend", default=None,
                       help="kernel backend (default auto: the fused kernels)")
        q.add_argument("--seed", type=int, default=0, help="procedural scene seed")
        q.add_argument("--index", type=non_negative_int, default=0,
                       help=f"which procedural {procedural_what} (default 0)")

    def two_exemplars(q):
        q.add_argument("--label", help="target label map PNG (your own files: give all five)")
        q.add_argument("--exemplar-a", help="exemplar A image")
        q.add_argument("--exemplar-a-label", help="exemplar A label map PNG")
        q.add_argument("--exemplar-b", help="exemplar B image")
        q.add_argument("--exemplar-b-label", help="exemplar B label map PNG")
        q.add_argument("--size", type=positive_int, default=None, help="working resolution")

    i = sub.add_parser("interpolate", help="style interpolation between two exemplars "
                       "(paper Fig. 5)", description="A strip of STEPS outputs from exemplar "
                       "A's style (a = 1) to B's (a = 0): the two exemplars side by side, the "
                       "spatial logits biased by log(a/(1-a)), the feature mask interpolated. "
                       "Procedural test scenes unless you give your own five files.")
    i.add_argument("--out", required=True, help="output PNG")
    i.add_argument("--steps", type=_int_at_least(2), default=6, help="number of factors (default 6)")
    two_exemplars(i)
    common(i, "triplet")
    i.set_defaults(func=cmd_interpolate)

    si = sub.add_parser("spatial-interpolate", help="left-to-right style gradient in one image "
                        "(paper Fig. 7)", description="Channel attention mixes A's and B's "
                        "tokens with weight a(x) going 1 -> 0 from left to right.")
    si.add_argument("--out", required=True, help="output PNG")
    two_exemplars(si)
    common(si, "triplet")
    si.set_defaults(func=cmd_spatial_interpolate)

    e = sub.add_parser("extrapolate", help="a larger canvas from a centre exemplar patch "
                       "(paper Fig. 8)", description="Patches at the 4 corners and RANDOM "
                       "random locations, G(label crop, exemplar patch), combined by a "
                       "weighted average. Procedural: a test scene at FACTOR x the working "
                       "size with its centre patch as the exemplar.")
    e.add_argument("--out", required=True, help="output PNG")
    e.add_argument("--label", help="label map PNG of the whole canvas (own files)")
    e.add_argument("--exemplar", help="exemplar patch image (own files)")
    e.add_argument("--exemplar-label", help="its label map PNG (own files)")
    e.add_argument("--factor", type=positive_int, default=2, help="procedural canvas size / patch size")
    e.add_argument("--random", type=non_negative_int, default=10, help="random patch locations (default 10)")
    common(e, "scene")
    e.set_defaults(func=cmd_extrapolate)

    a = sub.add_parser("attention", help="the K spatial and K channel attention maps "
                       "(paper Fig. 6)")
    a.add_argument("--out", required=True, help="output PNG")
    a.add_argument("--label", help="target label map PNG (own files)")
    a.add_argument("--exemplar", help="exemplar image (own files)")
    a.add_argument("--exemplar-label", help="its label map PNG (own files)")
    a.add_argument("--scale", type=non_negative_int, default=0, help="MSCA scale, 0 finest (default 0)")
    common(a, "pair")
    a.set_defaults(func=cmd_attention)

    lt = sub.add_parser("label-transfer", help="label transfer matrix and hierarchical "
                        "clustering (paper Appendix B)", description="One-hot exemplar labels "
                        "carried by the finest-scale MSCA over PAIRS procedural test pairs, "
                        "compared with the target labels; rows clustered (average linkage).")
    lt.add_argument("--out", required=True, help="output PNG (the matrix also as .json)")
    lt.add_argument("--pairs", type=positive_int, default=200, help="test pairs (default 200)")
    lt.add_argument("--scale", type=non_negative_int, default=0,
                    help="MSCA scale (default 0, the finest, as the paper)")
    common(lt, "pair")
    lt.set_defaults(func=cmd_label_transfer)

    r = sub.add_parser("retrieve", help="top-k exemplars of a pool for a label map",
                       description="Rank a pool of label maps (DIR/labels/*.png with "
                       "DIR/images/, or *.png in DIR) by label-histogram intersection with "
                       "LABEL; the best match among the top k is the one whose label map "
                       "agrees with LABEL at the most pixels. Without --label/--pool: a "
                       "procedural test scene and 300 others.")
    r.add_argument("--label", help="target label map PNG")
    r.add_argument("--pool", help="pool directory")
    r.add_argument("--k", type=positive_int, default=20, help="how many to list (default 20)")
    r.add_argument("--num-classes", type=positive_int, default=255,
                   help="label ids are 0..N-1, 255 = unlabelled (default 255)")
    r.add_argument("--out", help="also draw the ranking to this PNG")
    r.set_defaults(func=cmd_retrieve)

    v = sub.add_parser("evaluate", help="Table 1: duplicating, mirroring, retrieving (and "
                       "exact cross-scene) tasks, PSNR/SSIM/LPIPS/FID/style loss, every column",
                       description="Evaluates every checkpoint of the config's columns that "
                       "exists (<name>.pt, <name>_gap.pt, _noattn, _nofm, _noglobal, "
                       "_stylecode) on the procedural test split (or --dataroot), writes the "
                       "markdown table to OUT (and OUT's .json) and prints it.")
    v.add_argument("--config", default="demo", help="config name or file (default demo)")
    v.add_argument("--out", default=os.path.join("out", "eval", "table1.md"),
                   help="markdown output (default out/eval/table1.md)")
    v.add_argument("--pairs", type=positive_int, default=100, help="targets per task (default 100)")
    v.add_argument("--pool", type=positive_int, default=300, help="retrieval pool size (default 300)")
    v.add_argument("--k", type=positive_int, default=20, help="retrieval candidates (default 20)")
    v.add_argument("--no-color-correction", action="store_true",
                   help="retrieving: compare with the uncorrected ground truth")
    v.add_argument("--checkpoint-dir", help="where the checkpoints are (default the config's)")
    v.add_argument("--dataroot", help="a folder (images/, labels/) instead of procedural data")
    v.add_argument("--lpips-vgg16", help="torchvision VGG-16 weights (vgg16-397923af.pth)")
    v.add_argument("--lpips-lin", help="LPIPS linear layers (lpips weights/v0.1/vgg.pth)")
    v.add_argument("--fid-inception", help="TorchScript Inception (inception-2015-12-05.pt)")
    v.add_argument("--backend", default=None,
                   help="kernel backend (default auto: the fused kernels)")
    v.set_defaults(func=cmd_evaluate)
    return p


# Errors of the user's input, files or environment (bad values, missing or unreadable files,
# a busy run folder, a training run that diverged): one line, exit status 2.
_USER_ERRORS = (UserError, ValueError, TypeError, OSError, KeyError)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"  # names the file, which str(e) buries
    elif isinstance(e, KeyError):
        text = f"missing key {e}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _threads(args.threads)
        for name in ("out", "attention"):
            if name == "out" and args.command in ("train", "demo"):
                continue  # directories, checked by their commands
            if args.command == "synthesize" and (args.pairs is not None or (
                    args.label and os.path.isdir(args.label))):
                continue  # batch mode: --out is a directory
            _check_output(getattr(args, name, None), f"--{name}")
        return args.func(args)
    except KeyboardInterrupt:
        print(f"msca {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error becomes one line, see the module doc
        if os.environ.get("MSCA_DEBUG"):
            raise
        from msca.train.run_guard import NonFiniteError
        if isinstance(e, (*_USER_ERRORS, NonFiniteError)):
            print(f"msca {args.command}: error: {_one_line(e)}", file=sys.stderr)
        else:  # a bug: still one line, with the way to the traceback
            print(f"msca {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
                  "(MSCA_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
