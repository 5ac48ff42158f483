"""One training engine for every model family: set up, step, log, sample, checkpoint.

A model only says how to compute its losses (:meth:`T2IModel.training_losses`); this file does the
rest, the same way for the regression baseline, the GAN and the diffusion model:

* captions are encoded once by the frozen text encoder (and cached on disk), images are resized once
  into a uint8 cache, so a training step never runs the text encoder nor decodes a JPEG;
* the device and precision come from :mod:`~t2i_helpers.train.device`; gradient clipping; an EMA of
  the weights for sampling (:mod:`~t2i_helpers.train.state`);
* a run folder (``config.json``, ``metrics.csv``, ``samples/``, ``checkpoint.pt``) that can live on
  Google Drive; checkpoints are written to a temp file and renamed, hold every RNG state and the data
  order, and load with ``torch.load(weights_only=True)``, so ``--resume`` continues *exactly*;
* ``torchrun --nproc_per_node=K`` works (DistributedDataParallel, only rank 0 writes).
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from t2i_helpers.config import tier_config
from t2i_helpers.data.cache import ImageCache
from t2i_helpers.data.loader import CachedLoader
from t2i_helpers.data.shapes import mirror_caption
from t2i_helpers.errors import TrainingError
from t2i_helpers.files import atomic_write_text
from t2i_helpers.models import build_model, config_from_dict, default_config, model_classes
from t2i_helpers.text import TextEncoderConfig, TextTable, encode_captions
from t2i_helpers.train.config import CHECKPOINT, CONFIG, METRICS, SESSION_FIELDS, TrainConfig
from t2i_helpers.train.device import distributed, pick_precision, start_distributed, use_fast_gpu_kernels
from t2i_helpers.train.log import MetricsLog
from t2i_helpers.train.run import generate_images
from t2i_helpers.train.runfolder import (DivergenceGuard, RunLock, StopRequest, check_start, clean_stale_temps,
                                         data_digest, read_checkpoint)
from t2i_helpers.train.state import (EMA, build_optimizers, decode_state, encode_state, jsonable, lr_factor,
                                     rng_state, save_or_explain, set_rng_state)
from t2i_helpers.train.step import LossModule, Optimiser, optimisation_step, read_losses
from t2i_helpers.viz import save_grid


# --------------------------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    """The uint8 image cache and the caption-embedding table a run trains on."""

    cache: ImageCache
    table: TextTable
    encoded: int  # captions the text encoder ran on for this run
    from_cache: int  # captions read from the embedding cache

    @property
    def text_dim(self) -> int:
        return int(self.table.pooled.shape[1])


def prepare_data(
    image_root: str | Path, ann_file: str | Path, image_size: int, text_config: TextEncoderConfig,
    with_tokens: bool, verbose: bool = True, mirrored: bool = False,
) -> TrainingData:
    """Resize images once into the uint8 cache and encode every caption once (both reused across runs);
    ``mirrored`` also encodes each caption's left-right mirror (for flips that rewrite the caption)."""
    cache = ImageCache.build(image_root, ann_file, image_size)
    captions = cache.all_captions()
    if mirrored:
        captions = list(dict.fromkeys(captions + [mirror_caption(c) for c in captions]))
    table, stats = encode_captions(captions, text_config, with_tokens=with_tokens)
    if verbose:
        print(f"data: {len(cache)} images at {image_size}px; text ({table.model_name}): "
              f"encoded {stats.encoded} captions, read {stats.from_cache} from the cache", flush=True)
    return TrainingData(cache, table, stats.encoded, stats.from_cache)


def mirror_rows(data: TrainingData) -> list[int]:
    """For each caption of the cache, the table row of its mirror image's caption."""
    return data.table.index([mirror_caption(c) for c in data.cache.all_captions()])


def text_config_for(train_config: TrainConfig) -> TextEncoderConfig:
    return TextEncoderConfig(model_name=train_config.text_model, max_length=train_config.max_length, pooling="mean")


def fixed_sample_captions(cache: ImageCache, n: int) -> list[str]:
    """The same captions for every grid of a run: the first caption of evenly spaced images."""
    per_image = cache.caption_ids_per_image
    captions = cache.all_captions()
    picks = np.linspace(0, len(per_image) - 1, num=min(n, len(per_image))).round().astype(int)
    return [captions[per_image[i][0]] for i in picks]


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

    ``train_config`` defaults to the tier's (``tier_config(TrainConfig)``), ``model_config`` to the
    family's. With ``resume=True`` the run continues from ``out_dir/checkpoint.pt`` up to
    ``train_config.steps``; only the session settings (:data:`SESSION_FIELDS`) come from
    ``train_config``, everything else from the checkpoint, so the result is the same as one
    uninterrupted run. A folder that already holds a run needs ``resume`` or ``overwrite``; a second
    process is kept out by a lock. ``max_minutes``, SIGINT and SIGTERM stop early, with a checkpoint.
    """
    out = Path(out_dir)
    if distributed()[0] != 0:  # only rank 0 writes into the folder
        return _train(family, image_root, ann_file, out, train_config, model_config, resume)
    with RunLock(out):
        check_start(out, resume, overwrite)
        clean_stale_temps(out)
        return _train(family, image_root, ann_file, out, train_config, model_config, resume)


def resumed_configs(out: Path, family: str, image_root: Any, ann_file: Any,
                    given: TrainConfig | None) -> tuple[dict, TrainConfig, Any]:
    """The checkpoint to resume from, and the run's own configs (the session fields from ``given``)."""
    ckpt_path = out / CHECKPOINT
    if not ckpt_path.exists():
        raise TrainingError(f"--resume: no checkpoint at {ckpt_path}; start the run without --resume")
    checkpoint = read_checkpoint(ckpt_path)
    saved = json.loads(checkpoint["config"])
    if saved["family"] != family:
        raise TrainingError(f"--resume: {out} holds a {saved['family']!r} run, not {family!r}")
    digest = saved.get("data", {}).get("digest")
    if digest is not None and digest != data_digest(image_root, ann_file):
        raise TrainingError(f"--resume: {ann_file} is not the data set the run in {out} was trained on "
                            f"({saved['data'].get('ann_file')}); pass that one, or train a new run")
    defaults = tier_config(TrainConfig)
    given = given or defaults
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in saved["train"].items() if k in known})
    # steps and max_minutes are this session's goal; the other session settings keep their saved
    # values unless the caller changed them from the defaults.
    for name in SESSION_FIELDS:
        if name in ("steps", "max_minutes") or getattr(given, name) != getattr(defaults, name):
            setattr(train_config, name, getattr(given, name))
    return checkpoint, train_config, config_from_dict(family, saved["model"])


@dataclass
class Session:
    """What one call of :func:`train` sets up, and the step it has reached."""

    family: str
    out: Path
    config: TrainConfig
    rank: int
    world: int
    device: torch.device
    precision: str
    data: TrainingData
    loader: CachedLoader
    model: nn.Module
    ema: EMA
    opt: Optimiser
    base_lr: dict[str, float]
    losses_module: nn.Module
    record: dict  # config.json's content: what the run is
    sample_captions: list[str]
    step: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT


def set_up(family: str, image_root: Any, ann_file: Any, out: Path, train_config: TrainConfig,
           model_config: Any) -> Session:
    """Device, seeds, data (rank 0 fills the caches first), model, EMA and optimizers of a new run."""
    rank, local_rank, world = distributed()
    device = start_distributed(train_config.device, local_rank, world)
    precision = pick_precision(train_config.precision, device)
    use_fast_gpu_kernels(device)
    torch.manual_seed(train_config.seed)
    random.seed(train_config.seed)
    np.random.seed(train_config.seed)

    text_config = text_config_for(train_config)
    if world > 1 and rank != 0:
        torch.distributed.barrier()
    data = prepare_data(image_root, ann_file, model_config.image_size, text_config,
                        model_classes(family)[1].uses_tokens, verbose=rank == 0, mirrored=train_config.flip == "rewrite")
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    mirror = mirror_rows(data) if train_config.flip == "rewrite" else None
    loader = CachedLoader(data.cache, data.table, batch_size=train_config.batch_size, shuffle=True,
                          seed=train_config.seed + rank, drop_last=True, device=device, flip=train_config.flip,
                          mirror_rows=mirror)

    model = build_model(family, model_config, data.text_dim).to(device)
    optimizers, base_lr = build_optimizers(model, model_config, train_config)
    opt = Optimiser(optimizers, model.param_groups(), torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
                    device, precision, train_config.grad_clip)
    losses_module: nn.Module = LossModule(model)
    if world > 1:
        losses_module = nn.parallel.DistributedDataParallel(
            losses_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=len(opt.groups) > 1)
    if train_config.compile:
        losses_module = torch.compile(losses_module)
    record = {"family": family, "model": asdict(model_config), "train": asdict(train_config),
              "text": asdict(text_config),
              "data": {"image_root": str(image_root), "ann_file": str(ann_file),
                       "digest": data_digest(image_root, ann_file)},
              "text_dim": data.text_dim, "world_size": world}
    return Session(family, out, train_config, rank, world, device, precision, data, loader, model,
                   EMA(model, train_config.ema_decay), opt, base_lr, losses_module, record,
                   fixed_sample_captions(data.cache, train_config.sample_captions))


def restore(s: Session, checkpoint: dict) -> None:
    """Continue from a checkpoint: weights, EMA, optimizers, scaler, data order and every RNG."""
    s.model.load_state_dict(checkpoint["model"])
    s.ema.model.load_state_dict(checkpoint["ema"])
    for phase, optimizer in s.opt.optimizers.items():
        optimizer.load_state_dict(checkpoint["optimizers"][phase])
    s.opt.scaler.load_state_dict(checkpoint["scaler"])
    s.loader.load_state_dict(decode_state(checkpoint["loader"][s.rank] if s.world > 1 else checkpoint["loader"][0]))
    set_rng_state(checkpoint["rng"])
    s.step = int(checkpoint["step"])
    if s.is_main:
        print(f"resume: {s.out} at step {s.step} of {s.config.steps}", flush=True)
    if s.step > s.config.steps:
        raise TrainingError(f"--resume: the checkpoint is at step {s.step}, past --steps {s.config.steps}")


def save_checkpoint(s: Session) -> None:
    """Everything needed to continue exactly, written atomically by rank 0 (the loader state of every rank)."""
    loader_states = [encode_state(s.loader.state_dict())]
    if s.world > 1:
        gathered: list[Any] = [None] * s.world
        torch.distributed.all_gather_object(gathered, loader_states[0])
        loader_states = gathered
    if not s.is_main:
        return
    if not all(torch.isfinite(p).all() for p in s.model.parameters()):
        raise TrainingError(f"weights became nan/inf by step {s.step}; {s.ckpt_path} keeps the last good state")
    state = {"model": s.model.state_dict(), "ema": s.ema.model.state_dict(),
             "optimizers": {k: o.state_dict() for k, o in s.opt.optimizers.items()},
             "scaler": s.opt.scaler.state_dict(), "step": s.step, "loader": loader_states, "rng": rng_state(),
             "config": json.dumps(jsonable(s.record))}
    save_or_explain(state, s.ckpt_path)
    print(f"checkpoint: step {s.step} -> {s.ckpt_path}", flush=True)


def write_samples(s: Session) -> None:
    """A grid of the EMA model's images for the run's fixed captions: ``samples/step_NNNNNNN.png``."""
    if s.is_main:
        images = generate_images(s.ema.model, s.data.table, s.sample_captions, s.device, s.precision, seed=0)
        save_grid(images, s.out / "samples" / f"step_{s.step:07d}.png", nrow=len(s.sample_captions))


class Deadline:
    """``max_minutes`` of training. Under torchrun rank 0's clock decides, and the ranks agree every
    ``log_every`` steps (the broadcast waits for all GPUs, so not in every step)."""

    def __init__(self, s: Session):
        minutes = s.config.max_minutes
        self.s, self.at = s, (time.perf_counter() + 60 * minutes if minutes else None)

    def passed(self, step: int) -> bool:
        if self.at is None:
            return False
        if self.s.world == 1:
            return time.perf_counter() >= self.at
        if step % self.s.config.log_every:
            return False
        flag = torch.tensor([float(time.perf_counter() >= self.at)], device=self.s.device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())


class Throughput:
    """Images per second over the steps since the last log line (all ranks together)."""

    def __init__(self, s: Session):
        self.s, self.images, self.start, self.rate = s, 0, time.perf_counter(), 0.0

    def add(self, n: int) -> None:
        self.images += n * self.s.world

    def read(self) -> float:
        if self.s.device.type == "cuda":
            torch.cuda.synchronize(self.s.device)
        self.rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        self.images, self.start = 0, time.perf_counter()
        return self.rate


def _train(family: str, image_root: Any, ann_file: Any, out: Path, train_config: TrainConfig | None,
           model_config: Any, resume: bool) -> RunResult:
    """The loop: step, then log, sample and checkpoint when due; the last step does all three."""
    checkpoint = None
    if resume:
        checkpoint, train_config, model_config = resumed_configs(out, family, image_root, ann_file, train_config)
    train_config = train_config or tier_config(TrainConfig)
    model_config = model_config if model_config is not None else default_config(family)
    s = set_up(family, image_root, ann_file, out, train_config, model_config)
    if checkpoint is not None:
        restore(s, checkpoint)
    log = _start_run_folder(s, resumed=checkpoint is not None)
    cfg = s.config
    bar = tqdm(total=cfg.steps, initial=s.step, disable=not (s.is_main and cfg.progress), desc=f"train {family}",
               dynamic_ncols=True)
    last_losses: dict[str, float] = {}
    unread: list[tuple[int, dict[str, torch.Tensor]]] = []  # losses still on the device, see read_losses
    batches, speed, deadline = iter(s.loader), Throughput(s), Deadline(s)
    guard, stop, out_of_time = DivergenceGuard(s.model), StopRequest(), False
    s.model.train()
    start = time.perf_counter()
    try:
        with stop:
            while s.step < cfg.steps and not out_of_time and stop.signal is None:
                batch = next(batches)
                warm = lr_factor(s.step, cfg)
                unread.append((s.step + 1, optimisation_step(s.losses_module, batch, s.opt,
                                                             {p: lr * warm for p, lr in s.base_lr.items()})))
                s.step += 1
                s.ema.update(s.model, s.step)
                speed.add(len(batch))
                out_of_time = deadline.passed(s.step)
                final = s.step == cfg.steps or out_of_time or stop.signal is not None
                log_now = s.step % cfg.log_every == 0 or final
                sample_now = (cfg.sample_every and s.step % cfg.sample_every == 0) or final
                checkpoint_now = (cfg.checkpoint_every and s.step % cfg.checkpoint_every == 0) or final
                if log_now or sample_now or checkpoint_now:
                    last_losses = read_losses(unread, s.ckpt_path)  # the one wait for the GPU; stops at a NaN
                    unread.clear()
                    guard.check(s.step, last_losses.get("loss", last_losses.get("d_loss")))  # before any save
                if s.is_main and log_now:
                    _log(s, log, bar, last_losses, speed.read(), warm)
                bar.update(1)
                if sample_now:
                    write_samples(s)
                if checkpoint_now:
                    save_checkpoint(s)
    except torch.cuda.OutOfMemoryError:
        raise TrainingError(f"CUDA out of memory at batch size {cfg.batch_size}; "
                            f"try --batch-size {max(1, cfg.batch_size // 2)}") from None
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    _say_why_stopped(s, out_of_time, stop.signal, seconds)
    return RunResult(out, s.step, last_losses, speed.rate, s.data.encoded, s.data.from_cache, seconds, out_of_time,
                     stop.signal)


def _start_run_folder(s: Session, resumed: bool) -> MetricsLog | None:
    """Rank 0 writes ``config.json`` and opens ``metrics.csv`` (cut back to the checkpoint on a resume)."""
    if not s.is_main:
        return None
    s.out.mkdir(parents=True, exist_ok=True)
    extra = {"precision": s.precision, "device": str(s.device), "sample_captions": s.sample_captions}
    atomic_write_text(s.out / CONFIG, json.dumps(jsonable(s.record) | extra, indent=2))
    return MetricsLog(s.out / METRICS, s.step if resumed else None)


def _log(s: Session, log: MetricsLog, bar: Any, losses: dict[str, float], images_per_s: float, warm: float) -> None:
    log.write({"step": s.step, **losses, "lr": s.base_lr[next(iter(s.base_lr))] * warm,
               "images_per_s": round(images_per_s, 1)})
    bar.set_postfix({k: f"{v:.4f}" for k, v in list(losses.items())[:3]} | {"img/s": f"{images_per_s:.0f}"})


def _say_why_stopped(s: Session, out_of_time: bool, signal: str | None, seconds: float) -> None:
    if out_of_time and s.is_main:
        print(f"time budget: stopped at step {s.step} of {s.config.steps} after {seconds / 60:.1f} min "
              f"(max_minutes {s.config.max_minutes:g})", flush=True)
    if signal is not None and s.is_main:
        print(f"interrupted ({signal}): step {s.step} is saved in {s.ckpt_path}; continue with the same "
              "command and --resume", flush=True)
