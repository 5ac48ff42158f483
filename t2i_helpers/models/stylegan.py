"""A StyleGAN2-style generator conditioned on the caption, trained against the conditional GAN's discriminator.

The seed names "StyleGAN-style decoders" as an optimization idea. StyleGAN (Karras et al. 2019, 2020)
changes *how the generator is conditioned*, not what it is trained against, so this family keeps the
DF-GAN-style discriminator, its matching-aware hinge loss, MA-GP and DiffAugment
(:mod:`t2i_helpers.models.gan`) and replaces the generator:

* a **mapping network** turns ``[normalised z, projected caption]`` into a style vector ``w``;
* the image starts from a **learned constant** 4x4 map, not from ``z``;
* every convolution is **modulated** by its own copy of ``w`` (the style scales the input channels of
  the weights) and **demodulated** (each output channel rescaled to unit norm), which keeps the
  activations' scale in check without normalising the features;
* **per-layer noise** (a learned strength times fresh Gaussian noise) supplies the stochastic detail,
  so ``w`` need not;
* **style mixing**: in training, part of the batch switches to the ``w`` of a second ``z`` at a random
  layer, so neighbouring layers cannot rely on sharing one style. It is also what lets a figure
  take the coarse layers from one sample and the fine ones from another.

At sampling time the **truncation trick** pulls ``w`` towards the caption's mean style,
``w_mean + psi (w - w_mean)``: ``psi < 1`` trades variety for fidelity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.errors import T2IError
from t2i_helpers.models.gan import ConditionalGAN, GANConfig


@dataclass
class StyleGANConfig(GANConfig):
    """:class:`GANConfig` (its discriminator and losses) plus the style generator's sizes."""

    w_dim: int = 256  # the style vector
    mapping_layers: int = 4  # StyleGAN uses 8; the captions of this course carry little to map
    style_mixing: float = 0.9  # share of training batches that mix two styles (StyleGAN2's 0.9)
    mapping_lr_mul: float = 0.01  # the mapping network learns 100x slower (StyleGAN's lr multiplier)
    # Every generator layer has an equalised learning rate (weights scaled by 1/sqrt(fan_in) at run
    # time), so under Adam it moves about sqrt(fan_in) times slower than a plain layer at the same lr:
    # StyleGAN2 trains G at 0.002, not DF-GAN's 1e-4 (which left the shipped run's colours at chance).
    lr_g: float = 2e-3

    @classmethod
    def smoke(cls) -> "StyleGANConfig":
        """Sized for CI speed, like ``GANConfig.smoke()``: 16 px, 4 channels, no MA-GP."""
        return cls(image_size=16, noise_dim=16, gen_channels=4, disc_channels=4, disc_text_dim=32, ma_gp_weight=0.0,
                   w_dim=32, mapping_layers=2)

    @classmethod
    def cpu(cls) -> "StyleGANConfig":
        """The cpu tier's: 32 px, the widths of ``GANConfig.cpu()``."""
        return cls(image_size=32, noise_dim=64, gen_channels=16, disc_channels=16, disc_text_dim=64, w_dim=128)


class EqualLinear(nn.Module):
    """A linear layer whose weights are scaled at run time by ``lr_mul / sqrt(fan_in)`` ("equalised
    learning rate"): every layer then learns at the same pace under Adam, whatever its width."""

    def __init__(self, n_in: int, n_out: int, bias_init: float = 0.0, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((n_out,), float(bias_init)))
        self.scale, self.lr_mul = lr_mul / math.sqrt(n_in), lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class MappingNetwork(nn.Module):
    """``(z, caption) -> w``: z is normalised to unit mean square (StyleGAN's pixel norm), the caption
    embedding projected to ``w_dim``, and an MLP maps their concatenation to the style."""

    def __init__(self, config: StyleGANConfig, text_dim: int):
        super().__init__()
        self.text = EqualLinear(text_dim, config.w_dim)
        dims = [config.noise_dim + config.w_dim] + [config.w_dim] * config.mapping_layers
        self.layers = nn.ModuleList(EqualLinear(a, b, lr_mul=config.mapping_lr_mul) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, z: Tensor, text: Tensor) -> Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)
        h = torch.cat([z, self.text(text)], dim=1)
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.2) * math.sqrt(2)  # the gain keeps the variance per layer
        return h


class ModulatedConv(nn.Module):
    """StyleGAN2's convolution: the style scales the weights' input channels, then each output channel's
    weights are rescaled to unit norm (demodulation). One grouped convolution for the whole batch."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, kernel: int = 3, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # the style starts at 1: plain convolution
        self.scale, self.demodulate, self.out_ch = 1 / math.sqrt(in_ch * kernel * kernel), demodulate, out_ch

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        b, c, h, wd = x.shape
        style = self.affine(w)  # [B, in]
        weight = self.weight[None] * self.scale * style[:, None, :, None, None]  # [B, out, in, k, k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        k = weight.shape[-1]
        out = F.conv2d(x.reshape(1, b * c, h, wd), weight.reshape(b * self.out_ch, c, k, k), padding=k // 2, groups=b)
        return out.reshape(b, self.out_ch, h, wd)


class StyleLayer(nn.Module):
    """Modulated 3x3 convolution, then per-pixel noise with a learned strength, a bias and LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(in_ch, out_ch, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))  # starts without noise
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        x = self.conv(x, w) + self.noise_strength * noise
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)


def layer_channels(config: StyleGANConfig) -> list[int]:
    """Channels from 4x4 up to ``image_size``: ``gen_channels * min(2**i, 8)``, widest at 4x4 (as DF-GAN's)."""
    if config.image_size not in (16, 32, 64, 128):
        raise T2IError(f"StyleGANConfig.image_size must be 16, 32, 64 or 128, got {config.image_size}")
    n = int(math.log2(config.image_size)) - 2
    return [config.gen_channels * min(2**i, 8) for i in range(n + 1)][::-1]


class StyleGenerator(nn.Module):
    """``(z, caption) -> image``: mapping network, learned constant, modulated layers, RGB skips."""

    def __init__(self, config: StyleGANConfig, text_dim: int):
        super().__init__()
        self.config = config
        chans = layer_channels(config)
        self.mapping = MappingNetwork(config, text_dim)
        self.const = nn.Parameter(torch.randn(1, chans[0], 4, 4))
        self.layers = nn.ModuleList([StyleLayer(chans[0], chans[0], config.w_dim)])
        for cin, cout in zip(chans[:-1], chans[1:]):  # two layers per resolution after the first
            self.layers.extend([StyleLayer(cin, cout, config.w_dim), StyleLayer(cout, cout, config.w_dim)])
        self.to_rgb = nn.ModuleList(ModulatedConv(c, 3, config.w_dim, kernel=1, demodulate=False) for c in chans)

    @property
    def num_ws(self) -> int:
        """How many copies of ``w`` one image uses: one per layer (each RGB output reads its layer's)."""
        return len(self.layers)

    def styles(self, z: Tensor, text: Tensor, mix: float = 0.0) -> Tensor:
        """``w`` for every layer, [B, num_ws, w_dim]; with probability ``mix`` per image, the layers from a
        random crossover on take the ``w`` of a second, fresh ``z`` (style-mixing regularisation)."""
        w = self.mapping(z, text)[:, None].expand(-1, self.num_ws, -1)
        if mix <= 0:
            return w
        w2 = self.mapping(torch.randn_like(z), text)[:, None].expand(-1, self.num_ws, -1)
        cut = torch.randint(1, self.num_ws, (z.shape[0], 1, 1), device=z.device)
        mixed = torch.rand(z.shape[0], 1, 1, device=z.device) < mix
        second = (torch.arange(self.num_ws, device=z.device)[None, :, None] >= cut) & mixed
        return torch.where(second, w2, w)

    def synthesis(self, ws: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The image for per-layer styles ``ws`` [B, num_ws, w_dim]; ``generator`` draws the noise (on the CPU)."""
        b = ws.shape[0]
        x = self.const.expand(b, -1, -1, -1)
        rgb, i = None, 0
        for level, to_rgb in enumerate(self.to_rgb):
            if level:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
                rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
            for _ in range(1 if level == 0 else 2):
                noise = torch.randn(b, 1, *x.shape[2:], generator=generator,
                                    device="cpu" if generator is not None else x.device).to(x)
                x = self.layers[i](x, ws[:, i], noise)
                i += 1
            out = to_rgb(x, ws[:, i - 1])
            rgb = out if rgb is None else rgb + out
        return torch.tanh(rgb)

    def forward(self, z: Tensor, text: Tensor) -> Tensor:
        mix = self.config.style_mixing if self.training else 0.0
        return self.synthesis(self.styles(z, text, mix))


class StyleGAN(ConditionalGAN):
    """The conditional GAN with :class:`StyleGenerator`: same discriminator, losses and phases ("d", "g")."""

    family = "stylegan"

    def __init__(self, config: StyleGANConfig | None, text_dim: int):
        super().__init__(config or StyleGANConfig(), text_dim)
        self.generator = StyleGenerator(self.config, text_dim)

    @torch.no_grad()
    def mean_style(self, text: Tensor, n: int = 256, seed: int = 0) -> Tensor:
        """Each caption's mean ``w`` over ``n`` draws of z, [B, w_dim]: the centre the truncation trick pulls to."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.config.noise_dim, generator=g).to(text)
        return torch.stack([self.generator.mapping(z, row.expand(n, -1)).mean(dim=0) for row in text])

    @torch.no_grad()
    def generate(self, text: Tensor, tokens: Tensor | None = None, token_mask: Tensor | None = None,
                 generator: torch.Generator | None = None, noise: Tensor | None = None, psi: float = 1.0,
                 styles: Tensor | None = None, **options) -> Tensor:
        """One image per caption. ``psi`` < 1 truncates ``w`` towards the caption's mean style; ``styles``
        [B, num_ws, w_dim] draws given per-layer styles (style mixing figures); ``noise`` overrides z."""
        if options:
            raise TypeError(f"StyleGAN.generate got unknown options {sorted(options)}")
        text = text.to(self.anchor)
        if styles is None:
            z = self.sample_noise(text.shape[0], generator) if noise is None else noise.to(text)
            styles = self.generator.styles(z, text)
            if psi != 1.0:
                centre = self.mean_style(text)[:, None]
                styles = centre + psi * (styles - centre)
        return self.generator.synthesis(styles.to(text), generator).float().clamp(-1, 1)
