"""Human ratings: a notebook panel that shows generated images and records 1-5 scores.

Why people: FID and R-precision are proxies; a thesis backs them with people judging *realism*
("could this be a real image of this kind?") and *match* ("does it show what the caption says?").
The panel hides which model made an image and shows them in a seeded random order, so a rater
cannot favour (or learn) a model. Every rating is appended to a CSV file in the run folder at once,
so closing the notebook loses nothing and a later session resumes where the rater stopped.

:func:`summarise_ratings` gives each model's mean with a 95% confidence interval (Student's t).
The interval treats ratings as independent; several ratings from one rater are not quite that, so
report the number of raters too.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy import stats

from t2i_helpers.data.images import to_pixels
from t2i_helpers.errors import T2IError
from t2i_helpers.files import atomic_path

FIELDS = ("timestamp", "rater", "item_id", "model", "caption", "realism", "match")
SCALE = (1, 2, 3, 4, 5)
QUESTIONS = {
    "realism": "Realism: could this be a real image of its kind? (1 = clearly fake, 5 = real)",
    "match": "Match: does the image show what the caption says? (1 = not at all, 5 = exactly)",
}


def read_ratings(csv_path: str | os.PathLike) -> list[dict]:
    """All rows of a ratings CSV (empty list if the file does not exist yet)."""
    path = Path(csv_path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        if tuple(reader.fieldnames) != FIELDS:
            raise T2IError(f"{path} is not a ratings file: columns {reader.fieldnames}, expected {list(FIELDS)}")
        return list(reader)


def append_rating(csv_path: str | os.PathLike, row: dict) -> None:
    """Append one row atomically: old rows + the new one go to a temp file that replaces the CSV.

    A crash mid-write leaves the previous file intact; earlier ratings are never lost.
    """
    path = Path(csv_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_bytes() if path.exists() else b""
    if old:
        read_ratings(path)  # refuse to append to a file with other columns
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    if not old:
        writer.writeheader()
    writer.writerow({k: row[k] for k in FIELDS})
    if old and not old.endswith(b"\n"):
        old += b"\n"
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(old + buffer.getvalue().encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _png_bytes(image: Any, display_size: int = 256) -> bytes:
    """PNG of an image: tensor/array [3, H, W] in [-1, 1], uint8 [H, W, 3], or a file path."""
    if isinstance(image, (str, os.PathLike)):
        pil = Image.open(image).convert("RGB")
    else:
        a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
        if a.dtype != np.uint8 or (a.shape[0] == 3 and a.shape[-1] != 3):
            a = to_pixels(a[None])[0]  # float in [-1, 1] or channels-first -> uint8 [H, W, 3]
        pil = Image.fromarray(a, mode="RGB")
    if pil.width < display_size:  # small generated images: enlarge without smoothing
        pil = pil.resize((display_size, display_size * pil.height // pil.width), Image.Resampling.NEAREST)
    out = io.BytesIO()
    pil.save(out, format="PNG")
    return out.getvalue()


class RatingPanel:
    """Blind rating of generated images; usable without a browser (call :meth:`rate` directly).

    ``items``: dicts with ``model``, ``caption``, ``image`` and optionally ``item_id`` (default
    ``"<model>/<index>"``, stable across sessions). Items are shown in a random order fixed by
    ``seed``; those this ``rater`` already rated in ``csv_path`` are skipped, so a session resumes.
    In a notebook, just display the panel (the last expression of a cell) or call :meth:`widget`.
    """

    def __init__(self, items: Sequence[dict], csv_path: str | os.PathLike, rater: str, seed: int = 0) -> None:
        if not str(rater).strip():
            raise T2IError("rater must be a non-empty name or pseudonym")
        self.csv_path = Path(csv_path)
        self.rater = str(rater).strip()
        self.items = []
        for i, item in enumerate(items):
            missing = {"model", "caption", "image"} - set(item)
            if missing:
                raise T2IError(f"rating item {i} lacks {sorted(missing)}")
            self.items.append({**item, "item_id": str(item.get("item_id", f"{item['model']}/{i}"))})
        ids = [it["item_id"] for it in self.items]
        if len(set(ids)) != len(ids):
            raise T2IError("rating items must have distinct item_id values")
        order = np.random.default_rng(seed).permutation(len(self.items))
        done = {r["item_id"] for r in read_ratings(self.csv_path) if r["rater"] == self.rater}
        self.queue = [self.items[i] for i in order if self.items[i]["item_id"] not in done]
        self.position = 0
        self.rated_now = 0
        self._widgets: dict[str, Any] | None = None

    @property
    def current(self) -> dict | None:
        """The item on screen (None when every item is rated)."""
        return self.queue[self.position] if self.position < len(self.queue) else None

    @property
    def remaining(self) -> int:
        return len(self.queue) - self.position

    def rate(self, realism: int, match: int) -> dict:
        """Record scores for the current item (appended to the CSV at once) and move on."""
        item = self.current
        if item is None:
            raise T2IError("all items are rated")
        for name, value in (("realism", realism), ("match", match)):
            if value not in SCALE:
                raise T2IError(f"{name} must be an integer from 1 to 5, got {value!r}")
        row = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "rater": self.rater, "item_id": item["item_id"],
               "model": item["model"], "caption": item["caption"], "realism": int(realism), "match": int(match)}
        append_rating(self.csv_path, row)
        self.position += 1
        self.rated_now += 1
        self._refresh()
        return row

    def skip(self) -> None:
        """Leave the current item unrated for now (it comes back in the next session)."""
        if self.current is not None:
            self.position += 1
            self._refresh()

    # ------------------------------------------------------------------------------ the widget
    def widget(self):
        """The ipywidgets panel (imported only here, so the rest works without ipywidgets)."""
        import ipywidgets as w

        if self._widgets is None:
            toggles = {name: w.ToggleButtons(options=list(SCALE), value=None, description="",
                                             style={"button_width": "40px"}) for name in QUESTIONS}
            save, skip = w.Button(description="Save and next", button_style="primary"), w.Button(description="Skip")
            self._widgets = {"image": w.Image(format="png"), "caption": w.HTML(), "status": w.HTML(), **toggles,
                             "save": save, "skip": skip}
            save.on_click(self._on_save)
            skip.on_click(lambda _: self.skip())
            rows = [self._widgets["status"], self._widgets["image"], self._widgets["caption"]]
            for name, question in QUESTIONS.items():
                rows += [w.Label(question), toggles[name]]
            rows.append(w.HBox([save, skip]))
            self._widgets["box"] = w.VBox(rows)
            self._refresh()
        return self._widgets["box"]

    def _on_save(self, _button=None) -> None:
        values = {name: self._widgets[name].value for name in QUESTIONS}
        if None in values.values():
            self._widgets["status"].value = "<b>Choose both scores first.</b>"
            return
        self.rate(values["realism"], values["match"])

    def _refresh(self) -> None:
        if self._widgets is None:
            return
        item = self.current
        for name in QUESTIONS:
            self._widgets[name].value = None
        if item is None:
            self._widgets["status"].value = f"<b>Done: {self.rated_now} ratings saved to {self.csv_path}.</b>"
            self._widgets["image"].value = b""
            self._widgets["caption"].value = ""
            for key in ("save", "skip"):
                self._widgets[key].disabled = True
            return
        self._widgets["status"].value = f"{self.remaining} images left (model hidden)"
        self._widgets["image"].value = _png_bytes(item["image"])
        self._widgets["caption"].value = f"<p style='font-size:1.2em'>Caption: <i>{item['caption']}</i></p>"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget())


def _mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of its Student-t confidence interval (NaN ends for fewer than 2 values)."""
    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half


def summarise_ratings(csv_path: str | os.PathLike, level: float = 0.95) -> list[dict]:
    """One row per model: ``n`` ratings, ``raters``, and for realism and match the mean with its CI."""
    rows = read_ratings(csv_path)
    if not rows:
        raise T2IError(f"no ratings in {csv_path}")
    out = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        summary: dict[str, Any] = {"model": model, "n": len(mine), "raters": len({r["rater"] for r in mine})}
        for name in QUESTIONS:
            mean, low, high = _mean_ci([float(r[name]) for r in mine], level)
            summary.update({f"{name}_mean": mean, f"{name}_ci_low": low, f"{name}_ci_high": high})
        out.append(summary)
    return out
