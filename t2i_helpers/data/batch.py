"""What a training step reads: images and the embeddings of their captions, already on the device."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


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
