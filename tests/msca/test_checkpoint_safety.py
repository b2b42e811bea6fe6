"""Checkpoints carry no code: a crafted file executes nothing through any command; the shipped
models are found next to the package, never in the working directory; a checkpoint that does
not fit its options is one clear line. And every CLI error is one line, exit status 2."""
from __future__ import annotations

import os
import random
import warnings

import numpy as np
import pytest
import torch

from msca import cli
from msca.train import checkpoint as ckpt_mod
from msca.train import load_generator, read_checkpoint

from test_train import make, settings, tiny  # noqa: E402  (pytest puts this dir on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class Payload:
    """Unpickling this calls open(marker, 'w'): the code a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path, marker, fmt="msca-model-v1"):
    torch.save({"format": fmt, "options": {}, "G": {}, "x": Payload(marker)}, str(path))
    return str(path)


def one_line_error(capsys, argv, expect):
    """Runs the CLI; the error is one line on stderr containing `expect`, exit status 2."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ no code
def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = crafted(tmp_path / "evil.pt", marker)
    with pytest.raises(ValueError, match=r"evil\.pt.*refused.*never loaded with code"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("argv", [
    ["synthesize", "--label", "{tmp}/L.png", "--exemplar", "{tmp}/X.png", "--exemplar-label",
     "{tmp}/XL.png", "--out", "{tmp}/o.png", "--checkpoint", "{evil}"],
    ["classes", "--checkpoint", "{evil}"],
    ["swap", "--out", "{tmp}/g.png", "--checkpoint", "{evil}"],
    ["evaluate", "--checkpoint-dir", "{tmp}/ckpts", "--pairs", "1", "--pool", "2", "--k", "1",
     "--out", "{tmp}/t.md"],
])
def test_crafted_checkpoint_through_the_cli(tmp_path, capsys, argv):
    marker = tmp_path / "pwned"
    (tmp_path / "ckpts").mkdir()
    evil = crafted(tmp_path / "ckpts" / "demo.pt", marker)
    # real input files, so that synthesize gets as far as loading the checkpoint
    from PIL import Image
    Image.new("L", (64, 64), 3).save(tmp_path / "L.png")
    Image.new("L", (64, 64), 5).save(tmp_path / "XL.png")
    Image.new("RGB", (64, 64), (90, 120, 200)).save(tmp_path / "X.png")
    argv = [a.format(tmp=tmp_path, evil=evil) for a in argv]
    try:
        cli.main(argv)
    except SystemExit:
        pass
    err = capsys.readouterr().err
    assert not marker.exists()
    if argv[0] in ("synthesize", "classes", "swap"):
        # refused at the checkpoint itself, not earlier for some other reason
        assert str(evil) in err or "demo.pt" in err, err


def test_crafted_training_checkpoint_on_resume(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    crafted(run / "checkpoint.pt", marker, fmt="msca-train-v1")
    one_line_error(capsys, ["train", "--config", "demo", "--steps", "1", "--out", str(run),
                            "--resume"], "refused")
    assert not marker.exists()


def test_default_checkpoint_is_never_taken_from_the_working_directory(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    (tmp_path / "checkpoints").mkdir()
    crafted(tmp_path / "checkpoints" / "demo.pt", marker)
    monkeypatch.chdir(tmp_path)
    assert cli._repo_path(cli.DEFAULT_CHECKPOINT) == os.path.join(REPO, "checkpoints", "demo.pt")
    if os.path.isfile(os.path.join(REPO, "checkpoints", "demo.pt")):
        assert cli.main(["classes"]) == 0
    assert not marker.exists()


# ------------------------------------------------------------------------------ weights only
def test_training_checkpoint_loads_weights_only(tmp_path):
    t = make(tmp_path, st=settings(steps=1))
    t.train()
    ckpt = torch.load(t.checkpoint_path, weights_only=True)  # raises if anything is not plain
    assert ckpt["step"] == 1


def test_rng_states_round_trip():
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state = ckpt_mod.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt_mod.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_legacy_training_checkpoint_with_numpy_rng_still_loads(tmp_path):
    """Runs written before the RNG states became tensors hold a numpy array: allowed (an
    array calls no code), and its state restores."""
    t = make(tmp_path, st=settings(steps=1))
    t.train()
    ckpt = read_checkpoint(t.checkpoint_path)
    np.random.seed(7)
    ckpt["rng"]["numpy"] = np.random.get_state()
    ckpt["rng"]["python"] = random.getstate()
    expected = np.random.rand()
    path = str(tmp_path / "legacy.pt")
    torch.save(ckpt, path)
    loaded = read_checkpoint(path)
    ckpt_mod.set_rng_state(loaded["rng"])
    assert np.random.rand() == expected


# ------------------------------------------------------------------------------ clear errors
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = make(root / "run", st=settings(steps=1))
        t.train()
    path = str(root / "model.pt")
    t.export(path)
    return path


def test_checkpoint_of_another_config(tmp_path, exported, capsys):
    ckpt = torch.load(exported, weights_only=True)
    ckpt["options"] = tiny(ngf=8).to_dict()
    other = str(tmp_path / "other.pt")
    torch.save(ckpt, other)
    with pytest.raises(ValueError, match=r"other\.pt.*generator weights do not fit"):
        load_generator(other)
    one_line_error(capsys, ["swap", "--n", "2", "--out", str(tmp_path / "g.png"),
                            "--checkpoint", other], "do not fit")


def test_checkpoint_without_options(tmp_path, exported, capsys):
    ckpt = torch.load(exported, weights_only=True)
    del ckpt["options"]
    path = str(tmp_path / "noopt.pt")
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"noopt\.pt.*missing options"):
        read_checkpoint(path)
    one_line_error(capsys, ["classes", "--checkpoint", path], "missing options")


@pytest.mark.parametrize("argv,expect", [
    (["--threads", "-3", "demo"], "--threads: expected an integer >= 1, got -3"),
    (["swap", "--size", "0", "--out", "x.png"], "--size: expected an integer >= 1, got 0"),
    (["swap", "--n", "two", "--out", "x.png"], "--n: expected an integer, got 'two'"),
    (["evaluate", "--checkpoint-dir", "/nonexistent/ckpts"],
     "--checkpoint-dir /nonexistent/ckpts: no such directory"),
    (["train", "--config", "demo", "--checkpoint-every", "0"], "--checkpoint-every"),
    (["nosuchcommand"], "invalid choice"),
])
def test_cli_errors_are_one_line(capsys, argv, expect):
    one_line_error(capsys, argv, expect)


def test_out_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(capsys, ["swap", "--out", str(blocker / "g.png")],
                   f"--out {blocker}/g.png: {blocker} is a file")
    one_line_error(capsys, ["train", "--config", "demo", "--out", str(blocker / "run")],
                   f"--out {blocker}/run: {blocker} is a file")
    one_line_error(capsys, ["swap", "--out", str(tmp_path)], "is a directory")
