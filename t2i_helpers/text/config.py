"""Which text encoder, how captions are cut and pooled, and the cache key that names those choices."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from t2i_helpers.errors import T2IError
from t2i_helpers.text.hub import BUNDLED_HUB_ID, DEFAULT_MODEL, is_bundled, resolve_model

POOLINGS = ("mean", "cls", "tokens")


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


def _fingerprint(folder: Path) -> str:
    """What identifies a local model without hashing its (maybe GB-sized) weights or using its path."""
    digest = hashlib.sha1()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    sums = folder / "SHA256SUMS"  # a folder that lists its files' digests (shapes-zh-char): a retrained
    if sums.is_file():  # model of the same size gets another key; folders without the file keep theirs
        digest.update(sums.read_bytes())
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
    if is_bundled(config.model_name):
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
