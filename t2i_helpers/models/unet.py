"""The diffusion model's network: a UNet that predicts ``v`` from a noisy image, the time and the caption.

Its blocks, from the bottom up: a residual block whose scale and shift come from the time and the
pooled caption (FiLM), self- and cross-attention to the caption's tokens with a position code in
the queries and keys, and down- and up-sampling between levels, with skip connections from the
encoder to the decoder. ``config`` is a :class:`~t2i_helpers.models.diffusion.DiffusionConfig`.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.errors import T2IError


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)  # 32 groups where the width allows


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features of ``1000 t`` (the transformer position encoding of a real number)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero weights and bias: a residual branch ending here starts as "add nothing"."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """``GN -> SiLU -> conv``, modulated by the (time + caption) embedding, ``GN -> SiLU -> conv``, + skip.

    The embedding sets a per-channel scale and shift after the second norm (FiLM / "scale-shift
    norm" of improved DDPM): a stronger conditioning than adding a bias.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def position_code(h: int, w: int, channels: int, device: torch.device | None = None) -> Tensor:
    """[h*w, channels] fixed 2D sine-cosine code (as in ViT/MAE): a quarter of the channels for
    sin and cos of the row, the other half for the column, at geometric frequencies. Coordinates are
    in units of 1/16 of the image, so a place gets the same code at every UNet resolution."""
    quarter = channels // 4
    freqs = torch.exp(-math.log(100.0) * torch.arange(quarter, device=device) / max(quarter, 1))
    ys = (torch.arange(h, device=device) + 0.5) * (16.0 / h)
    xs = (torch.arange(w, device=device) + 0.5) * (16.0 / w)
    ay, ax = ys[:, None] * freqs, xs[:, None] * freqs  # [h, q], [w, q]
    code_y = torch.cat([ay.sin(), ay.cos()], dim=1)[:, None, :].expand(h, w, 2 * quarter)
    code_x = torch.cat([ax.sin(), ax.cos()], dim=1)[None, :, :].expand(h, w, 2 * quarter)
    code = torch.cat([code_y, code_x], dim=2).reshape(h * w, 4 * quarter)
    return F.pad(code, (0, channels - 4 * quarter))  # channels not divisible by 4: zeros at the end


@lru_cache(maxsize=64)
def cached_position_code(h: int, w: int, channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """:func:`position_code`, computed once per (size, device, dtype) instead of in every forward pass.
    Made outside inference mode, so a table first built while sampling can still be used in training."""
    with torch.inference_mode(False), torch.no_grad():
        return position_code(h, w, channels, device).to(dtype)


class AttentionBlock(nn.Module):
    """Self-attention among pixels, then cross-attention from pixels (queries) to caption tokens.

    ``token_mask`` (True = real token) becomes the attention mask, so padded positions get zero
    weight whatever their states are. Both outputs are zero-initialised residuals. With
    ``position_code`` each pixel's query (and self-attention key) carries its place in the image;
    the residual stream does not.
    """

    def __init__(self, channels: int, context_dim: int, head_dim: int, position_code: bool = False):
        super().__init__()
        self.use_position = position_code
        self.heads = max(1, channels // head_dim)
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out1 = zero_init(nn.Linear(channels, channels))
        self.norm2 = nn.LayerNorm(channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.out2 = zero_init(nn.Linear(channels, channels))

    def _heads(self, x: Tensor) -> Tensor:  # [B, N, C] -> [B, heads, N, C / heads]
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:  # [B, heads, N, C / heads] -> [B, N, C]
        return x.transpose(1, 2).flatten(2)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        if not self.use_position:
            pos = 0.0
        elif torch.compiler.is_compiling():  # a compiled graph holds it as a constant; the cache would only warn
            pos = position_code(h, w, c, x.device).to(seq.dtype)
        else:
            pos = cached_position_code(h, w, c, x.device, seq.dtype)
        normed = self.norm1(seq)
        weight, bias = self.qkv.weight, self.qkv.bias
        q, k = F.linear(normed + pos, weight[: 2 * c], bias[: 2 * c]).chunk(2, dim=-1)  # where + what
        v = F.linear(normed, weight[2 * c:], bias[2 * c:])  # only what
        attn = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        seq = seq + self.out1(self._merge(attn))
        q = self._heads(self.q(self.norm2(seq) + pos))
        k, v = (self._heads(z) for z in self.kv(context).chunk(2, dim=-1))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # [B,1,1,L] broadcast
        seq = seq + self.out2(self._merge(attn))
        return seq.transpose(1, 2).reshape(b, c, h, w)


class Layer(nn.Module):
    """One UNet layer: a residual block, followed by attention at the chosen resolutions."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, config: Any, attention: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, config.dropout)
        self.attn = (AttentionBlock(out_ch, config.context_dim, config.head_dim, config.position_code)
                     if attention else None)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x, context, mask) if self.attn is not None else x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, *cond) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, *cond) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """Predicts ``v`` from ``(x_t, t, pooled caption, caption tokens, token mask)``."""

    def __init__(self, config: Any, text_dim: int):
        super().__init__()
        base, levels, patch = config.base_channels, len(config.channel_mults), config.patch_size
        if config.image_size % (patch * 2 ** (levels - 1)):
            raise T2IError(
                f"DiffusionConfig.image_size {config.image_size} is not divisible by "
                f"patch_size * 2**(levels - 1) = {patch * 2 ** (levels - 1)}"
            )
        emb_dim = 4 * base
        self.base_channels, self.patch_size = base, patch
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.text_mlp = nn.Sequential(nn.Linear(text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.context = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, config.context_dim))
        # patch_size p > 1 (as in Hoogeboom et al. 2023, "simple diffusion"): pixel_unshuffle turns
        # each p x p block into 3 p^2 channels, so every layer runs on p^2 times fewer positions,
        # at some cost in fine detail (the CPU smoke model uses it). pixel_shuffle undoes it at the end.
        self.conv_in = nn.Conv2d(3 * patch * patch, base, 3, padding=1)
        # Where each pixel is, as features: the text's per-channel scale and shift (ResBlock) can then
        # switch on a place, as they switch on a colour. Without it a caption's "top left" has to be
        # turned into a location through the zero padding at the borders, which is learned very slowly.
        grid = config.image_size // patch
        self.position = nn.Parameter(torch.randn(1, base, grid, grid) * 0.02) if config.position_code else None

        # Encoder: remember the width of every output, the decoder concatenates them back (skips).
        self.down = nn.ModuleList()
        ch, res, skips = base, config.image_size // patch, [base]
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                self.down.append(Layer(ch, base * mult, emb_dim, config, res in config.attention_resolutions))
                ch = base * mult
                skips.append(ch)
            if level < levels - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
                res //= 2
        # Middle, at the lowest resolution: always with attention to the caption.
        self.mid = nn.ModuleList([Layer(ch, ch, emb_dim, config, True), Layer(ch, ch, emb_dim, config, False)])
        # Decoder: one more layer per level than the encoder, each eating one skip connection.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for _ in range(config.num_res_blocks + 1):
                attention = res in config.attention_resolutions
                self.up.append(Layer(ch + skips.pop(), base * mult, emb_dim, config, attention))
                ch = base * mult
            if level > 0:
                self.up.append(Upsample(ch))
                res *= 2
        self.norm_out = group_norm(ch)
        self.conv_out = zero_init(nn.Conv2d(ch, 3 * patch * patch, 3, padding=1))  # predicts v = 0 at start

    def encode(self, x: Tensor, t: Tensor, text: Tensor, tokens: Tensor,
               mask: Tensor) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:
        """The encoder half: the bottleneck after the middle layers [B, C, h, w], the skips, and the
        (time + caption) embedding and projected tokens the decoder reuses. The model that also reads
        captions from images (``models/reader.py``) uses the bottleneck alone."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels).to(x.dtype)) + self.text_mlp(text)
        context = self.context(tokens)
        h = self.conv_in(F.pixel_unshuffle(x, self.patch_size))
        if self.position is not None:
            h = h + self.position.to(h.dtype)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb, context, mask)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb, context, mask)
        return h, hs, emb, context

    def forward(self, x: Tensor, t: Tensor, text: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        h, hs, emb, context = self.encode(x, t, text, tokens, mask)
        for layer in self.up:
            if isinstance(layer, Layer):
                h = torch.cat([h, hs.pop()], dim=1)
            h = layer(h, emb, context, mask)
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), self.patch_size)
