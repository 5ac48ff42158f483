"""Training the captioner (image to text): a short loop of its own that reuses the engine's parts.

Why not :func:`t2i_helpers.train.train`? The engine is built around text-to-image models: it encodes
every caption with the frozen BERT first, builds models from the generator registry, and ends every
run by drawing a grid of images from the model. A captioner needs none of the three (its words are
ids of its own vocabulary, and it draws nothing), so fitting it in would mean switches in the engine's
set-up, its sampling and its model registry. This loop is the engine's recipe without them, from the
same parts: the image cache and :class:`~t2i_helpers.data.CachedLoader` (whose ``caption_ids`` index
the model's table of tokenized captions), the device, AdamW with warm-up and decay, the EMA,
``metrics.csv``, the run lock, and an atomic ``checkpoint.pt`` that loads with ``weights_only=True``.
It does not resume (a cpu-tier run takes minutes); the shipped checkpoint is exported like the
generators' (float16 safetensors, a JSON record with its command, ``SHA256SUMS``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from t2i_helpers.config import tier as current_tier
from t2i_helpers.data.cache import ImageCache
from t2i_helpers.data.loader import CachedLoader
from t2i_helpers.errors import TrainingError
from t2i_helpers.files import atomic_path, atomic_write_text
from t2i_helpers.models.captioner import Captioner, CaptionerConfig, Vocabulary
from t2i_helpers.config import tier_config
from t2i_helpers.train.config import CHECKPOINT, CONFIG, METRICS, TrainConfig
from t2i_helpers.train.device import pick_device
from t2i_helpers.train.log import MetricsLog
from t2i_helpers.train.runfolder import RunLock, check_start, data_digest, read_checkpoint
from t2i_helpers.train.shipped import MAX_BYTES, check_shipped_files, portable_path, read_sums, sha256, shipped_dir
from t2i_helpers.train.state import EMA, adamw, jsonable, lr_factor, save_or_explain

FAMILY = "captioner"
# The command that made the shipped checkpoint (python -m t2i_helpers ...): fixed steps, so it means the same everywhere.
RECIPE = "train-captioner --tier cpu --ship"


def captioner_train_config(tier: str | None = None, **changes) -> TrainConfig:
    """How the captioner trains in a tier: fixed steps (cpu: 2,500 steps of 64 images, the last 1,000 decaying)."""
    name = tier or current_tier()
    base = {"smoke": dict(steps=40, batch_size=16, warmup_steps=0, log_every=10, progress=False),
            "cpu": dict(steps=2500, batch_size=64, warmup_steps=100, decay_steps=1000, log_every=50),
            "gpu": dict(steps=4000, batch_size=128, warmup_steps=200, decay_steps=1500, log_every=50)}[name]
    config = dataclasses.replace(tier_config(TrainConfig, name), checkpoint_every=0, sample_every=0, **base)
    return dataclasses.replace(config, **changes)


@dataclass
class CaptionRunResult:
    run_dir: Path
    step: int
    final_loss: float
    train_seconds: float
    images_per_s: float


def prepare_captions(image_root: Any, ann_file: Any, config: CaptionerConfig) -> tuple[ImageCache, Vocabulary]:
    """The uint8 image cache at the model's size, and the vocabulary of its captions."""
    cache = ImageCache.build(image_root, ann_file, config.image_size)
    return cache, Vocabulary.build(cache.all_captions(), config.min_count)


def train_captioner(image_root: Any, ann_file: Any, out_dir: str | Path, train_config: TrainConfig | None = None,
                    model_config: CaptionerConfig | None = None, overwrite: bool = False,
                    verbose: bool = True) -> CaptionRunResult:
    """Train a captioner on a COCO-format caption dataset into the run folder ``out_dir``."""
    out = Path(out_dir)
    train_config = train_config or captioner_train_config()
    model_config = model_config or tier_config(CaptionerConfig)
    with RunLock(out):
        check_start(out, resume=False, overwrite=overwrite)
        return _train(image_root, ann_file, out, train_config, model_config, verbose)


def _train(image_root: Any, ann_file: Any, out: Path, cfg: TrainConfig, model_config: CaptionerConfig,
           verbose: bool) -> CaptionRunResult:
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    cache, vocab = prepare_captions(image_root, ann_file, model_config)
    table = vocab.encode_all(cache.all_captions(), model_config.max_len).to(device)  # [C, L] word ids
    loader = CachedLoader(cache, None, batch_size=min(cfg.batch_size, len(cache)), seed=cfg.seed, device=device)
    model = Captioner(vocab, model_config).to(device)
    ema = EMA(model, cfg.ema_decay)
    base_lr = cfg.lr if cfg.lr is not None else model_config.lr
    opt = adamw(list(model.parameters()), lr=base_lr, weight_decay=cfg.weight_decay)
    record = {"family": FAMILY, **model.record(), "train": asdict(cfg),
              "data": {"image_root": str(image_root), "ann_file": str(ann_file),
                       "digest": data_digest(image_root, ann_file)}}
    if verbose:
        print(f"captioner: {len(cache)} images at {model_config.image_size}px, {len(cache.all_captions())} captions, "
              f"{len(vocab)} words; {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG, json.dumps(jsonable(record) | {"device": str(device)}, indent=2))
    log, batches = MetricsLog(out / METRICS, None), iter(loader)
    model.train()
    start, loss, seen = time.perf_counter(), torch.zeros(()), 0
    for step in tqdm(range(cfg.steps), disable=not cfg.progress, desc="train captioner", dynamic_ncols=True):
        batch = next(batches)
        for group in opt.param_groups:
            group["lr"] = base_lr * lr_factor(step, cfg)
        loss = model.loss(batch.images, table.index_select(0, batch.caption_ids))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model, step + 1)
        seen += len(batch)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            value = float(loss.detach())
            if not torch.isfinite(loss):
                raise TrainingError(f"the captioner's loss became {value} at step {step + 1}; try a lower --lr")
            log.write({"step": step + 1, "loss": value, "lr": base_lr * lr_factor(step, cfg),
                       "images_per_s": round(seen / (time.perf_counter() - start), 1)})
    seconds = time.perf_counter() - start
    record |= {"train_seconds": round(seconds, 1), "threads": torch.get_num_threads()}
    save_or_explain({"model": model.state_dict(), "ema": ema.model.state_dict(), "optimizers": {"main": opt.state_dict()},
                     "step": cfg.steps, "config": json.dumps(jsonable(record))}, out / CHECKPOINT)
    if verbose:
        print(f"captioner: {cfg.steps} steps in {seconds:.0f} s, last loss {float(loss.detach()):.3f} -> {out / CHECKPOINT}",
              flush=True)
    return CaptionRunResult(out, cfg.steps, float(loss.detach()), seconds, seen / max(seconds, 1e-9))


def _build(record: dict, state: dict, source: Path, device: str, metrics: Path) -> Captioner:
    model = Captioner.from_record(record)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        wrong = list(missing) + list(unexpected)
        raise TrainingError(f"{source} does not fit the captioner of its record: {len(wrong)} mismatched weights, "
                            f"e.g. {wrong[0]}")
    model.run_record = record  # what it was trained on (data, steps, seconds), for the notebook
    model.metrics_csv = metrics  # its training log
    return model.to(pick_device(device)).eval()


def load_captioner(run_dir: str | Path, device: str = "auto") -> Captioner:
    """A run folder's captioner with its EMA weights (``checkpoint.pt``, read with ``weights_only=True``)."""
    path = Path(run_dir) / CHECKPOINT
    checkpoint = read_checkpoint(path)
    record = json.loads(checkpoint["config"])
    if record.get("family") != FAMILY:
        raise TrainingError(f"{path} holds a {record.get('family')!r} run, not a captioner")
    return _build(record, checkpoint["ema"], path, device, Path(run_dir) / METRICS)


def export_captioner(run_dir: str | Path, out_dir: str | Path | None = None, command: str = RECIPE) -> Path:
    """``captioner.safetensors`` (EMA weights, float16), ``captioner.json`` (record + command) and
    ``captioner.metrics.csv`` into ``out_dir`` (default: the cpu tier's shipped folder); ``SHA256SUMS`` updated."""
    out = Path(out_dir) if out_dir is not None else shipped_dir("cpu")
    checkpoint = read_checkpoint(Path(run_dir) / CHECKPOINT)
    record = json.loads(checkpoint["config"])
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in checkpoint["ema"].items()}
    weights = out / f"{FAMILY}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp))
    weights.chmod(0o644)  # safetensors writes its file private; a shipped file is read by everyone
    if weights.stat().st_size > MAX_BYTES:
        raise TrainingError(f"{weights} is {weights.stat().st_size / 2**20:.1f} MiB, over the 5 MiB a shipped file may be")
    record |= {"step": int(checkpoint["step"]), "command": command, "dtype": "float16"}
    record["data"] = {k: portable_path(v) for k, v in record.get("data", {}).items()}
    atomic_write_text(out / f"{FAMILY}.json", json.dumps(record, indent=1))
    metrics = out / f"{FAMILY}.metrics.csv"
    atomic_write_text(metrics, (Path(run_dir) / METRICS).read_text())
    files = (weights, out / f"{FAMILY}.json", metrics)
    sums = read_sums(out) | {p.name: sha256(p) for p in files}
    atomic_write_text(out / "SHA256SUMS", "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    return weights


def load_shipped_captioner(tier: str = "cpu", device: str = "auto", folder: str | Path | None = None) -> Captioner:
    """The shipped captioner of ``tier``; a file whose SHA-256 differs from ``SHA256SUMS`` is refused."""
    folder = Path(folder) if folder is not None else shipped_dir(tier)
    weights, record_path = check_shipped_files(folder, FAMILY, RECIPE, require_listed=True)
    return _build(json.loads(record_path.read_text()), load_file(str(weights)), weights, device,
                  folder / f"{FAMILY}.metrics.csv")


def load_or_train_captioner(image_root: Any, ann_file: Any, out_dir: str | Path, tier: str = "cpu",
                            retrain: bool = False, train_config: TrainConfig | None = None,
                            model_config: CaptionerConfig | None = None) -> Captioner:
    """The notebook's switch: your run in ``out_dir``, else the shipped captioner of ``tier``, else train."""
    out = Path(out_dir)
    if not retrain:
        if (out / CHECKPOINT).exists():
            print(f"captioner: loading the run in {out} (RETRAIN = True trains it again)")
            return load_captioner(out)
        if (shipped_dir(tier) / f"{FAMILY}.safetensors").exists():
            print(f"captioner: loading the shipped {tier}-tier checkpoint (RETRAIN = True trains your own)")
            return load_shipped_captioner(tier)
    train_captioner(image_root, ann_file, out, train_config, model_config, overwrite=True)
    return load_captioner(out)


__all__ = ["FAMILY", "RECIPE", "captioner_train_config", "CaptionRunResult", "prepare_captions", "train_captioner",
           "load_captioner", "export_captioner", "load_shipped_captioner", "load_or_train_captioner"]
