"""The CLIP-style contrastive model: InfoNCE vs an independent computation, training beats chance, I/O."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2i_helpers.errors import T2IError
from t2i_helpers.judges.clip import (
    ClipConfig,
    ContrastiveModel,
    _same_caption_targets,
    best_captions,
    clip_loss,
    load_clip,
    real_r_precision,
    save_clip,
    train_clip,
)


def test_clip_loss_is_cross_entropy_both_ways():
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) * 3
    image_to_text = -torch.log_softmax(logits, dim=1).diag().mean()
    text_to_image = -torch.log_softmax(logits, dim=0).diag().mean()
    expected = (image_to_text + text_to_image) / 2
    torch.testing.assert_close(clip_loss(logits), expected)
    # distinct captions: the soft targets are the identity, the same loss
    torch.testing.assert_close(clip_loss(logits, _same_caption_targets(torch.arange(6))), expected)


def test_identical_captions_are_not_negatives():
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    keys = torch.tensor([0, 1, 0, 2])  # pairs 0 and 2 have the same caption
    targets = _same_caption_targets(keys)
    assert targets[0, 2] == 0.5 and targets[0, 0] == 0.5 and targets[1, 1] == 1.0
    rows = -(targets * torch.log_softmax(logits, dim=1)).sum(1).mean()
    cols = -(targets.T * torch.log_softmax(logits, dim=0).T).sum(1).mean()
    torch.testing.assert_close(clip_loss(logits, targets), (rows + cols) / 2)


def _fake_text_embeddings(data, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """A stand-in text encoder: one-hot of what each caption mentions, randomly projected.

    Same caption -> same vector, like a frozen encoder; no language model needed in a unit test.
    """
    from t2i_helpers.data.shapes import COLORS, POSITIONS, SHAPES, SIZES

    vocab = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS)}
    rows = []
    for c, mentions in enumerate(data.mentions):
        attrs = data.attributes[data.caption_image[c]]
        parts = []
        for name, values in vocab.items():
            one_hot = np.zeros(len(values) + 1)
            one_hot[values.index(attrs[name]) if name in mentions else len(values)] = 1
            parts.append(one_hot)
        rows.append(np.concatenate(parts))
    projection = np.random.default_rng(seed).normal(size=(len(rows[0]), dim))
    return torch.tensor(np.stack(rows) @ projection, dtype=torch.float32)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from t2i_helpers.data.shapes import ShapesConfig, make_shapes
    from t2i_helpers.data.evalset import load_eval_data

    paths = make_shapes(tmp_path_factory.mktemp("shapes"), ShapesConfig(images=400, image_size=32, seed=3))
    return load_eval_data(paths.images_dir, paths.train_json), load_eval_data(paths.images_dir, paths.val_json)


@pytest.fixture(scope="module")
def trained(shapes_data):
    train, _ = shapes_data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster on a busy 2-core machine
    try:
        return train_clip(train.images, train.caption_image, _fake_text_embeddings(train),
                          ClipConfig(steps=150, batch_size=64))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # trains the contrastive model (about 10 s on a busy 2-core CPU)
def test_short_training_ranks_matching_captions_far_above_chance(trained, shapes_data):
    model, report = trained
    _, val = shapes_data
    assert report["steps"] == 150 and report["final_loss"] < 3.0
    untrained = ContrastiveModel(32, ClipConfig())
    pooled = _fake_text_embeddings(val)
    before = real_r_precision(untrained, val.images, val.captions, pooled, val.caption_image)
    after = real_r_precision(model, val.images, val.captions, pooled, val.caption_image)
    assert after > 0.2 > 0.01 * 5  # chance is 1/100
    assert after > before + 0.1


@pytest.mark.slow
def test_best_captions_pick_the_right_colour(trained, shapes_data):
    model, _ = trained
    _, val = shapes_data
    unique = sorted(set(val.captions))
    first = [val.captions.index(c) for c in unique]
    pooled = _fake_text_embeddings(val)[first]
    picks = best_captions(model, val.images, pooled, unique, k=3)
    assert len(picks) == len(val.images) and all(len(p) == 3 for p in picks)
    assert all(p[0][1] >= p[1][1] >= p[2][1] for p in picks)  # sorted by similarity
    right_colour = np.mean([a["color"] in p[0][0] for a, p in zip(val.attributes, picks)])
    assert right_colour > 0.8
    with pytest.raises(T2IError):
        best_captions(model, val.images, pooled, unique[:-1])


def test_embeddings_are_unit_length_and_forward_is_scaled_cosine():
    model = ContrastiveModel(10, ClipConfig(input_size=16, channels=(8, 16)))
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    text = torch.randn(4, 10)
    img, txt = model.encode_images(images), model.encode_text(text)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(model(images, text), model.scale() * img @ txt.T)
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    uint8 = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)  # cache layout works too
    torch.testing.assert_close(model.encode_images(uint8.numpy()),
                               model.encode_images(uint8.permute(0, 3, 1, 2).float() / 127.5 - 1))


def test_save_load_round_trip(tmp_path):
    model = ContrastiveModel(12, ClipConfig(input_size=16, channels=(8,), embed_dim=8)).eval()
    path = save_clip(model, tmp_path / "clip.pt", {"val_r_precision": 0.5})
    loaded, report = load_clip(path)
    assert report == {"val_r_precision": 0.5} and loaded.name == model.name
    x, t = torch.rand(2, 3, 16, 16), torch.randn(2, 12)
    torch.testing.assert_close(loaded(x, t), model(x, t))
    (tmp_path / "broken.pt").write_bytes(b"\x00garbage")
    with pytest.raises(T2IError, match="broken.pt"):
        load_clip(tmp_path / "broken.pt")


def test_training_rejects_mismatched_inputs():
    with pytest.raises(T2IError, match="caption embeddings"):
        train_clip(np.zeros((2, 8, 8, 3), np.uint8), [0, 1, 1], torch.zeros(2, 4), ClipConfig(steps=1))


def test_feature_network_is_the_image_tower():
    model = ContrastiveModel(4, ClipConfig(input_size=16, channels=(8,)))
    net = model.feature_network()
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(net(images), model.image_features(images.float() / 127.5 - 1))
    assert net.num_features == model.config.embed_dim and net.name == model.name
    assert F.normalize(net(images), dim=1).shape == (3, model.config.embed_dim)
