"""compare: several families, one time budget, one table and one figure."""
from __future__ import annotations

import json

import pytest
import torch

from t2i_helpers.cli.compare import (CompareConfig, compare_models, curve_figure, format_curves, format_table,
                                 grid_captions)
from t2i_helpers.errors import T2IError
from t2i_helpers.data.shapes import ShapesConfig, make_shapes
from t2i_helpers.data.evalset import load_eval_data


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), ShapesConfig(images=120, image_size=32, seed=5))


def test_grid_captions_mix_full_partial_and_held_out_captions(shapes):
    val = load_eval_data(shapes.images_dir, shapes.val_json, image_size=32)
    ids = grid_captions(val, 8, seed=0)
    assert len(ids) == len(set(ids)) == 8
    held = val.held_out_captions()
    assert sum(bool(held[i]) for i in ids) == 2
    assert sum(len(val.mentions[i]) == 4 and not held[i] for i in ids) == 3  # every attribute named
    assert sum(len(val.mentions[i]) < 4 and not held[i] for i in ids) == 3  # size or position left open
    assert grid_captions(val, 8, seed=0) == ids and grid_captions(val, 8, seed=1) != ids


def test_format_table_prints_percentages_and_dashes():
    rows = [{"model": "diffusion", "parameters": 25_700_000, "steps": 1200, "train_minutes": 10.0,
             "train_images_per_s": 4000.4, "val_all": 0.9512, "held_out_all": None, "val_color": 1.0,
             "val_shape": 0.5, "val_size": None, "val_position": 0.25, "fid_proxy": 1.234, "real_images_all": 0.99}]
    table = format_table(rows).splitlines()
    assert table[0].startswith("| model | params | steps |")
    assert table[2] == "| diffusion | 25.7M | 1200 | 10.0 | 4000 | 95.1% | - | 100.0% | 50.0% | - | 25.0% | 1.23 |"
    assert table[-1].endswith("99.0% all right.")
    rows[0]["errors"] = [{"attribute": "shape", "wanted": "circle", "drawn": "square", "count": 54, "share": 0.135}]
    assert format_table(rows).splitlines()[-1] == "- diffusion: shape circle drawn as square 13.5%"
    rows[0]["errors_held_out"] = [{"attribute": "color", "wanted": "blue", "drawn": "white", "count": 3,
                                   "share": 0.107}]
    assert format_table(rows).splitlines()[-2:] == ["- diffusion: shape circle drawn as square 13.5%",
                                                    "- diffusion, held-out pairs: color blue drawn as white 10.7%"]


def test_format_curves_and_curve_figure():
    rows = [{"model": "diffusion", "curve": [
        {"step": 500, "train_minutes": 2.5, "val_all": 0.61, "held_out_all": 0.55},
        {"step": 1000, "train_minutes": 5.0, "val_all": 0.8512, "held_out_all": None}]},
        {"model": "baseline"}]  # no curve: no line
    assert format_curves(rows) == "- diffusion: 2.5 min (step 500): 61% / 55%; 5.0 min (step 1000): 85%"
    fig = curve_figure(rows)
    lines = fig.axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [[0.61, 0.8512], [0.55]]  # val, then held-out
    assert [line.get_label() for line in lines] == ["diffusion (val)", "diffusion (held-out pairs)"]


def test_curve_points_below_one_is_a_clear_error(shapes, tmp_path):
    with pytest.raises(T2IError, match="curve_points.*at least 1, got 0"):
        compare_models(shapes.images_dir, shapes.train_json, tmp_path, CompareConfig(curve_points=0))


@pytest.mark.slow  # trains a tiny model in two time slices, scoring after each
def test_compare_learning_curve_trains_in_slices_and_scores_each(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_SMOKE", "1")
    torch.set_num_threads(1)
    config = CompareConfig(families=("baseline",), minutes=0.004, max_steps=100_000, curve_points=2,
                           curve_captions=8, eval_captions=12, device="cpu", batch_size=4)
    result = compare_models(shapes.images_dir, shapes.train_json, tmp_path / "cmp", config)
    row = result.rows[0]
    curve = row["curve"]
    assert len(curve) == 2 and row["stopped_by_time"]
    assert 0 < curve[0]["step"] < curve[1]["step"] == row["steps"]  # the second slice resumed the first
    assert 0 < curve[0]["train_minutes"] < curve[1]["train_minutes"] == pytest.approx(row["train_minutes"], abs=0.01)
    assert 0 <= curve[0]["val_all"] <= 1
    assert curve[1]["val_all"] == row["val_all"]  # the last point is the full evaluation
    # The curve so far is written after each scored slice (the final point lives in results.json).
    assert json.loads((tmp_path / "cmp" / "baseline" / "curve.json").read_text()) == [curve[0]]
    saved = torch.load(tmp_path / "cmp" / "baseline" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == row["steps"]
    assert "during training" in result.table_path.read_text()
    png, pdf = result.curve_paths
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"


@pytest.mark.slow  # trains two tiny models and the attribute classifier
def test_compare_trains_scores_and_reuses_finished_runs(shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("T2I_SMOKE", "1")
    torch.set_num_threads(1)
    config = CompareConfig(families=("baseline", "diffusion"), minutes=5.0, max_steps=3, eval_captions=12,
                           device="cpu", sample_steps=2, batch_size=4)
    result = compare_models(shapes.images_dir, shapes.train_json, tmp_path / "cmp", config)
    assert [r["model"] for r in result.rows] == ["baseline", "diffusion"]
    for row in result.rows:
        assert row["steps"] == 3 and not row["stopped_by_time"]  # max_steps came first
        assert 0 <= row["val_all"] <= 1 and row["val_n"] == 12
        assert row["fid_proxy"] >= 0
    assert result.rows[1]["generate_options"] == {"guidance": 3.0, "steps": 2}
    saved = json.loads(result.json_path.read_text())
    assert saved["rows"] == json.loads(json.dumps(result.rows)) and len(saved["grid_captions"]) == 8
    assert result.table_path.read_text().count("\n| ") == 2  # one line per model under the header
    png, pdf = result.figure_paths
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    for row in result.rows:  # smoke models get things wrong: the samples behind it, one figure per model
        assert (tmp_path / "cmp" / f"compare_errors_{row['model']}.png").read_bytes()[:4] == b"\x89PNG"
    before = (tmp_path / "cmp" / "diffusion" / "checkpoint.pt").stat().st_mtime_ns
    capsys.readouterr()
    again = compare_models(shapes.images_dir, shapes.train_json, tmp_path / "cmp", config)
    assert "diffusion: reusing the finished run" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "diffusion" / "checkpoint.pt").stat().st_mtime_ns == before
    assert [r["val_all"] for r in again.rows] == [r["val_all"] for r in result.rows]

    # A run stopped part-way (a time limit, a disconnect) keeps the rows of the models it finished.
    import t2i_helpers.cli.compare as compare

    def stopped(family, *args, **kwargs):
        if family == "diffusion":
            raise KeyboardInterrupt
        return train_one(family, *args, **kwargs)

    train_one = compare._train_one
    monkeypatch.setattr(compare, "_train_one", stopped)
    with pytest.raises(KeyboardInterrupt):
        compare_models(shapes.images_dir, shapes.train_json, tmp_path / "cmp", config)
    partial = json.loads(result.json_path.read_text())
    assert [r["model"] for r in partial["rows"]] == ["baseline"]
    assert partial["rows"][0]["val_all"] == result.rows[0]["val_all"]
    assert result.table_path.read_text().count("\n| ") == 1


def test_compare_without_a_val_split_is_a_clear_error(shapes, tmp_path):
    from t2i_helpers.errors import T2IError

    lonely = tmp_path / "captions_all.json"
    lonely.write_text(shapes.train_json.read_text())
    with pytest.raises(T2IError, match="needs the val split"):
        compare_models(shapes.images_dir, lonely, tmp_path / "cmp", CompareConfig())
    with pytest.raises(T2IError, match="budget of gan must be more than 0 minutes, got 0"):
        compare_models(shapes.images_dir, shapes.train_json, tmp_path / "cmp",
                       CompareConfig(minutes_by_model={"gan": 0.0}))


def test_model_variants_name_config_fields():
    from t2i_helpers.cli.compare import model_variant, variant_training
    from t2i_helpers.errors import T2IError

    family, config = model_variant("diffusion:objective=flow,logit_mean=1.0,attention_resolutions=[4, 8]")
    assert family == "diffusion" and config.objective == "flow" and config.logit_mean == 1.0
    assert config.attention_resolutions == (4, 8)
    family, config = model_variant("gan:contrastive_weight=1,diffaug_policy=")
    assert family == "gan" and config.contrastive_weight == 1 and config.diffaug_policy == ""
    assert model_variant("baseline")[0] == "baseline"
    family, config = model_variant("baseline:flip=naive")
    assert family == "baseline" and config == model_variant("baseline")[1]  # a training setting, not the model's
    assert variant_training("baseline:flip=naive") == {"flip": "naive"} and variant_training("gan:contrastive_weight=1") == {}
    for bad, message in (("gan:no_such_field=1", "not FIELD=VALUE"), ("gan:contrastive_weight", "not FIELD=VALUE"),
                         ("unicorn", "unknown model")):
        with pytest.raises(T2IError, match=message):
            model_variant(bad)


@pytest.mark.slow
def test_compare_trains_variants_beside_their_family(shapes, tmp_path, monkeypatch):
    from t2i_helpers.train import load_run

    monkeypatch.setenv("T2I_SMOKE", "1")
    torch.set_num_threads(1)
    config = CompareConfig(families=("gan", "gan:contrastive_weight=1.0", "diffusion:objective=flow", "baseline:flip=naive"), minutes=5.0,
                           max_steps=2, eval_captions=8, device="cpu", sample_steps=2, batch_size=4, curve_points=1)
    result = compare_models(shapes.images_dir, shapes.train_json, tmp_path / "cmp", config)
    assert [r["model"] for r in result.rows] == list(config.families)
    assert load_run(tmp_path / "cmp" / "gan_contrastive_weight_1.0").model_config.contrastive_weight == 1.0
    assert load_run(tmp_path / "cmp" / "gan").model_config.contrastive_weight == 0.0
    assert load_run(tmp_path / "cmp" / "diffusion_objective_flow").model_config.objective == "flow"
    assert result.rows[2]["generate_options"] == {"guidance": 3.0, "steps": 2}
    assert json.loads((tmp_path / "cmp" / "baseline_flip_naive" / "config.json").read_text())["train"]["flip"] == "naive"
