"""The diffusion model's second direction: reading the caption back from an image with its own encoder.

Issue 19's "one model trained on both directions". With ``DiffusionConfig.read_weight > 0`` every
training step also runs the UNet's encoder half on the *clean* images, at ``t = 0`` and with the null
caption (so nothing about the caption can leak in through the conditioning). The bottleneck is
flattened (4 x 4 positions at the cpu tier, so the embedding keeps where things are) and tied to the
caption's pooled embedding by the batch's InfoNCE (:func:`~t2i_helpers.models.gan_losses.caption_contrastive`,
the same term as the GAN's multi-task loss). The same weights then draw from text and rank captions
for an image: ``encode_images`` / ``encode_text`` have the contrastive judge's interface, so
:func:`~t2i_helpers.judges.best_captions` and notebook 08's retrieval captioning take the model as it is.

Why it might help the drawing direction: the encoder must separate colour, shape, size and position
in clean images to pick the right caption, and the denoiser reads the same features. Whether it does
is measured in notebook 06 (section 9), not assumed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.data.images import to_float
from t2i_helpers.errors import T2IError
from t2i_helpers.models.gan_losses import caption_contrastive, same_captions


def bottleneck_size(config) -> int:
    """Values in the UNet's flattened bottleneck: channels x side^2 of its lowest level."""
    levels = len(config.channel_mults)
    side = config.image_size // config.patch_size // 2 ** (levels - 1)
    return config.base_channels * config.channel_mults[-1] * side * side


class CaptionReader(nn.Module):
    """Two linear maps into one ``dim``-wide space: the flattened bottleneck, and the pooled caption."""

    def __init__(self, feature_dim: int, text_dim: int, dim: int):
        super().__init__()
        self.image = nn.Linear(feature_dim, dim)
        self.text = nn.Linear(text_dim, dim)


class ReadsCaptions:
    """The image-to-text half of :class:`~t2i_helpers.models.diffusion.TextDiffusion` (a mixin: it uses
    the model's ``unet``, ``reader``, ``null_condition`` and ``config``)."""

    def image_features(self, images: np.ndarray | Tensor) -> Tensor:
        """The flattened bottleneck of clean images (uint8 HWC arrays or floats in [-1, 1]) at t = 0."""
        x = to_float(images).to(self.null_text)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        text, tokens, mask = self.null_condition(x.shape[0], 1)
        h, *_ = self.unet.encode(x, torch.zeros(x.shape[0], device=x.device), text, tokens, mask)
        return h.flatten(1)

    def require_reader(self) -> nn.Module:
        if self.reader is None:
            raise T2IError("this diffusion model was trained without read_weight, so it cannot read captions "
                           "from images; train one with `train --model diffusion --read 0.5`")
        return self.reader

    def encode_images(self, images: np.ndarray | Tensor) -> Tensor:
        """Unit-length image embeddings [B, read_dim] (the contrastive judge's interface)."""
        reader = self.require_reader()
        with torch.no_grad():
            return F.normalize(reader.image(self.image_features(images)).float(), dim=-1)

    def encode_text(self, pooled: Tensor) -> Tensor:
        """Unit-length caption embeddings [B, read_dim] from pooled text-encoder vectors."""
        reader = self.require_reader()
        with torch.no_grad():
            return F.normalize(reader.text(pooled.to(self.null_text)).float(), dim=-1)

    def read_loss(self, x0: Tensor, text: Tensor) -> Tensor:
        """InfoNCE between the clean images' bottlenecks and their captions (identical captions excluded)."""
        reader = self.require_reader()
        image = reader.image(self.image_features(x0))
        return caption_contrastive(image, reader.text(text.to(image.dtype)), same_captions(text),
                                   self.config.read_temperature)
