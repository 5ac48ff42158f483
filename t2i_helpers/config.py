"""Project-wide settings: the smoke-mode switch, paths, and the typed configs shared by modules.

Smoke mode (``T2I_SMOKE=1``, set by CI) shrinks data, models and steps so every notebook runs on a
laptop CPU in about a minute. It is read here and nowhere else: other modules call :func:`smoke`
or :func:`pick`, so a notebook never forks into two copies.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_FALSE = {"", "0", "false", "no", "off"}


def smoke() -> bool:
    """True when ``T2I_SMOKE`` asks for the tiny CPU configuration."""
    return os.environ.get("T2I_SMOKE", "0").strip().lower() not in _FALSE


def pick(full: T, smoke_value: T) -> T:
    """``full`` for a real run, ``smoke_value`` under ``T2I_SMOKE=1``."""
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
