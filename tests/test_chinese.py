"""Chinese Shapes captions, the character-level Chinese text encoder, and bad captions with it."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from t2i_helpers.cli import main
from t2i_helpers.cli.curve import caption_files, train_curve
from t2i_helpers.data.evalset import load_eval_data, sample_caption_ids
from t2i_helpers.data.shapes import HELD_OUT_PAIRS, ShapesConfig, make_shapes, mirror_caption
from t2i_helpers.data.shapes_zh import (COLOR_ZH, POSITION_ZH, SHAPE_ZH, english_annotation, make_caption_zh,
                                        write_chinese_captions, zh_path)
from t2i_helpers.errors import AssetMissingError
from t2i_helpers.judges.classifier import load_or_train_attribute_classifier
from t2i_helpers.text import TextEncoder, TextEncoderConfig, encode_captions, mean_pool, model_key
from t2i_helpers.text.hub import PACKAGED_ROOT
from t2i_helpers.train.char_encoder import (CharEncoderConfig, build_tokenizer, character_vocab, fit_char_encoder,
                                            parallel_captions)
from t2i_helpers.train.shipped import load_shipped, read_sums, sha256, shipped_dir

# The English files of ShapesConfig(images=60, image_size=32, seed=3), made by the code before Chinese
# captions existed (git HEAD of 2026-12-01): adding the Chinese files must not change a byte of them.
ENGLISH_SHA256 = {"captions_train.json": "87774390625e7b80ba95b0356cb5a113994f62218b8e08486d2af964b53b4a07",
                  "captions_val.json": "c6119b60dcea89c02189ad8b1e052f9ad863ec3a88d03a22d95cf65c15047385"}
ALL_POSITION_WORDS = {w for words in POSITION_ZH.values() for w in words}
BAD_CAPTIONS = ["a red 圆形 in the 左上角", "", "！？。，", "...!!!", "😀🔺🟥", "红" * 5000, "   "]
zh_encoder_shipped = pytest.mark.skipif(not (PACKAGED_ROOT / "shapes-zh-char" / "config.json").is_file(),
                                        reason="the shipped Chinese encoder is absent")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("zh-shapes"), ShapesConfig(images=60, image_size=32, seed=3))


def _docs(paths):
    load = lambda p: json.loads(p.read_text(encoding="utf-8"))  # noqa: E731
    return {split: (load(en), load(zh_path(en))) for split, en in (("train", paths.train_json), ("val", paths.val_json))}


def test_english_files_unchanged_byte_for_byte(shapes):
    for path in (shapes.train_json, shapes.val_json):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == ENGLISH_SHA256[path.name]
    assert shapes.train_json_zh.is_file() and shapes.val_json_zh.is_file()


def test_an_existing_folder_gets_the_chinese_files_without_rewriting_english(shapes):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (shapes.train_json, shapes.val_json)}
    zh_bytes = shapes.val_json_zh.read_bytes()
    shapes.train_json_zh.unlink()
    shapes.val_json_zh.unlink()  # a folder made before the Chinese captions existed
    make_shapes(shapes.root, ShapesConfig(images=60, image_size=32, seed=3))
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before
    assert shapes.val_json_zh.read_bytes() == zh_bytes  # deterministic
    mtime = shapes.val_json_zh.stat().st_mtime_ns
    make_shapes(shapes.root, ShapesConfig(images=60, image_size=32, seed=3))
    assert shapes.val_json_zh.stat().st_mtime_ns == mtime  # current: not rewritten


def test_same_images_ids_mentions_and_attributes_named(shapes):
    for split, (en, zh) in _docs(shapes).items():
        assert zh["images"] == en["images"]
        assert [(a["id"], a["image_id"], a["mentions"]) for a in zh["annotations"]] == \
               [(a["id"], a["image_id"], a["mentions"]) for a in en["annotations"]]
        images = {e["id"]: e for e in zh["images"]}
        for ann in zh["annotations"]:
            text, image = ann["caption"], images[ann["image_id"]]
            assert COLOR_ZH[image["color"]] in text
            assert sum(c in text for c in COLOR_ZH.values()) == 1
            assert any(w in text for w in SHAPE_ZH[image["shape"]])
            assert (("大" in text) or ("小" in text)) == ("size" in ann["mentions"])
            if "size" in ann["mentions"]:
                assert ("大" if image["size"] == "large" else "小") in text
            if "position" in ann["mentions"]:
                assert any(w in text for w in POSITION_ZH[image["position"]])
            else:
                assert not any(w in text for w in ALL_POSITION_WORDS)


def test_held_out_pairs_only_in_val(shapes):
    docs = _docs(shapes)
    pairs = {split: {(e["color"], e["shape"]) for e in zh["images"]} for split, (_, zh) in docs.items()}
    assert not pairs["train"] & set(HELD_OUT_PAIRS)
    assert docs["val"][1]["info"]["held_out_pairs"] == [list(p) for p in HELD_OUT_PAIRS]


def test_word_order_and_measure_words_vary():
    attributes = {"shape": "circle", "color": "red", "size": "large", "position": "top left"}
    gen = torch.Generator().manual_seed(0)
    captions = {make_caption_zh(attributes, ["color", "shape", "size", "position"], torch.rand(6, generator=gen).tolist())
                for _ in range(300)}
    assert len(captions) > 50
    assert any(c.startswith(("左上", "在左上", "画面左上")) for c in captions)  # position first
    assert any(c.startswith(("一个", "一枚", "红色")) and ("左上" in c) for c in captions)  # object first
    assert any("一枚" in c for c in captions) and any("位于" in c for c in captions) and any("画着" in c for c in captions)
    assert make_caption_zh(attributes, ["color", "shape", "size", "position"], [0.0] * 6) == "一个红色的大圆形在左上角"
    assert make_caption_zh(attributes, ["color", "shape"], [0.0] * 6) == "一个红色的圆形"


def test_deterministic_by_seed_and_another_seed_differs(tmp_path, shapes):
    copy = tmp_path / "captions_val.json"
    copy.write_bytes(shapes.val_json.read_bytes())
    assert write_chinese_captions(copy, seed=3).read_bytes() == shapes.val_json_zh.read_bytes()
    other = json.loads(zh_path(copy).read_text())
    zh_path(copy).unlink()
    seed4 = json.loads(write_chinese_captions(copy, seed=4).read_text())["annotations"]
    assert [a["caption"] for a in seed4] != [a["caption"] for a in other["annotations"]]


def test_english_annotation_and_parallel_pairs(shapes):
    assert english_annotation(shapes.val_json_zh) == shapes.val_json
    assert english_annotation(shapes.val_json) == shapes.val_json
    zh, en = parallel_captions(shapes.train_json_zh)
    assert len(zh) == len(en) == len(json.loads(shapes.train_json.read_text())["annotations"])
    assert en[0] == json.loads(shapes.train_json.read_text())["annotations"][0]["caption"]


# -- the encoder ---------------------------------------------------------------------------------------


def test_character_encoder_round_trip_through_text_encoder_config(tmp_path, shapes):
    zh, _ = parallel_captions(shapes.train_json_zh)
    tokenizer = build_tokenizer(character_vocab(zh), tmp_path / "enc", max_length=32)
    config = CharEncoderConfig(layers=1, heads=2, hidden=32, intermediate=32, steps=3, batch_size=8)
    target = torch.randn(len(zh), 32)
    model, losses, _ = fit_char_encoder(zh, target, tokenizer, config, log=None)
    assert len(losses) == 3
    model.half().save_pretrained(tmp_path / "enc")
    tokenizer.save_pretrained(tmp_path / "enc")
    loaded = TextEncoder(TextEncoderConfig(model_name=str(tmp_path / "enc"), max_length=32))
    assert loaded.token_strings([zh[0]])[0][1:-1] == list(zh[0].lower())  # one token per character, no [UNK]
    batch = tokenizer(zh[:4], padding="max_length", max_length=32, truncation=True, return_tensors="pt",
                      return_token_type_ids=False)
    with torch.no_grad():
        expected = mean_pool(model.float()(**batch).last_hidden_state, batch["attention_mask"].bool())
    assert torch.allclose(loaded.encode(zh[:4]).pooled, expected, atol=1e-5)
    table, stats = encode_captions(zh[:4], TextEncoderConfig(model_name=str(tmp_path / "enc")), cache_dir=tmp_path / "c")
    again, stats2 = encode_captions(zh[:4], TextEncoderConfig(model_name=str(tmp_path / "enc")), cache_dir=tmp_path / "c")
    assert stats.encoded == 4 and stats2.from_cache == 4 and torch.equal(table.pooled, again.pooled)


@zh_encoder_shipped
def test_shipped_encoder_loads_offline_by_name_and_matches_its_digests(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = PACKAGED_ROOT / "shapes-zh-char"
    sums = read_sums(folder)
    assert "model.safetensors" in sums and all(sha256(folder / n) == d for n, d in sums.items())
    assert (folder / "model.safetensors").stat().st_size <= 5 * 2**20
    encoder = TextEncoder(TextEncoderConfig(model_name="shapes-zh-char"))
    assert encoder.dim == 384
    assert "[UNK]" not in encoder.token_strings(["一个红色的大圆形在左上角"])[0]
    minilm = TextEncoder(TextEncoderConfig())
    assert minilm.token_strings(["一个红色的大圆形在左上角"])[0].count("[UNK]") >= 6


def test_bert_base_chinese_offline_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetMissingError) as info:
        TextEncoder(TextEncoderConfig(model_name="bert-base-chinese"))
    message = str(info.value)
    assert "\n" not in message and "bert-base-chinese" in message and "shapes-zh-char" in message


def test_missing_packaged_encoder_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setattr("t2i_helpers.text.hub.PACKAGED_ROOT", tmp_path)
    with pytest.raises(AssetMissingError, match="train-zh-encoder"):
        TextEncoder(TextEncoderConfig(model_name="shapes-zh-char"))


# -- bad captions --------------------------------------------------------------------------------------


@zh_encoder_shipped
def test_bad_captions_give_vectors_with_the_chinese_encoder():
    encoder = TextEncoder(TextEncoderConfig(model_name="shapes-zh-char"))
    features = encoder.encode(BAD_CAPTIONS)
    assert features.pooled.shape == (len(BAD_CAPTIONS), 384) and torch.isfinite(features.pooled).all()
    assert len(encoder.token_strings(["红" * 5000])[0]) == 32  # cut to max_length


@zh_encoder_shipped
@pytest.mark.parametrize("language", ["zh", "en"])
def test_sample_cli_survives_bad_captions(tmp_path, capsys, monkeypatch, shapes, language):
    monkeypatch.setenv("T2I_SMOKE", "1")
    ann, model = (shapes.train_json_zh, "shapes-zh-char") if language == "zh" else (shapes.train_json, "all-MiniLM-L6-v2")
    assert main(["train", "--model", "baseline", "--data", str(shapes.images_dir), str(ann), "--out",
                 str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--device", "cpu", "--no-progress",
                 "--text-model", model]) == 0
    capsys.readouterr()
    for i, caption in enumerate(BAD_CAPTIONS):
        code = main(["sample", str(tmp_path / "run"), "--caption", caption, "-n", "1", "--out", str(tmp_path / f"{i}.png")])
        captured = capsys.readouterr()
        assert code == 0 and "1 samples of baseline" in captured.out, (caption[:20], captured.err)


@pytest.mark.skipif(not (shipped_dir("cpu") / "diffusion-zh.safetensors").is_file(),
                    reason="the shipped Chinese diffusion model is absent")
def test_shipped_chinese_diffusion_model_draws():
    run = load_shipped("diffusion", name="diffusion-zh", device="cpu")
    assert run.text_encoder_config.model_name == "shapes-zh-char"
    images = run.generate(["一个红色的大圆形在左上角", BAD_CAPTIONS[4]], seed=0, steps=2)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_mirror_caption_swaps_chinese_left_and_right_too():
    assert mirror_caption("左上角有一个红色的圆形") == "右上角有一个红色的圆形"
    assert mirror_caption("一个蓝色的方块位于右侧") == "一个蓝色的方块位于左侧"
    assert mirror_caption("a red circle on the left") == "a red circle on the right"


@pytest.mark.slow  # about 20 s alone (a smoke judge, a 2-step run, judged), 45 s beside a training job
@zh_encoder_shipped
def test_a_chinese_curve_trains_on_the_zh_files_and_is_judged_by_the_english_judge(tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_TIER", "smoke")  # the judge's smoke config: seconds
    paths = make_shapes(tmp_path / "shapes", ShapesConfig(images=80, image_size=32, seed=2))
    english_judge, _ = load_or_train_attribute_classifier(paths.images_dir, paths.val_json)
    chinese_judge, _ = load_or_train_attribute_classifier(paths.images_dir, paths.val_json_zh)
    assert chinese_judge.digest() == english_judge.digest()
    curve = train_curve("baseline", tmp_path / "run", steps=(2,), n_eval=10, root=paths.root, final_n=10,
                        captions="zh")
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["text"]["model_name"] == "shapes-zh-char" and record["data"]["ann_file"].endswith(".zh.json")
    assert curve["captions"] == "zh" and 0 <= curve["points"][0]["all_val"] <= 1
    assert caption_files(paths.root, "zh") == (paths.train_json_zh, paths.val_json_zh)


def test_chinese_val_is_judged_on_the_same_images_and_caption_rows(shapes):
    english, chinese = (load_eval_data(shapes.images_dir, ann, image_size=32) for ann in (shapes.val_json, shapes.val_json_zh))
    assert chinese.is_shapes and chinese.held_out_pairs == english.held_out_pairs
    assert list(chinese.caption_image) == list(english.caption_image) and chinese.mentions == english.mentions
    assert (sample_caption_ids(chinese, 50, 0) == sample_caption_ids(english, 50, 0)).all()
    assert (chinese.held_out_captions() == english.held_out_captions()).all()


def test_a_retrained_encoder_of_the_same_size_gets_another_cache_key(tmp_path, shapes):
    zh, _ = parallel_captions(shapes.train_json_zh)
    config = CharEncoderConfig(layers=1, heads=2, hidden=32, intermediate=32, steps=1, batch_size=4)
    folder = tmp_path / "enc"
    tokenizer = build_tokenizer(character_vocab(zh), folder, max_length=32)
    fit_char_encoder(zh, torch.randn(len(zh), 32), tokenizer, config, log=None)[0].save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    plain = model_key(TextEncoderConfig(model_name=str(folder)))
    (folder / "SHA256SUMS").write_text("0" * 64 + "  model.safetensors\n")
    first = model_key(TextEncoderConfig(model_name=str(folder)))
    (folder / "SHA256SUMS").write_text("1" * 64 + "  model.safetensors\n")
    assert len({plain, first, model_key(TextEncoderConfig(model_name=str(folder)))}) == 3
