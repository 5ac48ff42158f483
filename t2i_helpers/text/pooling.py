"""Pooling: how a sequence of token states becomes one caption vector."""
from __future__ import annotations

from torch import Tensor


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the token states over the real tokens only: [B, L, D], [B, L] -> [B, D].

    Padding positions carry states too (BERT computes them), but they describe no word; averaging
    them in makes a caption's vector depend on how long the *other* captions in its batch were.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1], 1.0 on real tokens
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


def cls_pool(hidden: Tensor) -> Tensor:
    """The state of the first token ([CLS]): [B, L, D] -> [B, D]. BERT's classic sentence vector."""
    return hidden[:, 0]


def reference_mean_pool(hidden: Tensor) -> Tensor:
    """The reference implementation's pooling: mean over *all* positions, padding included.

    Kept only so the notebook can show the difference to :func:`mean_pool`; do not train with it.
    """
    return hidden.mean(dim=1)
