"""How to train, per tier: :class:`TrainConfig` (what to train is the model family's own config).

The defaults are the ``gpu`` tier's and never change with the environment; ``TrainConfig.smoke()``
and ``TrainConfig.cpu()`` are the other tiers', and ``tier_config(TrainConfig)`` picks the current one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from t2i_helpers.config import tier_config

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.csv"


@dataclass
class TrainConfig:
    """How to train (what to train is the model's own config). Defaults: the ``gpu`` tier."""

    steps: int = 5000  # total steps of the run (--resume continues to it)
    batch_size: int = 128  # per process under torchrun
    lr: float | None = None  # None: the model family's own suggestion (config.optimizer_settings())
    warmup_steps: int = 200  # linear warm-up, then constant
    decay_steps: int = 0  # >0: the learning rate falls linearly to 0 over the run's last decay_steps steps
    schedule_steps: int | None = None  # where that decay ends (default: steps); for runs trained in segments
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # max global grad norm per phase; None disables
    ema_decay: float = 0.999
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    seed: int = 0
    checkpoint_every: int = 500  # 0: only at the end
    sample_every: int = 500  # 0: only at the end
    log_every: int = 10
    sample_captions: int = 8  # how many fixed captions the sample grids show
    text_model: str = "all-MiniLM-L6-v2"
    max_length: int = 32
    compile: bool = False  # torch.compile the loss computation (GPU runs)
    # Stop after this many minutes of training (data preparation not counted), checkpoint included:
    # for comparisons at a fixed time budget. ``steps`` stays the upper bound.
    max_minutes: float | None = None
    progress: bool = True  # a tqdm progress bar
    # Left-right flips of half the images: "none"; "rewrite" mirrors the caption too ("left" <-> "right",
    # what a flip must do); "naive" keeps the caption (the mistake notebook 06 measures).
    flip: str = "none"

    @classmethod
    def gpu(cls) -> "TrainConfig":
        return cls()

    @classmethod
    def for_tier(cls, tier: str | None = None, **changes) -> "TrainConfig":
        """The tier's named config (default: the current tier's) with ``changes``, e.g.
        ``TrainConfig.for_tier(steps=600, seed=1)``: what a notebook trains with."""
        return dataclasses.replace(tier_config(cls, tier), **changes)

    @classmethod
    def cpu(cls) -> "TrainConfig":
        """A 2-core laptop: 4,500 steps of 32 images, about 10 minutes for the cpu-tier diffusion model."""
        return cls(steps=4500, batch_size=32, warmup_steps=100)

    @classmethod
    def smoke(cls) -> "TrainConfig":
        """CI: 60 tiny steps, no intermediate files, and no progress bar (notebook outputs stay stable)."""
        return cls(steps=60, batch_size=8, warmup_steps=0, checkpoint_every=0, sample_every=0, progress=False)


# Settings of one training session rather than of the run: on --resume they come from the caller,
# everything else from the checkpoint (changing the rest would not continue the same run).
SESSION_FIELDS = ("steps", "max_minutes", "checkpoint_every", "sample_every", "log_every", "progress", "compile")
