"""DiffAugment (Zhao et al., NeurIPS 2020): the same random, differentiable augmentation on every image
the GAN's discriminator sees, real and generated.

Why it helps: with a few thousand images the discriminator can memorise the real set; its outputs on
real images saturate, its gradients to G stop carrying information and training collapses.
Augmenting only the real images would teach G to draw augmented images, so DiffAugment augments
*both*, with differentiable operations so G still gets gradients through them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from t2i_helpers.errors import T2IError


def rand_brightness(x: Tensor) -> Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)


def rand_saturation(x: Tensor) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)  # per-pixel grey value
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * 2) + mean


def rand_contrast(x: Tensor) -> Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # per-image mean
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def rand_translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its size, filling with zeros (mid grey in [-1, 1])."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (b, 1, 1), device=x.device)
    padded = F.pad(x, (max_dx, max_dx, max_dy, max_dy))
    # Output pixel (i, j) of image n reads padded pixel (i + max_dy - dy, j + max_dx - dx): a gather,
    # so gradients flow back to the pixels that were moved.
    rows = torch.arange(h, device=x.device).view(1, h, 1) + max_dy - dy  # [B, H, 1]
    cols = torch.arange(w, device=x.device).view(1, 1, w) + max_dx - dx  # [B, 1, W]
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def rand_cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero a random square of ``ratio`` times the image size in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h, (b, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w, (b, 1, 1), device=x.device) - cw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # [B, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTATIONS = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
}


def diff_augment(x: Tensor, policy: str = "color,translation,cutout") -> Tensor:
    """Apply the augmentations named in ``policy`` (comma-separated keys of ``AUGMENTATIONS``)."""
    for name in filter(None, (p.strip() for p in policy.split(","))):
        if name not in AUGMENTATIONS:
            raise T2IError(f"unknown DiffAugment policy {name!r}; choose from {', '.join(AUGMENTATIONS)}")
        for fn in AUGMENTATIONS[name]:
            x = fn(x)
    return x
