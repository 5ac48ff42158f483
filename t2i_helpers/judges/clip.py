"""A small CLIP-style dual encoder: does this image go with this caption?

Why: FID says whether generated images *look* real, not whether they show what the caption asks
for. A contrastive model maps images and captions into one space where matching pairs are close;
then a generated image can be ranked against candidate captions (R-precision, as in AttnGAN), scored
against its own caption (a CLIP-style score) or used to pick the best caption for an image.

Two towers: a small CNN for images, and a two-layer projection of the *frozen* text encoder's pooled
caption embeddings (the same vectors the generators are conditioned on, read from the embedding
cache). A learnable temperature scales the cosine similarities. Training uses the symmetric InfoNCE
loss of CLIP (Radford et al., 2021): in a batch of B pairs, each image must pick its caption among
the B captions and each caption its image. On Shapes many images share a caption ("a red circle"),
so identical captions in a batch all count as correct (soft targets) instead of as negatives.

This is a teaching-sized model trained in seconds on the course data, not OpenAI's CLIP: its scores
are comparable only between models evaluated with the same contrastive checkpoint.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.config import tier_config
from t2i_helpers.data.evalset import load_eval_data, unique_captions
from t2i_helpers.data.images import to_float
from t2i_helpers.errors import T2IError
from t2i_helpers.files import file_digest
from t2i_helpers.judges.fitting import (cache_path, fit, load_or_train, read_judge, save_judge, sibling_split,
                                        weights_digest)
from t2i_helpers.metrics import r_precision


@dataclass
class ClipConfig:
    """Sizes and training settings (JSON-serialisable; stored with the weights)."""

    embed_dim: int = 64
    input_size: int = 32  # images are resized to this side first
    channels: tuple[int, ...] = (32, 64, 128)  # conv widths, each halving the side (stride 2)
    text_hidden: int = 256
    init_temperature: float = 0.07  # CLIP's initial value; learned afterwards
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0

    @classmethod
    def smoke(cls) -> "ClipConfig":
        return cls(steps=200, batch_size=64)


class ContrastiveModel(nn.Module):
    """Image tower (CNN) + text tower (MLP on pooled text embeddings) into one normalised space."""

    def __init__(self, text_dim: int, config: ClipConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClipConfig()
        self.text_dim = int(text_dim)
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in self.config.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        side = self.config.input_size // 2 ** len(self.config.channels)
        # Flattened (not pooled): captions name positions, so the image embedding must keep the layout.
        self.image_tower = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, 256),
                                         nn.ReLU(inplace=True), nn.Linear(256, self.config.embed_dim))
        self.text_tower = nn.Sequential(nn.Linear(self.text_dim, self.config.text_hidden), nn.ReLU(inplace=True),
                                        nn.Linear(self.config.text_hidden, self.config.embed_dim))
        # log(1 / temperature), as in CLIP; clamped so that the scale stays <= 100
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / self.config.init_temperature)))

    @property
    def name(self) -> str:
        return f"clip-style-{self.config.embed_dim}d-{weights_digest(self)}"

    def image_features(self, images: np.ndarray | Tensor) -> Tensor:
        """Unnormalised image embeddings [B, embed_dim]."""
        x = to_float(images).to(self.logit_scale.device)
        size = self.config.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.image_tower(x)

    def encode_images(self, images: np.ndarray | Tensor) -> Tensor:
        """Unit-length image embeddings [B, embed_dim]."""
        return F.normalize(self.image_features(images), dim=-1)

    def encode_text(self, pooled: Tensor) -> Tensor:
        """Unit-length caption embeddings [B, embed_dim] from pooled text-encoder vectors [B, text_dim]."""
        return F.normalize(self.text_tower(pooled.float().to(self.logit_scale.device)), dim=-1)

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def forward(self, images: Tensor, pooled: Tensor) -> Tensor:
        """Logits [B_images, B_texts]: scaled cosine similarities."""
        return self.scale() * self.encode_images(images) @ self.encode_text(pooled).T

    def feature_network(self) -> "ImageFeatures":
        return ImageFeatures(self)


class ImageFeatures(nn.Module):
    """The image tower as a FID-style feature network (uint8 [B, 3, H, W] in, [B, d] out)."""

    def __init__(self, model: ContrastiveModel) -> None:
        super().__init__()
        self.model = model.eval()
        self.num_features = model.config.embed_dim
        self.name = model.name
        self.resize = f"{model.config.input_size}px bilinear (antialiased)"

    def train(self, mode: bool = True) -> "ImageFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.model.image_features(images)


def clip_loss(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: mean of cross-entropy over rows (image -> text) and columns (text -> image).

    ``targets`` [B, B] (rows summing to 1) allows several correct captions per image; ``None`` means
    the diagonal (pair i matches pair i only), which is CLIP's loss exactly.
    """
    if targets is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    columns = targets.T / targets.T.sum(dim=1, keepdim=True)  # text j -> which images are right
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, columns)) / 2


def _same_caption_targets(keys: Tensor) -> Tensor:
    """[B, B] soft targets: row i spreads its mass over every pair whose caption equals caption i."""
    same = (keys[:, None] == keys[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


@torch.no_grad()
def real_r_precision(model: ContrastiveModel, images: np.ndarray | Tensor, captions: Sequence[str], pooled: Tensor,
                     caption_image: Sequence[int], seed: int = 0) -> float:
    """R-precision of *real* images with their own captions: the ceiling for generated images.

    Every caption row is one query: its image ranks the caption's text among 100 distinct captions.
    """
    model.eval()
    unique, inverse = unique_captions(captions)
    first = np.unique(inverse, return_index=True)[1]
    caption_image = np.asarray(caption_image)
    img = torch.cat([model.encode_images(images[i:i + 256]) for i in range(0, len(images), 256)])
    txt = model.encode_text(torch.as_tensor(pooled)[first])
    return r_precision(img[caption_image], txt, torch.as_tensor(inverse), 100, seed)


def train_clip(
    images: np.ndarray,
    caption_image: Sequence[int],
    pooled: Tensor,
    config: ClipConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> tuple[ContrastiveModel, dict]:
    """Train on (image, caption) pairs: ``images`` uint8 [N, H, W, 3], ``pooled`` [C, D] caption
    embeddings, ``caption_image[c]`` = row in ``images`` of caption c. Returns (model in eval mode, report).

    Each step draws ``batch_size`` captions at random with their images.
    """
    config = config or tier_config(ClipConfig)
    pooled = torch.as_tensor(pooled).float()
    caption_image = torch.as_tensor(np.asarray(caption_image), dtype=torch.long)
    if len(caption_image) != len(pooled):
        raise T2IError(f"{len(pooled)} caption embeddings but {len(caption_image)} caption -> image rows")
    torch.manual_seed(config.seed)
    device = torch.device(device)
    model = ContrastiveModel(pooled.shape[1], config).to(device)
    with torch.no_grad():  # resize once: the loop only indexes
        size = config.input_size
        x_all = to_float(images)
        if x_all.shape[-2:] != (size, size):
            x_all = F.interpolate(x_all, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x_all, text_all, image_of = x_all.to(device), pooled.to(device), caption_image.to(device)
    # identical captions (same embedding) share one key: they are not negatives of each other
    keys = torch.unique(pooled, dim=0, return_inverse=True)[1].to(device)
    generator = torch.Generator().manual_seed(config.seed)

    def batch_loss(step: int) -> Tensor:
        rows = torch.randint(len(pooled), (min(config.batch_size, len(pooled)),), generator=generator).to(device)
        return clip_loss(model(x_all[image_of[rows]], text_all[rows]), _same_caption_targets(keys[rows]))

    final_loss, seconds = fit(model, model.parameters(), batch_loss, config.steps, config.lr, "clip", verbose)
    report = {"train_images": int(len(images)), "train_captions": int(len(pooled)), "steps": config.steps,
              "seconds": round(seconds, 2), "final_loss": final_loss,
              "temperature": float(1 / model.scale().item())}
    return model.cpu(), report


@torch.no_grad()
def best_captions(model: ContrastiveModel, images: np.ndarray | Tensor, caption_embs: Tensor,
                  captions: Sequence[str], k: int = 1) -> list[list[tuple[str, float]]]:
    """Image -> text retrieval: the ``k`` best captions (with cosine similarity) for each image."""
    if len(captions) != len(caption_embs):
        raise T2IError(f"{len(captions)} captions but {len(caption_embs)} caption embeddings")
    model.eval()
    txt = model.encode_text(torch.as_tensor(caption_embs))
    img = model.encode_images(images)
    sims, idx = (img @ txt.T).topk(min(k, len(captions)), dim=1)
    return [[(captions[j], float(s)) for s, j in zip(srow.tolist(), irow.tolist())] for srow, irow in zip(sims, idx)]


# ------------------------------------------------------------------------------------ save and load
def save_clip(model: ContrastiveModel, path: str | os.PathLike, report: dict | None = None) -> Path:
    """Atomic save (temp file + ``os.replace``): weights, text_dim, JSON config and report."""
    return save_judge({"state_dict": model.state_dict(), "text_dim": model.text_dim,
                       "config": json.dumps(asdict(model.config)), "report": json.dumps(report or {})}, path)


def _build(payload: dict) -> ContrastiveModel:
    values = json.loads(payload["config"])
    values["channels"] = tuple(values["channels"])
    return ContrastiveModel(int(payload["text_dim"]), ClipConfig(**values))


def load_clip(path: str | os.PathLike) -> tuple[ContrastiveModel, dict]:
    """Load what :func:`save_clip` wrote (``weights_only=True``)."""
    return read_judge(path, "contrastive model", _build)


def load_or_train_clip(
    image_root: str | os.PathLike,
    ann_file: str | os.PathLike,
    encode: Callable[[list[str]], Tensor],
    text_model: str,
    *,
    image_size: int | None = None,
    config: ClipConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> tuple[ContrastiveModel, dict]:
    """The contrastive model for (training split, text encoder): trained once, then cached.

    ``encode(captions) -> [C, D]`` pooled embeddings (e.g. ``lambda c: run.encode(c).pooled``);
    ``text_model`` names the encoder in the cache key. With a sibling val file the report adds
    ``val_r_precision``: R-precision of the real val images (the ceiling for generated ones).
    """
    ann_file = Path(ann_file)
    config = config or tier_config(ClipConfig)
    key = {"ann": file_digest(ann_file), "text": text_model, "size": image_size, "config": asdict(config)}
    path = cache_path("clip", key, cache_dir, "clip")

    def train() -> tuple[ContrastiveModel, dict]:
        data = load_eval_data(image_root, ann_file, image_size=image_size)
        model, report = train_clip(data.images, data.caption_image, encode(data.captions), config,
                                   device=device, verbose=verbose)
        val_ann = sibling_split(ann_file, "val")
        if val_ann is not None and val_ann != ann_file:
            val = load_eval_data(image_root, val_ann, image_size=image_size)
            report["val_r_precision"] = real_r_precision(model, val.images, val.captions, encode(val.captions),
                                                         val.caption_image)
        report.update(text_model=text_model, ann_file=str(ann_file))
        return model, report

    return load_or_train(path, load_clip, train, save_clip)
