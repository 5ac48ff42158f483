"""What every model family shares: the batch it trains on and the small interface the engine calls.

A model never runs the text encoder inside a training step: captions are encoded once (and cached),
and a :class:`Batch` carries their embeddings. The engine (:mod:`t2i_helpers.train`) only needs
three things from a model, so GANs, diffusion and the regression baseline share one loop.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn


@dataclass
class Batch:
    """One training batch: images in [-1, 1] and the embeddings of one caption per image."""

    images: Tensor  # [B, 3, H, W] float, in [-1, 1]
    text: Tensor  # [B, D] pooled caption embedding (mean over real tokens by default)
    tokens: Tensor | None = None  # [B, L, D] token states, for models that attend to words
    token_mask: Tensor | None = None  # [B, L] bool, True on real (non-padding) tokens
    caption_ids: Tensor | None = None  # [B] row of each caption in the caption table

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
        return replace(self, **moved)

    def __len__(self) -> int:
        return self.images.shape[0]


class T2IModel(nn.Module):
    """Base class of every text-to-image model the engine trains.

    Subclasses set ``family`` (the ``--model`` name), keep their typed config in ``self.config``,
    and implement :meth:`training_losses` and :meth:`generate`. Models with adversarial parts
    override :meth:`param_groups` to get one optimizer per group, each stepped in its own phase.
    """

    family: str = "base"
    uses_tokens: bool = False  # True if the model needs Batch.tokens (cross-attention)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups; the engine builds one optimizer per group and steps them in order."""
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def training_losses(self, batch: Batch, phase: str = "main") -> dict[str, Tensor]:
        """Losses for one optimisation phase; must contain ``"loss"`` (what is backpropagated)."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        text: Tensor,
        tokens: Tensor | None = None,
        token_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        **options,
    ) -> Tensor:
        """Images in [-1, 1], shape [B, 3, H, W], one per row of ``text``."""
        raise NotImplementedError
