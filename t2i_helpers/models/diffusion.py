"""A small text-conditional diffusion model: UNet + flow matching (or v-prediction) + guidance.

Training (one step, ``objective="flow"``, every tier's default): take clean images ``x0``, draw a
time ``t`` in [0, 1] and Gaussian noise ``eps``, put them on the straight line
``x_t = (1 - t) x0 + t eps`` and ask the UNet for its velocity ``u = eps - x0`` with a plain MSE
(Lipman et al. 2023; Liu et al. 2023). Sampling starts from pure noise at ``t = 1`` and walks to
``t = 0`` in Euler steps along the predicted velocity (the deterministic DDIM update, written for
this path), any number of steps. The first design, ``objective="v"``, mixes
``x_t = alpha_t x0 + sigma_t eps`` on a cosine schedule and predicts ``v = alpha_t eps - sigma_t x0``
(Salimans & Ho, 2022), sampled with DDIM (Song et al., 2021); old runs keep it.

Design choices, and why:

* **Flow matching, t logit-normal around logit 1** (Esser et al., 2024): at an equal 10-minute
  budget on the cpu tier it beat the v-objective on val and on held-out pairs, with three seeds each
  (docs/cpu-tier.md, rows B and I). Drawing ``t = sigmoid(1 + n)`` trains more at high noise, where
  the layout is decided: centred at 0 the same model never learned where to put the object.
* **The v-objective** (``objective="v"``): a continuous-time cosine schedule (Nichol & Dhariwal,
  2021); v-prediction, well defined at both ends, so the schedule can reach pure noise (Lin et al.
  2024); and Min-SNR-gamma weighting with a floor (Hang et al., 2023): the weight of the x0 error is
  ``clamp(SNR, floor, gamma)``, and ``t = 1 - (1 - u)^2`` draws high noise more often. Without the
  floor and the power, that model learned colour, shape and size but placed the object at random.
* **Two routes for the caption**: the pooled sentence embedding is added to the timestep embedding
  (like a class label: global content, e.g. "a red circle") and the per-token states are read
  by cross-attention at low resolutions (which word goes where), masked so padding is ignored.
* **Classifier-free guidance** (Ho & Salimans, 2021): 10 % of training captions are replaced by a
  learned "null" caption, so the same network also predicts unconditionally; at sampling
  ``v = v_uncond + w (v_cond - v_uncond)`` with ``w > 1`` trades variety for caption fidelity.
  Both predictions come from one batched forward pass.
* **Stable start**: GroupNorm + SiLU residual blocks whose last conv is zero-initialised, and
  zero-initialised attention outputs, so every block starts as the identity.
* **Pixel patches** (Hoogeboom et al. 2023, "simple diffusion"): the 64 px model runs on 2x2 blocks,
  a 32x32 grid, so a step costs about a quarter of the FLOPs.
* **The network knows where each pixel is** (``position_code``): a learned position embedding after
  the first convolution and a sine-cosine code in the attention queries and keys. Colour and shape
  look the same everywhere, so the caption's per-channel scale and shift can produce them anywhere;
  "in the top left corner" needs features that differ by place (convolutions otherwise sense place
  only through the zero padding at the borders). It is cheap; where t is drawn matters more.

The measurements behind these choices: docs/measurements.md and docs/cpu-tier.md.

Parameter counts with a 384-d text encoder (checked in ``tests/test_diffusion.py``):
``DiffusionConfig()`` (64 px) 24.0 M; ``DiffusionConfig.smoke()`` (32 px) 0.26 M.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from t2i_helpers.data.batch import Batch
from t2i_helpers.errors import T2IError
from t2i_helpers.models.base import T2IModel, training_images
from t2i_helpers.models.reader import CaptionReader, ReadsCaptions, bottleneck_size
from t2i_helpers.models.unet import UNet


@dataclass
class DiffusionConfig:
    image_size: int = 64  # must be divisible by patch_size * 2 ** (len(channel_mults) - 1)
    # >1: the UNet works on (patch x patch) pixel blocks stacked into channels. 2 at 64 px: 4.1 GFLOP
    # per forward pass instead of 15.4 (torch's FLOP counter) at about the same parameter count.
    patch_size: int = 2
    base_channels: int = 64  # channels at the first UNet level
    channel_mults: tuple[int, ...] = (1, 2, 3, 4)  # one UNet level per entry, halving the resolution
    num_res_blocks: int = 2  # residual blocks per level (the decoder has one more, for the skip)
    attention_resolutions: tuple[int, ...] = (16, 8)  # self- + cross-attention at these UNet sizes
    head_dim: int = 32  # channels per attention head
    context_dim: int = 256  # token states are projected to this width for cross-attention
    dropout: float = 0.1  # inside residual blocks: small data sets overfit without it
    cond_dropout: float = 0.1  # fraction of training captions replaced by the null caption (CFG)
    # Tell the UNet where each pixel is: a learned position embedding after the first convolution and
    # a fixed sine-cosine code in the attention queries and keys (see "The network knows where").
    position_code: bool = True
    min_snr_gamma: float = 5.0  # Min-SNR-gamma loss weighting; 0 gives the plain v-MSE
    snr_floor: float = 1.0  # ... and a floor: the x0-weight is clamp(SNR, floor, gamma); 0 = plain Min-SNR
    time_power: float = 2.0  # t = 1 - (1 - u)^p: p > 1 trains more often at high noise, where layout is decided
    # "flow" (every tier's default): rectified flow / flow matching (Lipman et al. 2023, Liu et al.
    # 2023): x_t = (1 - t) x0 + t eps on a straight line, the UNet predicts the velocity eps - x0 with
    # a plain MSE, and t = sigmoid(logit_mean + logit_std n), n ~ N(0, 1) ("logit-normal", Esser et
    # al. 2024), centred at logit 1: more training at high noise. "v": the cosine schedule with
    # v-prediction (above); the loss weighting and time_power are for "v" only.
    objective: str = "flow"
    logit_mean: float = 1.0
    logit_std: float = 1.0
    # > 0: the model also learns the other direction, image -> caption, with its own encoder (models/reader.py).
    read_weight: float = 0.0
    read_dim: int = 64
    read_temperature: float = 0.1
    lr: float = 2e-4  # suggested Adam learning rate (the engine's --lr overrides it)
    guidance: float = 3.0  # the sampler's classifier-free guidance when a caller names none

    # config.json files written before a field existed: what the run that wrote them really used.
    MISSING_MEANS: ClassVar[dict] = {"position_code": False, "snr_floor": 0.0, "time_power": 1.0, "objective": "v",
                                     "logit_mean": 0.0}
    OBJECTIVES: ClassVar[tuple[str, ...]] = ("v", "flow")

    def __post_init__(self) -> None:
        if self.objective not in self.OBJECTIVES:
            raise T2IError(f"DiffusionConfig.objective must be one of {self.OBJECTIVES}, got {self.objective!r}")

    @classmethod
    def smoke(cls) -> "DiffusionConfig":
        """A tiny CPU variant (< 1 M parameters) for smoke runs: 4x4 patches turn a 32px image into an
        8x8 grid, 16x cheaper per layer than full resolution, and two levels (8x8, 4x4) suffice."""
        return cls(
            image_size=32,
            patch_size=4,
            base_channels=16,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(4,),
            head_dim=16,
            context_dim=32,
            dropout=0.0,
        )

    @classmethod
    def cpu(cls) -> "DiffusionConfig":
        """The cpu tier's: 32 px on 2x2 patches (a 16x16 grid), three levels (16, 8, 4), attention at 4.

        1.4 M parameters, designed for 2 cores: at an equal time budget more steps matter more than
        width (the ablation: docs/cpu-tier.md).
        """
        return cls(
            image_size=32,
            patch_size=2,
            base_channels=32,
            channel_mults=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(4,),
            head_dim=32,
            context_dim=128,
            dropout=0.0,
            lr=1e-3,
            guidance=2.0,
        )

    def optimizer_settings(self) -> dict[str, dict]:
        return {"main": {"lr": self.lr, "betas": (0.9, 0.999)}}


# --------------------------------------------------------------------------------------------------
# Noise schedule (continuous time, variance preserving: alpha^2 + sigma^2 = 1)
# --------------------------------------------------------------------------------------------------

COSINE_OFFSET = 0.008  # Nichol & Dhariwal's s: keeps the noise at t = 0 from being vanishingly small


def alpha_bar(t: Tensor, s: float = COSINE_OFFSET) -> Tensor:
    """Cosine schedule ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos^2(pi/2 (t + s) / (1 + s))``; 1 at t=0, 0 at t=1."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (f / math.cos(s / (1 + s) * math.pi / 2) ** 2).clamp(0.0, 1.0)


def alpha_sigma(t: Tensor) -> tuple[Tensor, Tensor]:
    """Signal and noise scales at time ``t``: ``x_t = alpha x0 + sigma eps``."""
    ab = alpha_bar(t)
    return ab.sqrt(), (1 - ab).sqrt()


def path_scales(t: Tensor, objective: str = "v") -> tuple[Tensor, Tensor]:
    """``x_t = a x0 + s eps``: the cosine schedule's ``(alpha, sigma)`` for "v", the straight line
    ``(1 - t, t)`` of rectified flow for "flow"."""
    return (1 - t, t) if objective == "flow" else alpha_sigma(t)


def split_prediction(x: Tensor, pred: Tensor, a, s, objective: str = "v") -> tuple[Tensor, Tensor]:
    """The network's output at ``x_t = a x0 + s eps`` turned into ``(x0, eps)``.

    "v": ``v = a eps - s x0``, so ``x0 = a x - s v`` and ``eps = s x + a v`` (uses a^2 + s^2 = 1).
    "flow": ``u = eps - x0`` with ``a = 1 - s``, so ``x0 = x - s u`` and ``eps = x + a u``.
    """
    if objective == "flow":
        return x - s * pred, x + a * pred
    return a * x - s * pred, s * x + a * pred


def _expand(t: Tensor) -> Tensor:
    return t.view(-1, 1, 1, 1)



# --------------------------------------------------------------------------------------------------
# The model the engine trains
# --------------------------------------------------------------------------------------------------

def apply_dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding: per sample, ``s`` = the ``percentile`` of ``|x0|`` (at least 1);
    clip to [-s, s] and divide by ``s``. Unlike a plain clip it keeps detail in saturated
    regions, which matters at high guidance. It also shrinks every pixel whenever some overshoot,
    which washes out Shapes' flat, saturated palette colours, so the sampler clips by default."""
    s = torch.quantile(x0.flatten(1).abs().float(), percentile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = _expand(s)
    return x0.clamp(-s, s) / s


class TextDiffusion(ReadsCaptions, T2IModel):
    """Text-to-image diffusion: :class:`UNet` predicting v, trained with caption dropout for CFG
    (and, with ``read_weight``, reading captions back from images: :class:`ReadsCaptions`)."""

    family = "diffusion"
    uses_tokens = True

    def __init__(self, config: DiffusionConfig | None, text_dim: int):
        super().__init__()
        self.config = config or DiffusionConfig()
        self.text_dim = text_dim
        self.unet = UNet(self.config, text_dim)
        # The "no caption" input for classifier-free guidance, learned like any other embedding.
        self.null_text = nn.Parameter(torch.zeros(text_dim))
        self.null_token = nn.Parameter(torch.randn(text_dim) * 0.02)
        c = self.config
        self.reader = CaptionReader(bottleneck_size(c), text_dim, c.read_dim) if c.read_weight > 0 else None

    # ---- conditioning -----------------------------------------------------------------------------

    def condition(
        self, text: Tensor, tokens: Tensor | None, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Cast to the model's dtype and fill defaults: no tokens -> the pooled embedding as one token."""
        text = text.to(self.null_text)
        if tokens is None:
            tokens, mask = text[:, None, :], None
        tokens = tokens.to(self.null_text)  # cached token states are float16
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        mask = mask.to(device=tokens.device, dtype=torch.bool)
        # A row without any real token would make attention divide by zero: let it see position 0.
        mask = mask.clone()
        mask[:, 0] |= ~mask.any(dim=1)
        return text, tokens, mask

    def null_condition(self, batch_size: int, length: int) -> tuple[Tensor, Tensor, Tensor]:
        """The unconditional input: null embedding, and a sequence whose only real token is the null token."""
        text = self.null_text.expand(batch_size, -1)
        tokens = self.null_token.expand(batch_size, length, -1)
        mask = torch.zeros(batch_size, length, dtype=torch.bool, device=tokens.device)
        mask[:, 0] = True
        return text, tokens, mask

    def drop_captions(
        self, text: Tensor, tokens: Tensor, mask: Tensor, drop: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Replace the captions where ``drop`` [B] is True by the null condition."""
        null_text, null_tokens, null_mask = self.null_condition(text.shape[0], tokens.shape[1])
        text = torch.where(drop[:, None], null_text, text)
        tokens = torch.where(drop[:, None, None], null_tokens, tokens)
        mask = torch.where(drop[:, None], null_mask, mask)
        return text, tokens, mask

    # ---- training ---------------------------------------------------------------------------------

    def diffusion_loss(
        self, x0: Tensor, t: Tensor, noise: Tensor, text: Tensor, tokens: Tensor, mask: Tensor
    ) -> dict[str, Tensor]:
        """The loss for given ``t`` and ``noise`` (deterministic: what :meth:`training_losses` samples)."""
        flow = self.config.objective == "flow"
        a, s = (_expand(z).to(x0.dtype) for z in path_scales(t, self.config.objective))
        x_t = a * x0 + s * noise
        target = noise - x0 if flow else a * noise - s * x0  # the velocity of the path
        pred = self.unet(x_t, t, text, tokens, mask)
        mse = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # [B]
        if flow:
            weight = torch.ones_like(mse)
        elif self.config.min_snr_gamma > 0:
            # clamp(SNR, floor, gamma) / (SNR + 1) with SNR = alpha^2 / sigma^2, written without dividing by 0.
            a2, s2 = a.flatten().float() ** 2, s.flatten().float() ** 2
            weight = torch.minimum(a2, self.config.min_snr_gamma * s2)
            weight = torch.maximum(weight, self.config.snr_floor * s2)
        else:
            weight = torch.ones_like(mse)
        return {"loss": (weight * mse).mean(), "mse_v": mse.mean().detach()}

    def training_losses(self, batch: Batch, phase: str = "main") -> dict[str, Tensor]:
        x0 = training_images(batch, self.config.image_size, self.null_text.dtype)
        text, tokens, mask = self.condition(batch.text, batch.tokens, batch.token_mask)
        b = x0.shape[0]
        drop = torch.rand(b, device=x0.device) < self.config.cond_dropout
        text, tokens, mask = self.drop_captions(text, tokens, mask, drop)
        # Stratified times: one uniform draw per 1/B slice of [0, 1], shuffled. Same distribution
        # as t ~ U(0, 1) but every batch covers all noise levels, so the loss is less noisy.
        u = (torch.rand((), device=x0.device) + torch.arange(b, device=x0.device) / b) % 1.0
        if self.config.objective == "flow":  # logit-normal: the normal's quantiles of the stratified u
            n = torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6))
            t = torch.sigmoid(self.config.logit_mean + self.config.logit_std * n)
        else:
            t = 1.0 - (1.0 - u) ** self.config.time_power  # power > 1: more of them at high noise
        t = t[torch.randperm(b, device=x0.device)]
        losses = self.diffusion_loss(x0, t, torch.randn_like(x0), text, tokens, mask)
        losses["dropped"] = drop.float().mean()
        if self.reader is not None:  # the other direction: which of the batch's captions is this image's?
            read = self.read_loss(x0, batch.text)
            losses["loss"], losses["read"] = losses["loss"] + self.config.read_weight * read, read.detach()
        return losses

    # ---- sampling ---------------------------------------------------------------------------------

    def guided_v(self, x: Tensor, t: Tensor, text: Tensor, tokens: Tensor, mask: Tensor, guidance: float) -> Tensor:
        """Classifier-free guided prediction ``v_u + w (v_c - v_u)`` from one batched forward pass.

        v is linear in eps and x0 for a fixed ``x_t``, so guiding v is the same as guiding eps.
        """
        if guidance == 1.0:  # the unconditional half would be multiplied by zero: skip it
            return self.unet(x, t, text, tokens, mask)
        null_text, null_tokens, null_mask = self.null_condition(x.shape[0], tokens.shape[1])
        v = self.unet(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([text, null_text]),
            torch.cat([tokens, null_tokens]),
            torch.cat([mask, null_mask]),
        )
        v_cond, v_uncond = v.chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    @staticmethod
    def ddim_step(
        x: Tensor,
        v: Tensor,
        t: float,
        s: float,
        eta: float = 0.0,
        noise: Tensor | None = None,
        clip_denoised: bool = True,
        threshold: float | None = None,
        objective: str = "v",
    ) -> Tensor:
        """Move ``x`` from time ``t`` to an earlier time ``s`` (DDIM, Song et al. 2021, eq. 12).

        Estimate ``x0`` and ``eps`` from ``v``, optionally keep ``x0`` in [-1, 1], then re-noise
        ``x0`` to level ``s`` with the *predicted* noise (``eta = 0``: deterministic) or partly fresh
        noise (``eta = 1``: the DDPM posterior). For "flow" the same update is an Euler step along
        the predicted velocity, ``x + (s - t) u`` when nothing is clipped; it has no ``eta``.
        """
        if objective == "flow" and eta > 0:
            raise T2IError("eta > 0 is the DDPM posterior of the 'v' objective; a flow model samples with eta = 0")
        a_t, s_t = (float(z) for z in path_scales(torch.tensor(float(t), dtype=torch.float64), objective))
        a_s, s_s = (float(z) for z in path_scales(torch.tensor(float(s), dtype=torch.float64), objective))
        x0, eps = split_prediction(x, v, a_t, s_t, objective)
        if threshold is not None or clip_denoised:
            x0 = apply_dynamic_threshold(x0, threshold) if threshold is not None else x0.clamp(-1, 1)
            eps = (x - a_t * x0) / s_t  # the noise consistent with the corrected x0 (s_t > 0 for t > 0)
        sigma = eta * (s_s / s_t) * math.sqrt(max(0.0, 1 - (a_t / a_s) ** 2))
        x = a_s * x0 + math.sqrt(max(0.0, s_s**2 - sigma**2)) * eps
        if eta > 0:
            x = x + sigma * noise
        return x

    @torch.no_grad()
    def generate(
        self,
        text: Tensor,
        tokens: Tensor | None = None,
        token_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        guidance: float | None = None,
        steps: int = 25,
        eta: float = 0.0,
        clip_denoised: bool = True,
        dynamic_threshold: float | None = None,
        guidance_from: float = 0.0,
        **options,
    ) -> Tensor:
        """Sample one image per caption with ``steps`` DDIM steps from t = 1 to t = 0.

        ``generator`` draws every random number on its own device (a CPU ``torch.Generator`` gives
        the same images for a seed on any device: noise is drawn on the CPU and then moved).
        ``guidance``: CFG weight (1 = conditional only, 0 = unconditional; None = the config's).
        ``eta``: 0 deterministic DDIM, 1 DDPM-like. ``clip_denoised`` clips each x0 estimate to
        [-1, 1]; ``dynamic_threshold`` (e.g. 0.995) uses Imagen's percentile thresholding instead.
        ``guidance_from``: guide only while ``t > guidance_from`` and sample the rest conditionally
        (guidance in a limited interval, Kynkaanniemi et al. 2024): at low noise the layout is
        settled. On the cpu tier it lowered the speckle a little and cost accuracy (docs/cpu-tier.md).
        """
        if options:
            raise TypeError(f"TextDiffusion.generate got unknown options {sorted(options)}")
        if steps < 1:
            raise T2IError(f"steps must be at least 1, got {steps}")
        guidance = self.config.guidance if guidance is None else guidance
        text, tokens, mask = self.condition(text, tokens, token_mask)
        b, size = text.shape[0], self.config.image_size
        shape = (b, 3, size, size)
        noise_device = generator.device if generator is not None else text.device
        x = torch.randn(shape, generator=generator, device=noise_device).to(text)
        times = torch.linspace(1.0, 0.0, steps + 1).tolist()
        for t, s in zip(times[:-1], times[1:]):
            w = guidance if t > guidance_from else 1.0
            v = self.guided_v(x, torch.full((b,), t, device=x.device, dtype=x.dtype), text, tokens, mask, w)
            noise = torch.randn(shape, generator=generator, device=noise_device).to(x) if eta > 0 else None
            x = self.ddim_step(x, v, t, s, eta, noise, clip_denoised, dynamic_threshold, self.config.objective)
        return x.clamp(-1, 1)
