"""`make demo`: both models trained, one figure of captions x (baseline, diffusion, real), the judge's verdicts."""
from __future__ import annotations

import dataclasses
import re

import pytest
from PIL import Image

from t2i_helpers.cli.demo import DEMO_ROWS, demo_model_config, run_demo
from t2i_helpers.models import default_config


@pytest.mark.slow
def test_smoke_demo_writes_the_figure_and_prints_both_verdicts(capsys):
    png = run_demo("smoke")
    out = capsys.readouterr().out
    assert png.is_file() and png.with_suffix(".pdf").is_file()
    verdicts = re.findall(r"demo: (baseline|diffusion): every attribute right for ([0-9.]+) of (\d+) val captions "
                          r"\(real images: ([0-9.]+)\)", out)
    assert [v[0] for v in verdicts] == ["baseline", "diffusion"]
    assert all(0 <= float(v[1]) <= 1 and int(v[2]) == 100 for v in verdicts)
    assert f"demo: figure {png} (" in out
    width, height = Image.open(png).size
    assert DEMO_ROWS == 8 and height > width  # eight caption rows against three image columns and the text


def test_the_cpu_demo_trains_the_tiers_models_with_flow_times_centred_higher():
    for family in ("baseline", "diffusion"):
        for name in ("smoke", "gpu"):
            assert demo_model_config(family, name) == default_config(family, name)
    assert demo_model_config("baseline", "cpu") == default_config("baseline", "cpu")
    cpu = default_config("diffusion", "cpu")
    assert cpu.objective == "flow" and cpu.logit_mean == 1.0
    assert demo_model_config("diffusion", "cpu") == dataclasses.replace(cpu, logit_mean=2.0)
