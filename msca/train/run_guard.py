"""Keeps training runs from clobbering each other and from silently going wrong.

A run folder (checkpoint.pt, log.jsonl) belongs to one trainer at a time:

  * `RunGuard` takes `<out>/train.lock` for the length of `Trainer.train()` (created
    exclusively; it records pid, host and start time). A trainer is refused while another one
    holds it, at construction already; a lock whose process is gone (same host, pid not
    running, or a guard of this process that no longer exists) is stale and taken over.
  * A folder that already holds a run is refused unless the trainer resumes it or is forced
    (`--force`: the old checkpoint and log are deleted and the run starts over).
  * `--resume` compares the options and training settings with the checkpoint's: a change
    breaks the exact continuation the checkpoint promises (another lr or seed, another step
    count moving the stage bounds), so it is refused, listing each change, unless forced.
  * Temporary files of an interrupted checkpoint save (`checkpoint.pt.*.tmp`, left by a
    SIGKILL) are removed by the next trainer that takes the lock (only then: before, they may
    be another trainer's save in progress).
  * The log tolerates a torn last line (a crash mid-write): it is dropped with a warning; a
    broken line elsewhere is an error naming the file and line.
  * A non-finite loss or weight stops the run before anything is saved, so the last good
    checkpoint stays as it was.
"""
from __future__ import annotations

import gc
import glob
import json
import math
import os
import socket
import time
import warnings
import weakref

from msca.options import Options

LOCK_NAME = "train.lock"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"

# Settings and options that do not change what the run computes: resuming with other values
# is still an exact continuation.
FREE_SETTINGS = {"checkpoint_every", "log_every"}
FREE_OPTIONS = {"name", "checkpoint_dir", "num_workers"}

# lock path -> weak reference to the RunGuard of this process that holds it
_HELD: dict = {}


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (busy, holds a run, options changed)."""


class NonFiniteError(RuntimeError):
    """A loss or a weight became NaN or infinite: the run stops, nothing is saved."""


# ------------------------------------------------------------------------------ the lock
def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_lock(path: str):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


class RunGuard:
    """The lock of one run folder, held by one trainer (rank 0) of this process.

        guard = RunGuard(out_dir)
        guard.acquire()      # RunFolderError if another live trainer holds it
        ...
        guard.release()      # also done when the guard is garbage collected
    """

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, LOCK_NAME)
        self.held = False
        self._token = f"{socket.gethostname()}:{os.getpid()}:{id(self)}:{time.time()}"
        self._finalizer = None

    def check_free(self) -> None:
        """RunFolderError if another live trainer holds the lock (a stale lock is left for
        acquire() to take over)."""
        if self.held or not os.path.exists(self.path):
            return
        holder = _read_lock(self.path)
        if not self._stale(holder):
            raise RunFolderError(self._busy_message(holder))

    def acquire(self) -> None:
        if self.held:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": self._token}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(self.path)
                if not self._stale(holder):
                    raise RunFolderError(self._busy_message(holder)) from None
                warnings.warn(f"{self.path}: removing a stale lock ({self._describe(holder)})",
                              stacklevel=2)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            self.held = True
            _HELD[self.path] = weakref.ref(self)
            self._finalizer = weakref.finalize(self, _release, self.path, self._token)
            return
        raise RunFolderError(f"{self.path}: could not take the lock (another trainer keeps "
                             "replacing it)")

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._finalizer is not None:
                self._finalizer()  # removes the file and the registry entry, once

    def _stale(self, holder) -> bool:
        if holder is None:
            # unreadable: being written right now, or torn by a crash; old means torn
            try:
                return time.time() - os.path.getmtime(self.path) > 60
            except OSError:
                return True
        if holder.get("host") != socket.gethostname():
            return False  # cannot check a process on another machine
        pid = int(holder.get("pid", -1))
        if pid != os.getpid():
            return not _pid_running(pid)
        # this process: stale unless one of its live guards holds it (collect first, so a
        # trainer that is garbage but not yet collected does not count)
        ref = _HELD.get(self.path)
        if ref is not None and ref() is not None:
            gc.collect()
            ref = _HELD.get(self.path)
        return ref is None or ref() is None or holder.get("token") != ref()._token

    @staticmethod
    def _describe(holder) -> str:
        if holder is None:
            return "unreadable"
        return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
                f"{holder.get('started')}")

    def _busy_message(self, holder) -> str:
        return (f"--out {self.out_dir}: another trainer is running in this folder "
                f"({self._describe(holder)}; lock {self.path}); if it is not, delete the lock "
                "file")


def _release(path: str, token: str) -> None:
    holder = _read_lock(path)
    if holder is not None and holder.get("token") == token:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    _HELD.pop(path, None)


# ------------------------------------------------------------------------------ the folder
def holds_run(out_dir: str) -> bool:
    log = os.path.join(out_dir, LOG_NAME)
    return (os.path.isfile(os.path.join(out_dir, CHECKPOINT_NAME))
            or (os.path.isfile(log) and os.path.getsize(log) > 0))


def prepare_folder(out_dir: str, *, resume: bool, force: bool) -> None:
    """Refuses a folder that holds a run unless resume or force; with force (and no resume)
    deletes the old run's checkpoint and log. Call it after RunGuard.check_free()."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RunFolderError(f"--out {out_dir}: exists and is not a directory")
    if not resume and holds_run(out_dir):
        if not force:
            raise RunFolderError(
                f"--out {out_dir}: holds a run ({CHECKPOINT_NAME} or {LOG_NAME}); pass "
                "--resume to continue it, or --force to delete it and start over")
        for name in (CHECKPOINT_NAME, LOG_NAME):
            try:
                os.unlink(os.path.join(out_dir, name))
            except FileNotFoundError:
                pass


def remove_stale_tmp(out_dir: str) -> None:
    """Deletes what interrupted checkpoint saves left behind. Call it holding the lock."""
    for tmp in glob.glob(os.path.join(glob.escape(out_dir), CHECKPOINT_NAME + ".*.tmp")):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


# ------------------------------------------------------------------------------ resume
def _fmt(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def option_changes(saved_options: dict, options: dict, saved_train: dict,
                   train: dict) -> list[str]:
    """'key: checkpoint -> now' for every option and training setting that differs and
    matters for an exact continuation."""
    changes = []
    for prefix, old, new, free in (("", saved_options, options, FREE_OPTIONS),
                                   ("train.", saved_train, train, FREE_SETTINGS)):
        for key in sorted(set(old) | set(new)):
            if key in free:
                continue
            a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
            if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
                a, b = list(a), list(b)
            if a != b:
                changes.append(f"{prefix}{key}: {_fmt(a)} -> {_fmt(b)}")
    return changes


def check_resume(path: str, ckpt: dict, options: dict, train: dict, *, force: bool) -> None:
    """Refuses (RunFolderError) to resume from ckpt with changed options unless force, in
    which case the changes are only warned about."""
    # an option the checkpoint predates takes its default, as it does when the run is loaded
    saved = {**Options().to_dict(), **(ckpt.get("options") or {})}
    changes = option_changes(saved, options, ckpt.get("train") or {}, train)
    if not changes:
        return
    listed = "; ".join(changes)
    if not force:
        raise RunFolderError(f"--resume: checkpoint {path} was written with other options "
                             f"({listed}); resuming would not continue that run exactly: "
                             "use the same ones, or pass --force to resume anyway")
    warnings.warn(f"--resume --force: continuing {path} with changed options ({listed}); "
                  "the run is no longer an exact continuation", stacklevel=2)


# ------------------------------------------------------------------------------ the log
def read_log_records(path: str) -> list[dict]:
    """The records of log.jsonl. A torn last line (no newline, not JSON: a crash mid-write)
    is dropped with a warning; any other broken line is a ValueError naming file and line."""
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.split(b"\n")
    records = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
            if not isinstance(rec, dict) or "step" not in rec:
                raise ValueError("not a log record (a JSON object with 'step')")
        except ValueError as e:
            if i == len(lines):  # the last line, without its newline: torn
                warnings.warn(f"{path}: line {i} is incomplete (an interrupted write); "
                              "ignoring it", stacklevel=2)
                break
            raise ValueError(f"training log {path}: line {i} is not a log record: {e}") from e
        records.append(rec)
    return records


def truncate_log(path: str, step: int) -> None:
    """Keeps the records up to `step` (those after the checkpoint will be redone), rewritten
    atomically; drops a torn last line."""
    if not os.path.isfile(path):
        return
    kept = [r for r in read_log_records(path) if int(r["step"]) <= step]
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ non-finite
def check_finite_losses(losses: dict, step: int, checkpoint: str) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        listed = ", ".join(f"{k} = {v}" for k, v in sorted(bad.items()))
        raise NonFiniteError(f"step {step}: non-finite loss ({listed}); training stopped "
                             f"without saving, the last good checkpoint {checkpoint} is kept")


def check_finite_weights(modules: dict, step: int, checkpoint: str) -> None:
    import torch

    for name, module in modules.items():
        for pname, p in module.state_dict().items():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise NonFiniteError(
                    f"step {step}: {name}.{pname} holds NaN or inf; training stopped without "
                    f"saving, the last good checkpoint {checkpoint} is kept")
