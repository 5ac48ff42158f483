"""Guards for a run folder: one writer at a time, no silent overwrite, the same data on resume,
interrupts that keep the work, divergence caught, and one-line errors for unreadable checkpoints.

A thesis author's two-hour run is the most valuable file this package makes; every way found to
lose it (a second ``train`` on the same folder, two processes at once, Ctrl-C, a broken file, a
learning rate that explodes) ends here in one line that says what is there and what to do.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pickle
import signal
import socket
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from t2i_helpers.errors import TrainingError

CHECKPOINT_KEYS = ("model", "ema", "optimizers", "step", "config")
RUN_FILES = ("checkpoint.pt", "metrics.csv", "config.json")


# ---- reading a checkpoint ------------------------------------------------------------------------

def read_checkpoint(path: str | os.PathLike, need: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """``torch.load(path, weights_only=True)``, with one line for every way the file can be wrong.

    The file is never unpickled with ``weights_only=False``: a file that needs it can run code, and
    the advice to allow that (torch's own message) is not passed on.
    """
    path = Path(path)
    if path.is_dir():
        raise TrainingError(f"{path} is a folder, not a checkpoint file; move it away and train or resume again")
    if not path.exists():
        raise TrainingError(f"no checkpoint at {path}; train first (without --resume)")
    if path.stat().st_size == 0:
        raise TrainingError(f"{path} is empty (a save that never finished); delete it and train again with --overwrite")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrainingError(f"{path} holds objects other than tensors and numbers, which could run code when "
                            "loaded; it was not written by this package and is refused") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = "it is cut short" if "central directory" in str(exc) or isinstance(exc, EOFError) else "it is damaged"
        raise TrainingError(f"{path} cannot be read ({reason}: {str(exc).splitlines()[0][:80]}); "
                            "restore a copy, or train again with --overwrite") from None
    missing = [k for k in need if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise TrainingError(f"{path} is not a training checkpoint of this package (no {', '.join(missing)}); "
                            "restore a copy, or train again with --overwrite")
    return checkpoint


def describe_run(out: Path) -> str | None:
    """``a diffusion run at step 1200, saved 2026-12-01 14:02``, or None where no checkpoint is."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return None
    saved = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    try:
        checkpoint = read_checkpoint(path)
        family = json.loads(checkpoint["config"]).get("family", "?")
        return f"a {family} run at step {int(checkpoint['step'])}, saved {saved}"
    except TrainingError:
        return f"an unreadable checkpoint.pt, saved {saved}"


def check_start(out: Path, resume: bool, overwrite: bool) -> None:
    """A folder that holds a run is continued (``resume``) or replaced (``overwrite``), never silently."""
    if resume and overwrite:
        raise TrainingError("--resume continues the run in the folder and --overwrite replaces it: choose one")
    what = describe_run(out)
    if what is None and not resume and (out / "metrics.csv").exists() and not overwrite:
        what = "the metrics.csv of an earlier run"
    if what is not None and not resume and not overwrite:
        raise TrainingError(f"{out} already holds {what}; pass --resume to continue it or --overwrite to replace it")
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


def clean_stale_temps(out: Path) -> int:
    """Remove the temporary files of saves that were killed (``.<name>.<random>.tmp``); only call
    this while holding the folder's lock, when no save of ours can be in progress."""
    stale = [p for p in out.glob(".*.tmp") if p.is_file()] if out.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        print(f"note: removed {len(stale)} temporary file(s) left by an interrupted save in {out}", flush=True)
    return len(stale)


# ---- one writer at a time ------------------------------------------------------------------------

class RunLock:
    """An exclusive ``fcntl`` lock on ``<out>/.lock``, held while a run trains in the folder.

    The kernel drops the lock when the process dies, so a crash never leaves the folder locked; the
    file holds the owner (process id, host, start time) for the message a second process gets.
    """

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self.handle: Any = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise TrainingError(f"{self.path.parent} is in use by {owner}; wait for it to finish, "
                                "or train into another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, since {dt.datetime.now():%Y-%m-%d %H:%M:%S}")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # closing releases the lock
            self.handle = None


# ---- the same data on resume ---------------------------------------------------------------------

def data_digest(image_root: str | os.PathLike, ann_file: str | os.PathLike) -> str:
    """SHA-256 of the annotation file and of the names and sizes of the image files it lists.

    Cheap (no image is read) and enough to tell another data set of the same size from this one.
    """
    ann_file, image_root = Path(ann_file), Path(image_root)
    digest = hashlib.sha256(ann_file.read_bytes())
    try:
        names = sorted(e["file_name"] for e in json.loads(ann_file.read_text()).get("images", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        names = []
    for name in names:
        path = image_root / name
        digest.update(f"{name}:{path.stat().st_size if path.exists() else -1};".encode())
    return digest.hexdigest()[:16]


# ---- interrupts ----------------------------------------------------------------------------------

class StopRequest:
    """While active, the first SIGINT (Ctrl-C) or SIGTERM only sets :attr:`signal`; the loop then saves
    at the next step boundary and stops. A second one interrupts at once (the save already made stays).
    Outside the main thread (where handlers cannot be installed) it does nothing."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._old.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()


# ---- divergence ----------------------------------------------------------------------------------

class DivergenceGuard:
    """Stops a run whose training has blown up, before it saves the blown-up weights.

    The rule, checked at every logged step: the run has diverged when the global norm of its weights
    is more than ``norm_factor`` times its value at the start, or when the main loss averaged over the
    last ``window`` logged rows is more than ``loss_factor`` times its average over the first
    ``window``. Healthy runs of every family here stay far inside both (their weight norm grows by a
    few times at most); ``--lr 1e9`` crosses the first within steps. The loss rule alone would miss
    the baseline, whose Tanh output bounds its loss.
    """

    def __init__(self, model: Any, norm_factor: float = 100.0, loss_factor: float = 100.0, window: int = 5):
        self.model, self.norm_factor, self.loss_factor, self.window = model, norm_factor, loss_factor, window
        self.start_norm = self.norm()
        self.losses: list[float] = []

    def norm(self) -> float:
        with torch.no_grad():
            return float(torch.linalg.vector_norm(torch.stack([p.detach().float().norm() for p in self.model.parameters()])))

    def check(self, step: int, loss: float | None) -> None:
        norm = self.norm()
        if norm > self.norm_factor * max(self.start_norm, 1e-12):
            raise TrainingError(f"training diverged at step {step}: the weights' norm grew from {self.start_norm:.3g} "
                                f"to {norm:.3g}; the last checkpoint is kept. Try a smaller --lr")
        if loss is None:
            return
        self.losses.append(loss)
        if len(self.losses) >= 2 * self.window:
            first = sum(self.losses[:self.window]) / self.window
            last = sum(self.losses[-self.window:]) / self.window
            if last > self.loss_factor * max(first, 1e-12):
                raise TrainingError(f"training diverged at step {step}: the loss rose from {first:.3g} to {last:.3g}; "
                                    "the last checkpoint is kept. Try a smaller --lr")
