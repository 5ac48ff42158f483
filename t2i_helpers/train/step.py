"""One optimisation step for any model family, and the one place a step's losses are read.

A family returns its losses for a phase (``"main"``, or ``"d"`` then ``"g"`` for a GAN); this module
runs forward, backward, clipping and the update for each phase in order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from t2i_helpers.data.batch import Batch
from t2i_helpers.errors import TrainingError
from t2i_helpers.models.base import T2IModel
from t2i_helpers.train.device import autocast


class LossModule(nn.Module):
    """Routes ``forward`` to ``training_losses`` so DistributedDataParallel (and ``torch.compile``) see it."""

    def __init__(self, model: T2IModel):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, phase: str):
        return self.model.training_losses(batch, phase)


@dataclass
class Optimiser:
    """Everything a step updates the weights with: one optimizer per phase, and how."""

    optimizers: dict[str, torch.optim.Optimizer]
    groups: dict[str, list[nn.Parameter]]  # each phase's parameters (for gradient clipping)
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    grad_clip: float | None = 1.0


def optimisation_step(losses_module: nn.Module, batch: Batch, opt: Optimiser, lr: dict[str, float]) -> dict[str, torch.Tensor]:
    """One training step: for each phase (e.g. "d" then "g" for a GAN) forward, backward, clip, update.

    Returns the losses as detached tensors, still on the device, and does not look at them: reading a
    GPU value (``float(loss)``) makes the CPU wait until the GPU has finished everything queued, so
    the next batch could not be prepared while this step runs. :func:`read_losses` reads a whole
    window of steps at once, and stops at a NaN or inf.
    """
    step_losses: dict[str, torch.Tensor] = {}
    for phase, optimizer in opt.optimizers.items():
        for g in optimizer.param_groups:
            g["lr"] = lr[phase]
        optimizer.zero_grad(set_to_none=True)
        with autocast(opt.device, opt.precision):
            losses = losses_module(batch, phase)
        opt.scaler.scale(losses["loss"]).backward()
        if opt.grad_clip:
            opt.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(opt.groups[phase], opt.grad_clip)
        opt.scaler.step(optimizer)
        opt.scaler.update()
        # One optimizer: names as the model gives them; several: prefixed with the phase ("d_loss", "g_loss").
        prefix = "" if len(opt.optimizers) == 1 else f"{phase}_"
        for k, v in losses.items():
            name = k if k.startswith(prefix) else prefix + k
            if not isinstance(v, torch.Tensor):  # a plain number from the model
                v = torch.tensor(float(v), device=losses["loss"].device)
            step_losses[name] = v.detach()
    return step_losses


def read_losses(window: list[tuple[int, dict[str, torch.Tensor]]], ckpt_path: Path | None = None) -> dict[str, float]:
    """Check every step of ``window`` (``(step, losses)`` pairs from :func:`optimisation_step`) with
    one wait for the device, and return the last step's losses as floats.

    A NaN or inf in a phase's loss raises a one-line :class:`TrainingError` naming the first bad step.
    The engine calls this before every log line, sample grid and checkpoint, so a checkpoint is only
    written when every step since the previous one was finite: the one on disk is the last good one.
    """
    if not window:
        return {}
    checked = [(step, name, value) for step, losses in window for name, value in losses.items()
               if name == "loss" or name.endswith("_loss")]  # "loss", or a phase's "d_loss", "g_loss"
    last = window[-1][1]
    values = torch.stack([v.float() for *_, v in checked] + [v.float() for v in last.values()]).tolist()
    for (step, name, _), value in zip(checked, values):
        if not math.isfinite(value):
            phase = "main" if name == "loss" else name[: -len("_loss")]
            kept = (f"the last good checkpoint is {ckpt_path}" if ckpt_path is not None and ckpt_path.exists()
                    else "no checkpoint was written yet")
            raise TrainingError(
                f"loss became {value} at step {step} (phase {phase}); {kept}; try a lower --lr or --precision fp32"
            )
    return dict(zip(last, values[len(checked):]))
