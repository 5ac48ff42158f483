"""Model families, one file each; ``MODELS`` maps the CLI's ``--model`` name to (config class, model class)."""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .base import Batch, T2IModel

# name -> (module, config class, model class); imported lazily so a missing family never breaks the rest.
_FAMILIES = {
    "baseline": ("baseline", "BaselineConfig", "TextToImageModel"),
    "gan": ("gan", "GANConfig", "ConditionalGAN"),
    "diffusion": ("diffusion", "DiffusionConfig", "TextDiffusion"),
}

FAMILY_NAMES = tuple(_FAMILIES)


def model_classes(family: str) -> tuple[type, type]:
    """(config class, model class) of a family, e.g. ``model_classes("gan")``."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown model {family!r}; choose one of {', '.join(_FAMILIES)}")
    module_name, config_name, model_name = _FAMILIES[family]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, config_name), getattr(module, model_name)


def default_config(family: str, tier: str | None = None) -> Any:
    """The family's config for a tier (default: the current one): ``smoke()``, ``cpu()`` or the full one."""
    from ..config import by_tier

    config_cls, _ = model_classes(family)
    return by_tier(config_cls.smoke, config_cls.cpu, config_cls, tier)()


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
    config_cls, model_cls = model_classes(family)
    if isinstance(config, dict):
        config = config_from_dict(family, config)
    return model_cls(config if config is not None else default_config(family), text_dim)


__all__ = ["Batch", "T2IModel", "FAMILY_NAMES", "model_classes", "default_config", "config_from_dict", "build_model"]
