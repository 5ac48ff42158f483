"""What is in a COCO-format caption dataset, and what is wrong with it: ``python -m t2i_helpers inspect``."""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from t2i_helpers.data.coco import IMAGE_ERRORS, image_error_reason, load_captions_index, words


@dataclass
class DatasetStats:
    """What is in a caption dataset, and what is wrong with it (see :func:`inspect_dataset`)."""

    ann_file: str
    image_root: str
    images: int  # image entries in the JSON
    captions: int  # non-empty captions of known images
    captions_per_image: dict[str, float]  # min / mean / max over images
    words_per_caption: dict[str, float]  # min / mean / max
    vocabulary: int  # distinct lower-cased words
    images_without_captions: int
    empty_captions: int
    long_captions: int
    non_ascii_captions: int
    unknown_image_annotations: int
    duplicate_image_ids: int
    unreadable_images: dict[str, list[str]]  # reason -> file names (missing, truncated, not an image, ...)
    image_sizes: dict[str, float]  # min / mean / max of width and height of the readable images
    image_modes: dict[str, int]  # PIL mode -> count (L, CMYK, RGBA need conversion)

    @property
    def readable_images(self) -> int:
        return self.images - sum(len(v) for v in self.unreadable_images.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"readable_images": self.readable_images}

    def format(self) -> str:
        """A short report for people."""
        cpi, wpc = self.captions_per_image, self.words_per_caption
        lines = [
            f"{self.ann_file}",
            f"  images:   {self.images} ({self.readable_images} readable, {self.images_without_captions} without captions)",
            f"  captions: {self.captions} ({cpi['min']:g} / {cpi['mean']:.2f} / {cpi['max']:g} per image, min/mean/max)",
            f"  words:    {wpc['min']:g} / {wpc['mean']:.2f} / {wpc['max']:g} per caption; vocabulary {self.vocabulary} words",
        ]
        if self.image_sizes:
            s = self.image_sizes
            lines.append(f"  size:     width {s['width_min']:g}-{s['width_max']:g}, height {s['height_min']:g}-{s['height_max']:g} px")
        if self.image_modes:
            lines.append("  modes:    " + ", ".join(f"{m} {n}" for m, n in sorted(self.image_modes.items())))
        problems = {k: v for k, v in (("empty captions", self.empty_captions), ("long captions", self.long_captions),
                                      ("non-ASCII captions", self.non_ascii_captions),
                                      ("captions of unknown images", self.unknown_image_annotations),
                                      ("duplicate image ids", self.duplicate_image_ids)) if v}
        if problems:
            lines.append("  notes:    " + ", ".join(f"{n} {k}" for k, n in problems.items()))
        for reason, files in sorted(self.unreadable_images.items()):
            shown = ", ".join(files[:3]) + (f", ... ({len(files)} in all)" if len(files) > 3 else "")
            lines.append(f"  unreadable ({reason}): {shown}")
        return "\n".join(lines)


def _min_mean_max(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}


def inspect_dataset(image_root: str | os.PathLike, ann_file: str | os.PathLike, check_images: bool = True) -> DatasetStats:
    """Count images, captions, words and problems; with ``check_images`` decode every image once.

    Decoding (not just ``Image.verify``, which does not notice a truncated JPEG) is what training will
    do, so a file counted as readable here will load later.
    """
    index = load_captions_index(ann_file, image_root)
    caption_lists = [index.captions[e["id"]] for e in index.images]
    all_captions = [c for caps in caption_lists for c in caps]
    lengths = []
    vocabulary: set[str] = set()
    for caption in all_captions:
        tokens = words(caption)
        lengths.append(len(tokens))
        vocabulary.update(tokens)

    unreadable: dict[str, list[str]] = defaultdict(list)
    modes: Counter = Counter()
    widths, heights = [], []
    missing = set(index.missing_files)
    root = Path(image_root)
    for entry in index.images:
        name = entry["file_name"]
        if name in missing:
            unreadable["missing file"].append(name)
            continue
        if not check_images:
            continue
        try:
            with Image.open(root / name) as image:
                modes[image.mode] += 1
                image.load()
                widths.append(image.width)
                heights.append(image.height)
        except IMAGE_ERRORS as err:
            unreadable[image_error_reason(err)].append(name)

    sizes: dict[str, float] = {}
    if widths:
        w, h = _min_mean_max(widths), _min_mean_max(heights)
        sizes = {f"width_{k}": v for k, v in w.items()} | {f"height_{k}": v for k, v in h.items()}
    return DatasetStats(
        ann_file=str(ann_file),
        image_root=str(image_root),
        images=len(index.images),
        captions=len(all_captions),
        captions_per_image=_min_mean_max([len(c) for c in caption_lists]),
        words_per_caption=_min_mean_max(lengths),
        vocabulary=len(vocabulary),
        images_without_captions=index.images_without_captions,
        empty_captions=index.empty_captions,
        long_captions=index.long_captions,
        non_ascii_captions=index.non_ascii_captions,
        unknown_image_annotations=index.unknown_image_annotations,
        duplicate_image_ids=index.duplicate_image_ids,
        unreadable_images=dict(unreadable),
        image_sizes=sizes,
        image_modes=dict(modes),
    )


__all__ = ["DatasetStats", "inspect_dataset"]
