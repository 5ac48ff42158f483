"""The training engine: run folder, checkpoints (safe to load, atomic), exact resume, NaN stop, DDP."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2i_helpers.errors import TrainingError
from t2i_helpers.models.baseline import BaselineConfig, TextToImageModel
from t2i_helpers.train import TrainConfig, load_run, read_metrics, train
from t2i_helpers.train.state import EMA

ROOT = Path(__file__).resolve().parents[1]
TINY = BaselineConfig(image_size=32, fc_channels=8, hidden_channels=4)


@pytest.fixture(scope="module")
def shapes(tiny_train_data) -> tuple[Path, Path]:
    return tiny_train_data


# torch.compile on a CPU generates C++: without a compiler those tests cannot run here.
needs_cxx = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                               reason="torch.compile on a CPU needs a C++ compiler (g++), and none is installed")


@pytest.fixture
def compiled(monkeypatch) -> list:
    """The modules handed to torch.compile during the test (which still compiles them for real)."""
    calls: list = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(module) or real_compile(module, **kw))
    return calls


def _config(**overrides) -> TrainConfig:
    values = dict(steps=6, batch_size=8, warmup_steps=0, checkpoint_every=0, sample_every=0, log_every=1,
                  progress=False, device="cpu", seed=0, sample_captions=4)
    values.update(overrides)
    return TrainConfig(**values)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return {**{f"model.{k}": v for k, v in ckpt["model"].items()}, **{f"ema.{k}": v for k, v in ckpt["ema"].items()}}


def test_run_folder_holds_config_metrics_samples_and_a_safe_checkpoint(shapes, tmp_path):
    result = train("baseline", *shapes, tmp_path / "run", _config(), model_config=TINY)
    run = tmp_path / "run"
    assert result.step == 6
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "baseline" and config["model"]["image_size"] == 32
    metrics = read_metrics(run)
    assert metrics["step"] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "images_per_s"} <= set(metrics)
    assert (run / "samples" / "step_0000006.png").exists()
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)  # must not need pickle
    assert ckpt["step"] == 6 and set(ckpt) >= {"model", "ema", "optimizers", "scaler", "rng", "loader", "config"}


def test_captions_are_encoded_once_then_read_from_the_cache(shapes, tmp_path):
    first = train("baseline", *shapes, tmp_path / "a", _config(steps=1), model_config=TINY)
    second = train("baseline", *shapes, tmp_path / "b", _config(steps=1), model_config=TINY)
    assert second.encoded == 0 and second.from_cache == first.encoded + first.from_cache > 0


def test_resume_gives_the_same_weights_as_one_uninterrupted_run(shapes, tmp_path):
    train("baseline", *shapes, tmp_path / "straight", _config(steps=8), model_config=TINY)
    train("baseline", *shapes, tmp_path / "split", _config(steps=4), model_config=TINY)
    train("baseline", *shapes, tmp_path / "split", _config(steps=8), resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_metrics(tmp_path / "split")["step"] == list(range(1, 9))


@needs_cxx
def test_compiled_training_takes_the_same_steps_as_eager(shapes, tmp_path, compiled):
    """``--compile`` (torch.compile of the loss computation) changes speed, not the result: the baseline's
    step draws no random numbers, so compiled and eager weights agree to float rounding (about 25 s of
    compiling on a CPU)."""
    train("baseline", *shapes, tmp_path / "eager", _config(steps=4), model_config=TINY)
    assert compiled == []
    train("baseline", *shapes, tmp_path / "compiled", _config(steps=4, compile=True), model_config=TINY)
    assert len(compiled) == 1
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert a.keys() == b.keys()  # compiling wraps the step, not the model: checkpoints keep their keys
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    losses = read_metrics(tmp_path / "eager")["loss"]
    assert read_metrics(tmp_path / "compiled")["loss"] == pytest.approx(losses, rel=1e-4)
    assert len(set(losses)) > 1  # the weights did move
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["train"]["compile"] is True


def test_resume_after_sigkill_continues_exactly(shapes, tmp_path):
    """A real SIGKILL mid-run; the last checkpoint loads and resuming reaches the straight run's weights."""
    images, ann = shapes
    # Bitwise equality across processes needs kernels whose results do not depend on memory alignment
    # or thread scheduling: MKL's conditional numerical reproducibility and one thread.
    env = {**os.environ, "T2I_SMOKE": "1", "PYTHONUNBUFFERED": "1", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "t2i_helpers", "train", "--model", "baseline", "--data", str(images), str(ann),
            "--batch-size", "8", "--device", "cpu", "--no-progress", "--sample-every", "0"]
    subprocess.run(base + ["--out", str(tmp_path / "straight"), "--steps", "20", "--checkpoint-every", "10"],
                   check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(base + ["--out", str(killed), "--steps", "100000", "--checkpoint-every", "10"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("checkpoint: step 10 "):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    step = torch.load(killed / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    assert step in (10, 20), step
    print("killed at checkpoint step", step)
    out = subprocess.run(base + ["--out", str(killed), "--steps", "20", "--resume"], check=True, env=env,
                         capture_output=True, text=True)
    assert f"resume: {killed} at step {step} of 20" in out.stdout
    a, b = _weights(tmp_path / "straight"), _weights(killed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(shapes, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = TextToImageModel.training_losses

    def losses(self, batch, phase="main"):
        calls["n"] += 1
        out = original(self, batch, phase)
        return {"loss": out["loss"] * float("nan")} if calls["n"] == 5 else out

    monkeypatch.setattr(TextToImageModel, "training_losses", losses)
    with pytest.raises(TrainingError) as info:
        train("baseline", *shapes, tmp_path / "run", _config(steps=10, checkpoint_every=2), model_config=TINY)
    message = str(info.value)
    assert "\n" not in message and "nan at step 5" in message and "checkpoint.pt" in message
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_resume_without_checkpoint_and_wrong_family_are_clear_errors(shapes, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train("baseline", *shapes, tmp_path / "none", _config(), resume=True)
    train("baseline", *shapes, tmp_path / "run", _config(steps=1), model_config=TINY)
    with pytest.raises(TrainingError, match="holds a 'baseline' run"):
        train("gan", *shapes, tmp_path / "run", _config(steps=2), resume=True)


def test_ema_warmup_forgets_the_initial_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(1, 301):
        ema.update(model, step)
    # With a fixed 0.999 decay, 0.999**300 = 74% of the initial weights would remain.
    initial_share = (ema.model.weight - 1.0).abs().max() / (1.0 + 1.0)
    assert initial_share < 0.05
    assert ema.decay_at(1) < 0.2 and ema.decay_at(10**6) == 0.999


def test_load_run_generates_with_ema_weights(shapes, tmp_path):
    train("baseline", *shapes, tmp_path / "run", _config(steps=3), model_config=TINY)
    run = load_run(tmp_path / "run", device="cpu")
    images = run.generate(["a red circle", "a red circle", "a blue square"], seed=0)
    assert images.shape == (3, 3, 32, 32)
    assert torch.equal(images[0], images[1]) and not torch.equal(images[0], images[2])
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, ckpt["ema"][k])


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from pathlib import Path
from t2i_helpers.models.baseline import BaselineConfig
from t2i_helpers.train import TrainConfig, train
images, ann, out, dump = sys.argv[1:5]
cfg = TrainConfig(steps=4, batch_size=4, warmup_steps=0, checkpoint_every=0, sample_every=0, progress=False,
                  device="cpu", log_every=1)
model_holder = {}
import t2i_helpers.train.engine as engine
original = engine.build_model
def capture(*a, **k):
    model_holder["m"] = original(*a, **k)
    return model_holder["m"]
engine.build_model = capture
train("baseline", images, ann, out, cfg, model_config=BaselineConfig(image_size=32, fc_channels=8, hidden_channels=4))
torch.save(model_holder["m"].state_dict(), Path(dump) / f"rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_with_identical_weights(shapes, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(script),
           str(shapes[0]), str(shapes[1]), str(tmp_path / "run"), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # Only rank 0 wrote the run folder; the weights moved away from a fresh initialisation.
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert read_metrics(tmp_path / "run")["step"] == [1, 2, 3, 4]


def test_bench_train_reports_speed_profile_and_size(monkeypatch):
    from t2i_helpers.cli.bench_train import bench_train
    from t2i_helpers.models import build_model, default_config

    monkeypatch.setenv("T2I_SMOKE", "1")
    result = bench_train("baseline", steps=5, batch_size=4, shapes_images=20, device="cpu")
    expected_params = sum(p.numel() for p in build_model("baseline", default_config("baseline"), 384).parameters())
    assert result["parameters"] == expected_params and result["precision"] == "fp32"
    assert result["train_images_per_s"] > 0 and 0 <= result["data_and_text_fraction"] < 1
    assert result["data_on_device"] is False  # resident only on a CUDA device
    assert result["image_size"] == default_config("baseline").image_size
    # The profile: five windows of one step each; its rate lies between the slowest and fastest window.
    windows = result["profiled_steps_per_s_windows"]
    assert windows["windows"] == 5 and windows["steps_per_window"] == 1
    assert windows["min"] <= windows["median"] <= windows["max"]
    assert windows["min"] * 0.99 <= result["profiled_steps_per_s"] <= windows["max"] * 1.01
    assert result["train_steps_per_s"] * 4 == pytest.approx(result["train_images_per_s"], rel=0.01)
    # FLOPs: at least the first Linear's forward and weight-gradient matmuls (2 * in * out each) per image;
    # the achieved rate is FLOPs per image times images per second.
    fc = build_model("baseline", default_config("baseline"), 384).decoder.fc
    assert result["train_gflop_per_image"] * 1e9 >= 2 * 2 * fc.in_features * fc.out_features * 0.99
    assert result["train_tflop_per_s"] == pytest.approx(
        result["train_gflop_per_image"] * result["train_images_per_s"] / 1e3, rel=0.02, abs=1e-3)


def test_bench_train_counts_the_flops_of_guided_sampling(monkeypatch):
    """Sampling FLOPs per image: the guided UNet pass (conditional + unconditional) times the DDIM steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from t2i_helpers.cli.bench_train import bench_train
    from t2i_helpers.models import build_model, default_config

    monkeypatch.setenv("T2I_SMOKE", "1")
    result = bench_train("diffusion", steps=3, batch_size=4, shapes_images=20, device="cpu", sample_steps=7)
    config = default_config("diffusion")
    model = build_model("diffusion", config, 384)
    size, length = config.image_size, 32  # the engine's max_length
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.unet(torch.randn(2, 3, size, size), torch.rand(2), torch.randn(2, 384), torch.randn(2, length, 384),
                   torch.ones(2, length, dtype=torch.bool))
    assert result["sample_options"] == {"steps": 7, "guidance": 3.0}
    assert result["sample_batch_size"] == 4  # sampling runs at the training batch size
    assert result["sample_gflop_per_image"] == pytest.approx(7 * counter.get_total_flops() / 1e9, rel=0.01)
    assert result["sample_tflop_per_s"] == pytest.approx(
        result["sample_gflop_per_image"] * result["sample_images_per_s"] / 1e3, rel=0.02, abs=1e-3)


@needs_cxx
def test_bench_train_compiled_times_a_compiled_step_and_counts_the_same_flops(monkeypatch, compiled):
    from t2i_helpers.cli.bench_train import bench_train

    monkeypatch.setenv("T2I_SMOKE", "1")
    eager = bench_train("baseline", steps=3, batch_size=4, shapes_images=20, device="cpu")
    assert compiled == [] and eager["compiled"] == {"train": False, "sample": False}
    result = bench_train("baseline", steps=3, batch_size=4, shapes_images=20, device="cpu", compile=True)
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "LossModule"
    assert result["compiled"] == {"train": True, "sample": False}  # only the diffusion UNet is compiled to sample
    # The FLOPs are counted on the eager step (a compiled kernel is invisible to the counter), so they agree.
    assert result["train_gflop_per_image"] == pytest.approx(eager["train_gflop_per_image"], rel=1e-6)
    assert result["train_gflop_per_image"] > 0 and result["train_images_per_s"] > 0


def test_bench_train_compiled_diffusion_samples_with_its_unet_compiled(monkeypatch):
    """The wiring only (compiling the smoke UNet takes minutes on a CPU): the loss computation goes to
    torch.compile, the UNet is compiled in place before the sampling warm-up, and sampling uses it."""
    from t2i_helpers.cli.bench_train import bench_train
    from t2i_helpers.models.unet import UNet

    monkeypatch.setenv("T2I_SMOKE", "1")
    events = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: events.append(type(module).__name__) or module)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **kw: events.append(type(self).__name__))
    real_forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, *a: events.append("unet") or real_forward(self, *a))
    result = bench_train("diffusion", steps=3, batch_size=4, shapes_images=20, device="cpu", sample_steps=2,
                         compile=True)
    assert result["compiled"] == {"train": True, "sample": True}
    first_compile = events.index("UNet")
    assert events[0] == "LossModule" and "UNet" not in events[first_compile + 1:]
    # after it: the warm-up (2 steps) and the timed run (2 steps), one guided forward pass each
    assert events[first_compile + 1:] == ["unet"] * 4


def test_bench_train_runs_a_model_smaller_than_the_smallest_shapes_images(monkeypatch):
    """The smoke GAN works at 16 px; Shapes draws at 32 px or more, so the cache resizes for it."""
    from t2i_helpers.cli.bench_train import bench_train
    from t2i_helpers.data.shapes import MIN_IMAGE_SIZE
    from t2i_helpers.models import build_model, default_config

    monkeypatch.setenv("T2I_SMOKE", "1")
    assert default_config("gan").image_size < MIN_IMAGE_SIZE
    result = bench_train("gan", steps=3, batch_size=4, shapes_images=20, device="cpu")
    assert result["image_size"] == default_config("gan").image_size
    expected = sum(p.numel() for p in build_model("gan", default_config("gan"), 384).parameters())
    assert result["parameters"] == expected and result["train_steps_per_s"] > 0


def test_time_budget_stops_early_with_a_checkpoint_and_resume_goes_on(shapes, tmp_path, capsys):
    run = tmp_path / "run"
    result = train("baseline", *shapes, run, _config(steps=10_000, max_minutes=1e-9), model_config=TINY)
    assert result.stopped_by_time and result.step == 1
    assert "time budget: stopped at step 1 of 10000" in capsys.readouterr().out
    assert torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 1
    assert read_metrics(run)["step"] == [1]
    resumed = train("baseline", *shapes, run, _config(steps=3), resume=True)  # no budget this session
    assert resumed.step == 3 and not resumed.stopped_by_time


def test_resume_keeps_the_runs_settings_and_takes_only_session_ones(shapes, tmp_path):
    run = tmp_path / "run"
    train("baseline", *shapes, run, _config(steps=2, lr=1e-3), model_config=TINY)
    train("baseline", *shapes, run, _config(steps=3, lr=5.0, batch_size=2, log_every=3), resume=True)
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["lr"] == 1e-3 and saved["batch_size"] == 8  # the run's own, not this call's
    assert saved["steps"] == 3 and saved["log_every"] == 3  # session settings from this call
    assert read_metrics(run)["step"] == [1, 2, 3]


def test_ema_update_matches_the_per_tensor_formula():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in (1, 2, 50):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # moves the BatchNorm buffers
        ema.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, ema.model.parameters()):
        torch.testing.assert_close(p, e)
    for b_ema, b in zip(ema.model.buffers(), model.buffers()):
        assert torch.equal(b_ema, b)


def test_optimizers_take_the_same_step_as_plain_adamw():
    from t2i_helpers.train.state import build_optimizers

    torch.manual_seed(0)
    model = TextToImageModel(TINY, text_dim=8)
    reference = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    optimizers, _ = build_optimizers(model, TINY, _config(lr=1e-2, weight_decay=0.01))
    plain = torch.optim.AdamW(reference, lr=1e-2, weight_decay=0.01, foreach=False)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in reference]
        for p, q, g in zip(model.parameters(), reference, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizers["main"].step()
        plain.step()
    for p, q in zip(model.parameters(), reference):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_window_rates_split_steps_into_equal_windows():
    from t2i_helpers.cli.bench import window_rates

    # 10 steps in 5 windows of 2: window times 0.2, 0.4, 0.1, 1.0, 0.2 s -> 10, 5, 20, 2, 10 steps/s.
    times = [0.1, 0.1, 0.2, 0.2, 0.05, 0.05, 0.5, 0.5, 0.1, 0.1]
    assert window_rates(times) == {"median": 10.0, "min": 2.0, "max": 20.0, "windows": 5, "steps_per_window": 2}
    # Leftover steps past the last full window are not counted; too few steps give None.
    assert window_rates(times + [9.0])["min"] == 2.0
    assert window_rates([0.1, 0.1]) is None


def test_auto_precision_is_bf16_only_on_gpus_with_bf16_hardware(monkeypatch):
    from t2i_helpers.train import pick_precision

    capability = {0: (7, 5), 1: (8, 0), 2: (9, 0)}  # a T4, an A100 and an H100 in one (pretend) machine
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[torch.device(device).index])
    # What torch answers on a T4: True, because bf16 can be emulated there (slowly, and without cuDNN convolutions).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_precision("auto", torch.device("cuda:0")) == "fp16"
    assert pick_precision("auto", torch.device("cuda:1")) == "bf16"
    assert pick_precision("auto", torch.device("cuda:2")) == "bf16"
    assert pick_precision("bf16", torch.device("cuda:0")) == "bf16"  # asked for by name: honoured
    assert pick_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(TrainingError, match="'half'"):
        pick_precision("half", torch.device("cpu"))


def _small_config(family: str):
    """A CPU-sized config of each family; the GAN keeps the GPU config's gradient penalty (MA-GP), a
    second-order gradient, which the smoke config switches off."""
    from t2i_helpers.models import default_config

    if family == "baseline":
        return TINY
    config = default_config(family).smoke()
    if family == "gan":
        config.ma_gp_weight = 2.0
    return config


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("family", ["baseline", "gan", "diffusion"])
def test_mixed_precision_trains_and_samples_like_fp32(shapes, tmp_path, family, precision):
    """The GPU's code path (autocast, and fp16's grad scaler) run on the CPU: every family trains, its
    first loss matches the fp32 run's, and the EMA model samples finite float32 images."""
    runs = {}
    for p in ("fp32", precision):
        train(family, *shapes, tmp_path / p, _config(steps=3, precision=p), model_config=_small_config(family))
        runs[p] = read_metrics(tmp_path / p)
    assert json.loads((tmp_path / precision / "config.json").read_text())["precision"] == precision
    loss = "loss" if family != "gan" else "d_loss"
    first, reference = runs[precision][loss][0], runs["fp32"][loss][0]
    assert all(torch.isfinite(torch.tensor(v)) for v in runs[precision][loss])
    assert abs(first - reference) <= 0.05 * abs(reference) + 1e-3, (first, reference)
    run = load_run(tmp_path / precision, device="cpu")
    from t2i_helpers.train import generate_images

    options = {"steps": 3} if family == "diffusion" else {}
    table = run.encode(["a red circle", "a blue square"])
    images = generate_images(run.model, table, ["a red circle", "a blue square"], "cpu", precision, seed=0,
                             **options)
    size = run.model_config.image_size  # 32 px; 16 for the smoke GAN
    assert images.dtype == torch.float32 and images.shape == (2, 3, size, size)
    assert torch.isfinite(images).all() and images.abs().max() <= 1
    fp32 = generate_images(run.model, table, ["a red circle", "a blue square"], "cpu", "fp32", seed=0, **options)
    assert (images - fp32).abs().mean() < 0.05  # the same images, up to rounding


def test_nan_between_log_lines_names_its_step_and_no_checkpoint_holds_it(shapes, tmp_path, monkeypatch):
    """Losses are read every log_every steps (or at a checkpoint), not in each step; the first bad step
    is still the one named, and the checkpoint due after it is never written."""
    calls = {"n": 0}
    original = TextToImageModel.training_losses

    def losses(self, batch, phase="main"):
        calls["n"] += 1
        out = original(self, batch, phase)
        return {**out, "loss": out["loss"] * float("inf")} if calls["n"] == 6 else out

    monkeypatch.setattr(TextToImageModel, "training_losses", losses)
    with pytest.raises(TrainingError) as info:
        train("baseline", *shapes, tmp_path / "run", _config(steps=20, checkpoint_every=4, log_every=10),
              model_config=TINY)
    # Steps 7 and 8 ran on the weights the inf step broke (their losses are nan): step 6 is named.
    assert "loss became inf at step 6 (phase main)" in str(info.value) and calls["n"] == 8
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("family", ["baseline", "gan", "diffusion"])
def test_a_training_step_never_reads_a_value_back_from_the_device(shapes, family, monkeypatch):
    """On a GPU every such read (float, item, bool, tolist) makes the CPU wait for the queued work."""
    from t2i_helpers.data.loader import CachedLoader
    from t2i_helpers.models import build_model
    from t2i_helpers.train import prepare_data, text_config_for
    from t2i_helpers.train.step import LossModule, Optimiser, optimisation_step

    config = _small_config(family)
    uses_tokens = family == "diffusion"
    train_config = _config()
    data = prepare_data(*shapes, config.image_size, text_config_for(train_config), uses_tokens, verbose=False)
    model = build_model(family, config, data.text_dim)
    # Plain SGD: without a fused kernel (the CPU's before torch 2.4) AdamW reads its step counter, a tensor
    # kept on the CPU even when training on a GPU. This test is about the models and the engine.
    optimizers = {phase: torch.optim.SGD(params, lr=0.01) for phase, params in model.param_groups().items()}
    lr = {phase: 0.01 for phase in optimizers}
    batch = CachedLoader(data.cache, data.table, batch_size=8, seed=0).next_batch()
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def refuse(self, *args, **kwargs):
        raise AssertionError("a training step read a tensor's value")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    opt = Optimiser(optimizers, model.param_groups(), scaler, torch.device("cpu"), "fp32", 1.0)
    losses = optimisation_step(LossModule(model), batch, opt, lr)
    monkeypatch.undo()
    assert all(isinstance(v, torch.Tensor) for v in losses.values()) and ("loss" in losses or "d_loss" in losses)


def test_fast_gpu_kernels_are_switched_on_for_cuda_only():
    from t2i_helpers.train import use_fast_gpu_kernels

    saved = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")
        use_fast_gpu_kernels(torch.device("cpu"))
        assert not torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "highest"
        use_fast_gpu_kernels(torch.device("cuda", 0))  # only sets switches: needs no GPU
        assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cudnn.benchmark = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def test_cuda_out_of_memory_ends_with_one_line_naming_a_batch_size_to_try(shapes, tmp_path, monkeypatch):
    import t2i_helpers.train.engine as engine

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "optimisation_step", out_of_memory)
    with pytest.raises(TrainingError) as info:
        train("baseline", *shapes, tmp_path / "run", _config(batch_size=8), model_config=TINY)
    message = str(info.value)
    assert "\n" not in message and "batch size 8" in message and "--batch-size 4" in message


def test_lr_factor_warms_up_holds_then_decays_to_zero_at_the_schedule_end():
    from t2i_helpers.train.state import lr_factor

    config = TrainConfig(steps=100, warmup_steps=10, decay_steps=20)
    factors = [lr_factor(step, config) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0  # step s trains with (s + 1) / warmup
    assert all(f == 1.0 for f in factors[10:80])
    assert factors[80] == pytest.approx(1.0) and factors[90] == pytest.approx(0.5) and factors[99] == pytest.approx(0.05)
    # A run trained in segments keeps one schedule: the decay ends at schedule_steps, not at this segment's end.
    segment = TrainConfig(steps=50, warmup_steps=10, decay_steps=20, schedule_steps=100)
    assert [lr_factor(s, segment) for s in range(50)] == factors[:50]
    assert lr_factor(5, TrainConfig(steps=100, warmup_steps=0)) == 1.0
