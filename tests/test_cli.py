"""The command line: what each command prints, and one-line errors with exit status 2."""
from __future__ import annotations

import json

import pytest

from PIL import Image

from t2i_helpers.cli import main


def test_make_shapes_then_inspect_json(tmp_path, capsys):
    assert main(["make-shapes", str(tmp_path / "s"), "--images", "40", "--size", "32", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "40 images at 32px" in out and "captions_train.json" in out
    ann = tmp_path / "s" / "annotations" / "captions_val.json"
    assert main(["inspect", str(tmp_path / "s" / "images"), str(ann), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    expected = json.loads(ann.read_text())
    assert stats["images"] == len(expected["images"]) and stats["captions"] == len(expected["annotations"])


def test_inspect_coco_mini_val_reports_79_images_and_395_captions(coco_mini, capsys):
    ann = coco_mini / "annotations" / "captions_val2017.json"
    assert main(["inspect", str(coco_mini / "val2017"), str(ann), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 79 and stats["captions"] == 395


def test_inspect_human_readable_output_names_the_numbers(coco_mini, capsys):
    assert main(["inspect", str(coco_mini / "train2017"), str(coco_mini / "annotations" / "captions_train2017.json")]) == 0
    out = capsys.readouterr().out
    assert "80" in out and "400" in out


def test_a_json_that_is_not_coco_captions_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "not_coco.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["inspect", str(tmp_path), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not_coco.json" in err and "\n" not in err


def test_missing_annotation_file_is_one_line_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.json" in err and "\n" not in err


def test_train_sample_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("T2I_SMOKE", "1")
    main(["make-shapes", str(tmp_path / "s"), "--images", "40", "--size", "64", "--seed", "2"])
    data = [str(tmp_path / "s" / "images"), str(tmp_path / "s" / "annotations" / "captions_train.json")]
    assert main(["train", "--model", "baseline", "--data", *data, "--out", str(tmp_path / "run"), "--steps", "3",
                 "--batch-size", "4", "--device", "cpu", "--no-progress"]) == 0
    assert "trained baseline to step 3" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "run"), "--caption", "a red circle", "-n", "4", "--out", str(grid)]) == 0
    assert "4 samples of baseline" in capsys.readouterr().out
    with Image.open(grid) as image:
        assert image.size == (4 * 64 + 5 * 2, 64 + 2 * 2)


def test_sample_from_a_folder_without_checkpoint_is_one_line_error(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--caption", "x", "--out", str(tmp_path / "g.png")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_evaluate_inception_offline_without_weights_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("T2I_SMOKE", "1")
    main(["make-shapes", str(tmp_path / "s"), "--images", "20", "--size", "64", "--seed", "2"])
    data = [str(tmp_path / "s" / "images"), str(tmp_path / "s" / "annotations" / "captions_train.json")]
    main(["train", "--model", "baseline", "--data", *data, "--out", str(tmp_path / "run"), "--steps", "1",
          "--batch-size", "4", "--device", "cpu", "--no-progress"])
    capsys.readouterr()
    code = main(["evaluate", str(tmp_path / "run"), "--data", *data, "--n", "8", "--fid", "inception"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--fid proxy" in err


def test_resume_says_which_flags_it_ignores_and_max_minutes_stops(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("T2I_SMOKE", "1")
    main(["make-shapes", str(tmp_path / "s"), "--images", "40", "--size", "32", "--seed", "2"])
    data = [str(tmp_path / "s" / "images"), str(tmp_path / "s" / "annotations" / "captions_train.json")]
    common = ["train", "--model", "baseline", "--data", *data, "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*common, "--steps", "1000", "--max-minutes", "0.0000001", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "trained baseline to step 1 (time budget reached)" in out
    assert main([*common, "--steps", "2", "--resume", "--lr", "0.5", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "ignored: --batch-size, --lr" in out and "trained baseline to step 2:" in out


def test_compare_bad_budgets_are_one_line_errors(tmp_path, capsys):
    data = ["--data", str(tmp_path / "images"), str(tmp_path / "captions_train.json"), "--out", str(tmp_path / "c")]
    for flags, words in ((["--curve-points", "0"], "argument --curve-points: must be at least 1, got 0"),
                         (["--minutes-for", "gan=x"], "--minutes-for expects MODEL=MINUTES"),
                         (["--minutes", "0"], "argument --minutes: must be a finite number above 0, got 0")):
        assert main(["compare", *data, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "\n" not in err


def test_bench_threads_sets_torchs_threads_for_the_run_and_rejects_zero(capsys, monkeypatch):
    import torch

    from t2i_helpers.cli import bench_train as bench

    seen = {}

    def fake_bench_train(family, **options):
        seen["threads"], seen["family"] = torch.get_num_threads(), family
        return {"threads": torch.get_num_threads()}

    monkeypatch.setattr(bench, "bench_train", fake_bench_train)
    before = torch.get_num_threads()
    try:
        assert main(["bench", "train", "--model", "gan", "--threads", "1"]) == 0
        assert seen == {"threads": 1, "family": "gan"}
        assert json.loads(capsys.readouterr().out) == {"threads": 1}
        assert main(["bench", "train", "--threads", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "error: argument --threads: must be at least 1, got 0 (--help lists the options)"
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv, flag", [
    (["train", "--model", "baseline", "--data", "i", "a.json", "--out", "o", "--steps", "0"], "--steps"),
    (["train", "--model", "baseline", "--data", "i", "a.json", "--out", "o", "--steps", "-5"], "--steps"),
    (["train", "--model", "baseline", "--data", "i", "a.json", "--out", "o", "--lr", "nan"], "--lr"),
    (["train", "--model", "baseline", "--data", "i", "a.json", "--out", "o", "--lr", "-1"], "--lr"),
    (["train", "--model", "baseline", "--data", "i", "a.json", "--out", "o", "--lr", "inf"], "--lr"),
    (["train", "--model", "baseline", "--data", "i", "a.json", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["train", "--model", "baseline", "--data", "i", "a.json", "--out", "o", "--max-minutes", "-1"], "--max-minutes"),
    (["train", "--model", "baseline", "--data", "i", "a.json", "--out", "o", "--checkpoint-every", "-1"],
     "--checkpoint-every"),
    (["evaluate", "run", "--data", "i", "a.json", "--n", "0", "--fid", "proxy"], "--n"),
    (["sample", "run", "--caption", "x", "--out", "g.png", "--guidance", "-1"], "--guidance"),
    (["sample", "run", "--caption", "x", "--out", "g.png", "-n", "0"], "-n"),
    (["sample", "run", "--caption", "x", "--out", "g.png", "--steps", "two"], "--steps"),
    (["bench", "curve", "--n", "0"], "--n"),
])
def test_bad_values_stop_at_the_door_in_one_line_naming_the_flag(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be created: the check comes before any work
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: argument {flag}") and "\n" not in err, err
    assert not any(tmp_path.iterdir())
