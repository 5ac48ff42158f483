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
from torch import Tensor, nn

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


def diff_augment(x: Tensor, policy: str = "color,translation,cutout", p: float = 1.0) -> Tensor:
    """Apply the augmentations named in ``policy`` (comma-separated keys of ``AUGMENTATIONS``).

    ``p`` < 1 (ADA): each image gets each augmentation with probability ``p`` (0: none at all).
    """
    for name in filter(None, (part.strip() for part in policy.split(","))):
        if name not in AUGMENTATIONS:
            raise T2IError(f"unknown DiffAugment policy {name!r}; choose from {', '.join(AUGMENTATIONS)}")
        for fn in AUGMENTATIONS[name]:
            if p >= 1:
                x = fn(x)
            elif p > 0:
                chosen = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p
                x = torch.where(chosen, fn(x), x)
    return x


class AdaptiveAugment(nn.Module):
    """ADA (Karras et al., NeurIPS 2020): the augmentation probability ``p`` follows D's overfitting.

    The signal is ``r = E[sign(D(real))]`` over the real logits of the last ``interval`` D steps: a
    discriminator that calls every real image real (r near 1) has memorised them. Above ``target``
    (0.6 in the paper) ``p`` rises, below it falls, by ``real images seen / images_to_full`` each
    time, so ``p`` can cross from 0 to 1 in ``images_to_full`` images. Buffers only: the state is
    saved and resumed with the model's weights.
    """

    def __init__(self, target: float = 0.6, interval: int = 4, images_to_full: int = 50_000):
        super().__init__()
        if not 0 < target < 1 or interval < 1 or images_to_full < 1:
            raise T2IError(f"ADA needs 0 < target < 1, interval >= 1, images_to_full >= 1; got "
                           f"{target}, {interval}, {images_to_full}")
        self.target, self.interval, self.images_to_full = float(target), int(interval), int(images_to_full)
        for name in ("p", "signs", "count", "steps", "r"):  # float buffers: the EMA copy copies them as they are
            self.register_buffer(name, torch.zeros(()))

    @torch.no_grad()
    def update(self, real_logits: Tensor) -> None:
        """Add one D step's real logits; every ``interval`` steps, move ``p`` towards ``target``."""
        self.signs += real_logits.detach().float().sign().sum()
        self.count += real_logits.numel()
        self.steps += 1
        if int(self.steps) % self.interval == 0:
            self.r.copy_(self.signs / self.count.clamp(min=1))
            self.p.copy_((self.p + torch.sign(self.r - self.target) * self.count / self.images_to_full).clamp(0, 1))
            self.signs.zero_()
            self.count.zero_()
