"""The run folder's guards (issue 17): no silent overwrite, one writer, interrupts that save, divergence,
one-line errors for broken checkpoints and full disks, leftovers cleaned. Real processes where it matters."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from t2i_helpers.cli import main
from t2i_helpers.errors import TrainingError
from t2i_helpers.files import atomic_write_text
from t2i_helpers.models.baseline import BaselineConfig
from t2i_helpers.train.runfolder import RunLock, data_digest, read_checkpoint
from t2i_helpers.train import TrainConfig, load_run, read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
TINY = BaselineConfig(image_size=32, fc_channels=8, hidden_channels=4)


@pytest.fixture(scope="module")
def shapes(tiny_train_data) -> tuple[Path, Path]:
    return tiny_train_data


def _config(**overrides) -> TrainConfig:
    values = dict(steps=4, batch_size=8, warmup_steps=0, checkpoint_every=0, sample_every=0, log_every=1,
                  progress=False, device="cpu", seed=0, sample_captions=2)
    return TrainConfig(**(values | overrides))


def _cli(shapes, out: Path, *flags: str) -> list[str]:
    return ["train", "--model", "baseline", "--data", str(shapes[0]), str(shapes[1]), "--out", str(out),
            "--no-progress", "--device", "cpu", *flags]


def _env() -> dict:
    return os.environ | {"PYTHONPATH": str(ROOT), "T2I_TIER": "smoke"}


# ---- no silent overwrite ---------------------------------------------------------------------------

def test_a_finished_run_is_neither_replaced_nor_its_log_deleted_without_overwrite(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    train("baseline", *shapes, out, _config(), TINY)
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.csv", "config.json")}
    for flags in ([], ["--steps", "2"]):
        assert main(_cli(shapes, out, *flags)) == 2
        err = capsys.readouterr().err.strip()
        assert "already holds a baseline run at step 4, saved" in err and "--resume" in err and "--overwrite" in err
        assert "\n" not in err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert main(_cli(shapes, out, "--steps", "2", "--overwrite")) == 0
    assert load_run(out, device="cpu").step == 2


def test_resume_and_overwrite_together_are_refused(shapes, tmp_path):
    with pytest.raises(TrainingError, match="choose one"):
        train("baseline", *shapes, tmp_path / "run", _config(), TINY, resume=True, overwrite=True)


# ---- one writer at a time --------------------------------------------------------------------------

def test_a_second_process_is_kept_out_and_told_who_holds_the_folder(shapes, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from t2i_helpers.train.runfolder import RunLock\n"
         f"with RunLock(Path({str(out)!r})):\n    print('locked', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=rf"in use by process {holder.pid} on .*another --out"):
            train("baseline", *shapes, out, _config(), TINY)
        assert not (out / "checkpoint.pt").exists()
    finally:
        holder.communicate("\n", timeout=30)
    train("baseline", *shapes, out, _config(), TINY)  # the lock went with the process
    assert load_run(out, device="cpu").step == 4


def test_two_real_training_processes_on_one_folder(shapes, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "t2i_helpers", *_cli(shapes, out, "--steps", "100000")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_for(out / "metrics.csv")
        second = subprocess.run([sys.executable, "-m", "t2i_helpers", *_cli(shapes, out, "--steps", "3", "--resume")],
                                capture_output=True, text=True, env=_env(), timeout=120)
        assert second.returncode == 2
        assert f"in use by process {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 130


def _wait_for(path: Path, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.2)


# ---- interrupts keep the work ----------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_saves_a_checkpoint_and_says_how_to_resume(shapes, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "t2i_helpers", *_cli(shapes, out, "--steps", "100000")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for(out / "metrics.csv")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    line = next(l for l in stdout.splitlines() if l.startswith("interrupted"))
    step = int(line.split("step ")[1].split()[0])
    assert f"interrupted ({sig.name}): step {step} is saved in" in line and "--resume" in line
    assert load_run(out, device="cpu").step == step > 0
    assert main(_cli(shapes, out, "--steps", str(step + 2), "--resume")) == 0
    assert load_run(out, device="cpu").step == step + 2


# ---- divergence ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["baseline", "gan", "diffusion"])
def test_an_exploding_learning_rate_stops_the_run_without_saving_its_weights(family, shapes, tmp_path):
    from t2i_helpers.models import default_config

    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"diverged|became nan|nan/inf"):
        train(family, *shapes, out, _config(steps=40, lr=1e9, grad_clip=None), default_config(family, "smoke"))
    assert not (out / "checkpoint.pt").exists()  # no checkpoint of blown-up weights


def test_a_healthy_run_is_not_taken_for_a_diverging_one(shapes, tmp_path):
    result = train("baseline", *shapes, tmp_path / "run", _config(steps=60, lr=1e-3), TINY)
    assert result.step == 60


# ---- broken checkpoints ----------------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _break(kind: str, good: Path, path: Path) -> None:
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "missing keys":
        torch.save({"step": 3}, path)
    elif kind == "a folder":
        path.mkdir()
    elif kind == "a pickle that runs code":
        path.write_bytes(pickle.dumps({"model": _Evil()}))


@pytest.mark.parametrize("kind", ["empty", "truncated", "random bytes", "missing keys", "a folder",
                                  "a pickle that runs code"])
def test_every_broken_checkpoint_is_one_line_and_exit_2(kind, shapes, tmp_path, capsys):
    good = tmp_path / "good"
    train("baseline", *shapes, good, _config(), TINY)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text((good / "config.json").read_text())
    _break(kind, good / "checkpoint.pt", out / "checkpoint.pt")
    for argv in (["sample", str(out), "--caption", "a red circle", "--out", str(tmp_path / "g.png")],
                 _cli(shapes, out, "--steps", "8", "--resume")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and str(out / "checkpoint.pt") in err, err
        assert "weights_only=False" not in err and "Traceback" not in err


def test_read_checkpoint_names_what_is_missing(tmp_path):
    torch.save({"model": {}, "step": 1}, tmp_path / "c.pt")
    with pytest.raises(TrainingError, match="no ema, optimizers, config"):
        read_checkpoint(tmp_path / "c.pt")


# ---- failed saves ----------------------------------------------------------------------------------

@pytest.mark.parametrize("error, reason", [
    (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4374"), "the disk is full"),
    (PermissionError(13, "Permission denied"), "permission denied"),
])
def test_a_failed_save_is_one_line_and_the_previous_checkpoint_survives(error, reason, shapes, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from t2i_helpers.train import state

    out = tmp_path / "run"
    train("baseline", *shapes, out, _config(), TINY)
    before = (out / "checkpoint.pt").read_bytes()

    def failing_save(obj, path):
        raise error

    monkeypatch.setattr(state, "atomic_torch_save", failing_save)
    if reason == "the disk is full":
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(TrainingError, match=rf"could not save .*checkpoint.pt: {reason}.*previous checkpoint is kept"):
        train("baseline", *shapes, out, _config(steps=6), resume=True)
    assert (out / "checkpoint.pt").read_bytes() == before


# ---- leftovers and data ----------------------------------------------------------------------------

def test_stale_temp_files_and_a_cut_off_metrics_row_are_cleaned_on_resume(shapes, tmp_path, capsys):
    out = tmp_path / "run"
    train("baseline", *shapes, out, _config(), TINY)
    stale = out / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"x" * 1000)
    metrics = (out / "metrics.csv").read_text()
    (out / "metrics.csv").write_text(metrics + "5,0.12")  # a row cut off by a kill
    assert read_metrics(out)["step"] == [1.0, 2.0, 3.0, 4.0]  # plotting skips it too
    capsys.readouterr()
    train("baseline", *shapes, out, _config(steps=6), resume=True)
    out_text = capsys.readouterr().out
    assert not stale.exists() and "removed 1 temporary file" in out_text
    assert "dropped 1 incomplete row" in out_text
    steps = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_on_another_data_set_of_the_same_size_is_refused(shapes, tmp_path):
    from t2i_helpers.data.shapes import ShapesConfig, make_shapes

    other = make_shapes(tmp_path / "other", ShapesConfig(images=60, image_size=32, seed=4))
    out = tmp_path / "run"
    train("baseline", *shapes, out, _config(), TINY)
    assert data_digest(other.images_dir, other.train_json) != data_digest(*shapes)
    with pytest.raises(TrainingError, match="is not the data set the run .* was trained on"):
        train("baseline", other.images_dir, other.train_json, out, _config(steps=6), resume=True)
    assert load_run(out, device="cpu").step == 4


def test_files_get_the_users_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.json", json.dumps({}))
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)


def test_the_lock_file_names_its_owner(tmp_path):
    with RunLock(tmp_path):
        text = (tmp_path / ".lock").read_text()
        assert text.startswith(f"process {os.getpid()} on ")
