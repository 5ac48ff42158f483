"""One training engine for every model family: data, precision, EMA, checkpoints, resume, DDP.

A model only says how to compute its losses (:meth:`T2IModel.training_losses`); this file does the
rest, the same way for the regression baseline, the GAN and the diffusion model:

* captions are encoded once by the frozen text encoder (and cached on disk), images are resized once
  into a uint8 cache, so a training step never runs BERT nor decodes a JPEG;
* device picked automatically (cuda, mps, cpu), bf16 autocast where the GPU supports it, fp16 with a
  gradient scaler otherwise, fp32 on the CPU; gradient clipping; an EMA of the weights for sampling;
* a run folder (``config.json``, ``metrics.csv``, ``samples/``, ``checkpoint.pt``) that can live on
  Google Drive; checkpoints are written to a temp file and renamed, hold every RNG state and the data
  order, and load with ``torch.load(weights_only=True)``, so ``--resume`` continues *exactly*;
* ``torchrun --nproc_per_node=K`` works (DistributedDataParallel, only rank 0 writes).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .config import by_tier, pick
from .errors import TrainingError
from .files import atomic_torch_save, atomic_write_text
from .models import build_model, config_from_dict, default_config
from .models.base import Batch, T2IModel

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.csv"


@dataclass
class TrainConfig:
    """How to train (what to train is the model's own config)."""

    # total steps of the run (--resume continues to it); the cpu tier's 6,000 take about 10 minutes on 2 cores
    steps: int = field(default_factory=lambda: by_tier(smoke=60, cpu=6000, gpu=5000))
    batch_size: int = field(default_factory=lambda: by_tier(smoke=8, cpu=32, gpu=128))  # per process under torchrun
    lr: float | None = None  # None: the model family's own suggestion (config.optimizer_settings())
    warmup_steps: int = field(default_factory=lambda: by_tier(smoke=0, cpu=100, gpu=200))  # linear warm-up, then constant
    decay_steps: int = 0  # >0: the learning rate falls linearly to 0 over the run's last decay_steps steps
    schedule_steps: int | None = None  # where that decay ends (default: steps); for runs trained in segments
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max global grad norm per phase; None disables
    ema_decay: float = 0.999
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    seed: int = 0
    checkpoint_every: int = field(default_factory=lambda: pick(500, 0))  # 0: only at the end
    sample_every: int = field(default_factory=lambda: pick(500, 0))  # 0: only at the end
    log_every: int = 10
    sample_captions: int = 8  # how many fixed captions the sample grids show
    text_model: str = "all-MiniLM-L6-v2"
    max_length: int = 32
    compile: bool = False  # torch.compile the loss computation (GPU runs)
    # Stop after this many minutes of training (data preparation not counted), checkpoint included:
    # for comparisons at a fixed time budget. ``steps`` stays the upper bound.
    max_minutes: float | None = None
    # tqdm progress bar; off in smoke mode, where runs are seconds long and notebook outputs must stay stable
    progress: bool = field(default_factory=lambda: pick(True, False))


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """True on GPUs with bfloat16 hardware: NVIDIA compute capability 8.0 (Ampere) and later, or ROCm.

    Not ``torch.cuda.is_bf16_supported()``: by default it also says True where bf16 is only *emulated*
    (it checks that a bf16 tensor can be created), e.g. on Colab's free T4 (capability 7.5), where
    bf16 matrix products are slow and cuDNN has no bf16 convolutions; fp16 is the T4's fast type.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def pick_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs with bf16 hardware, fp16 (with a grad scaler) on older GPUs such as the
    T4, fp32 on the CPU and MPS."""
    if precision not in {"auto", "fp32", "bf16", "fp16"}:
        raise TrainingError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if native_bf16(device) else "fp16"
    return "fp32"


def use_fast_gpu_kernels(device: torch.device) -> None:
    """On CUDA: let cuDNN time its convolution algorithms for each new shape and keep the fastest (a
    training run repeats the same shapes every step), and let float32 matrix products use TF32 tensor
    cores (cuDNN convolutions already do by default), as nanoGPT does. Process-wide switches; nothing
    changes on the CPU or MPS."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class EMA:
    """Exponential moving average of the weights, with warm-up.

    The decay at step t is ``min(decay, (1 + t) / (10 + t))``: early on the average follows the
    weights closely, so the random initial weights leave it within a few hundred steps instead of
    lingering for thousands (a fixed 0.999 keeps 37% of the initial weights after 1,000 steps).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_params = list(self.model.parameters())
        if ema_params:  # one fused call instead of a small kernel per tensor
            torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


class _Losses(nn.Module):
    """Routes ``forward`` to ``training_losses`` so DistributedDataParallel sees (and syncs) it."""

    def __init__(self, model: T2IModel):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, phase: str):
        return self.model.training_losses(batch, phase)


# --------------------------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    """The uint8 image cache and the caption-embedding table a run trains on."""

    cache: Any  # t2i_helpers.data.cache.ImageCache
    table: Any  # t2i_helpers.text.TextTable
    encoded: int  # captions the text encoder ran on for this run
    from_cache: int  # captions read from the embedding cache

    @property
    def text_dim(self) -> int:
        return int(self.table.pooled.shape[1])


def prepare_data(
    image_root: str | Path, ann_file: str | Path, image_size: int, text_config: Any, with_tokens: bool,
    verbose: bool = True,
) -> TrainingData:
    """Resize images once into the uint8 cache and encode every caption once (both reused across runs)."""
    from .data.cache import ImageCache
    from .text import encode_captions

    cache = ImageCache.build(image_root, ann_file, image_size)
    table, stats = encode_captions(cache.all_captions(), text_config, with_tokens=with_tokens)
    if verbose:
        print(
            f"data: {len(cache)} images at {image_size}px; text ({table.model_name}): "
            f"encoded {stats.encoded} captions, read {stats.from_cache} from the cache",
            flush=True,
        )
    return TrainingData(cache, table, stats.encoded, stats.from_cache)


def text_config_for(train_config: TrainConfig) -> Any:
    from .text import TextEncoderConfig

    return TextEncoderConfig(model_name=train_config.text_model, max_length=train_config.max_length, pooling="mean")


# ------------------------------------------------------------------------------------- file helpers
def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": _jsonable(random.getstate())}
    np_state = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_or_explain(state: dict, path: Path) -> None:
    """:func:`atomic_torch_save`, with a full disk or a missing permission said in one line. The
    previous checkpoint survives either way: the new one is written beside it and renamed last."""
    import shutil

    try:
        atomic_torch_save(state, path)
    except (OSError, RuntimeError) as exc:
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        if getattr(exc, "errno", None) == 28 or free < 64 * 2**20:
            reason = f"the disk is full ({free / 2**20:.0f} MiB free)"
        elif getattr(exc, "errno", None) == 13:
            reason = "permission denied"
        else:
            reason = str(exc).splitlines()[0][:100]
        raise TrainingError(f"could not save {path}: {reason}; the previous checkpoint is kept") from None


def lr_factor(step: int, config: TrainConfig) -> float:
    """The learning rate of step ``step + 1`` relative to the base: linear warm-up, constant, then an
    optional linear decay to 0 over the last ``decay_steps`` of ``config.steps`` ("warm-up, stable,
    decay": a cool-down at the end of a fixed budget lowers the final loss more than the EMA alone)."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    if config.decay_steps > 0:
        end = config.schedule_steps or config.steps
        warm = min(warm, max(0.0, (end - step) / config.decay_steps))
    return warm


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _encode_state(value: Any) -> Any:
    """Make a loader state safe for ``weights_only`` loading: numpy arrays become tensors."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {k: _encode_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_state(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_state(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy().astype(value["dtype"])
        return {k: _decode_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_state(v) for v in value]
    return value


class MetricsLog:
    """``metrics.csv``: one row per logged step; columns fixed by the first row."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        self.fields: list[str] | None = None
        if resume_step is not None and path.exists():
            # Drop rows logged after the checkpoint we resume from (the killed run went further).
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            whole = [r for r in rows if None not in r.values() and None not in r and _is_int(r.get("step"))]
            if len(whole) < len(rows):  # a kill while a row was written leaves it cut off
                print(f"note: dropped {len(rows) - len(whole)} incomplete row(s) at the end of {path}", flush=True)
            kept = [r for r in whole if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
                buf = [",".join(self.fields)] + [",".join(r[k] for k in self.fields) for r in kept]
                atomic_write_text(path, "\n".join(buf) + "\n")
        elif path.exists():
            path.unlink()

    def write(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self.fields = list(row.keys())
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(k, "")) for k in self.fields])


def _is_int(text: Any) -> bool:
    return isinstance(text, str) and text.isdigit()


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def read_metrics(run_dir: str | Path) -> dict[str, list[float]]:
    """``metrics.csv`` of a run folder (or a CSV file itself) as columns of floats (for loss curves)."""
    path = Path(run_dir) if str(run_dir).endswith(".csv") else Path(run_dir) / METRICS
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if None not in r.values()]  # a row cut off by a kill is left out
    return {k: [float(r[k]) for r in rows if r[k] != ""] for k in (rows[0].keys() if rows else [])}


# ---------------------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    run_dir: Path
    step: int
    final_losses: dict[str, float]
    images_per_s: float
    encoded: int
    from_cache: int
    train_seconds: float = 0.0  # wall time of this call's training loop (this session only, on a resume)
    stopped_by_time: bool = False  # max_minutes ran out before ``steps``
    interrupted: str | None = None  # "SIGINT" or "SIGTERM" when a signal stopped it (after a checkpoint)


# Settings of one training session rather than of the run: on --resume they come from the caller,
# everything else from the checkpoint (changing the rest would not continue the same run).
SESSION_FIELDS = ("steps", "max_minutes", "checkpoint_every", "sample_every", "log_every", "progress", "compile")


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _fixed_sample_captions(cache: Any, n: int) -> list[str]:
    """The same captions for every grid of a run: the first caption of evenly spaced images."""
    per_image = cache.caption_ids_per_image
    captions = cache.all_captions()
    picks = np.linspace(0, len(per_image) - 1, num=min(n, len(per_image))).round().astype(int)
    return [captions[per_image[i][0]] for i in picks]


def _adamw(params: list[nn.Parameter], **settings) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has one for the parameters' device.

    The fused update is one kernel for all tensors instead of several per tensor: on a small model
    the per-tensor loop costs as much as the forward pass (measured: 4x less optimizer time on the CPU).
    """
    try:
        return torch.optim.AdamW(params, fused=True, **settings)
    except (RuntimeError, ValueError, TypeError):  # e.g. a device or dtype without a fused kernel
        return torch.optim.AdamW(params, **settings)


def build_optimizers(model: T2IModel, model_config: Any, train_config: TrainConfig):
    """One AdamW per parameter group, with the family's suggested lr/betas unless --lr overrides."""
    settings = model_config.optimizer_settings() if hasattr(model_config, "optimizer_settings") else {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    base_lr: dict[str, float] = {}
    for phase, params in model.param_groups().items():
        s = dict(settings.get(phase, {}))
        suggested = s.pop("lr", 2e-4)
        base_lr[phase] = train_config.lr if train_config.lr is not None else suggested
        optimizers[phase] = _adamw(params, lr=base_lr[phase], weight_decay=train_config.weight_decay, **s)
    return optimizers, base_lr


def optimisation_step(
    losses_module: nn.Module, batch: Batch, optimizers: dict[str, torch.optim.Optimizer],
    groups: dict[str, list[nn.Parameter]], scaler: torch.amp.GradScaler, device: torch.device, precision: str,
    grad_clip: float | None, lr: dict[str, float], step: int,
) -> dict[str, torch.Tensor]:
    """One training step: for each phase (e.g. "d" then "g" for a GAN) forward, backward, clip, update.

    Returns the losses as detached tensors, still on the device, and does not look at them: reading a
    GPU value (``float(loss)``, ``if torch.isfinite(loss)``) makes the CPU wait until the GPU has
    finished everything queued so far, so the next batch could not be prepared while this step runs.
    The caller reads a whole window of steps at once with :func:`read_losses`, which also stops at a
    NaN or inf.
    """
    step_losses: dict[str, torch.Tensor] = {}
    for phase, opt in optimizers.items():
        for g in opt.param_groups:
            g["lr"] = lr[phase]
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            losses = losses_module(batch, phase)
        scaler.scale(losses["loss"]).backward()
        if grad_clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(groups[phase], grad_clip)
        scaler.step(opt)
        scaler.update()
        # One optimizer: names as the model gives them; several: prefixed with the phase ("d_loss", "g_loss").
        prefix = "" if len(optimizers) == 1 else f"{phase}_"
        for k, v in losses.items():
            name = k if k.startswith(prefix) else prefix + k
            if not isinstance(v, torch.Tensor):  # a plain number from the model
                v = torch.tensor(float(v), device=losses["loss"].device)
            step_losses[name] = v.detach()
    return step_losses


def read_losses(window: list[tuple[int, dict[str, torch.Tensor]]], ckpt_path: Path | None = None) -> dict[str, float]:
    """Check every step of ``window`` (``(step, losses)`` pairs from :func:`optimisation_step`) with
    one wait for the device, and return the last step's losses as floats.

    A NaN or inf in a phase's loss raises a one-line :class:`TrainingError` naming the first bad step.
    The engine calls this before every log line, sample grid and checkpoint, so a checkpoint is only
    written when every step since the previous one was finite: the one on disk is the last good one.
    """
    if not window:
        return {}
    checked = [(step, name, value) for step, losses in window for name, value in losses.items()
               if name == "loss" or name.endswith("_loss")]  # "loss", or a phase's "d_loss", "g_loss"
    last = window[-1][1]
    values = torch.stack([v.float() for *_, v in checked] + [v.float() for v in last.values()]).tolist()
    for (step, name, _), value in zip(checked, values):
        if not math.isfinite(value):
            phase = "main" if name == "loss" else name[: -len("_loss")]
            kept = (f"the last good checkpoint is {ckpt_path}" if ckpt_path is not None and ckpt_path.exists()
                    else "no checkpoint was written yet")
            raise TrainingError(
                f"loss became {value} at step {step} (phase {phase}); {kept}; try a lower --lr or --precision fp32"
            )
    return dict(zip(last, values[len(checked):]))


def train(
    family: str,
    image_root: str | Path,
    ann_file: str | Path,
    out_dir: str | Path,
    train_config: TrainConfig | None = None,
    model_config: Any | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """Train ``family`` ('baseline', 'gan', 'diffusion') on a COCO-format caption dataset.

    With ``resume=True`` the run continues from ``out_dir/checkpoint.pt`` up to ``train_config.steps``
    (the run's total); only the session settings (:data:`SESSION_FIELDS`) come from ``train_config``,
    everything else from the checkpoint, so the result is the same as one uninterrupted run.
    A folder that already holds a run needs ``resume`` or ``overwrite``; a second process is kept
    out by a lock (:mod:`t2i_helpers.runfolder`). ``train_config.max_minutes``, SIGINT and SIGTERM
    stop early, with a checkpoint.
    """
    from .runfolder import RunLock, check_start, clean_stale_temps

    out = Path(out_dir)
    if _distributed()[0] != 0:  # only rank 0 writes into the folder
        return _train(family, image_root, ann_file, out, train_config, model_config, resume)
    with RunLock(out):
        check_start(out, resume, overwrite)
        clean_stale_temps(out)
        return _train(family, image_root, ann_file, out, train_config, model_config, resume)


def _resumed_configs(out: Path, family: str, image_root: Any, ann_file: Any,
                     given: TrainConfig | None) -> tuple[dict, TrainConfig, Any]:
    """The checkpoint to resume from, and the run's own configs (the session fields from ``given``)."""
    from .runfolder import data_digest, read_checkpoint

    checkpoint = read_checkpoint(out / CHECKPOINT)
    saved = json.loads(checkpoint["config"])
    if saved["family"] != family:
        raise TrainingError(f"--resume: {out} holds a {saved['family']!r} run, not {family!r}")
    digest = saved.get("data", {}).get("digest")
    if digest is not None and digest != data_digest(image_root, ann_file):
        raise TrainingError(f"--resume: {ann_file} is not the data set the run in {out} was trained on "
                            f"({saved['data'].get('ann_file')}); pass that one, or train a new run")
    given, defaults = given or TrainConfig(), TrainConfig()
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in saved["train"].items() if k in known})
    # steps and max_minutes are this session's goal; the other session settings keep their saved
    # values unless the caller changed them from the defaults.
    for name in SESSION_FIELDS:
        if name in ("steps", "max_minutes") or getattr(given, name) != getattr(defaults, name):
            setattr(train_config, name, getattr(given, name))
    return checkpoint, train_config, config_from_dict(family, saved["model"])


def _train(family: str, image_root: Any, ann_file: Any, out: Path, train_config: TrainConfig | None,
           model_config: Any, resume: bool) -> RunResult:
    from .runfolder import DivergenceGuard, StopRequest, data_digest

    rank, local_rank, world = _distributed()
    is_main = rank == 0
    ckpt_path = out / CHECKPOINT
    checkpoint = None
    if resume:
        if not ckpt_path.exists():
            raise TrainingError(f"--resume: no checkpoint at {ckpt_path}; start the run without --resume")
        checkpoint, train_config, model_config = _resumed_configs(out, family, image_root, ann_file, train_config)
    train_config = train_config or TrainConfig()
    model_config = model_config if model_config is not None else default_config(family)

    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and train_config.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    device = pick_device(train_config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    precision = pick_precision(train_config.precision, device)
    use_fast_gpu_kernels(device)

    torch.manual_seed(train_config.seed)
    random.seed(train_config.seed)
    np.random.seed(train_config.seed)

    # Data: rank 0 fills the caches first, the others then only read them.
    from .models import model_classes

    uses_tokens = model_classes(family)[1].uses_tokens
    text_config = text_config_for(train_config)
    if world > 1 and not is_main:
        torch.distributed.barrier()
    data = prepare_data(image_root, ann_file, model_config.image_size, text_config, uses_tokens, verbose=is_main)
    if world > 1 and is_main:
        torch.distributed.barrier()

    from .data.cache import CachedLoader

    loader = CachedLoader(
        data.cache, data.table, batch_size=train_config.batch_size, shuffle=True,
        seed=train_config.seed + rank, drop_last=True, device=device,
    )

    model = build_model(family, model_config, data.text_dim).to(device)
    ema = EMA(model, train_config.ema_decay)
    optimizers, base_lr = build_optimizers(model, model_config, train_config)
    groups = model.param_groups()
    scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))

    step = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        ema.model.load_state_dict(checkpoint["ema"])
        for phase, opt in optimizers.items():
            opt.load_state_dict(checkpoint["optimizers"][phase])
        scaler.load_state_dict(checkpoint["scaler"])
        loader.load_state_dict(_decode_state(checkpoint["loader"][rank] if world > 1 else checkpoint["loader"][0]))
        _set_rng_state(checkpoint["rng"])
        step = int(checkpoint["step"])
        if is_main:
            print(f"resume: {out} at step {step} of {train_config.steps}", flush=True)
        if step > train_config.steps:
            raise TrainingError(f"--resume: the checkpoint is at step {step}, past --steps {train_config.steps}")

    losses_module: nn.Module = _Losses(model)
    if world > 1:
        losses_module = nn.parallel.DistributedDataParallel(
            losses_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(groups) > 1,
        )
    if train_config.compile:
        losses_module = torch.compile(losses_module)

    config_record = {
        "family": family,
        "model": asdict(model_config),
        "train": asdict(train_config),
        "text": asdict(text_config),
        "data": {"image_root": str(image_root), "ann_file": str(ann_file),
                 "digest": data_digest(image_root, ann_file)},
        "text_dim": data.text_dim,
        "world_size": world,
    }
    sample_captions = _fixed_sample_captions(data.cache, train_config.sample_captions)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / CONFIG, json.dumps(_jsonable(config_record) | {"precision": precision,
                                                                               "device": str(device),
                                                                               "sample_captions": sample_captions},
                                                   indent=2))
    log = MetricsLog(out / METRICS, step if checkpoint is not None else None) if is_main else None

    def save_checkpoint() -> None:
        loader_states = [_encode_state(loader.state_dict())]
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, loader_states[0])
            loader_states = gathered
        if not is_main:
            return
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingError(f"weights became nan/inf by step {step}; {ckpt_path} keeps the last good state")
        state = {
            "model": model.state_dict(),
            "ema": ema.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "scaler": scaler.state_dict(),
            "step": step,
            "loader": loader_states,
            "rng": _rng_state(),
            "config": json.dumps(_jsonable(config_record)),
        }
        save_or_explain(state, ckpt_path)
        print(f"checkpoint: step {step} -> {ckpt_path}", flush=True)

    def write_samples() -> None:
        if not is_main:
            return
        images = generate_images(ema.model, data.table, sample_captions, device, precision, seed=0)
        from .viz import save_grid

        save_grid(images, out / "samples" / f"step_{step:07d}.png", nrow=len(sample_captions))

    from tqdm.auto import tqdm

    bar = tqdm(total=train_config.steps, initial=step, disable=not (is_main and train_config.progress),
               desc=f"train {family}", dynamic_ncols=True)
    last_losses: dict[str, float] = {}
    unread: list[tuple[int, dict[str, torch.Tensor]]] = []  # losses still on the device, see read_losses
    window_images, window_start = 0, time.perf_counter()
    images_per_s = 0.0
    batches = iter(loader)
    model.train()
    start = time.perf_counter()
    deadline = start + 60 * train_config.max_minutes if train_config.max_minutes else None
    out_of_time = False
    guard = DivergenceGuard(model)
    stop = StopRequest()
    try:
        stop.__enter__()
        while step < train_config.steps and not out_of_time and stop.signal is None:
            batch = next(batches)
            warm = lr_factor(step, train_config)
            step_losses = optimisation_step(
                losses_module, batch, optimizers, groups, scaler, device, precision, train_config.grad_clip,
                {phase: lr * warm for phase, lr in base_lr.items()}, step + 1,
            )
            step += 1
            ema.update(model, step)
            window_images += len(batch) * world
            unread.append((step, step_losses))

            if deadline is not None:
                if world == 1:
                    out_of_time = time.perf_counter() >= deadline
                elif step % train_config.log_every == 0:
                    # Every rank stops at the same step, rank 0's clock decides. The broadcast waits for
                    # all GPUs, so it runs every log_every steps, not in every step.
                    flag = torch.tensor([float(time.perf_counter() >= deadline)], device=device)
                    torch.distributed.broadcast(flag, src=0)
                    out_of_time = bool(flag.item())
            final = step == train_config.steps or out_of_time or stop.signal is not None
            log_now = step % train_config.log_every == 0 or final
            sample_now = (train_config.sample_every and step % train_config.sample_every == 0) or final
            checkpoint_now = (train_config.checkpoint_every and step % train_config.checkpoint_every == 0) or final
            if log_now or sample_now or checkpoint_now:
                last_losses = read_losses(unread, ckpt_path)  # the one wait for the GPU; stops at a NaN
                unread.clear()
                guard.check(step, last_losses.get("loss", last_losses.get("d_loss")))  # before any save
            if is_main and log_now:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - window_start
                images_per_s = window_images / max(elapsed, 1e-9)
                window_images, window_start = 0, time.perf_counter()
                log.write({"step": step, **last_losses, "lr": base_lr[next(iter(base_lr))] * warm,
                           "images_per_s": round(images_per_s, 1)})
                bar.set_postfix({k: f"{v:.4f}" for k, v in list(last_losses.items())[:3]} | {"img/s": f"{images_per_s:.0f}"})
            bar.update(1)
            if sample_now:
                write_samples()
            if checkpoint_now:
                save_checkpoint()
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(
            f"CUDA out of memory at batch size {train_config.batch_size}; "
            f"try --batch-size {max(1, train_config.batch_size // 2)}"
        ) from None
    finally:
        stop.__exit__()
        bar.close()
    seconds = time.perf_counter() - start
    if out_of_time and is_main:
        print(f"time budget: stopped at step {step} of {train_config.steps} after {seconds / 60:.1f} min "
              f"(max_minutes {train_config.max_minutes:g})", flush=True)
    if stop.signal is not None and is_main:
        print(f"interrupted ({stop.signal}): step {step} is saved in {ckpt_path}; continue with the same "
              "command and --resume", flush=True)
    return RunResult(out, step, last_losses, images_per_s, data.encoded, data.from_cache, seconds, out_of_time,
                     stop.signal)


# ------------------------------------------------------------------------------------------ sampling
@torch.no_grad()
def generate_images(
    model: T2IModel, table: Any, captions: Sequence[str], device: torch.device | str, precision: str = "fp32",
    seed: int = 0, **options,
) -> torch.Tensor:
    """Images for ``captions`` (one each) using embeddings already in ``table``; float32 on the CPU."""
    device = torch.device(device)
    rows = torch.as_tensor(table.index(list(captions)), dtype=torch.long)
    text = table.pooled[rows].to(device)
    tokens = mask = None
    if getattr(model, "uses_tokens", False) and table.tokens is not None:
        tokens = table.tokens[rows].to(device)
        mask = table.mask[rows].to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    with autocast(device, precision):
        images = model.generate(text, tokens=tokens, token_mask=mask, generator=generator, **options)
    model.train(was_training)
    return images.float().cpu()


@dataclass
class LoadedRun:
    """A finished (or checkpointed) run, ready to sample from with its EMA weights."""

    run_dir: Path
    family: str
    model: T2IModel
    model_config: Any
    train_config: TrainConfig
    text_encoder_config: Any
    step: int
    device: torch.device
    data: dict = dataclasses.field(default_factory=dict)
    metrics_file: Path | None = None  # where its metrics.csv is, if not in run_dir (shipped checkpoints)

    @property
    def metrics_csv(self) -> Path:
        return self.metrics_file or self.run_dir / METRICS

    def encode(self, captions: Sequence[str]) -> Any:
        from .text import encode_captions

        table, _ = encode_captions(list(captions), self.text_encoder_config, with_tokens=self.model.uses_tokens)
        return table

    def generate(self, captions: Sequence[str], seed: int = 0, **options) -> torch.Tensor:
        """One image per caption (repeat a caption for several samples), in [-1, 1]."""
        table = self.encode(sorted(set(captions)))
        precision = pick_precision("auto", self.device)
        return generate_images(self.model, table, captions, self.device, precision, seed=seed, **options)


def load_run(run_dir: str | Path, device: str = "auto", weights: str = "ema") -> LoadedRun:
    """Rebuild a run's model from ``checkpoint.pt`` (safe: ``weights_only=True``), EMA weights by default."""
    run_dir = Path(run_dir)
    from .runfolder import read_checkpoint

    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.exists():
        raise TrainingError(f"no checkpoint in {run_dir} (expected {ckpt_path}); train first")
    checkpoint = read_checkpoint(ckpt_path)
    record = json.loads(checkpoint["config"])
    family = record["family"]
    model_config = config_from_dict(family, record["model"])
    model = build_model(family, model_config, int(record["text_dim"]))
    model.load_state_dict(checkpoint["ema" if weights == "ema" else "model"])
    dev = pick_device(device)
    use_fast_gpu_kernels(dev)
    model.to(dev).eval()
    from .text import TextEncoderConfig

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in record["train"].items() if k in train_fields})
    return LoadedRun(
        run_dir=run_dir, family=family, model=model, model_config=model_config, train_config=train_config,
        text_encoder_config=TextEncoderConfig(**record["text"]), step=int(checkpoint["step"]), device=dev,
        data=record.get("data", {}),
    )
