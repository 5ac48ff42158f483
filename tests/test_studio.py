"""Notebook 07's studio: caption parsing, the judge's reading, drawing from shipped checkpoints, and the
widgets driven without a browser (tests/test_browser.py drives them in Chromium)."""
from __future__ import annotations

import re

import pytest
import torch

from t2i_helpers.errors import T2IError
from t2i_helpers.evaluation.studio import (MAX_IMAGES, Studio, asked_attributes, caption_notes, check_caption,
                                           describe_reading, drawing_html, reading_fits)
from t2i_helpers.evaluation.studio_widgets import (ComparePanel, StudioPanel, guarded, rating_panel,
                                                   ratings_summary)
from t2i_helpers.judges import predict_attributes
from t2i_helpers.judges.classifier import AttributeClassifier, ClassifierConfig
from t2i_helpers.metrics import NOTHING
from t2i_helpers.train import load_shipped


@pytest.mark.parametrize("caption, expected", [
    ("a small red circle on the left", {"color": "red", "shape": "circle", "size": "small", "position": "left"}),
    ("A BIG purple Box in the upper right corner", {"color": "purple", "shape": "square", "size": "large",
                                                    "position": "top right"}),
    ("there is a tiny disc in the middle", {"shape": "circle", "size": "small", "position": "center"}),
    ("a green triangle at the bottom", {"color": "green", "shape": "triangle", "position": "bottom"}),
    ("a red or blue circle", {"shape": "circle"}),  # two colours named: colour is not checked
    ("left or right, a square", {"shape": "square"}),  # two sides named: position is not checked
    ("something nice", {}),
])
def test_asked_attributes_reads_the_shapes_vocabulary(caption, expected):
    assert asked_attributes(caption) == expected


def test_describe_reading_and_fits():
    reading = {"color": "blue", "shape": "square", "size": "small", "position": "top left"}
    assert describe_reading(reading) == "small blue square, top left"
    assert describe_reading({k: NOTHING for k in reading}) == "nothing drawn"
    assert reading_fits({"color": "blue", "shape": "square"}, reading) is True
    assert reading_fits({"color": "red"}, reading) is False
    assert reading_fits({}, reading) is None


@pytest.mark.parametrize("bad, message", [("", "empty"), ("  \n\t ", "empty"), (None, "must be text"),
                                          (42, "must be text")])
def test_check_caption_refuses_in_one_line(bad, message):
    with pytest.raises(T2IError, match=message) as error:
        check_caption(bad)
    assert "\n" not in str(error.value)


def test_caption_notes_name_what_the_encoder_cannot_read():
    assert caption_notes("a red circle", ["a", "red", "circle"], 32) == []
    long = caption_notes("x " * 100, ["x"] * 100, 32)
    assert len(long) == 1 and "100 word pieces" in long[0] and "first 30" in long[0]
    chinese = " ".join(caption_notes("红色的圆形", ["红", "[UNK]", "的", "[UNK]", "[UNK]"], 32))
    assert "English" in chinese and "3 of 5 word pieces" in chinese and "no English word" in chinese
    assert any("[UNK]" in n for n in caption_notes("🔴", ["[UNK]"], 32))


@pytest.fixture(scope="module")
def studio():
    """The shipped baseline and diffusion model, judged by an untrained classifier (these tests check the
    plumbing, not the scores: tests/test_shipped.py checks that the shipped models draw what is asked)."""
    torch.manual_seed(0)
    judge = AttributeClassifier(ClassifierConfig()).eval()
    return Studio({name: load_shipped(name, "cpu", device="cpu") for name in ("baseline", "diffusion")}, judge)


def test_draw_is_generate_then_judge(studio):
    caption = "a large blue square in the top right corner"
    drawing = studio.draw(caption, "diffusion", n=3, seed=5, guidance=1.5, steps=4)
    run = studio.models["diffusion"]
    expected = run.generate([caption] * 3, seed=5, guidance=1.5, steps=4)
    assert torch.equal(drawing.images, expected)
    assert drawing.readings == predict_attributes(studio.judge, expected)
    assert drawing.asked == asked_attributes(caption) and drawing.options == {"guidance": 1.5, "steps": 4}
    assert drawing.fits == [reading_fits(drawing.asked, r) for r in drawing.readings]


def test_draw_ignores_knobs_a_model_does_not_take_and_says_so(studio):
    drawing = studio.draw("a red circle", "baseline", n=2, guidance=3.0, psi=0.5)
    assert drawing.options == {} and any("takes no guidance, psi" in n for n in drawing.notes)
    assert torch.equal(drawing.images[0], drawing.images[1])  # the baseline has no noise input


@pytest.mark.parametrize("caption", ["a red circle " * 400, "一个红色的大圆形在左上角", "🔴🟦🔺", "?!...",
                                     "a red 圆形 on the left 🙂"])
def test_any_text_gets_images_and_a_note(studio, caption):
    drawing = studio.draw(caption, "baseline", n=2)
    assert drawing.images.shape == (2, 3, 32, 32) and len(drawing.readings) == 2
    assert drawing.notes, caption


def test_draw_refuses_bad_requests_in_one_line(studio):
    with pytest.raises(T2IError, match="empty"):
        studio.draw("   ", "baseline")
    with pytest.raises(T2IError, match="no model named 'vae'"):
        studio.draw("a red circle", "vae")
    with pytest.raises(T2IError, match=f"from 1 to {MAX_IMAGES}"):
        studio.draw("a red circle", "baseline", n=MAX_IMAGES + 1)


def test_drawing_html_shows_every_image_with_its_reading(studio):
    drawing = studio.draw("a <b>red</b> circle", "baseline", n=5)
    page = drawing_html(drawing)
    assert page.count("class='t2i-sample'") == 5 and page.count("read as: ") == 5
    assert "<b>red</b>" not in page  # the caption's text is escaped, never markup
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 5


def test_rating_items_are_stable_and_distinct(studio, tmp_path):
    studio.drawings.clear()
    studio.draw("a red circle", "baseline", n=2, seed=1)
    studio.draw("a red circle", "baseline", n=2, seed=1)  # the same grid again: rated once
    studio.draw("a red circle", "diffusion", n=2, seed=1, steps=3)
    items = studio.rating_items()
    assert len(items) == 4 and len({i["item_id"] for i in items}) == 4
    panel = rating_panel(studio, tmp_path / "ratings.csv", rater="ana")
    for _ in range(4):
        panel.rate(4, 5)
    again = rating_panel(studio, tmp_path / "ratings.csv", rater="ana")
    assert again.remaining == 0  # a new session skips what this rater rated
    summary = ratings_summary(tmp_path / "ratings.csv")
    assert "baseline" in summary and "diffusion" in summary and "4.00" in summary


def test_rating_needs_a_drawing_and_a_summary_needs_ratings(tmp_path):
    empty = Studio({"baseline": load_shipped("baseline", "cpu", device="cpu")}, judge=None)
    with pytest.raises(T2IError, match="nothing drawn yet"):
        rating_panel(empty, tmp_path / "r.csv", rater="ana")
    assert ratings_summary(tmp_path / "r.csv").startswith("no ratings yet")


def test_the_panel_shows_errors_as_one_line_and_recovers(studio):
    panel = StudioPanel(studio)
    panel.caption.value = ""
    panel.generate()
    assert "t2i-error" in panel.status.value and "empty" in panel.status.value and not panel.button.disabled
    panel.model.value = "diffusion"
    assert not panel.controls["guidance"].disabled and panel.controls["psi"].disabled
    panel.caption.value, panel.controls["n"].value, panel.controls["steps"].value = "a green circle", 3, 3
    panel.generate()
    assert panel.result.value.count("t2i-sample") == 3 and "done in" in panel.status.value
    panel.run_path.value = "/no/such/run"
    guarded(panel.status, panel.add_run)
    assert "t2i-error" in panel.status.value and "/no/such/run" in panel.status.value


def test_guarded_turns_any_exception_into_one_line():
    class Status:
        value = ""

    status = Status()
    guarded(status, lambda: (_ for _ in ()).throw(RuntimeError("boom\nsecond line")))
    assert "RuntimeError: boom" in status.value and "second line" not in status.value


def test_compare_fills_both_panes(studio):
    panel = ComparePanel(studio)
    panel.controls["n"].value, panel.controls["steps"].value = 2, 3
    panel.button.click()
    assert all(pane.value.count("t2i-sample") == 2 for pane in panel.panes), panel.status.value
    assert "baseline" in panel.panes[0].value and "diffusion" in panel.panes[1].value
