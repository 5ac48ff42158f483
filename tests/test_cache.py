"""The resized-image cache and the loader that trains from it (plus the data benchmark)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_helpers.data import cache as C
from t2i_helpers.data.cache import ImageCache
from t2i_helpers.data.loader import CachedLoader
from t2i_helpers.data.shapes import ShapesConfig, make_shapes
from t2i_helpers.errors import DatasetError
from t2i_helpers.text import TextTable


def _independent_resize(path: Path, size: int) -> np.ndarray:
    """What the cache should hold, computed here without the package: centre square, PIL BICUBIC."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return np.asarray(im.crop(box).resize((size, size), Image.BICUBIC))


def _table(captions: list[str], dim: int = 8, tokens: int | None = None, seed: int = 0) -> TextTable:
    g = torch.Generator().manual_seed(seed)
    pooled = torch.randn(len(captions), dim, generator=g)
    tok = mask = None
    if tokens:
        tok = torch.randn(len(captions), tokens, dim, generator=g).half()
        mask = torch.rand(len(captions), tokens, generator=g) > 0.3
    return TextTable(pooled=pooled, tokens=tok, mask=mask, captions=list(captions), model_name="random")


@pytest.fixture(scope="module")
def coco_cache(coco_mini, tmp_path_factory) -> ImageCache:
    root = tmp_path_factory.mktemp("cache")
    return ImageCache.build(coco_mini / "val2017", coco_mini / "annotations" / "captions_val2017.json", 32,
                            cache_dir=root, progress=False)


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory) -> ImageCache:
    root = tmp_path_factory.mktemp("shapes")
    paths = make_shapes(root / "data", ShapesConfig(images=250, seed=1))
    return ImageCache.build(paths.images_dir, paths.train_json, 64, cache_dir=root / "cache", progress=False)


# ------------------------------------------------------------------------------------------- cache
def test_cache_pixels_equal_an_independent_pil_resize(coco_mini, coco_cache):
    assert coco_cache.images.shape == (79, 32, 32, 3) and coco_cache.images.dtype == np.uint8
    assert isinstance(coco_cache.images, np.memmap)  # on disk, not in RAM
    for i, name in enumerate(coco_cache.file_names):
        expected = _independent_resize(coco_mini / "val2017" / name, 32)
        assert np.array_equal(coco_cache.images[i], expected), name


def test_cache_keeps_every_caption_of_every_image(coco_mini, coco_cache):
    data = json.loads((coco_mini / "annotations" / "captions_val2017.json").read_text())
    by_image: dict[int, list[str]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"].strip())
    assert coco_cache.image_ids == sorted(by_image)
    assert coco_cache.captions == [by_image[i] for i in coco_cache.image_ids]
    table = coco_cache.all_captions()
    assert len(table) == len(set(table)) == len({c for caps in by_image.values() for c in caps})
    assert sum(len(ids) for ids in coco_cache.caption_ids_per_image) == 395
    assert coco_cache.attributes is None and coco_cache.skipped == {}


def test_cache_is_reused_and_keyed_by_the_annotation_file(tmp_path):
    paths = make_shapes(tmp_path / "d", ShapesConfig(images=20, image_size=32))
    first = ImageCache.build(paths.images_dir, paths.train_json, 32, cache_dir=tmp_path / "c")
    second = ImageCache.build(paths.images_dir, paths.train_json, 32, cache_dir=tmp_path / "c")
    assert first.built and not second.built and first.path == second.path
    assert first.path.parent == tmp_path / "c"
    other_size = ImageCache.build(paths.images_dir, paths.train_json, 16, cache_dir=tmp_path / "c")
    assert other_size.path != first.path and other_size.images.shape[1:] == (16, 16, 3)
    stat = paths.train_json.stat()
    os.utime(paths.train_json, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "edited"
    edited = ImageCache.build(paths.images_dir, paths.train_json, 32, cache_dir=tmp_path / "c")
    assert edited.built and edited.path != first.path
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]  # no temp folders left


def test_default_cache_dir_is_under_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_DATA", str(tmp_path / "data"))
    paths = make_shapes(tmp_path / "d", ShapesConfig(images=10, image_size=32))
    cache = ImageCache.build(paths.images_dir, paths.val_json, 32)
    assert cache.path.parent == tmp_path / "data" / "cache" / "images"


def test_killed_build_leaves_nothing(tmp_path, monkeypatch):
    paths = make_shapes(tmp_path / "d", ShapesConfig(images=30, image_size=32))
    calls = {"n": 0}
    real = C.center_crop_resize

    def dies_halfway(image, size):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(image, size)

    monkeypatch.setattr(C, "center_crop_resize", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        ImageCache.build(paths.images_dir, paths.train_json, 32, cache_dir=tmp_path / "c", workers=1)
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.setattr(C, "center_crop_resize", real)
    assert ImageCache.build(paths.images_dir, paths.train_json, 32, cache_dir=tmp_path / "c").built


def test_bad_images_are_skipped_and_counted(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    names = ["a.png", "b.png", "broken.png", "gone.png", "quiet.png"]
    rng = np.random.default_rng(0)
    for name in names[:3] + names[4:]:
        Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(root / name)
    data = (root / "broken.png").read_bytes()
    (root / "broken.png").write_bytes(data[: len(data) // 2])
    images = [{"id": i, "file_name": n} for i, n in enumerate(names)]
    anns = [{"id": i, "image_id": i, "caption": f"caption {i}"} for i in range(4)]  # quiet.png: none
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns}))
    cache = ImageCache.build(root, ann, 16, cache_dir=tmp_path / "c")
    assert cache.file_names == ["a.png", "b.png"] and cache.images.shape == (2, 16, 16, 3)
    assert cache.num_skipped == 3
    assert cache.skipped["missing file"] == ["gone.png"] and cache.skipped["no captions"] == ["quiet.png"]
    assert cache.skipped["truncated"] == ["broken.png"]
    assert np.array_equal(cache.images[1], _independent_resize(root / "b.png", 16))


def test_shapes_cache_carries_attributes_and_mentions(shapes_cache):
    doc = json.loads((shapes_cache.path / "index.json").read_text())
    assert doc["resize"] == C.RESIZE
    assert shapes_cache.info["description"] == "Shapes benchmark"
    assert len(shapes_cache.attributes) == len(shapes_cache) == 200
    assert set(shapes_cache.attributes[0]) == {"shape", "color", "size", "position"}
    assert len(shapes_cache.mentions) == len(shapes_cache.all_captions())
    for ids, attrs in zip(shapes_cache.caption_ids_per_image[:20], shapes_cache.attributes[:20]):
        for c in ids:
            assert attrs["color"] in shapes_cache.all_captions()[c]
            assert shapes_cache.mentions[c][:2] == ["color", "shape"]
    # Shapes PNGs are already 64 px: the cache holds them unchanged
    first = shapes_cache.file_names[0]
    src = Path(json.loads((shapes_cache.path / "index.json").read_text())["image_root"]) / first
    assert np.array_equal(shapes_cache.images[0], np.asarray(Image.open(src).convert("RGB")))


def test_load_rejects_a_damaged_cache(tmp_path, shapes_cache):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text("{}")
    with pytest.raises(DatasetError, match="broken"):
        ImageCache.load(broken)


# ------------------------------------------------------------------------------------------ loader
def _pixel_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_loader_batches_have_the_model_contract(coco_cache):
    table = _table(coco_cache.all_captions(), dim=8)
    loader = CachedLoader(coco_cache, table, batch_size=16, seed=0)
    batch = next(iter(loader))
    assert batch.images.shape == (16, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.images.is_contiguous()
    assert batch.images.min() >= -1 and batch.images.max() <= 1
    assert batch.text.shape == (16, 8) and batch.tokens is None and batch.token_mask is None
    assert torch.equal(batch.text, table.pooled[batch.caption_ids])
    assert len(loader) == 79 // 16


def test_loader_pixels_and_captions_belong_together(coco_cache):
    table = _table(coco_cache.all_captions())
    loader = CachedLoader(coco_cache, table, batch_size=10, seed=3, drop_last=False)
    where = {_pixel_key(img): i for i, img in enumerate(coco_cache.images)}
    seen = []
    for batch in loader.epoch_batches():
        as_uint8 = ((batch.images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
        for img, expected_float, cid in zip(as_uint8, batch.images, batch.caption_ids.tolist()):
            i = where[_pixel_key(img)]
            seen.append(i)
            assert cid in coco_cache.caption_ids_per_image[i]  # a caption of this very image
            exact = torch.from_numpy(coco_cache.images[i].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
            assert torch.equal(expected_float, exact)
    assert sorted(seen) == list(range(79))  # one epoch: every image exactly once
    assert loader.epoch == 1 and loader.position == 0


def test_loader_picks_different_captions_across_epochs(coco_cache):
    loader = CachedLoader(coco_cache, None, batch_size=79, seed=0)
    assert next(iter(loader)).text.shape == (79, 0)
    chosen: dict[int, set[int]] = {}
    for _ in range(12):
        _, caption_ids, _ = loader._next_indices()
        for cid in caption_ids.tolist():
            image = next(i for i, ids in enumerate(coco_cache.caption_ids_per_image) if cid in ids)
            chosen.setdefault(image, set()).add(cid)
    assert np.mean([len(v) for v in chosen.values()]) > 3  # of 5 captions each


def test_loader_tokens_and_mask(shapes_cache):
    table = _table(shapes_cache.all_captions(), dim=6, tokens=5)
    batch = next(iter(CachedLoader(shapes_cache, table, batch_size=8)))
    assert batch.tokens.shape == (8, 5, 6) and batch.tokens.dtype == torch.float32
    assert torch.equal(batch.tokens, table.tokens[batch.caption_ids].float())
    assert batch.token_mask.dtype == torch.bool and torch.equal(batch.token_mask, table.mask[batch.caption_ids])


def _run(loader: CachedLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    stream = iter(loader)
    return [(b.images, b.caption_ids) for b in (next(stream) for _ in range(n))]


def test_loader_is_deterministic_for_a_seed(shapes_cache):
    table = _table(shapes_cache.all_captions())
    a = _run(CachedLoader(shapes_cache, table, batch_size=32, seed=5), 14)  # crosses two epoch ends
    b = _run(CachedLoader(shapes_cache, table, batch_size=32, seed=5), 14)
    c = _run(CachedLoader(shapes_cache, table, batch_size=32, seed=6), 14)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(a, c))
    unshuffled = CachedLoader(shapes_cache, table, batch_size=32, shuffle=False)
    first = next(iter(unshuffled)).images
    expected = torch.from_numpy(shapes_cache.images[:32].astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1
    assert torch.equal(first, expected)


@pytest.mark.parametrize("stop_after", [1, 6, 7, 9])  # 6 batches per epoch: before, at and after its end
def test_resumed_loader_sees_exactly_the_same_batches(shapes_cache, stop_after):
    table = _table(shapes_cache.all_captions())
    reference = _run(CachedLoader(shapes_cache, table, batch_size=32, seed=2), stop_after + 8)
    first = CachedLoader(shapes_cache, table, batch_size=32, seed=2)
    _run(first, stop_after)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint as plain JSON
    resumed = CachedLoader(shapes_cache, table, batch_size=32, seed=999)
    resumed.load_state_dict(state)
    for (x_img, x_ids), (y_img, y_ids) in zip(reference[stop_after:], _run(resumed, 8)):
        assert torch.equal(x_img, y_img) and torch.equal(x_ids, y_ids)


@pytest.mark.parametrize("with_text", [True, False])
def test_resident_loader_gives_the_same_batches(shapes_cache, with_text):
    """resident=True (the images and the text table on the device, gathered there) changes where a
    batch is put together, not what it holds; here the 'device' is the CPU."""
    captions = ["an extra caption"] + shapes_cache.all_captions()[::-1]  # rows looked up by caption
    table = _table(captions, dim=6, tokens=5) if with_text else None
    plain = CachedLoader(shapes_cache, table, batch_size=32, seed=4)
    resident = CachedLoader(shapes_cache, table, batch_size=32, seed=4, resident=True)
    assert resident.resident and not plain.resident  # auto: resident only on a CUDA device
    for _ in range(8):  # crosses an epoch end
        a, b = plain.next_batch(), resident.next_batch()
        for field in ("images", "text", "tokens", "token_mask", "caption_ids"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None and y is None) or (torch.equal(x, y) and x.dtype == y.dtype), field
    assert resident.state_dict() == plain.state_dict()


def test_loader_is_resident_on_a_gpu_only_when_its_data_fit_a_quarter_of_free_memory(shapes_cache, monkeypatch):
    table = _table(shapes_cache.all_captions(), dim=6, tokens=5)
    loader = CachedLoader(shapes_cache, table, batch_size=8)
    size = shapes_cache.images.nbytes + table.pooled.nbytes + table.tokens.nbytes + table.mask.nbytes
    loader.device = torch.device("cuda")  # only the decision is checked: no GPU needed
    for free, fits in [(4 * size, True), (4 * size - 1, False)]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free, 8 * size))
        assert loader._fits_on_device() is fits


def test_loader_without_drop_last_gives_the_short_batch(shapes_cache):
    loader = CachedLoader(shapes_cache, None, batch_size=64, drop_last=False)
    sizes = [len(b) for b in loader.epoch_batches()]
    assert sizes == [64, 64, 64, 8] and len(loader) == 4


def test_loader_errors(shapes_cache):
    with pytest.raises(DatasetError, match="batch_size 500"):
        CachedLoader(shapes_cache, None, batch_size=500)
    with pytest.raises(DatasetError, match="captions"):
        CachedLoader(shapes_cache, _table(["a caption", "another"]), batch_size=8)
    other = CachedLoader(shapes_cache, None, batch_size=8)
    with pytest.raises(DatasetError, match="same data"):
        other.load_state_dict({"seed": 0, "epoch": 0, "position": 0, "num_images": 3})


def test_loader_accepts_a_larger_table_by_caption(shapes_cache):
    captions = ["an extra caption"] + shapes_cache.all_captions()[::-1]
    table = _table(captions)
    batch = next(iter(CachedLoader(shapes_cache, table, batch_size=16)))
    rows = table.index([shapes_cache.all_captions()[i] for i in batch.caption_ids.tolist()])
    assert torch.equal(batch.text, table.pooled[rows])


def test_loader_speed(shapes_cache):
    import time

    loader = CachedLoader(shapes_cache, _table(shapes_cache.all_captions(), dim=384), batch_size=64)
    stream = iter(loader)
    next(stream)
    start = time.process_time()
    n = sum(len(next(stream)) for _ in range(100))
    rate = n / max(time.process_time() - start, 1e-9)
    assert rate > 10_000, f"{rate:.0f} images/s"  # about 50,000 per core when the machine is idle


def test_bench_data_returns_numbers(coco_mini):
    from t2i_helpers.cli.bench import bench_data

    result = bench_data(coco_root=coco_mini, shapes_images=80, cached_batches=5, file_images=16, text=False,
                        batch_size=16)
    for name in ("coco-mini", "shapes"):
        assert result[name]["cached_images_per_s"] > 0 and result[name]["jpeg_images_per_s"] > 0
        assert "text_captions_per_s" not in result[name]
    assert result["coco-mini"]["images"] == 79
    json.dumps(result)
