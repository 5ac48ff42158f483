"""Shared fixtures. Tests never touch the network; the real COCO subset is used where it exists."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    """``../shared/coco-mini``: skipped with a reason when absent, but a failure under CI=true."""
    from t2i_helpers.config import coco_mini_dir

    path = coco_mini_dir()
    if path is None:
        message = "../shared/coco-mini is absent (the real COCO 2017 subset that sits next to the project)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    return path
