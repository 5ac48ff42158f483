"""A one-stage conditional GAN in the spirit of DF-GAN (Tao et al., CVPR 2022), small enough to read.

The generator turns noise ``z`` into an image through a stack of up-sampling blocks. Every block
*fuses* the caption into the feature maps with text-conditioned affine transformations (DF-GAN's
"deep fusion" block): two small MLPs read ``[z, sentence embedding]`` and predict a per-channel scale
and shift, applied to the features directly (no normalisation, as in DF-GAN). Because the caption
enters every block, not only the first layer, the text keeps steering the image at every resolution.

The discriminator judges *(image, caption) pairs*. A convolutional trunk reduces the image to a
4x4 feature map, the (projected) sentence embedding is tiled over those 4x4 positions and
concatenated, and a small head outputs one logit. It is trained with the matching-aware hinge loss:

* real image + its own caption      -> real
* real image + someone else's caption (captions rolled by one within the batch) -> fake
* generated image + its caption     -> fake

so the generator is rewarded only for images that are both realistic *and* match their caption.
DF-GAN's MA-GP gradient penalty keeps the discriminator smooth around real matched pairs, and
DiffAugment (Zhao et al., NeurIPS 2020) augments every image the discriminator sees, which stops it
from memorising a small training set.

Phases for the training engine: ``"d"`` (discriminator step) then ``"g"`` (generator step).

Parameter counts with a 384-d text encoder (checked in ``tests/test_gan.py``):
``GANConfig()`` (64 px) G 4.3 M + D 3.4 M; ``GANConfig.smoke()`` (16 px) G 0.04 M + D 0.02 M.
Width: 32 channels, as DF-GAN's own configs (``nf: 32`` for birds and COCO, at 256 px).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.data.batch import Batch
from t2i_helpers.errors import T2IError
from t2i_helpers.models.base import T2IModel, training_images
from t2i_helpers.models.diffaugment import AdaptiveAugment, diff_augment
from t2i_helpers.models.gan_losses import Frozen, caption_contrastive, ma_gp, matching_aware_hinge, same_captions

SUPPORTED_SIZES = (16, 32, 64, 128)


@dataclass
class GANConfig:
    image_size: int = 64  # 16, 32, 64 or 128: log2(image_size / 4) up-sampling blocks from a 4x4 map
    noise_dim: int = 100  # size of z
    gen_channels: int = 32  # DF-GAN's ngf (32 in its configs): channels of the last generator block (first: 8x)
    disc_channels: int = 32  # DF-GAN's ndf (32 in its configs): channels of the first discriminator block
    disc_text_dim: int = 128  # the sentence embedding is projected to this many channels in D
    diffaug_policy: str = "color,translation,cutout"  # "" disables DiffAugment
    # ADA: > 0 (the paper's 0.6) makes each augmentation's probability adaptive, driven by D's
    # overfitting signal (models/diffaugment.py); 0 applies the policy to every image (DiffAugment).
    ada_target: float = 0.0
    ada_images: int = 50_000  # real images over which ADA's probability may go from 0 to 1
    mismatch_weight: float = 0.5  # DF-GAN weights the mismatched and fake terms 0.5 each
    fake_weight: float = 0.5
    ma_gp_weight: float = 2.0  # DF-GAN's MA-GP k; 0 turns the gradient penalty off
    ma_gp_power: float = 6.0  # DF-GAN's MA-GP p
    # Multi-task (notebook 06): > 0 adds an image embedding head on D's 4x4 features and a caption
    # embedding, tied by a contrastive loss (gan_losses.caption_contrastive) on real pairs in D's
    # step and on generated pairs in G's step (XMC-GAN's image-sentence term). 0: no head at all.
    contrastive_weight: float = 0.0
    contrastive_dim: int = 64
    contrastive_temperature: float = 0.1
    lr_g: float = 1e-4  # DF-GAN: two time-scale update rule, D learns 4x faster than G
    lr_d: float = 4e-4
    beta1: float = 0.0  # Adam betas (0.0, 0.9): no momentum, usual for GANs
    beta2: float = 0.9

    @classmethod
    def smoke(cls) -> "GANConfig":
        """A tiny CPU variant sized for speed (a smoke run only checks that training runs): 16 px, where
        thin convolutions vectorise badly, and MA-GP off (its second-order gradient doubles a D step).
        The unit tests cover 32-128 px and MA-GP."""
        return cls(image_size=16, noise_dim=16, gen_channels=4, disc_channels=4, disc_text_dim=32, ma_gp_weight=0.0)

    @classmethod
    def cpu(cls) -> "GANConfig":
        """The cpu tier's: 32 px, half DF-GAN's width, MA-GP kept."""
        return cls(image_size=32, noise_dim=64, gen_channels=16, disc_channels=16, disc_text_dim=64)

    def optimizer_settings(self) -> dict[str, dict]:
        """Adam settings per phase, read by the engine (one optimizer per parameter group)."""
        betas = (self.beta1, self.beta2)
        return {"d": {"lr": self.lr_d, "betas": betas}, "g": {"lr": self.lr_g, "betas": betas}}


def _num_blocks(image_size: int) -> int:
    """Up- (or down-) sampling blocks between 4x4 and ``image_size``; a one-line error if unsupported."""
    if image_size not in SUPPORTED_SIZES:
        raise T2IError(f"GANConfig.image_size must be one of {SUPPORTED_SIZES}, got {image_size}")
    return image_size.bit_length() - 1 - 2  # log2(image_size) - log2(4) = number of x2 blocks


# --------------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------------

class Affine(nn.Module):
    """Per-channel ``scale * x + shift``, with scale and shift predicted from the condition by an MLP.

    DF-GAN uses two MLPs (one for scale, one for shift); here one MLP with a ``2 * channels`` output
    does both, which halves the number of small layers. The last layer starts at scale = 1,
    shift = 0, so at initialisation the block is the identity and the text's influence grows as
    training finds it useful.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(), nn.Linear(channels, 2 * channels))
        nn.init.zeros_(self.mlp[2].weight)
        with torch.no_grad():
            self.mlp[2].bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.mlp(cond)[:, :, None, None].chunk(2, dim=1)
        return scale * x + shift


class DFBlock(nn.Module):
    """DF-GAN's fusion block: two stacked text-conditioned affines, each followed by LeakyReLU.

    Stacking two affines with a non-linearity between them lets the text change the features
    non-linearly, which one affine (as in conditional batch norm) cannot.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.affine1 = Affine(cond_dim, channels)
        self.affine2 = Affine(cond_dim, channels)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = F.leaky_relu(self.affine1(x, cond), 0.2)
        return F.leaky_relu(self.affine2(x, cond), 0.2)


class GBlock(nn.Module):
    """Up-sample x2, then residual ``fuse -> conv -> fuse -> conv``; 1x1 conv shortcut if channels change."""

    def __init__(self, cond_dim: int, in_ch: int, out_ch: int):
        super().__init__()
        self.fuse1 = DFBlock(cond_dim, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.fuse2 = DFBlock(cond_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(self.fuse1(x, cond))
        h = self.conv2(self.fuse2(h, cond))
        return self.shortcut(x) + h


def _channels(base: int, n_blocks: int) -> list[int]:
    """DF-GAN's channel plan: ``base * min(2**i, 8)`` for ``i = 0..n_blocks`` (small at high resolution)."""
    return [base * min(2**i, 8) for i in range(n_blocks + 1)]


class Generator(nn.Module):
    """``z -> Linear -> [8*ngf, 4, 4] -> GBlocks (x2 each) -> LeakyReLU -> conv -> tanh``."""

    def __init__(self, config: GANConfig, text_dim: int):
        super().__init__()
        n_blocks = _num_blocks(config.image_size)
        chans = _channels(config.gen_channels, n_blocks)[::-1]  # e.g. 64x64: [8, 8, 4, 2, 1] * ngf
        cond_dim = config.noise_dim + text_dim  # DF-GAN conditions every affine on [z, sentence]
        self.fc = nn.Linear(config.noise_dim, chans[0] * 4 * 4)
        self.blocks = nn.ModuleList(GBlock(cond_dim, cin, cout) for cin, cout in zip(chans[:-1], chans[1:]))
        self.to_rgb = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: Tensor, text: Tensor) -> Tensor:
        cond = torch.cat([z, text], dim=1)
        x = self.fc(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            x = block(x, cond)
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


# --------------------------------------------------------------------------------------------------
# Discriminator
# --------------------------------------------------------------------------------------------------

class DBlock(nn.Module):
    """Residual down-sampling block; the residual starts switched off (``gamma = 0``), as in DF-GAN,
    so the discriminator begins as a near-linear function and gets sharper as ``gamma`` grows."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.LeakyReLU(0.2),
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        # DF-GAN applies the 1x1 shortcut conv and then pools; both are linear, so pooling first gives
        # the same result with a 4x cheaper conv.
        return self.shortcut(F.avg_pool2d(x, 2)) + self.gamma * self.residual(x)


class Discriminator(nn.Module):
    """Image trunk to a 4x4 map, then a joint head on ``[features, tiled projected sentence]``.

    :meth:`features` and :meth:`judge` are separate so one pass of the (costly) trunk over the real
    images serves both the matched and the mismatched captions.
    """

    def __init__(self, config: GANConfig, text_dim: int):
        super().__init__()
        n_blocks = _num_blocks(config.image_size)
        chans = _channels(config.disc_channels, n_blocks)  # e.g. 64x64: [1, 2, 4, 8, 8] * ndf
        self.from_rgb = nn.Conv2d(3, chans[0], 3, padding=1)
        self.blocks = nn.Sequential(*(DBlock(cin, cout) for cin, cout in zip(chans[:-1], chans[1:])))
        self.text_proj = nn.Linear(text_dim, config.disc_text_dim)
        self.head = nn.Sequential(
            nn.Conv2d(chans[-1] + config.disc_text_dim, chans[1], 3, padding=1, bias=False),
            nn.LeakyReLU(0.2),
            nn.Conv2d(chans[1], 1, 4, bias=False),  # 4x4 -> 1x1: one logit per pair
        )
        if config.contrastive_weight > 0:  # flattened, so the embedding keeps where things are
            self.image_embed = nn.Linear(chans[-1] * 4 * 4, config.contrastive_dim)
            self.text_embed = nn.Linear(text_dim, config.contrastive_dim)

    def contrastive(self, features: Tensor, text: Tensor, raw_text: Tensor, temperature: float) -> Tensor:
        """The contrastive loss of (image features, caption) pairs; identical captions are not negatives."""
        return caption_contrastive(self.image_embed(features.flatten(1)), self.text_embed(text), same_captions(raw_text),
                                   temperature)

    def features(self, images: Tensor) -> Tensor:
        return self.blocks(self.from_rgb(images))  # [B, C, 4, 4]

    def judge(self, features: Tensor, text: Tensor) -> Tensor:
        t = self.text_proj(text)[:, :, None, None].expand(-1, -1, *features.shape[2:])
        return self.head(torch.cat([features, t], dim=1)).flatten()  # [B] logits

    def forward(self, images: Tensor, text: Tensor) -> Tensor:
        return self.judge(self.features(images), text)


# --------------------------------------------------------------------------------------------------
# The model the engine trains
# --------------------------------------------------------------------------------------------------

class ConditionalGAN(T2IModel):
    """Text-conditional GAN: :class:`Generator` + :class:`Discriminator`, phases ``"d"`` then ``"g"``."""

    family = "gan"
    uses_tokens = False

    def __init__(self, config: GANConfig | None, text_dim: int):
        super().__init__()
        self.config = config or GANConfig()
        self.text_dim = text_dim
        self.generator = Generator(self.config, text_dim)
        self.discriminator = Discriminator(self.config, text_dim)
        cfg = self.config
        self.ada = AdaptiveAugment(cfg.ada_target, images_to_full=cfg.ada_images) if cfg.ada_target > 0 else None

    @property
    def augment_p(self) -> float:
        """The probability each augmentation is applied with: ADA's current p, or 1 (DiffAugment)."""
        return float(self.ada.p) if self.ada is not None else 1.0

    @property
    def anchor(self) -> Tensor:
        """A generator weight: the device and dtype that noise, captions and images are moved to."""
        return next(self.generator.parameters())

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"d": list(self.discriminator.parameters()), "g": list(self.generator.parameters())}

    def sample_noise(self, n: int, generator: torch.Generator | None = None, truncation: float | None = None) -> Tensor:
        """``z ~ N(0, I)`` on the model's device, or drawn by ``generator`` on *its* device and moved
        (a CPU generator gives the same z for a seed whatever device the model is on).

        With ``truncation`` the entries beyond +-truncation are redrawn until none is left (the
        "truncation trick": less variety, fewer odd samples).
        """
        device = self.anchor.device
        noise_device = generator.device if generator is not None else device
        z = torch.randn(n, self.config.noise_dim, generator=generator, device=noise_device)
        if truncation is not None:
            if truncation <= 0:
                raise T2IError(f"truncation must be positive, got {truncation}")
            outside = z.abs() > truncation
            while outside.any():
                z[outside] = torch.randn(int(outside.sum()), generator=generator, device=z.device)
                outside = z.abs() > truncation
        return z.to(device)

    def training_losses(self, batch: Batch, phase: str = "d") -> dict[str, Tensor]:
        if phase == "d":
            return self._discriminator_losses(batch)
        if phase == "g":
            return self._generator_losses(batch)
        raise ValueError(f"ConditionalGAN has phases 'd' and 'g', got {phase!r}")

    def _discriminator_losses(self, batch: Batch) -> dict[str, Tensor]:
        cfg = self.config
        text = batch.text.to(self.anchor.dtype)
        b = text.shape[0]
        with torch.no_grad():  # the generator is not part of this graph: nothing flows back to G
            fake = self.generator(self.sample_noise(b), text)

        # Every image D sees goes through the same augmentation policy, real and fake alike.
        p = self.augment_p
        real = diff_augment(training_images(batch, cfg.image_size, self.anchor.dtype), cfg.diffaug_policy, p)
        fake = diff_augment(fake, cfg.diffaug_policy, p)
        use_gp = cfg.ma_gp_weight > 0
        if use_gp:  # MA-GP differentiates D's output with respect to its inputs (as D sees them)
            real = real.detach().requires_grad_(True)
            text = text.detach().requires_grad_(True)

        # One trunk pass over real and fake images together; D has no batch statistics,
        # so this equals two separate passes, only faster.
        feats = self.discriminator.features(torch.cat([real, fake]))
        real_feats = feats[:b]
        mismatched = text.roll(1, dims=0)  # caption of the previous image: a wrong caption
        # The head judges all three kinds of pair in one batch: (real, caption), (real, wrong
        # caption), (fake, caption). Same logits as three calls, a third of the small-kernel launches.
        logits = self.discriminator.judge(torch.cat([feats, real_feats]), torch.cat([text, text, mismatched]))
        real_logits, fake_logits, mismatch_logits = logits.split(b)

        # Rolled captions identical to the original (e.g. two "a red circle" in one batch) are
        # not mismatches; they are left out instead of teaching D to reject a correct pair.
        valid = (batch.text != batch.text.roll(1, dims=0)).any(dim=1)
        losses = matching_aware_hinge(
            real_logits, mismatch_logits, fake_logits, valid, cfg.mismatch_weight, cfg.fake_weight
        )
        if cfg.contrastive_weight > 0:  # the multi-task term, on the real (image, caption) pairs
            aux = self.discriminator.contrastive(real_feats, text, batch.text, cfg.contrastive_temperature)
            losses["loss"] = losses["loss"] + cfg.contrastive_weight * aux
            losses["contrastive"] = aux
        if use_gp:
            gp = ma_gp(real_logits, real, text, cfg.ma_gp_weight, cfg.ma_gp_power)
            losses["loss"] = losses["loss"] + gp
            losses["d_gp"] = gp
        losses["real_logit"] = real_logits.mean()
        losses["fake_logit"] = fake_logits.mean()
        if self.ada is not None:
            self.ada.update(real_logits)
            losses["ada_p"], losses["ada_r"] = self.ada.p.clone(), self.ada.r.clone()
        return {k: (v if k == "loss" else v.detach()) for k, v in losses.items()}

    def _generator_losses(self, batch: Batch) -> dict[str, Tensor]:
        text = batch.text.to(self.anchor.dtype)
        fake = self.generator(self.sample_noise(text.shape[0]), text)
        cfg = self.config
        with Frozen(self.discriminator):  # gradients reach G through D, but D's weights get none
            feats = self.discriminator.features(diff_augment(fake, cfg.diffaug_policy, self.augment_p))
            logits = self.discriminator.judge(feats, text)
            loss = -logits.mean()  # hinge generator loss: raise D's score of (fake, caption)
            out = {"g_adv": loss.detach()}
            if cfg.contrastive_weight > 0:  # ... and make each image pick out its own caption
                aux = self.discriminator.contrastive(feats, text, batch.text, cfg.contrastive_temperature)
                loss = loss + cfg.contrastive_weight * aux
                out["contrastive"] = aux.detach()
        return {"loss": loss, **out}

    @torch.no_grad()
    def generate(
        self,
        text: Tensor,
        tokens: Tensor | None = None,
        token_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        truncation: float | None = None,
        **options,
    ) -> Tensor:
        """One image per caption; ``generator`` (a CPU ``torch.Generator``) fixes z, so a seed
        reproduces the samples. ``noise`` [B, noise_dim] overrides z (for interpolation figures),
        ``truncation`` redraws |z| entries above it. Unknown options raise."""
        if options:
            raise TypeError(f"ConditionalGAN.generate got unknown options {sorted(options)}")
        text = text.to(self.anchor)
        z = self.sample_noise(text.shape[0], generator, truncation) if noise is None else noise.to(text)
        return self.generator(z, text).float().clamp(-1, 1)
