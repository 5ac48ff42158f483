"""The state a run carries between steps and across a resume: EMA weights, optimizers, the learning
rate schedule and every random generator, saved so that a resumed run continues exactly.
"""
from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from t2i_helpers.errors import TrainingError
from t2i_helpers.files import atomic_torch_save
from t2i_helpers.models.base import T2IModel
from t2i_helpers.train.config import TrainConfig


class EMA:
    """Exponential moving average of the weights, with warm-up.

    The decay at step t is ``min(decay, (1 + t) / (10 + t))``: early on the average follows the
    weights closely, so the random initial weights leave it within a few hundred steps instead of
    lingering for thousands (a fixed 0.999 keeps 37% of the initial weights after 1,000 steps).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_params = list(self.model.parameters())
        if ema_params:  # one fused call instead of a small kernel per tensor
            torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def adamw(params: list[nn.Parameter], **settings) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has one for the parameters' device.

    The fused update is one kernel for all tensors instead of several per tensor: on a small model
    the per-tensor loop costs as much as the forward pass (docs/measurements.md).
    """
    try:
        return torch.optim.AdamW(params, fused=True, **settings)
    except (RuntimeError, ValueError, TypeError):  # e.g. a device or dtype without a fused kernel
        return torch.optim.AdamW(params, **settings)


def build_optimizers(model: T2IModel, model_config: Any, train_config: TrainConfig):
    """One AdamW per parameter group, with the family's suggested lr/betas unless --lr overrides."""
    settings = model_config.optimizer_settings() if hasattr(model_config, "optimizer_settings") else {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    base_lr: dict[str, float] = {}
    for phase, params in model.param_groups().items():
        s = dict(settings.get(phase, {}))
        suggested = s.pop("lr", 2e-4)
        base_lr[phase] = train_config.lr if train_config.lr is not None else suggested
        optimizers[phase] = adamw(params, lr=base_lr[phase], weight_decay=train_config.weight_decay, **s)
    return optimizers, base_lr


def lr_factor(step: int, config: TrainConfig) -> float:
    """The learning rate of step ``step + 1`` relative to the base: linear warm-up, constant, then an
    optional linear decay to 0 over the last ``decay_steps`` of ``config.steps`` ("warm-up, stable,
    decay": a cool-down at the end of a fixed budget lowers the final loss more than the EMA alone)."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    if config.decay_steps > 0:
        end = config.schedule_steps or config.steps
        warm = min(warm, max(0.0, (end - step) / config.decay_steps))
    return warm


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tensors and numpy scalars as numbers, anything else as text)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def rng_state() -> dict:
    """Every random generator's state (torch, Python, numpy, CUDA), loadable with ``weights_only=True``."""
    state = {"torch": torch.get_rng_state(), "python": jsonable(random.getstate())}
    np_state = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode_state(value: Any) -> Any:
    """Make a loader state safe for ``weights_only`` loading: numpy arrays become tensors."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {k: encode_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_state(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_state(value: Any) -> Any:
    """Undo :func:`encode_state`."""
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy().astype(value["dtype"])
        return {k: decode_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_state(v) for v in value]
    return value


def save_or_explain(state: dict, path: Path) -> None:
    """:func:`atomic_torch_save`, with a full disk or a missing permission said in one line. The
    previous checkpoint survives either way: the new one is written beside it and renamed last."""
    try:
        atomic_torch_save(state, path)
    except (OSError, RuntimeError) as exc:
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        if getattr(exc, "errno", None) == 28 or free < 64 * 2**20:
            reason = f"the disk is full ({free / 2**20:.0f} MiB free)"
        elif getattr(exc, "errno", None) == 13:
            reason = "permission denied"
        else:
            reason = str(exc).splitlines()[0][:100]
        raise TrainingError(f"could not save {path}: {reason}; the previous checkpoint is kept") from None
