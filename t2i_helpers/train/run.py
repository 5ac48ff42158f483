"""A trained run, ready to draw: rebuild it from ``checkpoint.pt`` and sample captions with its EMA weights."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from t2i_helpers.errors import TrainingError
from t2i_helpers.models import build_model, config_from_dict
from t2i_helpers.models.base import T2IModel
from t2i_helpers.text import TextEncoderConfig, TextTable, encode_captions
from t2i_helpers.train.config import CHECKPOINT, METRICS, TrainConfig
from t2i_helpers.train.device import autocast, pick_device, pick_precision, use_fast_gpu_kernels
from t2i_helpers.train.runfolder import read_checkpoint


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

    def encode(self, captions: Sequence[str]) -> TextTable:
        """The captions' embeddings by the run's own text encoder (cached on disk)."""
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
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_config = TrainConfig(**{k: v for k, v in record["train"].items() if k in train_fields})
    return LoadedRun(
        run_dir=run_dir, family=family, model=model, model_config=model_config, train_config=train_config,
        text_encoder_config=TextEncoderConfig(**record["text"]), step=int(checkpoint["step"]), device=dev,
        data=record.get("data", {}),
    )
