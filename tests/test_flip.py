"""Left-right flips that rewrite the caption ("left" <-> "right"), or not: the loader and the engine."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i_helpers.data.cache import ImageCache
from t2i_helpers.data.loader import CachedLoader
from t2i_helpers.data.shapes import ShapesConfig, make_shapes, mirror_caption
from t2i_helpers.errors import DatasetError
from t2i_helpers.models.baseline import BaselineConfig
from t2i_helpers.train import TrainConfig, load_run, train


@pytest.mark.parametrize("caption, mirrored", [
    ("a red circle in the top left corner", "a red circle in the top right corner"),
    ("top-right: a small blue square", "top-left: a small blue square"),
    ("a green triangle on the right side", "a green triangle on the left side"),
    ("a white disc at the bottom", "a white disc at the bottom"),  # nothing to swap
    ("a brightly lit circle", "a brightly lit circle"),  # "lit" is not "left"
])
def test_mirror_caption_swaps_left_and_right(caption, mirrored):
    assert mirror_caption(caption) == mirrored
    assert mirror_caption(mirror_caption(caption)) == caption


class _Table:
    """Captions with one-hot "embeddings", so a batch says which row it read."""

    def __init__(self, captions):
        self.captions = list(captions)
        self.pooled = torch.eye(len(self.captions))
        self.rows = {c: i for i, c in enumerate(self.captions)}

    def index(self, captions):
        return [self.rows[c] for c in captions]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    paths = make_shapes(tmp_path_factory.mktemp("flip-shapes"), ShapesConfig(images=60, image_size=32, seed=4))
    return ImageCache.build(paths.images_dir, paths.train_json, 32, cache_dir=tmp_path_factory.mktemp("cache"))


def _loader(cache, flip):
    captions = cache.all_captions()
    table = _Table(list(dict.fromkeys(captions + [mirror_caption(c) for c in captions])))
    mirror = table.index([mirror_caption(c) for c in captions]) if flip == "rewrite" else None
    return table, CachedLoader(cache, table, batch_size=16, seed=0, flip=flip, mirror_rows=mirror)


@pytest.mark.parametrize("flip", ["rewrite", "naive"])
def test_flipped_images_are_mirrored_and_their_captions_follow_only_when_rewritten(cache, flip):
    table, loader = _loader(cache, flip)
    plain_table, plain = _loader(cache, "none")
    for _ in range(3):
        indices, ids, flips = loader._next_indices()
        assert flips.any() and not flips.all()
        batch, reference = loader.make_batch(indices, ids, flips), plain.make_batch(indices, ids)
        captions = [table.captions[int(r)] for r in batch.text.argmax(dim=1)]
        for j, (image, caption_id) in enumerate(zip(batch.images, ids)):
            original = cache.all_captions()[caption_id]
            if flips[j]:
                assert torch.equal(image, reference.images[j].flip(-1))
                assert captions[j] == (mirror_caption(original) if flip == "rewrite" else original)
            else:
                assert torch.equal(image, reference.images[j]) and captions[j] == original


def test_no_flips_keep_the_batches_of_a_loader_without_them(cache):
    _, flipless = _loader(cache, "none")
    _, flipping = _loader(cache, "naive")
    for _ in range(4):
        a, b = flipless._next_indices(), flipping._next_indices()
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # same images and captions
        assert not a[2].any()


def test_bad_flip_settings_are_one_line(cache):
    with pytest.raises(DatasetError, match="flip must be one of"):
        CachedLoader(cache, None, batch_size=8, flip="sometimes")
    with pytest.raises(DatasetError, match="needs mirror_rows"):
        CachedLoader(cache, None, batch_size=8, flip="rewrite")


def test_a_run_with_rewritten_flips_trains_and_records_it(tiny_train_data, tmp_path):
    config = TrainConfig(steps=4, batch_size=8, warmup_steps=0, checkpoint_every=0, sample_every=0, log_every=1,
                         progress=False, device="cpu", flip="rewrite")
    result = train("baseline", *tiny_train_data, tmp_path / "run", config,
                   BaselineConfig(image_size=32, fc_channels=8, hidden_channels=4))
    assert result.step == 4 and load_run(tmp_path / "run", device="cpu").train_config.flip == "rewrite"


def test_train_takes_a_flip_flag(tiny_train_data, tmp_path, monkeypatch):
    from t2i_helpers.cli import main

    monkeypatch.setenv("T2I_TIER", "smoke")  # restored afterwards (main's --tier would set it for good)
    out = tmp_path / "cli-run"
    assert main(["train", "--model", "baseline", "--data", *map(str, tiny_train_data), "--out", str(out), "--steps", "2",
                 "--batch-size", "8", "--device", "cpu", "--no-progress", "--flip", "naive"]) == 0
    assert load_run(out, device="cpu").train_config.flip == "naive"
    assert main(["train", "--model", "baseline", "--data", "a", "b", "--out", str(out), "--flip", "sideways"]) == 2
