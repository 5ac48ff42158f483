"""Human ratings: blind seeded order, append without losing rows, resume, summary vs scipy, widget callbacks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from t2i_helpers.errors import T2IError
from t2i_helpers.evaluation.ratings import FIELDS, RatingPanel, append_rating, read_ratings, summarise_ratings


def _items(n_per_model=3, models=("gan", "diffusion")):
    return [{"model": m, "caption": f"a red circle {i}", "image": torch.rand(3, 16, 16) * 2 - 1, "item_id": f"{m}-{i}"}
            for m in models for i in range(n_per_model)]


def test_order_is_shuffled_by_seed_and_reproducible(tmp_path):
    a = RatingPanel(_items(), tmp_path / "a.csv", "ann", seed=1)
    b = RatingPanel(_items(), tmp_path / "b.csv", "bob", seed=1)
    c = RatingPanel(_items(), tmp_path / "c.csv", "cy", seed=2)
    order = [it["item_id"] for it in a.queue]
    assert order == [it["item_id"] for it in b.queue]
    assert order != [it["item_id"] for it in c.queue]
    assert order != [it["item_id"] for it in _items()]  # not grouped by model


def test_ratings_append_keep_earlier_rows_and_resume(tmp_path):
    path = tmp_path / "run" / "ratings.csv"
    panel = RatingPanel(_items(), path, "ann", seed=0)
    first = panel.current
    row = panel.rate(4, 5)
    assert row["item_id"] == first["item_id"] and row["model"] == first["model"]
    panel.rate(2, 3)
    before = path.read_bytes()
    # a new session of the same rater starts at the first unrated item
    again = RatingPanel(_items(), path, "ann", seed=0)
    assert again.remaining == 4 and again.current["item_id"] == panel.current["item_id"]
    again.rate(1, 1)
    assert path.read_bytes().startswith(before)  # earlier rows untouched, byte for byte
    rows = read_ratings(path)
    assert [(r["realism"], r["match"]) for r in rows] == [("4", "5"), ("2", "3"), ("1", "1")]
    # another rater sees every item
    assert RatingPanel(_items(), path, "bob", seed=0).remaining == 6
    assert [p.name for p in path.parent.iterdir()] == ["ratings.csv"]  # no temp files left


def test_invalid_scores_and_items_are_refused(tmp_path):
    panel = RatingPanel(_items(1), tmp_path / "r.csv", "ann")
    for bad in (0, 6, 2.5, "3"):
        with pytest.raises(T2IError, match="1 to 5"):
            panel.rate(bad, 3)
    assert not (tmp_path / "r.csv").exists()
    panel.rate(3, 3)
    panel.rate(3, 3)
    with pytest.raises(T2IError, match="all items are rated"):
        panel.rate(3, 3)
    with pytest.raises(T2IError, match="lacks"):
        RatingPanel([{"model": "x", "caption": "c"}], tmp_path / "s.csv", "ann")
    with pytest.raises(T2IError, match="rater"):
        RatingPanel(_items(1), tmp_path / "s.csv", " ")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(T2IError, match="not a ratings file"):
        append_rating(tmp_path / "other.csv", {k: "1" for k in FIELDS})


def test_summary_matches_an_independent_t_interval(tmp_path):
    path = tmp_path / "ratings.csv"
    rng = np.random.default_rng(0)
    scores = {"gan": rng.integers(1, 6, size=(12, 2)), "diffusion": rng.integers(1, 6, size=(7, 2))}
    for model, values in scores.items():
        for i, (realism, match) in enumerate(values):
            append_rating(path, {"timestamp": "t", "rater": f"r{i % 3}", "item_id": f"{model}{i}", "model": model,
                                 "caption": "c", "realism": int(realism), "match": int(match)})
    summary = {row["model"]: row for row in summarise_ratings(path)}
    assert set(summary) == {"gan", "diffusion"}
    for model, values in scores.items():
        row = summary[model]
        assert row["n"] == len(values) and row["raters"] == 3
        for col, name in enumerate(("realism", "match")):
            x = values[:, col].astype(float)
            low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
            assert row[f"{name}_mean"] == pytest.approx(x.mean())
            assert row[f"{name}_ci_low"] == pytest.approx(low)
            assert row[f"{name}_ci_high"] == pytest.approx(high)


def test_single_rating_has_no_interval(tmp_path):
    path = tmp_path / "r.csv"
    RatingPanel(_items(1, ("gan",)), path, "ann").rate(5, 4)
    (row,) = summarise_ratings(path)
    assert row["realism_mean"] == 5 and math.isnan(row["realism_ci_low"])
    with pytest.raises(T2IError, match="no ratings"):
        summarise_ratings(tmp_path / "none.csv")


def test_widget_callbacks_save_and_hide_the_model(tmp_path):
    pytest.importorskip("ipywidgets")
    path = tmp_path / "r.csv"
    panel = RatingPanel(_items(1), path, "ann", seed=3)
    box = panel.widget()
    w = panel._widgets
    assert w["image"].value[:8] == b"\x89PNG\r\n\x1a\n"
    assert panel.current["caption"] in w["caption"].value
    assert "gan" not in w["status"].value and "diffusion" not in w["status"].value  # blind
    panel._on_save()  # nothing chosen yet: no row, a hint instead
    assert not path.exists() and "Choose" in w["status"].value
    shown = panel.current["item_id"]
    w["realism"].value, w["match"].value = 2, 4
    panel._on_save()
    (row,) = read_ratings(path)
    assert row["item_id"] == shown and (row["realism"], row["match"]) == ("2", "4")
    assert w["realism"].value is None  # reset for the next image
    w["skip"].click()
    assert panel.current is None and "Done" in w["status"].value and w["save"].disabled
    assert box is panel.widget()
