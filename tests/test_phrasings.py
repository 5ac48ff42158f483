"""Caption paraphrase and the held-out phrasing split of Shapes (t2i_helpers.data.shapes_phrasings)."""
from __future__ import annotations

import json
import re

import pytest

from t2i_helpers.data.shapes import POSITION_WORDS, SIZE_WORDS, ShapesConfig, make_shapes
from t2i_helpers.data.shapes_phrasings import (HELD_OUT_TEMPLATES, PARAPHRASE_TEMPLATES, phrasing_paths,
                                               standard_annotation, standard_templates, write_phrasing_files)
from t2i_helpers.errors import T2IError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    paths = make_shapes(tmp_path_factory.mktemp("shapes"), ShapesConfig(images=120, image_size=32, seed=4))
    return paths, write_phrasing_files(paths, seed=4)


def _doc(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_three_sets_of_sentence_frames_are_disjoint():
    # ({alt} is a noun phrase in a new word order, {Pos} a capitalised position phrase, {label} "top-left")
    held = {t for pair in HELD_OUT_TEMPLATES for t in pair}
    para = {t for pair in PARAPHRASE_TEMPLATES for t in pair}
    standard = standard_templates()
    assert len(held) == 2 * len(HELD_OUT_TEMPLATES) and not held & para and not held & standard and not para & standard


def test_no_held_out_caption_is_ever_a_training_caption(shapes):
    paths, (train_para, val_phr) = shapes
    trained = {a["caption"] for f in (paths.train_json, train_para) for a in _doc(f)["annotations"]}
    standard_val = {a["caption"] for a in _doc(paths.val_json)["annotations"]}
    held = [a["caption"] for a in _doc(val_phr)["annotations"]]
    assert len(held) == 5 * len(_doc(paths.val_json)["images"])
    assert not set(held) & trained and not set(held) & standard_val


def test_the_paraphrased_train_file_keeps_every_standard_caption_and_adds_five_per_image(shapes):
    paths, (train_para, _) = shapes
    standard, para = _doc(paths.train_json), _doc(train_para)
    assert para["images"] == standard["images"] and para["annotations"][: len(standard["annotations"])] == standard["annotations"]
    added = para["annotations"][len(standard["annotations"]):]
    assert len(added) == 5 * len(standard["images"])
    ids = [a["id"] for a in para["annotations"]]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("which", [0, 1])
def test_mentions_say_what_the_caption_names(shapes, which):
    """Independent of the generator: the size word is there iff "size" is mentioned, a position phrase iff
    "position" is, and the colour always."""
    paths, files = shapes
    doc = _doc(files[which])
    images = {e["id"]: e for e in doc["images"]}
    for ann in doc["annotations"][-200:]:
        image, caption = images[ann["image_id"]], ann["caption"]
        words = set(re.findall(r"[a-z]+", caption.lower()))
        assert image["color"] in words
        assert bool(words & set(SIZE_WORDS[image["size"]])) == ("size" in ann["mentions"]), caption
        phrases = POSITION_WORDS[image["position"]][0]
        assert any(p in caption.lower() for p in phrases) == ("position" in ann["mentions"]), caption


def test_files_are_written_once_and_rewritten_when_the_source_changes(shapes, tmp_path):
    paths = make_shapes(tmp_path / "s", ShapesConfig(images=20, image_size=32, seed=5))
    train_para, val_phr = write_phrasing_files(paths, seed=5)
    stamp = val_phr.stat().st_mtime_ns
    assert write_phrasing_files(paths, seed=5) == (train_para, val_phr) and val_phr.stat().st_mtime_ns == stamp
    doc = _doc(paths.val_json)
    doc["annotations"] = doc["annotations"][:5]
    paths.val_json.write_text(json.dumps(doc))
    write_phrasing_files(paths, seed=5)
    assert {a["image_id"] for a in _doc(val_phr)["annotations"]} == {e["id"] for e in doc["images"]}
    assert _doc(val_phr)["info"]["source_digest"] != ""


def test_variant_files_map_back_to_the_standard_file(shapes):
    paths, (train_para, val_phr) = shapes
    assert standard_annotation(val_phr) == paths.val_json and standard_annotation(train_para) == paths.train_json
    assert standard_annotation(paths.val_json_zh) == paths.val_json
    assert standard_annotation(paths.val_json) == paths.val_json
    assert phrasing_paths(paths) == (train_para, val_phr)


def test_the_judge_of_a_phrasing_file_is_the_standard_files_judge(shapes, monkeypatch):
    from t2i_helpers.judges.classifier import load_or_train_attribute_classifier

    monkeypatch.setenv("T2I_TIER", "smoke")
    paths, (_, val_phr) = shapes
    standard, _ = load_or_train_attribute_classifier(paths.images_dir, paths.val_json)
    phrased, report = load_or_train_attribute_classifier(paths.images_dir, val_phr)
    assert report["from_cache"] is True and phrased.digest() == standard.digest()


def test_a_file_that_is_not_shapes_is_one_line(tmp_path):
    from t2i_helpers.data.shapes import ShapesPaths

    bad = tmp_path / "annotations" / "captions_train.json"
    bad.parent.mkdir()
    bad.write_text('{"annotations": []}')
    (tmp_path / "annotations" / "captions_val.json").write_text("{}")
    paths = ShapesPaths(tmp_path, tmp_path / "images", bad, bad.with_name("captions_val.json"))
    with pytest.raises(T2IError, match=r"not a Shapes annotation file: .*captions_train.json") as err:
        write_phrasing_files(paths)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "annotations" / "captions_train.paraphrased.json").exists()
