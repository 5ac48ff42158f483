"""Drawing one Shapes image: the attribute vocabulary, and the object rendered on black.

Hard edges on purpose: every object pixel is exactly the named RGB value, so a scorer can read the
colour back without guessing through antialiased borders.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from t2i_helpers.errors import T2IError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position")
# Only in val: each colour and each shape of these pairs is still seen in training, in other pairs.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (("red", "triangle"), ("blue", "square"), ("purple", "circle"))

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 256
SIZE_FRACTION = {"small": 0.25, "large": 0.5}  # object side / canvas side


def check_image_size(image_size: int) -> int:
    """The canvas side, validated: 32 to 256 pixels (smaller objects would be a few pixels wide)."""
    if not isinstance(image_size, (int, np.integer)) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise T2IError(f"Shapes image_size must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, got {image_size!r}")
    return int(image_size)


# ----------------------------------------------------------------------------------------- rendering
def object_side(size: str, image_size: int) -> int:
    """Side of the object's bounding box in pixels: about 1/4 (small) or 1/2 (large) of the canvas."""
    return max(4, int(round(SIZE_FRACTION[size] * image_size)))


@lru_cache(maxsize=64)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean [side, side] mask of a shape filling its box (computed once per shape and side).

    Hard edges on purpose: every object pixel is exactly the named RGB value, so a scorer can read
    the colour back without guessing through anti-aliased borders.
    """
    c = (np.arange(side) + 0.5) - side / 2  # pixel centres relative to the box centre
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        mask = x**2 + y**2 <= (side / 2) ** 2
    elif shape == "square":
        mask = np.ones((side, side), dtype=bool)
    elif shape == "triangle":  # pointing up: apex at the top middle, base on the bottom row
        row = np.arange(side)[:, None]
        mask = np.abs(x) <= (row + 1) / side * (side / 2)
    else:
        raise T2IError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    mask = np.ascontiguousarray(mask)
    mask.setflags(write=False)
    return mask


def object_box(size: str, position: str, image_size: int, jitter: tuple[float, float] = (0.0, 0.0)) -> tuple[int, int, int]:
    """(top, left, side) of the object: centred in its 3x3 grid cell plus jitter, moved inside the canvas.

    ``jitter`` is in units of the canvas side (the generator draws it within +-1/24, so the centre
    never leaves its cell).
    """
    side = object_side(size, image_size)
    row, col = divmod(POSITIONS.index(position), 3)
    cell = image_size / 3
    cy = (row + 0.5) * cell + jitter[0] * image_size
    cx = (col + 0.5) * cell + jitter[1] * image_size
    top = int(round(cy - side / 2))
    left = int(round(cx - side / 2))
    top = min(max(top, 0), image_size - side)  # move inward just enough to lie wholly inside
    left = min(max(left, 0), image_size - side)
    return top, left, side


MAX_JITTER = 1 / 24  # of the canvas side


def render(
    shape: str,
    color: str,
    size: str,
    position: str,
    image_size: int = 64,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One benchmark image as uint8 [H, W, 3]: the object on black (``rng`` draws the jitter; None = none)."""
    check_image_size(image_size)
    for name, value, allowed in (("shape", shape, SHAPES), ("color", color, tuple(COLORS)),
                                 ("size", size, SIZES), ("position", position, POSITIONS)):
        if value not in allowed:
            raise T2IError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
    jitter = (0.0, 0.0) if rng is None else tuple(rng.uniform(-MAX_JITTER, MAX_JITTER, size=2))
    image = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    paint(image, shape, color, size, position, jitter)
    return image


@lru_cache(maxsize=512)
def _tile(shape: str, color: str, side: int) -> np.ndarray:
    """The object's box as uint8 [side, side, 3]: the colour inside the mask, black around it."""
    tile = shape_mask(shape, side)[:, :, None] * np.array(COLORS[color], dtype=np.uint8)
    tile.setflags(write=False)
    return tile


def paint(image: np.ndarray, shape: str, color: str, size: str, position: str, jitter) -> None:
    """Copy the precomputed tile into the (black) canvas: one slice assignment per image."""
    top, left, side = object_box(size, position, image.shape[0], jitter)
    image[top:top + side, left:left + side] = _tile(shape, color, side)


# ------------------------------------------------------------------ caption helpers (every language)
def pick_option(options, u: float):
    """The option a uniform number in [0, 1) selects (captions draw all their random numbers up front)."""
    return options[min(int(u * len(options)), len(options) - 1)]


def with_article(phrase: str) -> str:
    """``"a red circle"``, ``"an orange box"``."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase
