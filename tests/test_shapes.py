"""The Shapes benchmark: deterministic files, exact colours, objects inside their grid cell, honest captions."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from t2i_helpers.data import shapes as S
from t2i_helpers.errors import T2IError

# Vocabulary the captions may use, written out here independently of the generator's tables.
SIZE_WORDS = {"small", "tiny", "little", "large", "big"}
POSITION_WORDS = {"top", "bottom", "left", "right", "center", "middle", "upper", "lower"}
SHAPE_WORDS = {"circle": {"circle", "disc"}, "square": {"square", "box", "block"}, "triangle": {"triangle"}}


def _words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z]+", caption.lower()))


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> S.ShapesPaths:
    return S.make_shapes(tmp_path_factory.mktemp("shapes") / "out", S.ShapesConfig(images=600, seed=3))


@pytest.fixture(scope="module")
def shapes_json(shapes_dir) -> dict[str, dict]:
    return {split: json.loads(p.read_text()) for split, p in (("train", shapes_dir.train_json), ("val", shapes_dir.val_json))}


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return rows[0], rows[-1], cols[0], cols[-1]


def test_constants_match_the_spec():
    assert S.SHAPES == ("circle", "square", "triangle")
    assert list(S.COLORS) == ["red", "green", "blue", "yellow", "purple", "white"]
    assert S.COLORS["red"] == (220, 40, 40) and S.COLORS["white"] == (235, 235, 235)
    assert S.SIZES == ("small", "large") and len(S.POSITIONS) == 9
    assert S.ATTRIBUTES == ("color", "shape", "size", "position")
    assert 1 <= len(S.HELD_OUT_PAIRS) < 18
    assert all(c in S.COLORS and s in S.SHAPES for c, s in S.HELD_OUT_PAIRS)


@pytest.mark.parametrize("image_size", [32, 64, 97, 256])
def test_every_object_is_inside_its_cell_with_exact_colour(image_size):
    rng = np.random.default_rng(0)
    cell = image_size / 3
    for shape in S.SHAPES:
        for size in S.SIZES:
            expected_side = round({"small": 0.25, "large": 0.5}[size] * image_size)
            for position in S.POSITIONS:
                for k in range(2):  # two random jitters, colours taking turns
                    color = list(S.COLORS)[(S.POSITIONS.index(position) + k) % len(S.COLORS)]
                    image = S.render(shape, color, size, position, image_size, rng)
                    assert image.shape == (image_size, image_size, 3) and image.dtype == np.uint8
                    mask = image.any(axis=2)
                    # the object keeps its full size: nothing of it was cut off by the canvas edge
                    top, bottom, left, right = _bbox(mask)
                    assert bottom - top + 1 == expected_side, (shape, size, position)
                    assert right - left + 1 == expected_side, (shape, size, position)
                    # every object pixel is exactly the named colour; everything else is black
                    assert (image[mask] == S.COLORS[color]).all()
                    assert (image[~mask] == 0).all()
                    # the object's centre lies in the named third of the canvas (row and column)
                    row, col = divmod(S.POSITIONS.index(position), 3)
                    cy, cx = (top + bottom + 1) / 2, (left + right + 1) / 2
                    assert row * cell <= cy < (row + 1) * cell, (position, cy)
                    assert col * cell <= cx < (col + 1) * cell, (position, cx)


def test_shapes_differ_in_area_and_triangle_points_up():
    n = 64
    areas = {s: S.render(s, "white", "large", "center", n).any(axis=2).sum() for s in S.SHAPES}
    side = round(0.5 * n)
    assert areas["square"] == side * side
    assert abs(areas["circle"] - np.pi * side**2 / 4) < 0.03 * side * side
    assert abs(areas["triangle"] - side**2 / 2) < 0.05 * side * side
    tri = S.render("triangle", "white", "large", "center", n).any(axis=2)
    widths = tri.sum(axis=1)[tri.any(axis=1)]
    assert widths[0] < widths[-1] and (np.diff(widths) >= 0).all()  # narrow on top, widening downwards


@pytest.mark.parametrize("bad", [16, 31, 257, 1024, 64.0])
def test_image_size_out_of_range_is_a_one_line_error(bad):
    with pytest.raises(T2IError) as info:
        S.ShapesConfig(image_size=bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(T2IError):
        S.render("circle", "red", "small", "top", bad)


def test_unknown_attribute_is_a_one_line_error():
    with pytest.raises(T2IError, match="orange"):
        S.render("circle", "orange", "small", "top", 64)


def test_generation_is_byte_identical_for_a_seed(tmp_path):
    a = S.make_shapes(tmp_path / "a", S.ShapesConfig(images=40, seed=7))
    b = S.make_shapes(tmp_path / "b", S.ShapesConfig(images=40, seed=7))
    c = S.make_shapes(tmp_path / "c", S.ShapesConfig(images=40, seed=8))
    for name in ("captions_train.json", "captions_val.json"):
        assert (a.root / "annotations" / name).read_bytes() == (b.root / "annotations" / name).read_bytes()
    files_a = sorted(p.name for p in a.images_dir.iterdir())
    assert files_a == sorted(p.name for p in b.images_dir.iterdir()) and len(files_a) == 40
    for name in files_a:
        assert (a.images_dir / name).read_bytes() == (b.images_dir / name).read_bytes()
    assert a.train_json.read_bytes() != c.train_json.read_bytes()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temp files left


def test_layout_ids_and_splits(shapes_dir, shapes_json):
    train, val = shapes_json["train"], shapes_json["val"]
    assert len(train["images"]) == 480 and len(val["images"]) == 120
    ids = [e["id"] for e in train["images"] + val["images"]]
    assert len(set(ids)) == 600
    for split, doc in shapes_json.items():
        assert doc["info"]["description"] == "Shapes benchmark"
        assert doc["info"]["seed"] == 3 and doc["info"]["image_size"] == 64
        assert doc["licenses"] == [] and "categories" not in doc
        per_image = Counter(a["image_id"] for a in doc["annotations"])
        for entry in doc["images"]:
            assert entry["file_name"] == f"{split}_{entry['id']:06d}.png"
            assert (shapes_dir.images_dir / entry["file_name"]).is_file()
            assert per_image[entry["id"]] == 5
            assert entry["shape"] in S.SHAPES and entry["color"] in S.COLORS
            assert entry["size"] in S.SIZES and entry["position"] in S.POSITIONS
        assert set(per_image) <= {e["id"] for e in doc["images"]}
    ann_ids = [a["id"] for doc in shapes_json.values() for a in doc["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)


def test_png_pixels_match_the_json_attributes(shapes_dir, shapes_json):
    for entry in shapes_json["val"]["images"][:60]:
        with Image.open(shapes_dir.images_dir / entry["file_name"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)
            pixels = np.asarray(im)
        mask = pixels.any(axis=2)
        assert (pixels[mask] == S.COLORS[entry["color"]]).all()
        top, bottom, left, right = _bbox(mask)
        row, col = divmod(S.POSITIONS.index(entry["position"]), 3)
        assert int((top + bottom + 1) / 2 // (64 / 3)) == row
        assert int((left + right + 1) / 2 // (64 / 3)) == col
        assert bottom - top + 1 == (16 if entry["size"] == "small" else 32)


def test_held_out_pairs_only_in_val(shapes_json):
    held = {tuple(p) for p in S.HELD_OUT_PAIRS}
    train_pairs = {(e["color"], e["shape"]) for e in shapes_json["train"]["images"]}
    val_pairs = {(e["color"], e["shape"]) for e in shapes_json["val"]["images"]}
    assert not train_pairs & held
    assert len(train_pairs) == 18 - len(held)  # every other pair is trained on
    assert held <= val_pairs and val_pairs - held  # val has held-out and ordinary pairs
    assert {tuple(p) for p in shapes_json["val"]["info"]["held_out_pairs"]} == held


def test_captions_name_colour_and_shape_and_mentions_are_honest(shapes_json):
    for doc in shapes_json.values():
        attributes = {e["id"]: e for e in doc["images"]}
        for ann in doc["annotations"]:
            entry, words, mentions = attributes[ann["image_id"]], _words(ann["caption"]), ann["mentions"]
            assert entry["color"] in words
            assert not (set(S.COLORS) - {entry["color"]}) & words  # no other colour named
            assert SHAPE_WORDS[entry["shape"]] & words
            other_shapes = set().union(*(v for k, v in SHAPE_WORDS.items() if k != entry["shape"]))
            assert not other_shapes & words
            assert mentions[:2] == ["color", "shape"] and set(mentions) <= set(S.ATTRIBUTES)
            assert ("size" in mentions) == bool(SIZE_WORDS & words), ann["caption"]
            assert ("position" in mentions) == bool(POSITION_WORDS & words), ann["caption"]
            if "size" in mentions:
                expected = {"small", "tiny", "little"} if entry["size"] == "small" else {"large", "big"}
                assert words & SIZE_WORDS <= expected
            if "position" in mentions:
                named = words & POSITION_WORDS
                for side in ("top", "bottom", "left", "right"):
                    if side in named:
                        assert side in entry["position"], (ann["caption"], entry["position"])
                if named & {"center", "middle"}:
                    assert entry["position"] == "center"


def test_size_and_position_are_left_out_about_a_third_of_the_time(shapes_json):
    anns = [a for doc in shapes_json.values() for a in doc["annotations"]]
    assert len(anns) == 3000
    no_size = np.mean(["size" not in a["mentions"] for a in anns])
    no_pos = np.mean(["position" not in a["mentions"] for a in anns])
    neither = np.mean([len(a["mentions"]) == 2 for a in anns])
    assert 0.28 < no_size < 0.39 and 0.28 < no_pos < 0.39
    assert 0.07 < neither < 0.16  # independent: about 1/9
    # one caption fits many images: the same text describes images that differ in size or position
    entries = {e["id"]: e for doc in shapes_json.values() for e in doc["images"]}
    fits: dict[str, set] = {}
    for a in anns:
        e = entries[a["image_id"]]
        fits.setdefault(a["caption"], set()).add((e["size"], e["position"]))
    assert max(len(v) for v in fits.values()) >= 3


def test_at_least_eight_phrasings(shapes_json):
    def skeleton(caption: str) -> str:
        text = caption.lower()
        for word in sorted(set(S.COLORS) | SIZE_WORDS | set().union(*SHAPE_WORDS.values()), key=len, reverse=True):
            text = re.sub(rf"\b{word}\b", "X", text)
        text = re.sub(r"\b(top|bottom|upper|lower)[- ](left|right)\b", "P", text)
        text = re.sub(r"\b(top|bottom|left|right|center|middle)\b", "P", text)
        return text

    full = [a["caption"] for doc in shapes_json.values() for a in doc["annotations"] if len(a["mentions"]) == 4]
    skeletons = {re.sub(r"\b(the |of the image|corner|side|edge)\b", "", skeleton(c)) for c in full}
    assert len(skeletons) >= 8, skeletons


def test_captions_of_one_image_differ(shapes_json):
    by_image = {}
    for a in shapes_json["train"]["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    distinct = np.mean([len(set(c)) == len(c) for c in by_image.values()])
    assert distinct > 0.95


def test_existing_output_is_reused_and_config_change_regenerates(tmp_path):
    out = tmp_path / "s"
    first = S.make_shapes(out, S.ShapesConfig(images=20, seed=1))
    stamp = first.train_json.stat().st_mtime_ns
    S.make_shapes(out, S.ShapesConfig(images=20, seed=1))
    assert first.train_json.stat().st_mtime_ns == stamp
    S.make_shapes(out, S.ShapesConfig(images=20, seed=2))
    assert json.loads(first.train_json.read_text())["info"]["seed"] == 2


def test_command_line(tmp_path, capsys):
    assert S.main(["--out", str(tmp_path / "cli"), "--images", "10", "--size", "32"]) == 0
    assert (tmp_path / "cli" / "annotations" / "captions_val.json").is_file()
    assert S.main(["--out", str(tmp_path / "bad"), "--images", "10", "--size", "300"]) == 2
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("error: ")


def test_generation_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    S.make_shapes(tmp_path / "fast", S.ShapesConfig(images=1000))
    assert time.perf_counter() - start < 5.0  # about 1 s on two busy cores; thousands per second when idle


def test_plain_pycocotools_reads_the_shapes_files(tmp_path):
    """Shapes is COCO captions format for real: pycocotools' own COCO() indexes it with no workaround."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from t2i_helpers.data.shapes import ShapesConfig, make_shapes

    paths = make_shapes(tmp_path / "s", ShapesConfig(images=20, image_size=32, seed=1))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(paths.train_json))
    image_id = coco.getImgIds()[0]
    assert len(coco.loadAnns(coco.getAnnIds(imgIds=image_id))) == 5


def test_shapes_dataset_is_one_named_folder_made_once(tmp_path, monkeypatch):
    from t2i_helpers.data.shapes import shapes_dataset

    monkeypatch.setenv("T2I_DATA", str(tmp_path))
    root = shapes_dataset(images=40, image_size=32, seed=1)
    assert root == tmp_path / "shapes-40-32px-seed1"
    ann = root / "annotations" / "captions_val.json"
    stamp = ann.stat().st_mtime_ns
    assert shapes_dataset(images=40, image_size=32, seed=1) == root and ann.stat().st_mtime_ns == stamp
