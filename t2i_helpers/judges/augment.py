"""The attribute classifier's training data: targets, and augmentations that keep every label.

``config`` is a :class:`~t2i_helpers.judges.classifier.ClassifierConfig` (its augmentation fields).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from t2i_helpers.data.evalset import EvalData
from t2i_helpers.data.images import to_float
from t2i_helpers.data.shapes import COLORS, POSITIONS
from t2i_helpers.errors import T2IError


def attribute_targets(attributes: Sequence[dict], classes: dict[str, list[str]]) -> dict[str, Tensor]:
    """Per-attribute class indices [N] from per-image attribute dicts."""
    out = {}
    for name, values in classes.items():
        try:
            out[name] = torch.tensor([values.index(a[name]) for a in attributes], dtype=torch.long)
        except (KeyError, ValueError) as exc:
            raise T2IError(f"image attributes lack a known {name!r} (expected one of {values}): {exc}") from None
    return out


def _palette(color_names: Sequence[str]) -> Tensor | None:
    """[K, 3] colours of the colour classes, scaled so that ``alpha * palette - 1`` is in [-1, 1]."""
    if not color_names or any(c not in COLORS for c in color_names):
        return None
    return torch.tensor([COLORS[c] for c in color_names], dtype=torch.float32) / 127.5


def _mirrored_positions(position_names: Sequence[str]) -> Tensor | None:
    """Index of each position's left-right mirror image ("top left" -> "top right"), if they are the 3x3 grid."""
    if list(position_names) != list(POSITIONS):
        return None
    return torch.tensor([3 * (i // 3) + 2 - i % 3 for i in range(9)], dtype=torch.long)


def degrade(x: Tensor, alpha: Tensor, config: Any, generator: torch.Generator) -> Tensor:
    """Give a share ``config.degrade`` of the images the flaws of generated ones, keeping every label.

    The judge learns from clean renders but reads samples, which are never clean. Each chosen image gets:

    * off-palette colour: the object's colour shifted by up to ``color_jitter`` per channel. The two
      closest palette colours (blue and purple) are 106 apart, and the largest shift is
      ``25 * sqrt(3) = 43``, under half of that, so the nearest palette colour (the label) stays;
    * uneven brightness: the object multiplied by a smooth random field within ``1 +- texture``;
    * a background that is not pure black: lifted by up to ``background`` and noisy (fine or in 2x2
      blocks, as patch-based models leave it);
    * for half of them, softer edges: a round trip through half resolution (a model that generates
      at 32 px is judged after upsampling to 64 px).

    ``x``: [B, 3, H, W] in [-1, 1]; ``alpha``: [B, 1, H, W], the object's coverage (0 on the background).
    """
    b, size, device = x.shape[0], x.shape[-1], x.device

    def rand(*shape: int) -> Tensor:  # drawn on the CPU generator: the same numbers on any device
        return torch.rand(*shape, generator=generator).to(device)

    chosen = rand(b) < config.degrade
    soften = chosen & (rand(b) < 0.5)
    half = F.interpolate(x, size=size // 2, mode="bilinear", antialias=True, align_corners=False)
    out = torch.where(soften[:, None, None, None], F.interpolate(half, size=size, mode="bilinear",
                                                                 align_corners=False), x)
    shift = (rand(b, 3, 1, 1) * 2 - 1) * (config.color_jitter / 127.5)
    gain = 1 + config.texture * F.interpolate(rand(b, 1, 4, 4) * 2 - 1, size=size, mode="bicubic",
                                              align_corners=False).clamp(-1, 1)
    # Brightness acts on [0, 2] (0 = black), so it leaves the background alone ...
    degraded = (out + 1) * gain + alpha * shift
    # ... which is lifted off pure black and made noisy, in 2x2 blocks half of the time (patch models).
    lift = rand(b, 1, 1, 1) * config.background
    fine = torch.randn(b, 3, size, size, generator=generator).to(device)
    blocky = F.interpolate(torch.randn(b, 3, size // 2, size // 2, generator=generator).to(device), size=size,
                           mode="nearest")
    grain = torch.where((rand(b) < 0.5)[:, None, None, None], blocky, fine) * rand(b, 1, 1, 1) * config.background
    degraded = (degraded + (1 - alpha) * (lift + grain)).clamp(0, 2) - 1
    return torch.where(chosen[:, None, None, None], degraded, x)


class Augmenter:
    """The training set at the network's size, and the label-keeping augmentations of each batch.

    Recolouring: the train split never shows the held-out colour-shape pairs; without it the judge
    learns "red implies not a triangle" and misreads exactly the images that test composition.
    Mirroring keeps every shape (all three are symmetric), colour and size, and swaps left and right.
    """

    def __init__(self, resize: Callable[[Tensor], Tensor], train: EvalData, config: Any, device: torch.device):
        self.config, self.device = config, device
        with torch.no_grad():  # resize once: the loop only indexes
            self.x = resize(to_float(train.images)).to(device)
            # Object coverage (1 on the shape, 0 on black), resized the same way: repainting it in any
            # palette colour gives exactly the image of that colour (resizing is linear).
            self.alpha = resize(torch.as_tensor(train.images.max(axis=-1) > 0).float()[:, None]).to(device)
        # channels-last memory layout: about 25% faster convolutions on a CPU, same numbers
        self.x, self.alpha = (t.contiguous(memory_format=torch.channels_last) for t in (self.x, self.alpha))
        self.y = {k: v.to(device) for k, v in attribute_targets(train.attributes, config.classes).items()}
        self.palette = _palette(config.classes.get("color", []))
        self.recolor = config.recolor if self.palette is not None and "color" in self.y else 0.0
        mirror = _mirrored_positions(config.classes.get("position", []))
        self.mirror = mirror.to(device) if mirror is not None and config.mirror else None

    def _rand(self, n: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, generator=generator).to(self.device)

    def batch(self, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """One augmented batch: images [B, 3, S, S] and class indices per attribute."""
        config, device = self.config, self.device
        n = self.x.shape[0]
        idx = torch.randint(n, (min(config.batch_size, n),), generator=generator).to(device)
        x, coverage = self.x[idx], self.alpha[idx]  # image and object coverage travel together (flips below)
        targets = {k: v[idx] for k, v in self.y.items()}
        if self.recolor > 0:
            repaint = self._rand(len(idx), generator) < self.recolor
            colors = torch.randint(len(self.palette), (len(idx),), generator=generator).to(device)
            painted = coverage * self.palette.to(device)[colors][:, :, None, None] - 1.0
            x = torch.where(repaint[:, None, None, None], painted, x)
            targets["color"] = torch.where(repaint, colors, targets["color"])
        if self.mirror is not None:
            flip = self._rand(len(idx), generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            coverage = torch.where(flip[:, None, None, None], coverage.flip(-1), coverage)
            targets["position"] = torch.where(flip, self.mirror[targets["position"]], targets["position"])
        if config.degrade > 0:
            x = degrade(x, coverage, config, generator)
        if config.noise_std > 0:
            x = x + config.noise_std * torch.randn(x.shape, generator=generator).to(device)
        return x, targets
