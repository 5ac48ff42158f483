"""Figures and tables: one style, one save helper each (PNG + vector PDF; Markdown + LaTeX).

Every figure in the course goes through :func:`save_figure`, so a thesis author can paste them
directly and they all look alike; every result table through :func:`save_table`, each number with
its interval and the table with its protocol. With a ``caption`` each also writes ``<name>.json``,
from which ``python -m t2i_helpers figures`` builds ``INDEX.md`` (docs/figures.md).
"""
from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from t2i_helpers.config import figures_dir, tier
from t2i_helpers.data.images import to_pixels
from t2i_helpers.errors import T2IError
from t2i_helpers.files import atomic_path, atomic_write_text
from t2i_helpers.metrics import mean_ci, proportion_ci

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


def save_figure(fig: plt.Figure, name: str, out_dir: str | Path | None = None,
                caption: str | None = None) -> tuple[Path, Path]:
    """Save ``fig`` as ``<out_dir>/<name>.png`` and ``.pdf`` (default :func:`config.figures_dir`).

    With ``caption`` (one line: what the figure shows) it also writes ``<name>.json`` for the index.
    """
    out = Path(out_dir) if out_dir is not None else figures_dir()
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    _atomic_savefig(fig, png)
    _atomic_savefig(fig, pdf)
    if caption is not None:
        write_sidecar(out, name, "figure", caption, [png.name, pdf.name])
    return png, pdf


def write_sidecar(out: Path, name: str, kind: str, caption: str, files: list[str], protocol: str | None = None) -> Path:
    """``<out>/<name>.json``: what the index lists for a figure or table. ``T2I_NOTEBOOK`` and
    ``T2I_COMMIT`` (set by ``python -m t2i_helpers figures``) say where it came from."""
    if not caption.strip() or "\n" in caption.strip():
        raise T2IError(f"{name}: a caption is one line of text, got {caption!r}")
    record = {"name": name, "kind": kind, "caption": caption.strip(), "protocol": protocol,
              "notebook": os.environ.get("T2I_NOTEBOOK") or None, "tier": tier(),
              "commit": os.environ.get("T2I_COMMIT") or None, "files": files}
    return atomic_write_text(out / f"{name}.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")


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


# -------------------------------------------------------------------------------- tables
# A number with its interval: a column ``X`` (or ``X_mean``) next to ``X_ci_low`` and ``X_ci_high`` in the
# same row is one cell, ``0.910 [0.855, 0.949]`` (the convention of ``summarise_ratings``).
CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def share_with_ci(name: str, share: float | None, n: int, level: float = 0.95) -> dict[str, float]:
    """``{name: share, name_ci_low, name_ci_high}``: a share of ``n`` trials, exact (Clopper-Pearson) interval."""
    if share is None or n <= 0 or not math.isfinite(share):
        return {name: math.nan, name + CI_LOW: math.nan, name + CI_HIGH: math.nan}
    low, high = proportion_ci(round(share * n), n, level)
    return {name: float(share), name + CI_LOW: low, name + CI_HIGH: high}


def mean_with_ci(name: str, values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """``{name: mean, name_ci_low, name_ci_high}``: a mean over runs (e.g. seeds), Student-t interval."""
    mean, low, high = mean_ci(values, level)
    return {name: mean, name + CI_LOW: low, name + CI_HIGH: high}


def format_number(value: Any, digits: int = 3) -> str:
    """A cell: floats with ``digits`` decimals (whole numbers from 100 up), missing or NaN as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def interval_base(column: str, row: dict[str, Any]) -> str | None:
    """The prefix of the ``_ci_low``/``_ci_high`` keys that belong to ``column`` (``X`` or ``X_mean``), if any."""
    for base in (column, column.removesuffix("_mean")):
        if base + CI_LOW in row and base + CI_HIGH in row:
            return base
    return None


def table_cells(rows: Sequence[dict[str, Any]], digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells; each value with an interval in one cell, ``v [low, high]``."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and not k.endswith((CI_LOW, CI_HIGH))]
    cells = []
    for row in rows:
        line = []
        for column in columns:
            text = format_number(row[column], digits) if column in row else ""
            base = interval_base(column, row)
            if base and text != "-":
                low, high = (format_number(row[base + end], digits) for end in (CI_LOW, CI_HIGH))
                text += f" [{low}, {high}]" if low != "-" else ""
            line.append(text)
        cells.append(line)
    return columns, cells


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``_`` -> ``\\_``, ``%`` -> ``\\%``, ...)."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def markdown_table(columns: list[str], cells: list[list[str]], name: str, caption: str, protocol: str) -> str:
    pipe = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [f"**Table {name}.** {caption}", "", "| " + " | ".join(map(pipe, columns)) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(map(pipe, line)) + " |" for line in cells]
    return "\n".join(lines + ["", f"Protocol: {protocol}", ""])


def latex_table(columns: list[str], cells: list[list[str]], name: str, caption: str, protocol: str) -> str:
    # "{}" before a cell that starts with "[": after "\\" LaTeX would read it as a row-spacing argument
    row = lambda values: " & ".join(("{}" if v.startswith("[") else "") + latex_escape(v) for v in values) + r" \\"  # noqa: E731
    lines = [f"% {name}: written by t2i_helpers.viz.save_table; needs \\usepackage{{booktabs}}",
             r"\begin{table}[htbp]", r"\centering", f"\\caption{{{latex_escape(caption)}}}",
             f"\\label{{tab:{name}}}", r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}", r"\toprule",
             row(columns), r"\midrule", *(row(line) for line in cells), r"\bottomrule", r"\end{tabular}",
             "", f"\\par\\smallskip{{\\footnotesize Protocol: {latex_escape(protocol)}}}", r"\end{table}", ""]
    return "\n".join(lines)


def save_table(rows: Sequence[dict[str, Any]], name: str, caption: str, protocol: str,
               out_dir: str | Path | None = None, digits: int = 3) -> tuple[Path, Path]:
    """Write ``<name>.md`` (Markdown) and ``<name>.tex`` (LaTeX booktabs), and ``<name>.json`` for the index.

    ``rows`` are dicts (column -> value); a value ``X`` with ``X_ci_low``/``X_ci_high`` beside it is
    printed ``X [low, high]`` (:func:`share_with_ci`, :func:`mean_with_ci` make them). ``protocol``
    says how the numbers were made: data, n, seeds, sampler, judge, and what the intervals are.
    """
    if not rows:
        raise T2IError(f"save_table {name}: no rows")
    out = Path(out_dir) if out_dir is not None else figures_dir()
    columns, cells = table_cells(rows, digits)
    md, tex = out / f"{name}.md", out / f"{name}.tex"
    atomic_write_text(md, markdown_table(columns, cells, name, caption, protocol))
    atomic_write_text(tex, latex_table(columns, cells, name, caption, protocol))
    write_sidecar(out, name, "table", caption, [md.name, tex.name], protocol=protocol)
    return md, tex
