"""Notebook 06's variants through the CLI: each trains, saves, resumes with its setting kept, and samples."""
from __future__ import annotations

import pytest

from t2i_helpers.cli import main
from t2i_helpers.train import load_run

VARIANTS = {  # flags, and how the saved run shows them
    "two-way diffusion": (["--model", "diffusion", "--read", "0.5"], lambda run: run.model_config.read_weight == 0.5),
    "GAN + contrastive": (["--model", "gan", "--contrastive", "1.0"], lambda run: run.model_config.contrastive_weight == 1.0),
    "GAN + ADA": (["--model", "gan", "--augment", "ada"], lambda run: run.model_config.ada_target > 0),
    "baseline + rewrite flips": (["--model", "baseline", "--flip", "rewrite"], lambda run: run.train_config.flip == "rewrite"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_resumes_with_its_setting_and_samples(name, tiny_train_data, tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_TIER", "smoke")
    flags, shows = VARIANTS[name]
    images, ann = tiny_train_data
    out = tmp_path / "run"
    common = ["train", "--data", str(images), str(ann), "--out", str(out), "--device", "cpu", "--no-progress",
              "--batch-size", "4"]
    assert main([*common, *flags, "--steps", "3"]) == 0
    assert main([*common, *flags[:2], "--steps", "5", "--resume"]) == 0  # the variant's flag comes back from the run
    run = load_run(out, device="cpu")
    assert run.step == 5 and shows(run), name
    png = tmp_path / "s.png"
    assert main(["sample", str(out), "--caption", "a red circle", "-n", "2", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
