"""A caption split loaded for evaluation: its images (uint8, resized like the training cache) and captions.

Evaluation and the judges read a split through :func:`load_eval_data`; on Shapes it also carries each
image's attributes, what each caption mentions, and which colour-shape pairs training never saw.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from t2i_helpers.data.cache import center_crop_resize
from t2i_helpers.data.shapes import HELD_OUT_PAIRS
from t2i_helpers.errors import DatasetError
from t2i_helpers.files import file_digest


@dataclass
class EvalData:
    """One COCO-captions-format split loaded for evaluation (Shapes adds attributes and mentions)."""

    image_root: Path
    ann_file: Path
    dataset: str  # "shapes" or "coco" (the JSON's info.description decides)
    split: str
    fingerprint: str  # hash of the annotation file: keys the cached real statistics
    images: np.ndarray  # uint8 [N, H, W, 3], at the evaluation resolution
    image_ids: list[int]
    captions: list[str]  # one row per annotation: the caption ids used here
    caption_image: np.ndarray  # [C] row in ``images`` of each caption's image
    mentions: list[list[str]] | None  # Shapes: attributes each caption names
    attributes: list[dict] | None  # Shapes: per image {"color", "shape", "size", "position"}
    held_out_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def is_shapes(self) -> bool:
        return self.attributes is not None

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def held_out_images(self) -> np.ndarray:
        """[N] bool: the image shows a colour-shape pair that training never saw."""
        if self.attributes is None:
            return np.zeros(len(self.images), dtype=bool)
        pairs = set(self.held_out_pairs)
        return np.array([(a["color"], a["shape"]) in pairs for a in self.attributes], dtype=bool)

    def held_out_captions(self) -> np.ndarray:
        """[C] bool: the caption describes a held-out colour-shape pair."""
        return self.held_out_images()[self.caption_image]


def read_image(path: Path, size: int | None) -> np.ndarray:
    """uint8 [H, W, 3]; resized exactly as the training cache does (centre square, PIL bicubic)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is None or im.size == (size, size):
                return np.asarray(im, dtype=np.uint8)
            return center_crop_resize(im, size)
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def load_eval_data(image_root: str | os.PathLike, ann_file: str | os.PathLike,
                   image_size: int | None = None) -> EvalData:
    """Read a split's annotations and its images (uint8, resized to ``image_size`` if given).

    ``image_size=None`` keeps the files' size (all images must then share it, as Shapes' do).
    Otherwise images go through the training cache's resize (:func:`t2i_helpers.data.cache.center_crop_resize`:
    largest centred square, PIL bicubic), so real and training images are prepared alike.
    """
    image_root, ann_file = Path(image_root), Path(ann_file)
    try:
        with open(ann_file, encoding="utf-8") as f:
            doc = json.load(f)
        entries, annotations = doc["images"], doc["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"cannot read COCO captions file {ann_file}: {type(exc).__name__}: {exc}") from None
    info = doc.get("info") or {}
    is_shapes = str(info.get("description", "")).startswith("Shapes") or all(
        k in e for e in entries[:1] for k in ("color", "shape", "size", "position"))
    guess = "val" if "val" in ann_file.name else "train" if "train" in ann_file.name else "?"
    split = str(info.get("split") or guess)

    row_of = {e["id"]: i for i, e in enumerate(entries)}
    captions, caption_image, mentions = [], [], []
    for a in annotations:
        if a.get("image_id") not in row_of:
            continue  # a caption of an image not in this file: skipped (COCO files are consistent)
        captions.append(str(a["caption"]).strip())
        caption_image.append(row_of[a["image_id"]])
        mentions.append(list(a.get("mentions") or []))
    if not captions:
        raise DatasetError(f"{ann_file} has no captions")

    paths = [image_root / e["file_name"] for e in entries]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} images of {ann_file.name} not found under {image_root}, e.g. {missing[0]}")
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
        pixels = list(pool.map(lambda p: read_image(p, image_size), paths))
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise DatasetError(f"images of {ann_file.name} differ in size ({sorted(shapes)[:3]}...): pass image_size")

    attributes = None
    held = ()
    if is_shapes:
        attributes = [{k: e[k] for k in ("color", "shape", "size", "position")} for e in entries]
        if "held_out_pairs" in info:
            held = tuple(tuple(p) for p in info["held_out_pairs"])
        else:
            held = HELD_OUT_PAIRS
    return EvalData(
        image_root=image_root, ann_file=ann_file, dataset="shapes" if is_shapes else "coco", split=split,
        fingerprint=file_digest(ann_file), images=np.stack(pixels), image_ids=[e["id"] for e in entries],
        captions=captions, caption_image=np.asarray(caption_image, dtype=np.int64),
        mentions=mentions if is_shapes else None, attributes=attributes, held_out_pairs=held,
    )


def sample_rows(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """``n`` sorted rows of ``n_total`` drawn with ``seed`` (all of them when ``n`` is None or too big)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def unique_captions(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct captions (first-seen order) and each caption's row among them."""
    rows: dict[str, int] = {}
    inverse = np.array([rows.setdefault(c, len(rows)) for c in captions], dtype=np.int64)
    return list(rows), inverse


def sample_caption_ids(data: EvalData, n: int, seed: int = 0) -> np.ndarray:
    """``n`` caption rows: a seeded permutation of all captions, repeated if ``n`` exceeds them."""
    rng = np.random.default_rng(seed)
    reps = -(-n // len(data.captions))
    return np.concatenate([rng.permutation(len(data.captions)) for _ in range(reps)])[:n]
