"""Runs that cannot clobber each other: the lock, folders that hold a run, option changes on
--resume, a torn log line, stale temporary files, and a run that diverges."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from msca.train import read_checkpoint, read_log
from msca.train.run_guard import (LOCK_NAME, NonFiniteError, RunFolderError, RunGuard,
                                  check_finite_losses, option_changes, read_log_records)

from test_train import make, settings, tiny  # noqa: E402  (pytest puts this dir on sys.path)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def trained(tmp_path, steps=2, **kw):
    t = make(tmp_path, st=settings(steps=steps, checkpoint_every=1), **kw)
    t.train()
    return t


# ------------------------------------------------------------------------------ the lock
def test_second_trainer_on_a_busy_folder_is_refused(tmp_path):
    busy = RunGuard(str(tmp_path))
    busy.acquire()  # what a trainer holds for the length of train()
    refused = rf"another trainer is running in this folder \(pid {os.getpid()}"
    with pytest.raises(RunFolderError, match=refused):
        make(tmp_path)  # refused at construction already
    busy.release()
    t = make(tmp_path)
    busy.acquire()
    with pytest.raises(RunFolderError, match=refused):
        t.train(1)
    busy.release()
    t.train(1)
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end of train()
    make(tmp_path, resume=True)


def test_lock_of_another_live_process_is_respected(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps(
            {"pid": sleeper.pid, "host": os.uname().nodename, "started": "x"}))
        with pytest.raises(RunFolderError, match=f"pid {sleeper.pid}"):
            RunGuard(str(tmp_path)).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone: a stale lock, taken over with a warning
    guard = RunGuard(str(tmp_path))
    with pytest.warns(UserWarning, match="removing a stale lock"):
        guard.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    guard.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_a_dropped_guard_is_released(tmp_path):
    guard = RunGuard(str(tmp_path))
    guard.acquire()
    del guard  # a trainer object dropped in the middle of train()
    again = RunGuard(str(tmp_path))
    again.acquire()
    again.release()


def test_two_trainer_processes_one_folder(tmp_path):
    """Two `msca train` processes on one folder: the second is refused (exit 2, one line)
    while the first holds the lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]); "
         "from msca.train.run_guard import RunGuard; g = RunGuard(sys.argv[1]); g.acquire(); "
         "print('held', flush=True); time.sleep(60)", str(tmp_path),
         os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from msca import cli
        rc = cli.main(["train", "--config", "demo", "--steps", "1", "--out", str(tmp_path)])
        assert rc == 2
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------------------ the folder
def test_folder_holding_a_run_is_refused_without_resume_or_force(tmp_path):
    t = trained(tmp_path)
    assert read_checkpoint(t.checkpoint_path)["step"] == 2
    with pytest.raises(RunFolderError, match=r"holds a run .* --resume .* --force"):
        make(tmp_path, st=settings(steps=2, checkpoint_every=1))
    assert read_checkpoint(t.checkpoint_path)["step"] == 2  # untouched
    fresh = make(tmp_path, st=settings(steps=1, checkpoint_every=1), force=True)
    assert not os.path.exists(t.checkpoint_path) and not os.path.exists(t.log_path)
    fresh.train()
    assert [r["step"] for r in read_log(fresh.log_path)] == [1]  # one run, not two


def test_stale_temporary_files_are_removed(tmp_path):
    trained(tmp_path, steps=1)
    junk = tmp_path / "checkpoint.pt.abc123.tmp"
    junk.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.tmp"
    other.write_text("mine")
    t = make(tmp_path, st=settings(steps=1, checkpoint_every=1), resume=True)
    assert junk.exists()  # not before the lock is held: it could be a save in progress
    t.train()
    assert not junk.exists() and other.exists()


# ------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("change,listed", [
    (dict(opt=dict(lr=1e-3)), "lr: 0.0002 -> 0.001"),
    (dict(opt=dict(seed=5)), "seed: 0 -> 5"),
    (dict(st=dict(steps=12)), "train.steps: 2 -> 12"),
])
def test_resume_refuses_changed_options(tmp_path, change, listed):
    trained(tmp_path)
    opt = tiny(**change.get("opt", {}))
    st = settings(**{"steps": 2, "checkpoint_every": 1, **change.get("st", {})})
    with pytest.raises(RunFolderError, match=rf"--resume: .* other options \({listed}\).*"
                       r"--force"):
        make(tmp_path, opt=opt, st=st, resume=True)
    with pytest.warns(UserWarning, match=listed):
        resumed = make(tmp_path, opt=opt, st=st, resume=True, force=True)
    assert resumed.step == 2


def test_resume_with_free_settings_changed_is_allowed(tmp_path):
    trained(tmp_path)
    t = make(tmp_path, st=settings(steps=2, checkpoint_every=7, log_every=3), resume=True)
    assert t.step == 2


def test_option_changes_compares_tuples_and_lists():
    assert option_changes({"a": (1, 2)}, {"a": [1, 2]}, {}, {}) == []
    assert option_changes({"a": 1, "name": "x"}, {"a": 2, "name": "y"}, {}, {}) == ["a: 1 -> 2"]


# ------------------------------------------------------------------------------ the log
def test_torn_last_log_line_is_tolerated(tmp_path):
    t = trained(tmp_path)
    with open(t.log_path, "a") as fh:
        fh.write('{"step": 3, "pre/tot')  # a crash mid-write
    with pytest.warns(UserWarning, match=r"log\.jsonl: line 3 is incomplete"):
        assert [r["step"] for r in read_log(t.log_path)] == [1, 2]
    resumed = make(tmp_path, st=settings(steps=3, checkpoint_every=1), resume=True,
                   force=True)  # force: steps 2 -> 3
    resumed.train()
    assert [r["step"] for r in read_log(t.log_path)] == [1, 2, 3]


def test_broken_log_line_in_the_middle_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl: line 2 is not a log record"):
        read_log_records(str(path))


# ------------------------------------------------------------------------------ divergence
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    t = make(tmp_path, st=settings(steps=4, checkpoint_every=1))
    t.train(2)
    good = read_checkpoint(t.checkpoint_path)
    assert good["step"] == 2
    with torch.no_grad():
        next(t.G.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss .*nan.* last good "
                       r"checkpoint .*checkpoint\.pt is kept"):
        t.train()
    after = read_checkpoint(t.checkpoint_path)
    assert after["step"] == 2
    assert all(torch.equal(after["G"][k], good["G"][k]) for k in good["G"])
    assert not (tmp_path / LOCK_NAME).exists()  # released on the way out


def test_non_finite_weight_is_not_saved(tmp_path):
    t = trained(tmp_path, steps=1)
    with torch.no_grad():
        next(t.D.parameters()).view(-1)[0] = math.inf
    with pytest.raises(NonFiniteError, match=r"D\..* holds NaN or inf"):
        t.save()
    assert read_checkpoint(t.checkpoint_path)["step"] == 1


def test_check_finite_losses_names_the_loss():
    check_finite_losses({"G/total": 1.0}, 3, "c.pt")
    with pytest.raises(NonFiniteError, match=r"D/total = inf"):
        check_finite_losses({"G/total": 1.0, "D/total": math.inf}, 3, "c.pt")
