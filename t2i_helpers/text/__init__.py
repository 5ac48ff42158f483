"""Captions to vectors: a (frozen) BERT-style text encoder and an on-disk cache of its outputs.

The generators never see words, only what a text encoder makes of them: :class:`TextEncoder`
(:mod:`~t2i_helpers.text.encoder`) with the pooling of :mod:`~t2i_helpers.text.pooling`, loaded
offline first (:mod:`~t2i_helpers.text.hub`), and :func:`encode_captions`, which encodes each
caption once and caches it (:mod:`~t2i_helpers.text.cache`).
"""
from t2i_helpers.text.cache import CacheStats, EmbeddingCache, MissingCaptionError, TextTable, encode_captions
from t2i_helpers.text.config import POOLINGS, TextEncoderConfig, model_key
from t2i_helpers.text.encoder import TextEncoder, TextFeatures
from t2i_helpers.text.hub import BUNDLED_HUB_ID, DEFAULT_MODEL, export_text_model, load_pretrained, resolve_model
from t2i_helpers.text.pooling import cls_pool, mean_pool, reference_mean_pool

__all__ = [
    "DEFAULT_MODEL", "BUNDLED_HUB_ID", "POOLINGS", "TextEncoderConfig", "TextFeatures", "TextEncoder", "TextTable",
    "CacheStats", "EmbeddingCache", "MissingCaptionError", "mean_pool", "cls_pool", "reference_mean_pool",
    "resolve_model", "load_pretrained", "export_text_model", "model_key", "encode_captions",
]
