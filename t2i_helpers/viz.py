"""Figures: one style, one save helper (PNG for slides and notebooks, vector PDF for the thesis).

Every figure in the course goes through :func:`save_figure`, so a thesis author can paste them
directly and they all look alike.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from t2i_helpers.config import figures_dir
from t2i_helpers.data.images import to_pixels
from t2i_helpers.files import atomic_path

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "image.interpolation": "nearest",
    "pdf.fonttype": 42,  # embed TrueType: text stays selectable/editable in the PDF
}


def use_style() -> None:
    """Apply the course's matplotlib style (called on import, safe to call again)."""
    matplotlib.rcParams.update(STYLE)


use_style()


def _atomic_savefig(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."))


def save_figure(fig: plt.Figure, name: str, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Save ``fig`` as ``<out_dir>/<name>.png`` and ``.pdf`` (default :func:`config.figures_dir`)."""
    out = Path(out_dir) if out_dir is not None else figures_dir()
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    _atomic_savefig(fig, png)
    _atomic_savefig(fig, pdf)
    return png, pdf


def image_grid(images: torch.Tensor | np.ndarray, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """Tile a batch into one uint8 image [H', W', 3]; accepts [-1,1] tensors or uint8 [B,H,W,3] arrays."""
    arr = to_pixels(images) if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"image_grid expects [B,H,W,3] uint8 or [B,3,H,W] tensors, got shape {arr.shape}")
    b, h, w, _ = arr.shape
    nrow = max(1, min(nrow, b))
    ncol = (b + nrow - 1) // nrow
    grid = np.zeros((ncol * (h + pad) + pad, nrow * (w + pad) + pad, 3), dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int = 8) -> Path:
    """Write a sample grid as a PNG (atomically), e.g. for the CLI's ``sample --out grid.png``."""
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image_grid(images, nrow=nrow)).save(tmp, format="PNG")
    return Path(path)


def show_images(
    images: torch.Tensor | np.ndarray,
    captions: Sequence[str] | None = None,
    nrow: int = 8,
    title: str | None = None,
    size: float = 1.3,
) -> plt.Figure:
    """One image per panel, with its caption wrapped underneath; returns the figure."""
    arr = to_pixels(images) if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.uint8)
    b = arr.shape[0]
    ncols = max(1, min(nrow, b))
    nrows = (b + ncols - 1) // ncols
    extra = 0.45 if captions is not None else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + extra) * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < b:
            ax.imshow(arr[i])
            if captions is not None:
                ax.set_title("\n".join(textwrap.wrap(captions[i], 18)[:3]), fontsize=6.5)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_rows(
    rows: dict[str, torch.Tensor | np.ndarray],
    column_titles: Sequence[str] | None = None,
    size: float = 1.0,
    title: str | None = None,
) -> plt.Figure:
    """One row of images per entry of ``rows`` (name -> images), the name on the left.

    The figure for comparisons: models (or guidance scales, or augmentations) as rows, the same
    captions and seeds as columns. Images are [-1, 1] tensors [B,3,H,W] or uint8 arrays [B,H,W,3].
    """
    ncols = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, squeeze=False,
                             figsize=(size * ncols + 1.2, size * len(rows) + (0.6 if column_titles else 0.2)))
    for ax_row, (name, images) in zip(axes, rows.items()):
        pixels = to_pixels(images) if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.uint8)
        for i, ax in enumerate(ax_row):
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            ax.spines[:].set_visible(False)
            if i < len(pixels):
                ax.imshow(pixels[i])
        ax_row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    for ax, text in zip(axes[0], column_titles or []):
        ax.set_title("\n".join(textwrap.wrap(text, 16)), fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def caption_rows(
    columns: dict[str, torch.Tensor | np.ndarray], captions: Sequence[str], size: float = 1.1,
    title: str | None = None,
) -> plt.Figure:
    """Captions as rows (their text on the left, readable), one column per source (model or "real").

    ``columns`` maps a column title to one image per caption ([-1, 1] tensors or uint8 arrays).
    """
    fig, axes = plt.subplots(len(captions), len(columns), squeeze=False,
                             figsize=(size * len(columns) + 2.6, size * len(captions) + 0.5))
    for j, (name, images) in enumerate(columns.items()):
        pixels = to_pixels(images) if isinstance(images, torch.Tensor) else np.asarray(images, dtype=np.uint8)
        axes[0, j].set_title(name, fontsize=8)
        for i, ax in enumerate(axes[:, j]):
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            ax.imshow(pixels[i], interpolation="nearest")
    for ax, text in zip(axes[:, 0], captions):
        ax.set_ylabel("\n".join(textwrap.wrap(text, 26)), rotation=0, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_curves(
    xs: Sequence[float] | dict[str, Sequence[float]], series: dict[str, Sequence[float]], xlabel: str, ylabel: str,
    title: str | None = None, logy: bool = False, styles: dict[str, dict] | None = None,
    ylim: tuple[float, float] | None = None,
) -> plt.Figure:
    """Line plot of several named series (loss curves, sweeps, learning curves).

    ``xs`` is one x axis for every series, or a dict giving each series its own x values (e.g. models
    scored at different training times). ``styles`` passes matplotlib keywords per series
    (``{"gan (val)": {"color": "C1", "ls": "--"}}``).
    """
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for name, ys in series.items():
        x = xs[name] if isinstance(xs, dict) else xs
        ax.plot(x[: len(ys)], ys, label=name, **(styles or {}).get(name, {}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    return fig
