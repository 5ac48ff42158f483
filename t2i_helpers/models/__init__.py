"""The generators, one file each; :data:`FAMILIES` maps the CLI's ``--model`` name to (config class, model class).

* :mod:`~t2i_helpers.models.baseline`: the reference's regression decoder (MSE: the conditional mean);
* :mod:`~t2i_helpers.models.gan`: a conditional GAN (its losses in ``gan_losses``: matching-aware hinge,
  MA-GP; DiffAugment and ADA in ``diffaugment``);
* :mod:`~t2i_helpers.models.diffusion`: text-conditional diffusion with classifier-free guidance (flow matching by
  default; :mod:`~t2i_helpers.models.reader`: its encoder reading captions back, the two-way model);
* :mod:`~t2i_helpers.models.stylegan`: a StyleGAN2-style generator against the GAN's discriminator;
* :mod:`~t2i_helpers.models.captioner`: the other direction, image to text (not a generator family:
  it has its own training loop, :mod:`t2i_helpers.train.captioning`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from t2i_helpers.config import tier_config
from t2i_helpers.models import reference
from t2i_helpers.models.base import T2IModel
from t2i_helpers.models.captioner import Captioner, CaptionerConfig, Vocabulary, beam_search, beam_step, tokenize
from t2i_helpers.models.baseline import BaselineConfig, ImageDecoder, TextToImageModel
from t2i_helpers.models.diffusion import DiffusionConfig, TextDiffusion, alpha_bar, alpha_sigma
from t2i_helpers.models.diffaugment import AdaptiveAugment, diff_augment
from t2i_helpers.models.gan import ConditionalGAN, GANConfig
from t2i_helpers.models.gan_losses import Frozen, caption_contrastive, ma_gp, matching_aware_hinge
from t2i_helpers.models.stylegan import StyleGAN, StyleGANConfig

FAMILIES: dict[str, tuple[type, type]] = {
    "baseline": (BaselineConfig, TextToImageModel),
    "gan": (GANConfig, ConditionalGAN),
    "diffusion": (DiffusionConfig, TextDiffusion),
    "stylegan": (StyleGANConfig, StyleGAN),
}
FAMILY_NAMES = tuple(FAMILIES)


def model_classes(family: str) -> tuple[type, type]:
    """(config class, model class) of a family, e.g. ``model_classes("gan")``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model {family!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def default_config(family: str, tier: str | None = None) -> Any:
    """The family's config for a tier (default: the current one): ``smoke()``, ``cpu()`` or the 64 px one."""
    return tier_config(model_classes(family)[0], tier)


def config_from_dict(family: str, values: dict) -> Any:
    """Rebuild a typed config from its JSON form (lists back to tuples where the field default is one)."""
    config_cls, _ = model_classes(family)
    # Fields added after runs were saved: a run without the key was trained without the feature.
    kwargs = dict(getattr(config_cls, "MISSING_MEANS", {}))
    for field in dataclasses.fields(config_cls):
        if field.name in values:
            value = values[field.name]
            default = field.default if field.default is not dataclasses.MISSING else None
            kwargs[field.name] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    return config_cls(**kwargs)


def build_model(family: str, config: Any | None, text_dim: int) -> T2IModel:
    """A new model of ``family`` for ``text_dim``-wide caption vectors; a dict config is read as JSON."""
    _, model_cls = model_classes(family)
    if isinstance(config, dict):
        config = config_from_dict(family, config)
    return model_cls(config if config is not None else default_config(family), text_dim)


__all__ = ["T2IModel", "FAMILIES", "FAMILY_NAMES", "model_classes", "default_config", "config_from_dict",
           "build_model", "reference", "BaselineConfig", "ImageDecoder", "TextToImageModel", "GANConfig",
           "ConditionalGAN", "AdaptiveAugment", "Frozen", "caption_contrastive", "diff_augment", "ma_gp", "matching_aware_hinge", "DiffusionConfig", "TextDiffusion",
           "alpha_bar", "alpha_sigma", "StyleGAN", "StyleGANConfig", "Captioner", "CaptionerConfig", "Vocabulary",
           "beam_search", "beam_step", "tokenize"]
