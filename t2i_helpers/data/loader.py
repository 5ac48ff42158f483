"""Training batches from the image cache: :class:`CachedLoader`, resumable to the exact batch."""
from __future__ import annotations

import warnings
from typing import Any, Iterator

import numpy as np
import torch

from t2i_helpers.data.batch import Batch
from t2i_helpers.data.cache import ImageCache
from t2i_helpers.data.images import to_float
from t2i_helpers.errors import DatasetError

FLIPS = ("none", "rewrite", "naive")  # left-right flips: none, with the caption mirrored too, or without


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
        flip: str = "none",
        mirror_rows: Any = None,
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
        if flip not in FLIPS:
            raise DatasetError(f"flip must be one of {', '.join(FLIPS)}, got {flip!r}")
        if flip == "rewrite" and mirror_rows is None:
            raise DatasetError("flip='rewrite' needs mirror_rows: the table row of each caption's mirror image")
        self.flip = flip
        self._mirror = None if mirror_rows is None else torch.as_tensor(mirror_rows, dtype=torch.long)
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
            self._rows, self._pooled, self._tokens, self._mask, self._mirror = (
                None if t is None else t.to(self.device)
                for t in (self._rows, self._pooled, self._tokens, self._mask, self._mirror))

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

    def _plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image order, uniform numbers for caption choice, which images are flipped) of the epoch.

        The flips come from a generator of their own, so a run without them sees the same batches
        as before flips existed."""
        if self._plan_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            n = len(self.cache)
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._order, self._pick = order, rng.random(n)
            self._flips = (np.random.default_rng([self.seed, self.epoch, 1]).random(n) < 0.5 if self.flip != "none"
                           else np.zeros(n, dtype=bool))
            self._plan_epoch = self.epoch
        return self._order, self._pick, self._flips

    def _epoch_done(self) -> bool:
        n = len(self.cache)
        return self.position >= n or (self.drop_last and self.position + self.batch_size > n)

    def _wrap(self) -> None:
        """Move to the next epoch once the current one has no (full) batch left."""
        if self._epoch_done():
            self.epoch, self.position = self.epoch + 1, 0

    def _next_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image indices, caption ids and flips of the next batch; advances (epoch, position)."""
        self._wrap()
        order, pick, flips = self._plan()
        idx = order[self.position:self.position + self.batch_size]
        u = pick[self.position:self.position + self.batch_size]
        flipped = flips[self.position:self.position + self.batch_size]
        counts = self._counts[idx]
        choice = self._offsets[idx] + np.minimum((u * counts).astype(np.int64), counts - 1)
        caption_ids = self._flat_caption_ids[choice]
        self.position += len(idx)
        self._wrap()  # so a state saved after the last batch of an epoch points at the next epoch
        # Sorted indices read the memory-mapped file front to back (the order inside a batch is irrelevant).
        sort = np.argsort(idx, kind="stable")
        return idx[sort], caption_ids[sort], flipped[sort]

    def make_batch(self, indices: np.ndarray, caption_ids: np.ndarray, flips: np.ndarray | None = None) -> Batch:
        """A :class:`Batch` of these cached images and caption ids (also useful for evaluation).

        ``flips`` [B] bool mirrors those images left to right; with ``flip="rewrite"`` their captions
        become the mirrored captions too ("left" <-> "right"), with ``"naive"`` they stay as they are."""
        non_blocking = self.device.type == "cuda"
        if self.resident:
            # Images and text table already live on the device: only the indices cross.
            both = torch.from_numpy(np.stack([indices, caption_ids]).astype(np.int64))
            idx, ids = both.to(self.device, non_blocking=non_blocking)
            images = to_float(self._images.index_select(0, idx))
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
            images = to_float(torch.from_numpy(pixels).to(self.device, non_blocking=non_blocking))
            ids = torch.from_numpy(caption_ids)
        # index_select, not tensor[ids]: advanced indexing starts torch's thread pool, which costs
        # milliseconds on a busy CPU for a copy of a few kilobytes. The .to() calls below are no-ops
        # when the table is resident.
        rows = ids if self._rows is None else self._rows.index_select(0, ids)
        if flips is not None and flips.any():
            images, rows = self._flip(images, rows, ids, flips)
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

    def _flip(self, images: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, flips: np.ndarray):
        chosen = torch.from_numpy(flips).to(images.device)
        images = torch.where(chosen[:, None, None, None], images.flip(-1), images)
        if self.flip == "rewrite":  # the caption follows the image: its mirror's table row
            mirrored = self._mirror.index_select(0, ids.to(self._mirror.device)).to(rows.device)
            rows = torch.where(chosen.to(rows.device), mirrored, rows)
        return images, rows

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


__all__ = ["CachedLoader"]
