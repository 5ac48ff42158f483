"""The Shapes benchmark: one coloured shape on black, captioned in COCO captions format.

Why a synthetic set next to COCO: every image is described by four known attributes (colour, shape,
size, position), so a generated image can be *scored* (is the object red? is it in the top left
corner?) instead of only looked at. Captions name some attributes and leave others out, so one
caption fits many images, exactly the ambiguity that makes pixel regression (MSE) blur. A few
(colour, shape) pairs never appear in training: the val split asks whether a model composes
"purple" and "circle" it saw only separately.

Attributes are stored in the JSON (``images[*].shape/color/size/position`` and
``annotations[*].mentions``); nothing ever parses caption text to recover them.

Run ``python -m t2i_helpers.data.shapes --out data/shapes --images 2000`` or call :func:`make_shapes`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from t2i_helpers.config import by_tier, data_dir
from t2i_helpers.errors import T2IError
from t2i_helpers.data.drawing import (ATTRIBUTES, COLORS, HELD_OUT_PAIRS, MAX_IMAGE_SIZE, MAX_JITTER, MIN_IMAGE_SIZE,
                                      POSITIONS, SHAPES, SIZES, check_image_size, object_box, paint, pick_option,
                                      render, with_article)
from t2i_helpers.data.shapes_zh import write_chinese_captions, zh_path
from t2i_helpers.files import atomic_write_bytes

OMIT_PROBABILITY = 1 / 3  # each caption leaves out the size (and, independently, the position) this often

# --- caption vocabulary: unambiguous synonyms only, the colour word is always the canonical name ---
SHAPE_WORDS = {"circle": ("circle", "disc"), "square": ("square", "box", "block"), "triangle": ("triangle",)}
SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
# (phrase after the noun, short label used as a prefix "top-left: ...")
POSITION_WORDS: dict[str, tuple[tuple[str, ...], str]] = {
    "top left": (("in the top left corner", "in the upper left corner", "at the top left"), "top-left"),
    "top": (("at the top", "near the top edge", "at the top of the image"), "top"),
    "top right": (("in the top right corner", "in the upper right corner", "at the top right"), "top-right"),
    "left": (("on the left", "on the left side", "at the left edge"), "left"),
    "center": (("in the center", "in the middle", "at the center of the image"), "center"),
    "right": (("on the right", "on the right side", "at the right edge"), "right"),
    "bottom left": (("in the bottom left corner", "in the lower left corner", "at the bottom left"), "bottom-left"),
    "bottom": (("at the bottom", "near the bottom edge", "at the bottom of the image"), "bottom"),
    "bottom right": (("in the bottom right corner", "in the lower right corner", "at the bottom right"), "bottom-right"),
}
# Each phrasing: (with position, without position). {np} is "a small red circle", {pos} a position
# phrase, {label} the short position label.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{np} {pos}", "{np}"),
    ("{label}: {np}", "{np} on black"),
    ("there is {np} {pos}", "there is {np}"),
    ("{np} {pos} on a black background", "{np} on a black background"),
    ("{Pos}, {np}", "just {np}"),
    ("an image of {np} {pos}", "an image of {np}"),
    ("{np} placed {pos}", "a picture of {np}"),
    ("one {np_bare} {pos}", "one {np_bare}"),
    ("{np} sits {pos}", "{np} alone on a dark canvas"),
    ("a drawing of {np} {pos}", "a drawing of {np}"),
)


@dataclass
class ShapesConfig:
    """How many images (train + val together), their side in pixels, and the seed."""

    images: int = 1000
    image_size: int = 64
    seed: int = 0
    val_fraction: float = 0.2
    captions_per_image: int = 5

    def __post_init__(self) -> None:
        check_image_size(self.image_size)
        if int(self.images) < 2:
            raise T2IError(f"images must be at least 2 (train + val), got {self.images}")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise T2IError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if int(self.captions_per_image) < 1:
            raise T2IError(f"captions_per_image must be at least 1, got {self.captions_per_image}")

    def split_sizes(self) -> tuple[int, int]:
        """(train, val) image counts: val is ``round(images * val_fraction)``, at least 1 of each."""
        n_val = min(max(int(round(self.images * self.val_fraction)), 1), self.images - 1)
        return self.images - n_val, n_val


@dataclass(frozen=True)
class ShapesPaths:
    """Where :func:`make_shapes` wrote the benchmark (``images_dir`` is the loaders' image root)."""

    root: Path
    images_dir: Path
    train_json: Path
    val_json: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> "ShapesPaths":
        """Where a Shapes folder keeps its images and its two annotation files."""
        root = Path(root)
        return cls(root, root / "images", root / "annotations" / "captions_train.json",
                   root / "annotations" / "captions_val.json")

    @property
    def train_json_zh(self) -> Path:
        """The Chinese captions of the train split (same images and ``mentions``; :mod:`shapes_zh`)."""
        return zh_path(self.train_json)

    @property
    def val_json_zh(self) -> Path:
        return zh_path(self.val_json)


# ------------------------------------------------------------------------------------------ captions
CAPTION_DRAWS = 6  # uniform numbers one caption consumes


def make_caption(attributes: dict, u) -> tuple[str, list[str]]:
    """One caption for an image's attributes and the attributes it names (``mentions``).

    ``u`` holds six uniform numbers in [0, 1) (or pass a ``np.random.Generator``). Colour and shape
    are always named; size and position are each left out with probability 1/3, independently, so a
    caption like "a red circle" fits 18 different images.
    """
    if isinstance(u, np.random.Generator):
        u = u.random(CAPTION_DRAWS)
    with_size = u[0] >= OMIT_PROBABILITY
    with_position = u[1] >= OMIT_PROBABILITY
    words = [pick_option(SIZE_WORDS[attributes["size"]], u[2])] if with_size else []
    words += [attributes["color"], pick_option(SHAPE_WORDS[attributes["shape"]], u[3])]
    bare = " ".join(words)
    template = pick_option(TEMPLATES, u[4])[0 if with_position else 1]
    fields = {"np": with_article(bare), "np_bare": bare}
    if with_position:
        phrases, label = POSITION_WORDS[attributes["position"]]
        pos = pick_option(phrases, u[5])
        fields.update(pos=pos, Pos=pos[0].upper() + pos[1:], label=label)
    caption = template.format(**fields)
    mentions = ["color", "shape"] + (["size"] if with_size else []) + (["position"] if with_position else [])
    return caption, mentions


def _captions_for(attributes: dict, count: int, draws: np.ndarray) -> list[tuple[str, list[str]]]:
    """``count`` captions, distinct where the spare rows of ``draws`` allow (else duplicates stay)."""
    out: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    rows = iter(draws.tolist())
    spare = len(draws) - count
    for _ in range(count):
        caption, mentions = make_caption(attributes, next(rows))
        while caption in seen and spare > 0:
            spare -= 1
            caption, mentions = make_caption(attributes, next(rows))
        seen.add(caption)
        out.append((caption, mentions))
    return out


# -------------------------------------------------------------------------------------------- writing
def _pairs_for(split: str) -> list[tuple[str, str]]:
    all_pairs = [(c, s) for c in COLORS for s in SHAPES]
    if split == "train":
        return [p for p in all_pairs if p not in HELD_OUT_PAIRS]
    return all_pairs


def _balanced_pairs(split: str, n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(colour, shape) pairs in shuffled rounds, so every pair is equally frequent (val has all 18)."""
    pairs = _pairs_for(split)
    out: list[tuple[str, str]] = []
    while len(out) < n:
        out += [pairs[i] for i in rng.permutation(len(pairs))]
    return out[:n]


def _write_png(path: Path, pixels: np.ndarray) -> None:
    buffer = io.BytesIO()
    # compress_level=1: lossless like any PNG, several times faster to write than the default 6
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=1)
    # Temp file + rename (atomic); plain os calls: this runs thousands of times a second.
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, buffer.getbuffer())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _render_and_write(job: tuple) -> None:
    path, image_size, attributes, jitter = job
    image = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    paint(image, attributes["shape"], attributes["color"], attributes["size"], attributes["position"], jitter)
    _write_png(path, image)


def _split_records(split: str, n: int, first_id: int, first_ann_id: int, config: ShapesConfig,
                   rng: np.random.Generator) -> tuple[list[dict], list[dict], list[tuple[float, float]]]:
    """Image entries, caption entries and each image's jitter (all random draws happen here, in order)."""
    pairs = _balanced_pairs(split, n, rng)
    sizes = rng.integers(len(SIZES), size=n)
    positions = rng.integers(len(POSITIONS), size=n)
    jitters = [tuple(j) for j in rng.uniform(-MAX_JITTER, MAX_JITTER, size=(n, 2)).tolist()]
    caption_draws = rng.random((n, 2 * config.captions_per_image, CAPTION_DRAWS))
    images, annotations = [], []
    ann_id = first_ann_id
    for i in range(n):
        image_id = first_id + i
        color, shape = pairs[i]
        attributes = {"shape": shape, "color": color, "size": SIZES[sizes[i]], "position": POSITIONS[positions[i]]}
        images.append({"id": image_id, "file_name": f"{split}_{image_id:06d}.png",
                       "width": config.image_size, "height": config.image_size, **attributes})
        for caption, mentions in _captions_for(attributes, config.captions_per_image, caption_draws[i]):
            annotations.append({"id": ann_id, "image_id": image_id, "caption": caption, "mentions": mentions})
            ann_id += 1
    return images, annotations, jitters


def _coco_json(split: str, config: ShapesConfig, images: list[dict], annotations: list[dict]) -> bytes:
    info = {
        "description": "Shapes benchmark",
        "version": "1.0",
        "split": split,
        "seed": config.seed,
        "image_size": config.image_size,
        "held_out_pairs": [list(p) for p in HELD_OUT_PAIRS],
        "config": asdict(config),
    }
    doc = {"info": info, "licenses": [], "images": images, "annotations": annotations}  # no "categories": like COCO captions files (pycocotools would ask each caption for a category_id)
    # Compact, like the official COCO files (and json's fast C encoder only runs without indent).
    return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def make_shapes(out_dir: str | os.PathLike, config: ShapesConfig | None = None, *, workers: int | None = None) -> ShapesPaths:
    """Generate the benchmark into ``out_dir`` (images first, the two JSON files last, all atomic).

    The same config gives byte-identical PNGs and JSON. A folder whose JSON files already hold the
    same config is left as it is (generation is idempotent and cheap to call from a notebook).
    """
    config = config or ShapesConfig()
    paths = ShapesPaths.at(out_dir)
    images_dir, ann_dir = paths.images_dir, paths.train_json.parent
    if _up_to_date(paths, config):
        _write_chinese(paths, config)  # folders made before the Chinese captions get them now
        return paths
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(config.seed)
    n_train, n_val = config.split_sizes()
    train = _split_records("train", n_train, 1, 1, config, rng)
    val = _split_records("val", n_val, 1 + n_train, 1 + n_train * config.captions_per_image, config, rng)

    # Rendering is a masked assignment into a precomputed mask; PNG encoding releases the GIL,
    # so a few threads keep every core busy.
    jobs = ((images_dir / e["file_name"], config.image_size, e, jitter)
            for split in (train, val) for e, jitter in zip(split[0], split[2]))
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(_render_and_write, jobs):
            pass
    # The JSON files last: their presence says the images are complete.
    atomic_write_bytes(paths.train_json, _coco_json("train", config, train[0], train[1]))
    atomic_write_bytes(paths.val_json, _coco_json("val", config, val[0], val[1]))
    _write_chinese(paths, config)
    return paths


def _write_chinese(paths: ShapesPaths, config: ShapesConfig) -> None:
    """The Chinese files beside the English ones, from them (a no-op when they are current)."""
    for english in (paths.train_json, paths.val_json):
        write_chinese_captions(english, config.seed)


_MIRROR_ZH = str.maketrans({"左": "右", "右": "左"})


def mirror_caption(caption: str) -> str:
    """The caption of the left-right mirror image: "left" and "right" swap ("top-left" too), and so do
    the Chinese 左 and 右 (左上角 <-> 右上角)."""
    swapped = re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", caption)
    return swapped.translate(_MIRROR_ZH)


def shapes_dataset(images: int | None = None, image_size: int = 64, seed: int = 0) -> Path:
    """The course's default Shapes dataset, ``data_dir()/shapes-<images>-<size>px-seed<seed>``, generated
    on first use (4,000 images; 400 in the smoke tier). Every notebook uses this one folder."""
    images = images or by_tier(smoke=400, cpu=4000, gpu=4000)
    root = data_dir() / f"shapes-{images}-{image_size}px-seed{seed}"
    make_shapes(root, ShapesConfig(images=images, image_size=image_size, seed=seed))  # no-op when complete
    return root


def _up_to_date(paths: ShapesPaths, config: ShapesConfig) -> bool:
    try:
        for p in (paths.train_json, paths.val_json):
            with open(p, encoding="utf-8") as f:
                doc = json.load(f)
            if doc.get("info", {}).get("config") != asdict(config):
                return False
            if not all((paths.images_dir / e["file_name"]).is_file() for e in doc["images"]):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m t2i_helpers.data.shapes --out DIR --images N [--size 64] [--seed 0]``."""
    parser = argparse.ArgumentParser(description="Generate the Shapes benchmark (COCO captions format).")
    parser.add_argument("--out", required=True, help="output folder (images/ and annotations/ go inside)")
    parser.add_argument("--images", type=int, default=1000, help="images in train + val together")
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels, 32 to 256")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)
    try:
        paths = make_shapes(args.out, ShapesConfig(args.images, args.size, args.seed, args.val_fraction))
    except T2IError as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps({k: str(v) for k, v in asdict(paths).items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# The vocabulary and the renderer live in drawing.py; they are part of this module's interface too.
__all__ = ["ATTRIBUTES", "COLORS", "HELD_OUT_PAIRS", "MAX_IMAGE_SIZE", "MIN_IMAGE_SIZE", "POSITIONS", "POSITION_WORDS",
           "SHAPES", "SIZES", "ShapesConfig", "ShapesPaths", "make_caption", "make_shapes", "mirror_caption", "object_box",
           "render",
           "shapes_dataset"]
