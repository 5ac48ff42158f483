"""One diffusion model, both directions: its UNet encoder also reads captions back from images (models/reader.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from t2i_helpers.cli import main
from t2i_helpers.data.evalset import load_eval_data
from t2i_helpers.errors import T2IError
from t2i_helpers.evaluation import attribute_match, read_back
from t2i_helpers.judges import best_captions
from t2i_helpers.models import DiffusionConfig, TextDiffusion
from t2i_helpers.models.reader import bottleneck_size
from t2i_helpers.train import TrainConfig, load_run, read_metrics, train

TEXT_DIM = 12


def two_way(config: DiffusionConfig | None = None, weight: float = 1.0) -> TextDiffusion:
    torch.manual_seed(0)
    return TextDiffusion(dataclasses.replace(config or DiffusionConfig.smoke(), read_weight=weight, read_dim=8),
                         TEXT_DIM)


def test_without_the_weight_nothing_is_built_and_reading_is_refused_in_one_line():
    plain, multi = TextDiffusion(DiffusionConfig.smoke(), TEXT_DIM), two_way()
    extra = set(multi.state_dict()) - set(plain.state_dict())
    assert extra == {"reader.image.weight", "reader.image.bias", "reader.text.weight", "reader.text.bias"}
    with pytest.raises(T2IError, match="read_weight") as error:
        plain.encode_images(torch.zeros(2, 3, 32, 32))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("tier", ["smoke", "cpu"])
def test_the_bottleneck_size_is_what_the_encoder_gives(tier):
    config = getattr(DiffusionConfig, tier)()
    model = two_way(config)
    features = model.image_features(torch.zeros(3, 3, config.image_size, config.image_size))
    assert features.shape == (3, bottleneck_size(config))
    assert model.reader.image.in_features == bottleneck_size(config)


def test_the_reading_sees_the_image_at_t0_with_the_null_caption():
    model = two_way().eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    text, tokens, mask = model.null_condition(4, 1)
    bottleneck, *_ = model.unet.encode(x, torch.zeros(4), text, tokens, mask)
    assert torch.equal(model.image_features(x), bottleneck.flatten(1))
    uint8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # HWC arrays
    assert torch.allclose(model.image_features(uint8), bottleneck.flatten(1), atol=0.05)


def test_the_read_loss_is_infonce_over_the_batch_with_identical_captions_left_out():
    model = two_way().eval()
    g = torch.Generator().manual_seed(1)
    x, text = torch.rand(5, 3, 32, 32, generator=g) * 2 - 1, torch.randn(5, TEXT_DIM, generator=g)
    text[3] = text[1]  # the same caption twice
    image = model.reader.image(model.image_features(x)).detach().double().numpy()
    words = model.reader.text(text).detach().double().numpy()
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    sims = image @ words.T / model.config.read_temperature
    total = 0.0
    for matrix in (sims, sims.T):
        for i in range(5):
            keep = [j for j in range(5) if j == i or not np.array_equal(text[i], text[j])]
            total -= matrix[i, i] - np.log(np.exp(matrix[i, keep]).sum())
    assert model.read_loss(x, text).item() == pytest.approx(total / 10, rel=1e-5)


def test_training_adds_the_weighted_term_and_the_model_learns_to_read(tiny_train_data, tmp_path):
    image_root, ann = tiny_train_data
    run = tmp_path / "two-way"
    config = dataclasses.replace(DiffusionConfig.smoke(), read_weight=1.0)
    train("diffusion", image_root, ann, run, TrainConfig(steps=150, batch_size=16, log_every=1, seed=0, progress=False,
                                                         lr=2e-3), config)
    log = read_metrics(run / "metrics.csv")
    first, last = np.mean(log["read"][:10]), np.mean(log["read"][-10:])
    assert first == pytest.approx(np.log(16), abs=0.6) and last < first - 0.5  # from chance, down
    loaded = load_run(run)
    assert loaded.model_config.read_weight == 1.0
    data = load_eval_data(image_root, ann)
    own = [{data.captions[j] for j in np.flatnonzero(data.caption_image == i)} for i in range(40)]  # each image's captions
    candidates = sorted(set(data.captions))
    found = [m[0][0] for m in best_captions(loaded.model, data.images[:40], loaded.encode(candidates).pooled, candidates)]
    right = np.mean([f in mine for f, mine in zip(found, own)])
    chance = np.mean([len(mine) for mine in own]) / len(candidates)
    assert right > 4 * chance, (right, chance)
    read = read_back(loaded, data, n=40)  # the same ranking, scored by the attributes the picked captions name
    assert read == attribute_match(found, data.attributes[:40])
    assert loaded.generate(["a red circle"], seed=0).shape == (1, 3, 32, 32)  # and it still draws


def test_read_on_the_command_line_and_only_for_diffusion(tiny_train_data, tmp_path, capsys):
    image_root, ann = tiny_train_data
    common = ["train", "--data", str(image_root), str(ann), "--steps", "3", "--batch-size", "4", "--tier", "smoke",
              "--no-progress"]
    assert main([*common, "--model", "diffusion", "--read", "0.5", "--out", str(tmp_path / "d")]) == 0
    assert load_run(tmp_path / "d").model_config.read_weight == 0.5
    assert "read" in read_metrics(tmp_path / "d" / "metrics.csv")
    assert main([*common, "--model", "gan", "--read", "0.5", "--out", str(tmp_path / "g")]) == 2
    assert "--read applies to diffusion, not gan" in capsys.readouterr().err
