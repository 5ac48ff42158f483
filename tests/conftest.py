"""Shared fixtures. Tests never touch the network; the real COCO subset is used where it exists."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Generated data, caches, runs and figures of the test session go to a temp folder, never into the repo.
_TMP = Path(tempfile.mkdtemp(prefix="t2i-tests-"))
for _name in ("T2I_DATA", "T2I_RUNS", "T2I_FIGURES"):
    os.environ.setdefault(_name, str(_TMP / _name.lower()))


def pytest_sessionfinish(session, exitstatus) -> None:
    """Each session writes tens of MB there (Shapes sets, caches, runs); without this, every ``make test``
    left its folder in /tmp. A failed session keeps it, for looking at what the failing test wrote."""
    if exitstatus == 0 and not os.environ.get("T2I_KEEP_TEST_FILES"):
        shutil.rmtree(_TMP, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus) -> None:
    if _TMP.exists() and any(_TMP.iterdir()):
        terminalreporter.write_line(f"t2i: this session's data, caches and runs are kept in {_TMP}")


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


@pytest.fixture(scope="session")
def cpu_tier_judge(tmp_path_factory):
    """The cpu tier's Shapes (4,000 images at 64 px, seed 0, in this session's T2I_DATA) and the project's
    judge trained on it once, with one torch thread: (paths, judge, training report, cache folder).

    Shared by the judge's own tests and the shipped checkpoints' tests, which each trained it before
    (about 45 s each on 2 cores).
    """
    import torch

    from t2i_helpers.config import data_dir
    from t2i_helpers.data.shapes import ShapesConfig, make_shapes
    from t2i_helpers.judges.classifier import ClassifierConfig, load_or_train_attribute_classifier

    paths = make_shapes(data_dir() / "shapes-4000-64px-seed0", ShapesConfig(images=4000, image_size=64, seed=0))
    cache = tmp_path_factory.mktemp("classifier-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny CNN gains little from 2 threads and loses a lot on a busy machine
    try:
        judge, report = load_or_train_attribute_classifier(paths.images_dir, paths.train_json,
                                                           config=ClassifierConfig(), cache_dir=cache)
    finally:
        torch.set_num_threads(threads)
    return paths, judge, report, cache


@pytest.fixture(scope="session")
def tiny_train_data(tmp_path_factory) -> tuple[Path, Path]:
    """60 Shapes images at 32 px (seed 3): (image folder, train annotations), for engine tests."""
    from t2i_helpers.data.shapes import ShapesConfig, make_shapes

    paths = make_shapes(tmp_path_factory.mktemp("tiny-shapes"), ShapesConfig(images=60, image_size=32, seed=3))
    return paths.images_dir, paths.train_json
