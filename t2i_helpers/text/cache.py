"""Caption embeddings computed once: the :class:`TextTable` the data loader reads, and the on-disk cache behind it.

A frozen encoder maps the same caption to the same vector every time, so encoding captions inside
every training step (as the reference implementation does) spends most of the step on work already
done. :func:`encode_captions` encodes each caption once per encoder setting, keeps the result on
disk, and hands back a :class:`TextTable` that the data loader indexes by caption id.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from t2i_helpers.config import data_dir
from t2i_helpers.errors import T2IError, one_line
from t2i_helpers.files import atomic_torch_save, atomic_write_text
from t2i_helpers.text.config import TextEncoderConfig, model_key
from t2i_helpers.text.encoder import TextEncoder, check_captions


class MissingCaptionError(T2IError):
    """A caption was looked up in a :class:`TextTable` that does not contain it."""


def _atomic_save(obj, path: Path) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    if isinstance(obj, (dict, list)) and path.suffix == ".json":
        atomic_write_text(path, json.dumps(obj))
    else:
        atomic_torch_save(obj, path)


@dataclass(eq=False)
class TextTable:
    """Embeddings of a list of captions; row ``i`` belongs to ``captions[i]`` (the caption id)."""

    pooled: Tensor  # [C, D] float32
    tokens: Tensor | None  # [C, L, D] float16, zero on padding, or None if not requested
    mask: Tensor | None  # [C, L] bool, True on real tokens
    captions: list[str]
    model_name: str
    pooling: str = "mean"
    _rows: dict[str, int] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def dim(self) -> int:
        return int(self.pooled.shape[1])

    def index(self, captions: Sequence[str]) -> list[int]:
        """Row of each caption (the first, if a caption occurs twice)."""
        if self._rows is None:
            self._rows = {}
            for row, caption in enumerate(self.captions):
                self._rows.setdefault(caption, row)
        try:
            return [self._rows[c] for c in check_captions(captions)]
        except KeyError as err:
            raise MissingCaptionError(
                f"caption not in the text table ({self.model_name}): {err.args[0][:80]!r}; encode it first"
            ) from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        _atomic_save(
            {
                "pooled": self.pooled,
                "tokens": self.tokens,
                "mask": self.mask,
                "captions": list(self.captions),
                "model_name": self.model_name,
                "pooling": self.pooling,
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextTable":
        path = Path(path)
        if not path.is_file():
            raise T2IError(f"text table not found: {path}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return cls(
                pooled=data["pooled"],
                tokens=data["tokens"],
                mask=data["mask"],
                captions=list(data["captions"]),
                model_name=data["model_name"],
                pooling=data["pooling"],
            )
        except Exception as err:  # any unreadable / foreign file: one line naming it
            raise T2IError(f"not a text table file: {path} ({one_line(err)[:120]})") from err


@dataclass(frozen=True)
class CacheStats:
    """How many distinct captions were encoded now, and how many came from the cache."""

    encoded: int
    from_cache: int


def _caption_id(caption: str) -> str:
    return hashlib.sha1(caption.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Per-caption embeddings of one encoder setting, in append-only shards plus a JSON index.

    Layout of ``cache_dir/model_key/``::

        index.json        {"rows": {sha1(caption): [shard, row]}, "shards": {shard: {"rows", "tokens"}}}
        shard-*.pt        {"captions", "pooled" [n,D] f32, "tokens" [n,L,D] f16|None, "mask" [n,L]|None}

    Why shards: each call that meets new captions writes one new file with just those rows, so
    adding 10 captions to a cache of 100k never rewrites the (possibly GB-sized) token states.
    Each write is atomic (temp file + rename): the shard first, then the index, so a crash leaves
    at worst an unused shard. Two processes writing at once can lose one index update; those
    captions are simply encoded again next time.
    """

    def __init__(self, cache_dir: str | os.PathLike, model_key: str) -> None:
        self.root = Path(cache_dir) / model_key
        self.model_key = model_key
        self._index = self._read_index()

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def _read_index(self) -> dict:
        empty = {"version": 1, "model_key": self.model_key, "rows": {}, "shards": {}}
        if not self.index_path.is_file():
            return empty
        try:
            index = json.loads(self.index_path.read_text())
            if not isinstance(index.get("rows"), dict) or not isinstance(index.get("shards"), dict):
                raise ValueError("missing rows/shards")
            return index
        except (OSError, ValueError) as err:
            warnings.warn(f"ignoring unreadable text cache index {self.index_path} ({err}); re-encoding")
            return empty

    def __len__(self) -> int:
        return len(self._index["rows"])

    def has(self, caption: str, with_tokens: bool = False) -> bool:
        entry = self._index["rows"].get(_caption_id(caption))
        if entry is None:
            return False
        return not with_tokens or bool(self._index["shards"].get(entry[0], {}).get("tokens"))

    def missing(self, captions: Sequence[str], with_tokens: bool = False) -> list[str]:
        """The distinct captions (in first-seen order) that still need encoding."""
        return [c for c in dict.fromkeys(captions) if not self.has(c, with_tokens)]

    def add(
        self, captions: Sequence[str], pooled: Tensor, tokens: Tensor | None = None, mask: Tensor | None = None
    ) -> Path:
        """Store the rows of new captions as one shard and record them in the index."""
        captions = list(captions)
        name = f"shard-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.pt"
        _atomic_save(
            {
                "captions": captions,
                "pooled": pooled.detach().float().cpu().contiguous(),
                "tokens": None if tokens is None else tokens.detach().half().cpu().contiguous(),
                "mask": None if mask is None else mask.detach().bool().cpu().contiguous(),
            },
            self.root / name,
        )
        # Merge with the index on disk (another process may have added shards meanwhile).
        index = self._read_index()
        index["shards"][name] = {"rows": len(captions), "tokens": tokens is not None}
        for row, caption in enumerate(captions):
            index["rows"][_caption_id(caption)] = [name, row]
        _atomic_save(index, self.index_path)
        self._index = index
        return self.root / name

    def read(self, captions: Sequence[str], with_tokens: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``pooled`` [n,D] (and ``tokens``, ``mask`` if asked) for captions that are all cached."""
        captions = list(captions)
        where: dict[str, list[tuple[int, int]]] = {}  # shard -> [(output row, shard row)]
        for out_row, caption in enumerate(captions):
            entry = self._index["rows"].get(_caption_id(caption))
            if entry is None:
                raise MissingCaptionError(f"caption not in text cache {self.root}: {caption[:80]!r}")
            where.setdefault(entry[0], []).append((out_row, entry[1]))
        pooled = tokens = mask = None
        for shard_name, pairs in where.items():
            path = self.root / shard_name
            try:
                # mmap: only the rows we index are read from disk, not the whole token tensor.
                # (str: torch 2.2 memory-maps only a file name, not a Path; seen with make test-oldest.)
                shard = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise T2IError(f"unreadable text cache shard {path}: delete {self.root} to rebuild") from err
            out_rows = torch.tensor([p[0] for p in pairs])
            shard_rows = torch.tensor([p[1] for p in pairs])
            for out_row, shard_row in pairs:  # guard against a stale or mismatched index
                if shard["captions"][shard_row] != captions[out_row]:
                    raise T2IError(f"text cache index does not match {path}: delete {self.root} to rebuild")
            if pooled is None:
                pooled = torch.empty(len(captions), shard["pooled"].shape[1], dtype=torch.float32)
            pooled[out_rows] = shard["pooled"][shard_rows]
            if with_tokens:
                if shard["tokens"] is None:
                    raise T2IError(f"text cache shard {path} has no token states")
                if tokens is None:
                    tokens = torch.empty(len(captions), *shard["tokens"].shape[1:], dtype=torch.float16)
                    mask = torch.empty(len(captions), shard["mask"].shape[1], dtype=torch.bool)
                tokens[out_rows] = shard["tokens"][shard_rows]
                mask[out_rows] = shard["mask"][shard_rows]
        return pooled, tokens, mask


def encode_captions(
    captions: Sequence[str],
    encoder: TextEncoder | TextEncoderConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    with_tokens: bool = False,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> tuple[TextTable, CacheStats]:
    """Embeddings of ``captions`` (row ``i`` = ``captions[i]``), encoding only what is not cached.

    ``encoder`` may be a loaded :class:`TextEncoder` or just a config: with a config the model is
    loaded only if some caption is missing from the cache. Duplicate captions are encoded once.
    ``with_tokens`` also returns token states (float16, padded to ``max_length``); it is implied
    by ``pooling="tokens"``. The cache lives in ``cache_dir`` (default ``data_dir()/cache/text``).
    """
    captions = check_captions(captions)
    if not captions:
        raise T2IError("no captions to encode")
    loaded = encoder if isinstance(encoder, TextEncoder) else None
    config = loaded.config if loaded is not None else (encoder or TextEncoderConfig())
    if config.trainable:
        raise T2IError("a trainable text encoder changes while training: its outputs cannot be cached")
    with_tokens = with_tokens or config.pooling == "tokens"
    cache = EmbeddingCache(
        Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "text",
        loaded.key if loaded is not None else model_key(config),
    )

    todo = cache.missing(captions, with_tokens)
    unique = len(dict.fromkeys(captions))
    if todo:
        if loaded is None:
            loaded = TextEncoder(config)
        size = int(batch_size or config.batch_size)
        # Encode in chunks (sorted by length inside encode), one shard per chunk, so a long run
        # that is interrupted keeps what it already did.
        chunk = size * 16
        todo_sorted = sorted(todo, key=len)
        show = progress if progress is not None else len(todo) > chunk
        with torch.inference_mode():
            for start in tqdm(range(0, len(todo_sorted), chunk), desc="encoding captions", disable=not show):
                part = todo_sorted[start : start + chunk]
                features = loaded.encode(part, batch_size=size)
                cache.add(
                    part,
                    features.pooled,
                    features.tokens if with_tokens else None,
                    features.mask if with_tokens else None,
                )
    # Read everything back from disk (outside inference mode, so training may use the tensors).
    pooled, tokens, mask = cache.read(captions, with_tokens)
    table = TextTable(
        pooled=pooled,
        tokens=tokens,
        mask=mask,
        captions=captions,
        model_name=config.model_name,
        pooling=config.pooling,
    )
    return table, CacheStats(encoded=len(todo), from_cache=unique - len(todo))
