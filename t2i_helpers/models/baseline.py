"""The reference baseline, fixed: caption embedding -> Linear -> two transposed convolutions -> Tanh, MSE.

Same architecture as :mod:`t2i_helpers.models.reference`, with its defects removed:
``image_size`` is stored on the module, the text encoder is frozen and its (padding-free, mean-pooled)
caption embeddings come precomputed in each :class:`~t2i_helpers.models.base.Batch`, and only the
decoder is optimised. It still regresses, so it still draws the *average* image of a caption: that
is the lesson of notebook 03 and the reason notebook 04 exists.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.data.batch import Batch
from t2i_helpers.models.base import T2IModel


@dataclass
class BaselineConfig:
    image_size: int = 64  # must be divisible by 4: two stride-2 upsamplings from image_size / 4
    fc_channels: int = 128  # channels of the feature map the Linear layer produces
    hidden_channels: int = 64  # channels between the two upsamplings
    upsample: str = "transposed"  # "transposed" (the reference) or "resize_conv" (no checkerboard)
    lr: float = 2e-4  # Adam's learning rate (the reference's; the engine's --lr overrides it)

    @classmethod
    def smoke(cls) -> "BaselineConfig":
        return cls(image_size=64, fc_channels=16, hidden_channels=8)

    @classmethod
    def cpu(cls) -> "BaselineConfig":
        """The cpu tier's: 32 px, the reference's layout at a quarter of its width; a larger step size,
        so that 3,000 steps of batch 32 reach the conditional mean."""
        return cls(image_size=32, fc_channels=64, hidden_channels=32, lr=1e-3)

    def optimizer_settings(self) -> dict[str, dict]:
        return {"main": {"lr": self.lr, "betas": (0.9, 0.999)}}


def _upsample(in_ch: int, out_ch: int, mode: str) -> nn.Module:
    if mode == "transposed":
        # kernel 4, stride 2, padding 1 exactly doubles H and W: out = (in - 1) * 2 - 2 + 4 = 2 * in.
        return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)
    if mode == "resize_conv":
        # Odena et al. (2016): nearest upsampling then a 3x3 conv gives every output pixel the same
        # number of kernel taps, so there is no checkerboard pattern.
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1))
    raise ValueError(f"upsample must be 'transposed' or 'resize_conv', got {mode!r}")


class ImageDecoder(nn.Module):
    """The reference decoder: Linear -> [C, S/4, S/4] -> up x2 -> ReLU -> up x2 -> Tanh."""

    def __init__(self, text_dim: int, config: BaselineConfig | None = None):
        super().__init__()
        config = config or BaselineConfig()
        if config.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {config.image_size}")
        self.image_size = config.image_size  # the reference forgot this (its DEFECT 1)
        self.fc_channels = config.fc_channels
        side = config.image_size // 4
        self.fc = nn.Linear(text_dim, config.fc_channels * side * side)
        self.deconv = nn.Sequential(
            _upsample(config.fc_channels, config.hidden_channels, config.upsample),
            nn.ReLU(),
            _upsample(config.hidden_channels, 3, config.upsample),
            nn.Tanh(),
        )

    def forward(self, text_features: Tensor) -> Tensor:
        side = self.image_size // 4
        x = self.fc(text_features).view(-1, self.fc_channels, side, side)
        return self.deconv(x)


class TextToImageModel(T2IModel):
    """Frozen text encoder (its embeddings arrive cached in the batch) + :class:`ImageDecoder`, MSE loss."""

    family = "baseline"

    def __init__(self, config: BaselineConfig | None, text_dim: int):
        super().__init__()
        self.config = config or BaselineConfig()
        self.decoder = ImageDecoder(text_dim, self.config)

    def training_losses(self, batch: Batch, phase: str = "main") -> dict[str, Tensor]:
        prediction = self.decoder(batch.text)
        # Plain pixel MSE (the reference calls it "contrastive"; it is regression to the mean image).
        loss = F.mse_loss(prediction.float(), batch.images.float())
        return {"loss": loss}

    @torch.no_grad()
    def generate(self, text: Tensor, tokens=None, token_mask=None, generator=None, **options) -> Tensor:
        # Deterministic: a regressor has no noise input, so every sample of a caption is the same image.
        return self.decoder(text).clamp(-1, 1)
