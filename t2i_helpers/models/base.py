"""What every model family shares: the batch it trains on and the small interface the engine calls.

A model never runs the text encoder inside a training step: captions are encoded once (and cached),
and a :class:`~t2i_helpers.data.batch.Batch` carries their embeddings. The engine (:mod:`t2i_helpers.train`) only needs
three things from a model, so GANs, diffusion and the regression baseline share one loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.data.batch import Batch


def training_images(batch: Batch, size: int, dtype: torch.dtype) -> Tensor:
    """The batch's images at the model's ``size`` and ``dtype``: a cache built at another size (64 px
    data for a 32 px model) is resized here, so one data cache serves every model size."""
    images = batch.images.to(dtype)
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images


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
