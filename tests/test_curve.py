"""`bench curve`: segments add up to one run, every point is judged, the figure and JSON are written."""
from __future__ import annotations

import json

import pytest

from t2i_helpers.cli.curve import background_level, curve_figure, train_curve


def test_background_level_reads_speckle_and_ignores_objects():
    import torch

    black = -torch.ones(2, 3, 16, 16)
    assert background_level(black) == 0.0
    with_object = black.clone()
    with_object[:, 0, 4:8, 4:8] = 1.0  # a bright red square is not background
    assert background_level(with_object) == 0.0
    speckled = black.clone()
    speckled[:, 1] = -0.8  # every background pixel lifted to 0.1 in the green channel
    assert background_level(speckled) == pytest.approx(0.1)


def test_a_curve_is_one_run_judged_after_each_segment(tmp_path, monkeypatch):
    from t2i_helpers.data.shapes import ShapesConfig, make_shapes
    from t2i_helpers.train import read_metrics

    monkeypatch.setenv("T2I_TIER", "smoke")  # the judge's smoke config: seconds
    paths = make_shapes(tmp_path / "shapes", ShapesConfig(images=80, image_size=32, seed=2))
    curve = train_curve("baseline", tmp_path / "run", steps=(3, 6), n_eval=20, root=paths.images_dir.parent,
                        final_n=30)
    points = curve["points"]
    assert [p["step"] for p in points] == [3, 6] and [p["n"] for p in points] == [20, 30]
    assert 0 < points[0]["train_minutes"] < points[1]["train_minutes"]
    assert all(0 <= p["all_val"] <= 1 and p["real_images"] >= 0 for p in points)
    assert read_metrics(tmp_path / "run")["step"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # one log, no restart
    png, pdf = curve_figure([curve], tmp_path)
    assert png.stat().st_size > 0 and pdf.stat().st_size > 0
    json.dumps(curve)  # what bench curve writes


def test_bench_curve_takes_captions_and_train_captioner_does_not():
    """``--captions`` once sat on the wrong subcommand, and ``bench curve`` failed with an AttributeError."""
    from t2i_helpers.cli import commands
    from t2i_helpers.cli.parser import build_parser

    parser = build_parser(commands.HANDLERS)
    assert parser.parse_args(["bench", "curve"]).captions == "en"
    assert parser.parse_args(["bench", "curve", "--captions", "zh"]).captions == "zh"
    assert not hasattr(parser.parse_args(["train-captioner"]), "captions")
