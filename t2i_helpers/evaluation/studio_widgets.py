"""The ipywidgets around :class:`~t2i_helpers.evaluation.studio.Studio`: a caption box, the knobs, a
Generate button with a progress bar, a side-by-side comparison, and the rating panel.

Every callback catches what it raises and shows it as one line under the button: a bad caption must
cost the student a message, never the kernel. Widgets carry CSS classes (``t2i-caption``,
``t2i-generate``, ...) so the browser test (tests/test_browser.py) can find them.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable

from t2i_helpers.errors import T2IError
from t2i_helpers.evaluation.ratings import RatingPanel, summarise_ratings
from t2i_helpers.evaluation.studio import EXAMPLE, MAX_IMAGES, Studio, accepted_options, drawing_html


def message_html(text: str, kind: str = "error") -> str:
    """One line for the status area (escaped: a caption may hold any characters)."""
    colour = {"error": "#b00020", "info": "#333"}[kind]
    return f"<div class='t2i-{kind}' style='color:{colour}'>{html.escape(text)}</div>"


def guarded(status: Any, action: Callable[[], str]) -> None:
    """Run ``action`` (which returns HTML for ``status``); show any error as one line instead of raising."""
    try:
        status.value = action()
    except T2IError as error:
        status.value = message_html(str(error))
    except Exception as error:  # a widget callback must not end in a traceback wall  # noqa: BLE001
        status.value = message_html(f"{type(error).__name__}: {error}".splitlines()[0])


def knobs(w: Any) -> dict[str, Any]:
    """The sampling controls, shared by both panels."""
    style = {"description_width": "110px"}
    return {
        "n": w.IntSlider(value=8, min=1, max=MAX_IMAGES, description="images", style=style),
        "seed": w.IntText(value=0, description="seed", style=style),
        "guidance": w.FloatSlider(value=2.0, min=0.0, max=6.0, step=0.5, description="guidance", style=style),
        "steps": w.IntSlider(value=25, min=2, max=100, description="sampler steps", style=style),
        "psi": w.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.1, description="truncation psi", style=style),
    }


def chosen_options(studio: Studio, model: str, controls: dict[str, Any]) -> dict[str, Any]:
    """The knob values the model takes (guidance and steps for diffusion, psi for StyleGAN)."""
    takes = accepted_options(studio.models[model])
    return {name: controls[name].value for name in ("guidance", "steps", "psi") if name in takes}


def update_knobs(studio: Studio, model: str, controls: dict[str, Any]) -> None:
    """Grey out the knobs the chosen model does not take."""
    takes = accepted_options(studio.models[model]) if model in studio.models else ()
    for name in ("guidance", "steps", "psi"):
        controls[name].disabled = name not in takes


class StudioPanel:
    """Caption in, grid out: ``display(StudioPanel(studio).widget())`` in a notebook."""

    def __init__(self, studio: Studio) -> None:
        import ipywidgets as w

        self.studio, self.w = studio, w
        self.caption = w.Text(value=EXAMPLE, placeholder=EXAMPLE, description="caption",
                              layout=w.Layout(width="560px")).add_class("t2i-caption")
        first = "diffusion" if "diffusion" in studio.models else next(iter(studio.models))  # the best generator
        self.model = w.Dropdown(options=list(studio.models), value=first, description="model").add_class("t2i-model")
        self.controls = knobs(w)
        self.button = w.Button(description="Generate", button_style="primary").add_class("t2i-generate")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="200px"))
        self.status = w.HTML().add_class("t2i-status")
        self.result = w.HTML().add_class("t2i-result")
        self.run_path = w.Text(placeholder="runs/04_diffusion", description="run folder").add_class("t2i-run-path")
        self.load = w.Button(description="Add run")
        self.button.on_click(lambda _: self.generate())
        self.caption.on_submit(lambda _: self.generate())
        self.load.on_click(lambda _: guarded(self.status, self.add_run))
        self.model.observe(lambda _: update_knobs(studio, self.model.value, self.controls), names="value")
        update_knobs(studio, self.model.value, self.controls)

    def add_run(self) -> str:
        name = self.studio.add_run(self.run_path.value)
        self.model.options = list(self.studio.models)
        self.model.value = name
        return message_html(f"added {name}", "info")

    def generate(self) -> None:
        """Draw with the current settings (the button is disabled meanwhile, so clicks do not queue)."""
        self.button.disabled, self.progress.value, self.progress.bar_style = True, 0, "info"
        self.status.value = message_html(f"drawing with {self.model.value}...", "info")

        def draw() -> str:
            drawing = self.studio.draw(self.caption.value, self.model.value, n=self.controls["n"].value,
                                       seed=self.controls["seed"].value,
                                       **chosen_options(self.studio, self.model.value, self.controls))
            self.result.value = drawing_html(drawing)
            return message_html(f"done in {drawing.seconds:.1f} s", "info")

        try:
            guarded(self.status, draw)
        finally:
            self.button.disabled, self.progress.value, self.progress.bar_style = False, 1, "success"

    def widget(self) -> Any:
        w, c = self.w, self.controls
        return w.VBox([self.caption, w.HBox([self.model, c["n"], c["seed"]]), w.HBox([c["guidance"], c["steps"], c["psi"]]),
                       w.HBox([self.button, self.progress]), self.status, self.result,
                       w.HBox([self.run_path, self.load])]).add_class("t2i-studio")


class ComparePanel:
    """One caption, two models side by side, with the same seed and knobs."""

    def __init__(self, studio: Studio) -> None:
        import ipywidgets as w

        self.studio, self.w = studio, w
        names = list(studio.models)
        self.caption = w.Text(value=EXAMPLE, description="caption", layout=w.Layout(width="560px")).add_class("t2i-compare-caption")
        self.left = w.Dropdown(options=names, value=names[0], description="left")
        self.right = w.Dropdown(options=names, value=names[-1], description="right")
        self.controls = knobs(w)
        self.button = w.Button(description="Compare", button_style="primary").add_class("t2i-compare")
        self.status = w.HTML()
        self.panes = (w.HTML().add_class("t2i-left"), w.HTML().add_class("t2i-right"))
        self.button.on_click(lambda _: guarded(self.status, self.compare))

    def compare(self) -> str:
        seconds = 0.0
        for pane, model in zip(self.panes, (self.left.value, self.right.value)):
            drawing = self.studio.draw(self.caption.value, model, n=self.controls["n"].value,
                                       seed=self.controls["seed"].value,
                                       **chosen_options(self.studio, model, self.controls))
            pane.value = drawing_html(drawing, size=80)
            seconds += drawing.seconds
        return message_html(f"both drawn in {seconds:.1f} s, seed {self.controls['seed'].value}", "info")

    def widget(self) -> Any:
        w, c = self.w, self.controls
        return w.VBox([self.caption, w.HBox([self.left, self.right]), w.HBox([c["n"], c["seed"]]),
                       w.HBox([c["guidance"], c["steps"], c["psi"]]), self.button, self.status,
                       w.HBox([w.Box([pane], layout=w.Layout(width="50%")) for pane in self.panes])])


def rating_panel(studio: Studio, csv_path: str | Path, rater: str, seed: int = 0) -> RatingPanel:
    """A blind rating panel over everything the studio drew so far (models hidden, order shuffled)."""
    items = studio.rating_items()
    if not items:
        raise T2IError("nothing drawn yet: press Generate (or call studio.draw) before rating")
    return RatingPanel(items, csv_path, rater=rater, seed=seed)


def ratings_summary(csv_path: str | Path) -> str:
    """Each model's mean realism and match with 95% intervals, as text lines (or why there are none)."""
    if not Path(csv_path).exists():
        return f"no ratings yet in {Path(csv_path).name}: rate some images in the panel above"
    lines = [f"{'model':28s} {'n':>4s} {'raters':>6s}  realism [95% CI]        match [95% CI]"]
    for row in summarise_ratings(csv_path):
        lines.append(f"{row['model']:28s} {row['n']:4d} {row['raters']:6d}  "
                     f"{row['realism_mean']:.2f} [{row['realism_ci_low']:.2f}, {row['realism_ci_high']:.2f}]"
                     f"      {row['match_mean']:.2f} [{row['match_ci_low']:.2f}, {row['match_ci_high']:.2f}]")
    return "\n".join(lines)
