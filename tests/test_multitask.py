"""The multi-task term of the GANs: a contrastive loss between D's image features and the captions."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from t2i_helpers.cli import main
from t2i_helpers.models import ConditionalGAN, GANConfig
from t2i_helpers.models.gan_losses import caption_contrastive
from t2i_helpers.train import TrainConfig, load_run, read_metrics, train

TEXT_DIM = 12


def _infonce_by_hand(image, text, same, temperature):
    """The same loss with loops and math.log: each row's -log softmax at its own column, both ways."""
    image = [v / v.norm() for v in image]
    text = [v / v.norm() for v in text]
    n, total = len(image), 0.0
    for rows, cols in ((image, text), (text, image)):
        for i in range(n):
            keep = [j for j in range(n) if j == i or not same[i][j]]
            scores = {j: float(rows[i] @ cols[j]) / temperature for j in keep}
            total += -(scores[i] - math.log(sum(math.exp(s) for s in scores.values())))
    return total / (2 * n)


def test_contrastive_loss_equals_the_loop_and_leaves_identical_captions_out():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    same = torch.zeros(5, 5, dtype=torch.bool)
    same[1, 3] = same[3, 1] = True  # captions 1 and 3 are the same sentence
    got = caption_contrastive(image, text, same, temperature=0.2)
    assert got.item() == pytest.approx(_infonce_by_hand(image, text, same.tolist(), 0.2), rel=1e-5)
    unmasked = caption_contrastive(image, text, torch.zeros(5, 5, dtype=torch.bool), temperature=0.2)
    assert unmasked.item() != pytest.approx(got.item())


def test_matched_embeddings_score_near_zero_and_shuffled_ones_near_log_b():
    image = torch.eye(6) * 3
    matched = caption_contrastive(image, image.clone(), torch.zeros(6, 6, dtype=torch.bool), temperature=0.05)
    assert matched.item() < 1e-6
    shuffled = caption_contrastive(image, image.roll(1, dims=0), torch.zeros(6, 6, dtype=torch.bool), temperature=0.05)
    assert shuffled.item() > math.log(6)


def test_without_the_weight_d_has_no_head_and_old_checkpoints_still_fit():
    plain = ConditionalGAN(GANConfig.smoke(), TEXT_DIM)
    multi = ConditionalGAN(dataclasses.replace(GANConfig.smoke(), contrastive_weight=1.0, contrastive_dim=16), TEXT_DIM)
    extra = set(multi.state_dict()) - set(plain.state_dict())
    assert extra == {"discriminator.image_embed.weight", "discriminator.image_embed.bias",
                     "discriminator.text_embed.weight", "discriminator.text_embed.bias"}
    assert multi.discriminator.image_embed.in_features == plain.discriminator.blocks[-1].shortcut.out_channels * 16


def test_both_phases_add_the_weighted_term_and_d_learns_to_match(tiny_train_data, tmp_path):
    image_root, ann = tiny_train_data
    config = dataclasses.replace(GANConfig.smoke(), contrastive_weight=0.5)
    run = tmp_path / "multi"
    train("gan", image_root, ann, run, TrainConfig(steps=30, batch_size=8, log_every=1, seed=0, progress=False), config)
    log = read_metrics(run / "metrics.csv")
    assert "d_contrastive" in log and "g_contrastive" in log
    first, last = sum(log["d_contrastive"][:5]) / 5, sum(log["d_contrastive"][-5:]) / 5
    assert first == pytest.approx(math.log(8), abs=0.5) and last < first  # starts at chance, D learns
    loaded = load_run(run)
    assert loaded.model_config.contrastive_weight == 0.5
    assert loaded.generate(["a red circle", "a blue square"], seed=0).shape == (2, 3, 16, 16)


def test_contrastive_on_the_command_line(tiny_train_data, tmp_path, capsys):
    image_root, ann = tiny_train_data
    common = ["train", "--data", str(image_root), str(ann), "--steps", "3", "--batch-size", "4", "--tier", "smoke",
              "--no-progress"]
    assert main([*common, "--model", "gan", "--contrastive", "1.0", "--augment", "none", "--out", str(tmp_path / "g")]) == 0
    saved = load_run(tmp_path / "g").model_config
    assert saved.contrastive_weight == 1.0 and saved.diffaug_policy == ""
    assert main([*common, "--model", "diffusion", "--contrastive", "1.0", "--out", str(tmp_path / "d")]) == 2
    assert "--contrastive applies to gan and stylegan" in capsys.readouterr().err
