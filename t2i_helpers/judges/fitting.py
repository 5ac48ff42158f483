"""What the two judges share: one small training loop, and "load it if cached, else train and cache it".

A judge is trained once per data set (seconds to a minute on a CPU) and kept under
``data_dir()/cache``; its file name hashes everything the training depends on, so new data or a
changed setting trains a new one instead of reusing a stale judge.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from t2i_helpers.config import data_dir
from t2i_helpers.errors import T2IError
from t2i_helpers.files import atomic_torch_save

LOAD_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, EOFError, pickle.UnpicklingError)


def sibling_split(ann_file: Path, split: str) -> Path | None:
    """``captions_train.json`` <-> ``captions_val.json`` (also ``captions_train2017.json``), if it exists."""
    name = ann_file.name
    for a, b in (("train", "val"), ("val", "train")):
        if a in name and b == split:
            candidate = ann_file.with_name(name.replace(a, b))
            return candidate if candidate.exists() else None
    return ann_file if split in name else None


def fit(model: nn.Module, parameters: Iterable[nn.Parameter], batch_loss: Callable[[int], Tensor], steps: int,
        lr: float, name: str, verbose: bool = False) -> tuple[float, float]:
    """AdamW (weight decay 1e-4) with a one-cycle learning rate: ``steps`` of ``batch_loss(step)``.

    Returns (the last loss, seconds). The model is left in eval mode.
    """
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    start = time.perf_counter()
    model.train()
    loss = torch.zeros(())
    for step in range(steps):
        loss = batch_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if verbose and (step + 1) % 100 == 0:
            print(f"{name} step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    model.eval()
    return float(loss.item()), time.perf_counter() - start


def weights_digest(model: nn.Module, length: int = 10) -> str:
    """A short hash of a model's weights: it names a judge's feature network, so cached FID
    statistics follow the weights."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


def cache_path(kind: str, key_fields: dict, cache_dir: str | os.PathLike | None, prefix: str) -> Path:
    """``<cache_dir or data_dir()/cache/kind>/<prefix>-<16 hex digits of the key>.pt``."""
    key = hashlib.sha1(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    return (Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / kind) / f"{prefix}-{key}.pt"


def save_judge(payload: dict, path: str | os.PathLike) -> Path:
    """Atomic save of a judge's tensors and JSON strings (temp file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(payload, path)


def read_judge(path: str | os.PathLike, what: str, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """Load a judge saved by :func:`save_judge` (``weights_only=True``: no code runs from the file).

    ``build(payload)`` makes the empty model; an unreadable file is a one-line :class:`T2IError`
    naming it and ``what`` it should hold.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model = build(payload)
        model.load_state_dict(payload["state_dict"])
        report = json.loads(payload["report"])
    except LOAD_ERRORS as exc:
        first_line = (str(exc).splitlines() or [""])[0][:120]
        raise T2IError(f"cannot read {what} {path}: {type(exc).__name__}: {first_line}") from None
    return model.eval(), report


def load_or_train(path: Path, load: Callable[[Path], tuple[nn.Module, dict]],
                  train: Callable[[], tuple[nn.Module, dict]], save: Callable[[nn.Module, Path, dict], Path]):
    """The judge at ``path`` if it is there, else ``train()`` it and ``save`` it there.

    The report says ``from_cache``, and ``path`` when it was just trained.
    """
    if path.exists():
        model, report = load(path)
        report["from_cache"] = True
        return model, report
    model, report = train()
    save(model, path, report)
    report["from_cache"] = False
    report["path"] = str(path)
    return model, report
