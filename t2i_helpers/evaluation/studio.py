"""The studio of notebook 07: type a caption, draw it with a trained model, and read back what the judge sees.

A student should be able to try the models as in an image-generation app, but with the knobs the
course taught (guidance and sampler steps for diffusion, truncation for the StyleGAN-style GAN, the
seed) and with the judge's reading under every image, so a wrong drawing is named, not guessed.
:class:`Studio` does the work without a browser (:meth:`Studio.draw` returns a :class:`Drawing`), and
:mod:`~t2i_helpers.evaluation.studio_widgets` puts ipywidgets around it.

Typed captions are free text, so what a caption *asks for* is read by keywords of the Shapes
vocabulary (:func:`asked_attributes`): a heuristic for the demo only. Every score the course reports
uses the dataset's own ``mentions`` instead.
"""
from __future__ import annotations

import base64
import html
import inspect
import io
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from transformers.utils import logging as hf_logging

from t2i_helpers.data import COLORS, to_pixels
from t2i_helpers.errors import T2IError
from t2i_helpers.judges import predict_attributes
from t2i_helpers.metrics import NOTHING
from t2i_helpers.text import TextEncoder
from t2i_helpers.train import LoadedRun, load_run, load_shipped

MAX_IMAGES = 16  # per grid: sampling stays a few seconds on a laptop CPU
EXAMPLE = "a small red circle on the left"
# Keywords a typed caption may use for each value (the Shapes captions' words and a few more).
SHAPE_KEYWORDS = {"circle": ("circle", "disc", "round"), "square": ("square", "box", "block"),
                  "triangle": ("triangle",)}
SIZE_KEYWORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big", "huge")}
VERTICAL = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
HORIZONTAL = {"left": ("left",), "right": ("right",)}
CENTER = ("center", "centre", "middle")


@dataclass
class Drawing:
    """One grid: the images a model drew for a caption, and what the judge reads in each."""

    caption: str
    model: str
    images: torch.Tensor  # [N, 3, H, W] in [-1, 1]
    readings: list[dict]  # the judge's attributes per image (NOTHING where nothing is drawn)
    asked: dict  # what the caption asks for, by keyword (may be empty)
    fits: list[bool | None]  # per image: every asked attribute read back (None when nothing is asked)
    notes: list[str] = field(default_factory=list)  # one line each: what the caption's words become
    seconds: float = 0.0
    seed: int = 0
    options: dict = field(default_factory=dict)

    @property
    def fit_rate(self) -> float | None:
        known = [f for f in self.fits if f is not None]
        return sum(known) / len(known) if known else None


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption.lower())


def asked_attributes(caption: str) -> dict:
    """What a typed caption asks for, by keyword: e.g. ``{"color": "red", "shape": "circle", "position": "left"}``.

    Only attributes with exactly one value named are kept ("a red or blue circle" names no colour).
    """
    words = set(_words(caption))
    found: dict[str, set[str]] = {
        "color": {c for c in COLORS if c in words},
        "shape": {s for s, keys in SHAPE_KEYWORDS.items() if words & set(keys)},
        "size": {s for s, keys in SIZE_KEYWORDS.items() if words & set(keys)},
    }
    vertical = {v for v, keys in VERTICAL.items() if words & set(keys)}
    horizontal = {h for h, keys in HORIZONTAL.items() if words & set(keys)}
    if len(vertical) <= 1 and len(horizontal) <= 1 and (vertical or horizontal):
        found["position"] = {" ".join(sorted(vertical, reverse=True) + sorted(horizontal))}
    elif words & set(CENTER):
        found["position"] = {"center"}
    return {name: next(iter(values)) for name, values in found.items() if len(values) == 1}


def describe_reading(attributes: dict) -> str:
    """The judge's reading in words: ``"small blue square, top left"`` (or ``"nothing drawn"``)."""
    if all(value == NOTHING for value in attributes.values()):
        return "nothing drawn"
    noun = " ".join(attributes[k] for k in ("size", "color", "shape") if k in attributes)
    return f"{noun}, {attributes['position']}" if "position" in attributes else noun


def reading_fits(asked: dict, reading: dict) -> bool | None:
    """Every attribute the caption asks for is what the judge reads (None when the caption asks nothing)."""
    if not asked:
        return None
    return all(reading.get(name) == value for name, value in asked.items())


def check_caption(caption: Any) -> str:
    """The caption, stripped, or a one-line error for what cannot be drawn at all (not text, or empty)."""
    if not isinstance(caption, str):
        raise T2IError(f"a caption must be text, got {type(caption).__name__}")
    caption = caption.strip()
    if not caption:
        raise T2IError(f"the caption is empty: type what to draw, for example {EXAMPLE!r}")
    return caption


def caption_notes(caption: str, pieces: Sequence[str], max_length: int) -> list[str]:
    """One line per thing a student should know about how the encoder reads this caption.

    ``pieces``: the caption's word pieces as the tokenizer splits it (without [CLS]/[SEP]).
    """
    notes = []
    readable = max_length - 2
    if len(pieces) > readable:
        notes.append(f"the caption has {len(caption):,} characters, {len(pieces):,} word pieces: the text encoder "
                     f"reads the first {readable} and ignores the rest")
    if any(unicodedata.category(ch).startswith("L") and ord(ch) > 127 for ch in caption):
        notes.append("the models were trained on English Shapes captions: words in other scripts (e.g. Chinese) "
                     "mean nothing to them yet, so expect an arbitrary drawing")
    unknown = sum(piece == "[UNK]" for piece in pieces)
    if unknown:
        notes.append(f"{unknown} of {len(pieces)} word pieces are unknown to the tokenizer ([UNK]): emoji and rare characters")
    if not _words(caption):
        notes.append("the caption holds no English word: the model draws what it draws for no information")
    return notes


def png_data_uri(image: torch.Tensor, size: int = 128) -> str:
    """One [3, H, W] image in [-1, 1] as a ``data:image/png`` URI, upscaled with nearest neighbours."""
    pixels = Image.fromarray(to_pixels(image[None])[0]).resize((size, size), Image.NEAREST)
    buffer = io.BytesIO()
    pixels.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def drawing_html(drawing: Drawing, size: int = 112) -> str:
    """The grid as HTML: each image with the judge's reading under it (a tick where it fits the caption)."""
    marks = {True: " &#10003;", False: " &#10007;", None: ""}
    cells = "".join(
        f"<figure class='t2i-cell' style='margin:4px;text-align:center;width:{size + 8}px'>"
        f"<img class='t2i-sample' src='{png_data_uri(image, size)}' width='{size}' height='{size}'>"
        f"<figcaption class='t2i-reading' style='font-size:11px'>read as: {html.escape(describe_reading(reading))}"
        f"{marks[fit]}</figcaption></figure>"
        for image, reading, fit in zip(drawing.images, drawing.readings, drawing.fits))
    asked = ", ".join(f"{k} {v}" for k, v in drawing.asked.items()) or "nothing the judge can check"
    rate = drawing.fit_rate
    shown = drawing.caption if len(drawing.caption) <= 120 else drawing.caption[:117] + "..."
    summary = (f"<div class='t2i-summary'><b>{html.escape(drawing.model)}</b>: {len(drawing.images)} images of "
               f"&ldquo;<span class='t2i-caption-shown'>{html.escape(shown)}</span>&rdquo; in "
               f"{drawing.seconds:.1f} s; asked (by keyword): {html.escape(asked)}"
               + (f"; read back in {rate:.0%}" if rate is not None else "") + "</div>")
    notes = "".join(f"<div class='t2i-note'>note: {html.escape(n)}</div>" for n in drawing.notes)
    return f"{summary}{notes}<div class='t2i-grid' style='display:flex;flex-wrap:wrap'>{cells}</div>"


def accepted_options(run: LoadedRun) -> tuple[str, ...]:
    """The sampling knobs this run's model takes, of guidance, steps and psi (truncation)."""
    parameters = inspect.signature(run.model.generate).parameters
    return tuple(name for name in ("guidance", "steps", "psi") if name in parameters)


class Studio:
    """Models by name, a judge, and :meth:`draw`; the widgets live in ``studio_widgets``."""

    def __init__(self, models: dict[str, LoadedRun], judge: Any) -> None:
        if not models:
            raise T2IError("the studio needs at least one model: shipped checkpoints or a run folder")
        self.models = dict(models)
        self.judge = judge
        self.drawings: list[Drawing] = []
        self._encoders: dict[str, TextEncoder] = {}

    @classmethod
    def from_shipped(cls, judge: Any, tier: str = "cpu",
                     families: Sequence[str] = ("baseline", "gan", "stylegan", "diffusion")) -> "Studio":
        """The tier's shipped checkpoints (CPU weights, a few MB each), named by family."""
        return cls({family: load_shipped(family, tier, device="cpu") for family in families}, judge)

    def add_run(self, run_dir: str | Path, name: str | None = None) -> str:
        """Add a run folder's model (its EMA weights) and return the name it is listed under."""
        run_dir = Path(str(run_dir).strip()).expanduser()
        run = load_run(run_dir, device="cpu")
        name = name or f"{run.family} ({run_dir.name}, step {run.step})"
        self.models[name] = run
        return name

    def word_pieces(self, run: LoadedRun, caption: str) -> list[str]:
        """How the run's tokenizer splits the caption (the encoder is loaded once, on first use)."""
        key = run.text_encoder_config.model_name
        if key not in self._encoders:
            self._encoders[key] = TextEncoder(run.text_encoder_config)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # not the "longer than 512" warning: the note says it in one line
        try:
            return self._encoders[key].tokenizer.tokenize(caption)
        finally:
            hf_logging.set_verbosity(verbosity)

    def draw(self, caption: str, model: str, n: int = 8, seed: int = 0, **options) -> Drawing:
        """Draw ``n`` images of ``caption`` with ``model`` and judge each; a one-line error for bad input.

        ``options``: guidance, steps or psi, where the model takes them (others are ignored, and said so).
        """
        caption = check_caption(caption)
        if model not in self.models:
            raise T2IError(f"no model named {model!r}; choose one of {sorted(self.models)}")
        if not 1 <= int(n) <= MAX_IMAGES:
            raise T2IError(f"number of images must be from 1 to {MAX_IMAGES}, got {n}")
        run = self.models[model]
        takes = accepted_options(run)
        used = {k: v for k, v in options.items() if k in takes and v is not None}
        notes = caption_notes(caption, self.word_pieces(run, caption), run.text_encoder_config.max_length)
        ignored = sorted(k for k, v in options.items() if k not in takes and v is not None)
        if ignored:
            notes.append(f"{run.family} takes no {', '.join(ignored)}: ignored")
        start = time.perf_counter()
        images = run.generate([caption] * int(n), seed=int(seed), **used)
        readings = predict_attributes(self.judge, images)
        asked = asked_attributes(caption)
        drawing = Drawing(caption, model, images, readings, asked, [reading_fits(asked, r) for r in readings],
                          notes, time.perf_counter() - start, int(seed), used)
        self.drawings.append(drawing)
        return drawing

    def rating_items(self, last: int | None = None) -> list[dict]:
        """The drawings so far as items for :class:`~t2i_helpers.evaluation.ratings.RatingPanel`.

        Ids are stable across sessions (model, caption, seed, knobs, index), so a redrawn grid is not rated twice.
        """
        drawings = self.drawings[-last:] if last else self.drawings
        items = {f"{d.model}|{d.caption}|seed {d.seed}|{sorted(d.options.items())}|{i}": {"model": d.model, "caption": d.caption, "image": image}
                 for d in drawings for i, image in enumerate(d.images)}
        return [{**item, "item_id": item_id} for item_id, item in items.items()]
