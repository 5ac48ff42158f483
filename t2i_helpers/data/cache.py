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
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from t2i_helpers.config import data_dir
from t2i_helpers.data.coco import IMAGE_ERRORS, image_error_reason, load_captions_index, open_rgb
from t2i_helpers.errors import DatasetError
from t2i_helpers.models.base import Batch

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
        from tqdm.auto import tqdm

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
        if not candidates:
            raise DatasetError(f"{index.ann_file}: no readable images with captions under {image_root}")

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
        if not kept:
            raise DatasetError(f"{index.ann_file}: none of the {len(candidates)} images under {image_root} could be read")
        array.flush()
        del array
        if len(kept) < len(candidates):  # rewrite at the exact length (rare: only when files were bad)
            full = np.load(out / IMAGES_FILE, mmap_mode="r")
            compact = np.lib.format.open_memmap(out / f"compact-{IMAGES_FILE}", mode="w+", dtype=np.uint8,
                                                shape=(len(kept), image_size, image_size, 3))
            compact[:] = full[: len(kept)]
            compact.flush()
            del compact, full
            os.replace(out / f"compact-{IMAGES_FILE}", out / IMAGES_FILE)

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
            "version": CACHE_VERSION,
            "ann_file": str(Path(index.ann_file).resolve()),
            "image_root": str(image_root.resolve()),
            "image_size": image_size,
            "resize": RESIZE,
            "info": index.info,
            "image_ids": [e["id"] for e in kept],
            "file_names": [e["file_name"] for e in kept],
            "caption_table": list(table),
            "caption_ids_per_image": caption_ids,
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


# ------------------------------------------------------------------------------------------ loader
def _uint8_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] in [-1, 1], on the tensor's own device."""
    images = pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    return images.div_(127.5).sub_(1.0)


class CachedLoader:
    """Batches for training: images in [-1, 1] and the embedding of one random caption per image.

    The order is a pure function of ``(seed, epoch)``: epoch ``e`` shuffles with
    ``np.random.default_rng([seed, e])``, which also picks each image's caption. So the whole state
    is ``(seed, epoch, position)`` (:meth:`state_dict`), and a resumed run sees exactly the batches
    the uninterrupted run would have seen. Iterating never ends (epoch after epoch); use
    :meth:`epoch_batches` for one pass. ``len(loader)`` is the number of batches per epoch.

    ``text_table`` is a :class:`t2i_helpers.text.TextTable` of ``cache.all_captions()`` (a table
    of more captions also works: rows are looked up by caption). ``None`` gives ``text`` of width 0.

    ``resident``: copy the images and the text table to ``device`` once, so a batch is gathered there
    (a few small kernels) instead of on the CPU and copied over every step. ``None`` decides: on a
    CUDA device when they take at most ``RESIDENT_SHARE`` of its free memory (4,000 Shapes images with
    token states: under 0.5 GB; all of COCO with them: some 16 GB, which fits only a large GPU). Same
    batches either way.
    """

    RESIDENT_SHARE = 0.25

    def __init__(
        self,
        cache: ImageCache,
        text_table: Any = None,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        device: str | torch.device = "cpu",
        resident: bool | None = None,
    ) -> None:
        self.cache = cache
        self.table = text_table
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.epoch = 0
        self.position = 0  # images of the current epoch already handed out
        n = len(cache)
        if self.batch_size < 1:
            raise DatasetError(f"batch_size must be at least 1, got {batch_size}")
        if drop_last and self.batch_size > n:
            raise DatasetError(f"batch_size {self.batch_size} is larger than the {n} cached images "
                               f"({cache.path}); use a smaller batch or drop_last=False")
        counts = np.array([len(c) for c in cache.caption_ids_per_image], dtype=np.int64)
        if (counts == 0).any():
            raise DatasetError(f"{cache.path}: an image without captions is in the cache; rebuild it")
        self._counts = counts
        self._offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        flat = np.fromiter((c for ids in cache.caption_ids_per_image for c in ids), dtype=np.int64, count=int(counts.sum()))
        self._flat_caption_ids = flat
        self._images = np.asarray(cache.images)  # plain ndarray view of the memory map: less overhead per index
        self._rows = self._table_rows(text_table)
        self._pooled = None if text_table is None else torch.as_tensor(text_table.pooled)
        self._tokens = getattr(text_table, "tokens", None)
        self._mask = getattr(text_table, "mask", None)
        self._plan_epoch: int | None = None
        self.resident = self._fits_on_device() if resident is None else bool(resident)
        if self.resident:  # one copy now instead of one per batch
            with warnings.catch_warnings():  # the memory map is read-only, and only ever read
                warnings.simplefilter("ignore", UserWarning)
                self._images = torch.from_numpy(self._images).to(self.device)
            self._rows, self._pooled, self._tokens, self._mask = (
                None if t is None else t.to(self.device) for t in (self._rows, self._pooled, self._tokens, self._mask))

    def _fits_on_device(self) -> bool:
        if self.device.type != "cuda":
            return False
        tensors = [self._images, self._rows, self._pooled, self._tokens, self._mask]
        size = sum(t.nbytes for t in tensors if t is not None)
        free, _ = torch.cuda.mem_get_info(self.device)
        return size <= self.RESIDENT_SHARE * free

    def _table_rows(self, table: Any) -> torch.Tensor | None:
        """Row of the text table for each cache caption id (None when they are the same)."""
        if table is None:
            return None
        captions = self.cache.all_captions()
        if list(table.captions) == captions:
            return None
        if hasattr(table, "index"):
            try:
                return torch.as_tensor(table.index(captions), dtype=torch.long)
            except Exception as err:  # a caption the table lacks
                raise DatasetError(f"the text table does not cover the captions of {self.cache.path}: {err}") from None
        raise DatasetError(f"the text table has {len(table.captions)} captions, the cache {len(captions)}; "
                           "encode cache.all_captions()")

    # -------------------------------------------------------------------------------- iteration
    def __len__(self) -> int:
        n = len(self.cache)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(image order, uniform numbers for caption choice) of the current epoch."""
        if self._plan_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            n = len(self.cache)
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._order, self._pick = order, rng.random(n)
            self._plan_epoch = self.epoch
        return self._order, self._pick

    def _epoch_done(self) -> bool:
        n = len(self.cache)
        return self.position >= n or (self.drop_last and self.position + self.batch_size > n)

    def _wrap(self) -> None:
        """Move to the next epoch once the current one has no (full) batch left."""
        if self._epoch_done():
            self.epoch, self.position = self.epoch + 1, 0

    def _next_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Image indices and caption ids of the next batch; advances (epoch, position)."""
        self._wrap()
        order, pick = self._plan()
        idx = order[self.position:self.position + self.batch_size]
        u = pick[self.position:self.position + self.batch_size]
        counts = self._counts[idx]
        choice = self._offsets[idx] + np.minimum((u * counts).astype(np.int64), counts - 1)
        caption_ids = self._flat_caption_ids[choice]
        self.position += len(idx)
        self._wrap()  # so a state saved after the last batch of an epoch points at the next epoch
        # Sorted indices read the memory-mapped file front to back (the order inside a batch is irrelevant).
        sort = np.argsort(idx, kind="stable")
        return idx[sort], caption_ids[sort]

    def make_batch(self, indices: np.ndarray, caption_ids: np.ndarray) -> Batch:
        """A :class:`Batch` of these cached images and caption ids (also useful for evaluation)."""
        non_blocking = self.device.type == "cuda"
        if self.resident:
            # Images and text table already live on the device: only the indices cross.
            both = torch.from_numpy(np.stack([indices, caption_ids]).astype(np.int64))
            idx, ids = both.to(self.device, non_blocking=non_blocking)
            images = _uint8_to_float(self._images.index_select(0, idx))
        elif self.device.type == "cpu":
            # NumPy, single-threaded: torch's thread pool only adds overhead on a copy this small.
            pixels = self._images[indices]  # uint8 [B, S, S, 3], one read from the memory map
            out = np.empty((len(indices), 3) + pixels.shape[1:3], dtype=np.float32)
            np.divide(pixels.transpose(0, 3, 1, 2), np.float32(127.5), out=out)  # exact: 255 / 127.5 = 2
            out -= np.float32(1.0)
            images, ids = torch.from_numpy(out), torch.from_numpy(caption_ids)
        else:
            # uint8 crosses to the device (4x less than float); the conversion runs there.
            pixels = np.ascontiguousarray(self._images[indices])
            images = _uint8_to_float(torch.from_numpy(pixels).to(self.device, non_blocking=non_blocking))
            ids = torch.from_numpy(caption_ids)
        # index_select, not tensor[ids]: advanced indexing starts torch's thread pool, which costs
        # milliseconds on a busy CPU for a copy of a few kilobytes. The .to() calls below are no-ops
        # when the table is resident.
        rows = ids if self._rows is None else self._rows.index_select(0, ids)
        if self.table is None:
            text = torch.zeros(len(indices), 0, device=self.device)
            tokens = mask = None
        else:
            text = self._pooled.index_select(0, rows).to(self.device, torch.float32, non_blocking=non_blocking)
            tokens = mask = None
            if self._tokens is not None:
                tokens = self._tokens.index_select(0, rows).to(self.device, non_blocking=non_blocking).float()
            if self._mask is not None:
                mask = self._mask.index_select(0, rows).to(self.device, non_blocking=non_blocking)
        return Batch(images=images, text=text, tokens=tokens, token_mask=mask, caption_ids=ids.to(self.device))

    def next_batch(self) -> Batch:
        return self.make_batch(*self._next_indices())

    def batches(self, epochs: int | None = None) -> Iterator[Batch]:
        """Batches from the current state on, forever (or until ``epochs`` more epoch ends)."""
        stop = None if epochs is None else self.epoch + epochs
        while stop is None or self.epoch < stop:
            yield self.next_batch()

    def epoch_batches(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch."""
        self._wrap()
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue the same sequence of batches (plain ints)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_images": len(self.cache), "batch_size": self.batch_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_images"]) != len(self.cache):
            raise DatasetError(f"loader state is for {state['num_images']} images, the cache {self.cache.path} "
                               f"has {len(self.cache)}: resume with the same data")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.shuffle = bool(state.get("shuffle", self.shuffle))
        self._plan_epoch = None
        self._wrap()


__all__ = ["CachedLoader", "ImageCache", "cache_key", "center_crop_resize"]
