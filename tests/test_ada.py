"""ADA for the GANs: augmentation with a probability, the adaptive rule that moves it, and the option
through the engine and the command line."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from scipy.stats import binomtest

from t2i_helpers.cli import main
from t2i_helpers.errors import T2IError
from t2i_helpers.models import AdaptiveAugment, ConditionalGAN, GANConfig, diff_augment
from t2i_helpers.models.diffaugment import AUGMENTATIONS, rand_cutout
from t2i_helpers.train import TrainConfig, load_run, read_metrics, train
from t2i_helpers.train.runfolder import read_checkpoint


def test_p_one_is_diffaugment_as_before_and_p_zero_is_nothing():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    torch.manual_seed(3)
    expected = x
    for name in ("color", "translation", "cutout"):
        for fn in AUGMENTATIONS[name]:
            expected = fn(expected)
    torch.manual_seed(3)
    assert torch.equal(diff_augment(x, p=1.0), expected)
    assert torch.equal(diff_augment(x, p=0.0), x)


def test_each_image_is_augmented_with_probability_p():
    x = torch.ones(4000, 3, 8, 8)
    torch.manual_seed(0)
    changed = (diff_augment(x, "cutout", p=0.3) != x).flatten(1).any(dim=1)
    # cutout always zeroes at least one pixel of an all-ones image, so "changed" = "chosen"
    torch.manual_seed(1)
    assert (rand_cutout(x[:200]) != x[:200]).flatten(1).any(dim=1).all()
    test = binomtest(int(changed.sum()), len(changed), 0.3)
    assert test.pvalue > 1e-3, (int(changed.sum()), test.pvalue)


def test_ada_raises_p_while_d_is_sure_of_the_real_images_and_lowers_it_after():
    ada = AdaptiveAugment(target=0.6, interval=2, images_to_full=100)
    confident, unsure = torch.ones(10), torch.tensor([1.0] * 5 + [-1.0] * 5)
    ada.update(confident)
    assert float(ada.p) == 0  # adjusted only every `interval` steps
    ada.update(confident)
    assert float(ada.r) == 1 and float(ada.p) == pytest.approx(20 / 100)  # 20 real images seen of 100
    for _ in range(2):
        ada.update(unsure)
    assert float(ada.r) == 0 and float(ada.p) == pytest.approx(0.0)  # r = 0 < 0.6: back down
    for _ in range(4):
        ada.update(-confident)
    assert float(ada.p) == 0  # never below 0
    for _ in range(40):
        ada.update(confident)
    assert float(ada.p) == 1  # never above 1


@pytest.mark.parametrize("bad", [dict(target=0.0), dict(target=1.0), dict(interval=0), dict(images_to_full=0)])
def test_ada_refuses_settings_that_cannot_work(bad):
    with pytest.raises(T2IError, match="ADA needs"):
        AdaptiveAugment(**bad)


def test_the_gan_logs_p_and_saves_it_with_the_weights(tiny_train_data, tmp_path):
    image_root, ann = tiny_train_data
    config = dataclasses.replace(GANConfig.smoke(), ada_target=0.6, ada_images=64)
    run = tmp_path / "ada"
    train("gan", image_root, ann, run, TrainConfig(steps=8, batch_size=4, log_every=1, seed=0, progress=False),
          config)
    log = read_metrics(run / "metrics.csv")
    assert "d_ada_p" in log and "d_ada_r" in log  # the D phase's losses carry its prefix
    # p follows ADA's rule, recomputed from the logged r: it moves every 4 D steps (16 real images of 64)
    p = 0.0
    for step, r, logged in zip(log["step"], log["d_ada_r"], log["d_ada_p"]):
        if int(step) % 4 == 0:
            p = min(max(p + (1 if r > 0.6 else -1 if r < 0.6 else 0) * 16 / 64, 0.0), 1.0)
        assert logged == pytest.approx(p, abs=1e-6), (step, r, logged)
    saved = read_checkpoint(run / "checkpoint.pt")["model"]
    assert float(saved["ada.p"]) == pytest.approx(log["d_ada_p"][-1], abs=1e-6)
    loaded = load_run(run, weights="model")
    assert isinstance(loaded.model, ConditionalGAN) and float(loaded.model.ada.p) == float(saved["ada.p"])
    assert loaded.generate(["a red circle"] * 2).shape[0] == 2


def test_train_augment_on_the_command_line(tiny_train_data, tmp_path, capsys):
    image_root, ann = tiny_train_data
    common = ["train", "--data", str(image_root), str(ann), "--steps", "4", "--batch-size", "4", "--tier", "smoke",
              "--no-progress"]
    assert main([*common, "--model", "gan", "--augment", "ada", "--out", str(tmp_path / "g")]) == 0
    assert load_run(tmp_path / "g").model_config.ada_target == 0.6
    assert main([*common, "--model", "gan", "--augment", "none", "--out", str(tmp_path / "n")]) == 0
    assert load_run(tmp_path / "n").model_config.diffaug_policy == ""
    assert main([*common, "--model", "baseline", "--augment", "ada", "--out", str(tmp_path / "b")]) == 2
    assert "--augment applies to gan and stylegan" in capsys.readouterr().err
