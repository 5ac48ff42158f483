"""Decode and resize every image once; train from a uint8 array on disk.

Why: the reference pipeline decoded a 640x480 JPEG and resized it in every step of every epoch, which
costs more than the small model it feeds. Here :meth:`ImageCache.build` does that work once per
(annotation file, image folder, image size) and stores the result as one ``.npy`` file that is
opened memory-mapped: the operating system keeps it in RAM after the first epoch, and a batch is one
NumPy fancy index plus one conversion to a float tensor (:class:`CachedLoader`).

Resizing: the largest centred square is cropped (no squashing of the aspect ratio; COCO objects are
mostly central) and resized with PIL's BICUBIC filter. PIL widens the filter when it shrinks an image,
so the result is anti-aliased, the same as ``torchvision.transforms.Resize(antialias=True)``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from t2i_helpers.config import data_dir
from t2i_helpers.data.coco import IMAGE_ERRORS, image_error_reason, load_captions_index, open_rgb
from t2i_helpers.errors import DatasetError

CACHE_VERSION = 1
RESIZE = "center-crop to square, PIL BICUBIC (antialiased) resize"
IMAGES_FILE, INDEX_FILE = "images.npy", "index.json"


def center_crop_resize(image: Image.Image, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3]: the largest centred square of an RGB image, resized with BICUBIC."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side != image_size:
        square = square.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.uint8)


def cache_key(ann_file: str | os.PathLike, image_root: str | os.PathLike, image_size: int) -> str:
    """Folder name of a cache: readable prefix + hash of (annotation path, size, mtime, image root, size).

    The annotation file's size and modification time stand in for its content, so editing it makes
    a new cache; replacing image files in place is not noticed (delete the cache folder then).
    """
    ann = Path(ann_file).resolve()
    try:
        st = ann.stat()
    except OSError:
        raise DatasetError(f"{ann}: annotation file not found") from None
    parts = [CACHE_VERSION, str(ann), st.st_size, st.st_mtime_ns, str(Path(image_root).resolve()), int(image_size)]
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return f"{ann.stem}-{int(image_size)}px-{digest}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_temp_dirs(root: Path, key: str) -> None:
    """Remove ``.tmp-<key>-<pid>-*`` folders left by killed builds (their process is gone)."""
    for tmp in root.glob(f".tmp-{key}-*"):
        try:
            pid = int(tmp.name[len(f".tmp-{key}-"):].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _candidates(index: Any) -> tuple[list[dict], dict[str, list[str]]]:
    """The images worth decoding (with captions, file present), and the others by reason."""
    skipped: dict[str, list[str]] = {}
    candidates = []
    missing = set(index.missing_files)
    for entry in index.images:
        if not index.captions[entry["id"]]:
            skipped.setdefault("no captions", []).append(entry["file_name"])
        elif entry["file_name"] in missing:
            skipped.setdefault("missing file", []).append(entry["file_name"])
        else:
            candidates.append(entry)
    return candidates, skipped


def _write_pixels(out: Path, candidates: list[dict], skipped: dict[str, list[str]], image_root: Path,
                  image_size: int, workers: int | None, progress: bool | None) -> list[dict]:
    """Decode and resize ``candidates`` into ``out/images.npy`` (memory-mapped); unreadable ones go to ``skipped``."""
    def load(entry: dict) -> np.ndarray | str:
        try:
            return center_crop_resize(open_rgb(image_root / entry["file_name"]), image_size)
        except IMAGE_ERRORS as err:
            return image_error_reason(err)

    array = np.lib.format.open_memmap(out / IMAGES_FILE, mode="w+", dtype=np.uint8,
                                      shape=(len(candidates), image_size, image_size, 3))
    kept: list[dict] = []
    show = progress if progress is not None else len(candidates) > 2000
    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(candidates), desc=f"caching images at {image_size}px", disable=not show) as bar:
        for start in range(0, len(candidates), 256):
            chunk = candidates[start:start + 256]
            for entry, result in zip(chunk, pool.map(load, chunk)):
                if isinstance(result, str):
                    skipped.setdefault(result, []).append(entry["file_name"])
                else:
                    array[len(kept)] = result
                    kept.append(entry)
            bar.update(len(chunk))
    array.flush()
    del array
    if kept and len(kept) < len(candidates):  # rewrite at the exact length (rare: only when files were bad)
        full = np.load(out / IMAGES_FILE, mmap_mode="r")
        compact = np.lib.format.open_memmap(out / f"compact-{IMAGES_FILE}", mode="w+", dtype=np.uint8,
                                            shape=(len(kept), image_size, image_size, 3))
        compact[:] = full[: len(kept)]
        compact.flush()
        del compact, full
        os.replace(out / f"compact-{IMAGES_FILE}", out / IMAGES_FILE)
    return kept


@dataclass(eq=False)
class ImageCache:
    """Images of a caption dataset as uint8 [N, S, S, 3] (memory-mapped) plus their captions.

    Captions are stored once each: ``all_captions()`` is the table of distinct captions (row =
    caption id, the row of the text-embedding table) and ``caption_ids_per_image[i]`` lists the
    caption ids of image ``i``.
    """

    path: Path
    images: np.ndarray  # uint8 [N, S, S, 3], np.memmap opened read-only
    image_ids: list[int]
    file_names: list[str]
    caption_table: list[str]
    caption_ids_per_image: list[list[int]]
    attributes: list[dict] | None  # Shapes: {"shape", "color", "size", "position"} per image
    mentions: list[list[str] | None] | None  # Shapes: attributes each caption id names
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> file names left out
    image_size: int = 0
    info: dict = field(default_factory=dict)  # the annotation file's "info" (Shapes: seed, held-out pairs)
    built: bool = False  # True if this call built the cache, False if it reused one

    def __len__(self) -> int:
        return len(self.image_ids)

    def all_captions(self) -> list[str]:
        """Distinct captions; the row of each is its caption id (encode these, in this order)."""
        return self.caption_table

    @property
    def captions(self) -> list[list[str]]:
        """All captions of each image (as in the annotation file, empty ones dropped)."""
        table = self.caption_table
        return [[table[c] for c in ids] for ids in self.caption_ids_per_image]

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    # ------------------------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        image_root: str | os.PathLike,
        ann_file: str | os.PathLike,
        image_size: int,
        cache_dir: str | os.PathLike | None = None,
        *,
        workers: int | None = None,
        progress: bool | None = None,
        rebuild: bool = False,
    ) -> "ImageCache":
        """The cache for these files and size: reused if it exists, else built (atomically).

        ``cache_dir`` is the parent folder (default ``data_dir()/cache/images``); the cache itself is
        ``cache_dir/<key>`` (see :func:`cache_key`). A build writes into a temporary folder that is
        renamed at the end, so a killed build leaves no half-written cache behind. Images that cannot
        be read, and images without captions, are left out and listed in ``skipped``.
        """
        image_size = int(image_size)
        if image_size < 8:
            raise DatasetError(f"image_size must be at least 8 pixels, got {image_size}")
        root = Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "images"
        key = cache_key(ann_file, image_root, image_size)
        final = root / key
        if (final / INDEX_FILE).is_file() and not rebuild:
            try:
                return cls.load(final)
            except DatasetError:
                rebuild = True  # unreadable cache: replace it
        index = load_captions_index(ann_file, image_root)
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temp_dirs(root, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-{os.getpid()}-", dir=root))
        try:
            cls._write(tmp, index, Path(image_root), image_size, workers, progress)
            if rebuild and final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".old-{key}-", dir=root))
                os.replace(final, old / "cache")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, final)  # atomic; refuses if another process just finished the same cache
            except OSError:
                if not (final / INDEX_FILE).is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        cache = cls.load(final)
        cache.built = True
        return cache

    @staticmethod
    def _write(out: Path, index, image_root: Path, image_size: int, workers: int | None, progress: bool | None) -> None:
        """Resize every usable image into ``images.npy`` and write ``index.json``; skipped files are counted."""
        candidates, skipped = _candidates(index)
        if not candidates:
            raise DatasetError(f"{index.ann_file}: no readable images with captions under {image_root}")
        kept = _write_pixels(out, candidates, skipped, image_root, image_size, workers, progress)
        if not kept:
            raise DatasetError(f"{index.ann_file}: none of the {len(candidates)} images under {image_root} could be read")
        table: dict[str, int] = {}
        table_mentions: list[list[str] | None] = []
        caption_ids = []
        for entry in kept:
            ids = []
            for caption, mention in zip(index.captions[entry["id"]], index.mentions[entry["id"]]):
                if caption not in table:
                    table[caption] = len(table)
                    table_mentions.append(mention)
                ids.append(table[caption])
            caption_ids.append(ids)
        attributes = [index.attributes(e) for e in kept]
        doc = {
            "version": CACHE_VERSION, "ann_file": str(Path(index.ann_file).resolve()),
            "image_root": str(image_root.resolve()), "image_size": image_size, "resize": RESIZE, "info": index.info,
            "image_ids": [e["id"] for e in kept], "file_names": [e["file_name"] for e in kept],
            "caption_table": list(table), "caption_ids_per_image": caption_ids,
            "attributes": attributes if all(a is not None for a in attributes) else None,
            "mentions": table_mentions if all(m is not None for m in table_mentions) else None,
            "skipped": skipped,
        }
        with open(out / INDEX_FILE, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))  # dumps: the fast C encoder

    # ------------------------------------------------------------------------------------- load
    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageCache":
        """Open an existing cache folder (the array stays on disk, memory-mapped)."""
        path = Path(path)
        try:
            with open(path / INDEX_FILE, encoding="utf-8") as f:
                doc = json.load(f)
            images = np.load(path / IMAGES_FILE, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path}: not a readable image cache ({type(err).__name__}: {err})") from None
        n, size = len(doc.get("image_ids", [])), doc.get("image_size")
        if doc.get("version") != CACHE_VERSION or images.shape != (n, size, size, 3) or images.dtype != np.uint8:
            raise DatasetError(f"{path}: image cache does not match its index (version or shape); delete the folder")
        return cls(
            path=path,
            images=images,
            image_ids=doc["image_ids"],
            file_names=doc["file_names"],
            caption_table=doc["caption_table"],
            caption_ids_per_image=doc["caption_ids_per_image"],
            attributes=doc.get("attributes"),
            mentions=doc.get("mentions"),
            skipped=doc.get("skipped", {}),
            image_size=size,
            info=doc.get("info") or {},
        )


__all__ = ["ImageCache", "cache_key", "center_crop_resize"]
