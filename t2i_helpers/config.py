"""Project-wide settings: the tier, paths, and the typed configs shared by modules.

The **tier** says how big everything is, and it is chosen here and nowhere else:

* ``smoke``: CI. Tiny data, models and steps; seconds per notebook, it proves that the code runs.
* ``cpu``: a 2-core laptop. 32 px Shapes; real, recognisable results within minutes.
* ``gpu``: 64 px, the full configs.

``T2I_TIER`` (or ``--tier`` on the command line, which sets it) names one. Otherwise
``T2I_SMOKE=1`` means ``smoke``, a CUDA GPU means ``gpu``, and anything else ``cpu``.

Config dataclasses keep fixed defaults; each tier's settings are named constructors on the class
(``smoke()``, ``cpu()``, ``gpu()``), and :func:`tier_config` picks the current tier's one. Other
modules call :func:`tier`, :func:`tier_config` or :func:`by_tier`, so a notebook never forks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from t2i_helpers.errors import T2IError

T = TypeVar("T")

_FALSE = {"", "0", "false", "no", "off"}
TIERS = ("smoke", "cpu", "gpu")


def env_flag(name: str) -> bool:
    """An on/off environment variable: unset, '', 0, false, no and off are off; anything else is on."""
    return os.environ.get(name, "0").strip().lower() not in _FALSE


def tier() -> str:
    """``smoke``, ``cpu`` or ``gpu``: ``T2I_TIER``, else smoke under ``T2I_SMOKE``, else gpu where CUDA is."""
    name = os.environ.get("T2I_TIER", "").strip().lower()
    if name:
        if name not in TIERS:
            raise T2IError(f"T2I_TIER={name!r} is not a tier; choose one of {', '.join(TIERS)}")
        return name
    if env_flag("T2I_SMOKE"):
        return "smoke"
    return "gpu" if torch.cuda.is_available() else "cpu"


def by_tier(smoke: T, cpu: T, gpu: T, name: str | None = None) -> T:
    """The value for tier ``name`` (default: :func:`tier`)."""
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[name or tier()]


def tier_config(config_class: type[T], name: str | None = None) -> T:
    """The named config of a tier: ``config_class.smoke()``, ``.cpu()`` or ``.gpu()``.

    A class without a constructor for the tier uses its plain defaults (``config_class()``), so a
    judge's config needs only ``smoke()``, and a model family's 64 px defaults are its ``gpu`` tier.
    """
    make: Any = getattr(config_class, name or tier(), None)
    return make() if callable(make) else config_class()


def smoke() -> bool:
    """True in the ``smoke`` tier (``T2I_SMOKE=1``, as CI sets it)."""
    return tier() == "smoke"


def pick(full: T, smoke_value: T) -> T:
    """``smoke_value`` in the smoke tier, ``full`` otherwise (for settings the cpu and gpu tiers share)."""
    return smoke_value if smoke() else full


PACKAGE_DIR = Path(__file__).resolve().parent
# A git checkout (editable install) keeps data/, runs/ and figures/ beside the package; a plain pip
# install (Colab) has no checkout, so they go under the current folder instead of site-packages.
PROJECT_ROOT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pyproject.toml").exists() else Path.cwd()


def data_dir() -> Path:
    """Where generated data and caches live (``T2I_DATA`` overrides; ignored by git)."""
    return Path(os.environ.get("T2I_DATA", PROJECT_ROOT / "data")).expanduser()


def runs_dir() -> Path:
    """Where training runs are written (``T2I_RUNS`` overrides, e.g. a Google Drive folder)."""
    return Path(os.environ.get("T2I_RUNS", PROJECT_ROOT / "runs")).expanduser()


def figures_dir() -> Path:
    """Where :func:`t2i_helpers.viz.save_figure` writes PNG + PDF (``T2I_FIGURES`` overrides)."""
    return Path(os.environ.get("T2I_FIGURES", PROJECT_ROOT / "figures")).expanduser()


def coco_mini_dir() -> Path | None:
    """The real COCO 2017 subset shipped next to the project (``../shared/coco-mini``), if present."""
    env = os.environ.get("T2I_COCO_MINI")
    candidates = [Path(env)] if env else []
    candidates += [PROJECT_ROOT.parent / "shared" / "coco-mini", PROJECT_ROOT / "shared" / "coco-mini"]
    for path in candidates:
        if (path / "annotations").is_dir():
            return path
    return None
