"""The attribute classifier: the judge that reads colour, shape, size and position in a Shapes image.

Every Shapes image has four known attributes, so a small CNN that reads them back from *real*
images (>= 99% right) can score a generated image against the caption it was asked for. Its
penultimate layer is also the feature space of the offline FID proxy: a number computed with it is
labelled ``fid_proxy``, with the network's name, and is never comparable to a published FID.

Two things make it a fair judge of *samples*, which are never clean renders:

* part of its training images get the flaws of samples (:func:`degrade`: off-palette colour, uneven
  brightness, a noisy background, soft edges), chosen so that no label changes;
* it first checks that something is drawn at all (:func:`object_drawn`, a pixel test) and reads
  :data:`~t2i_helpers.metrics.NOTHING` where nothing is, instead of naming a class for an empty canvas.

Why each was needed, measured: docs/measurements.md (the judge rows).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.config import tier_config
from t2i_helpers.data.evalset import load_eval_data
from t2i_helpers.data.images import to_float
from t2i_helpers.data.shapes import COLORS, POSITIONS, SHAPES, SIZES
from t2i_helpers.data.shapes_phrasings import standard_annotation
from t2i_helpers.errors import T2IError
from t2i_helpers.files import file_digest
from t2i_helpers.judges.augment import Augmenter
from t2i_helpers.judges.fitting import (cache_path, fit, load_or_train, read_judge, save_judge, sibling_split,
                                        weights_digest)
from t2i_helpers.metrics import NOTHING


def _default_classes() -> dict[str, list[str]]:
    """Class names per attribute, in the order of :mod:`t2i_helpers.data.shapes` (the logits' order)."""
    return {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS)}


@dataclass
class ClassifierConfig:
    """Architecture and training settings (all JSON-serialisable, stored with the weights)."""

    input_size: int = 64  # images are resized to this side first (the Shapes default)
    channels: tuple[int, ...] = (8, 16, 32, 64)  # conv widths, each halving the side (stride 2)
    feature_dim: int = 128  # penultimate width = the proxy-FID feature dimension
    steps: int = 1000  # the degraded images below make the task harder: 500 steps fell short
    batch_size: int = 64
    lr: float = 6e-3
    noise_std: float = 0.05  # Gaussian pixel noise while training: generated images are never clean
    recolor: float = 0.5  # share of training images repainted in a random palette colour (see below)
    mirror: bool = True  # random left-right flips (positions mirrored accordingly)
    # Share of training images given the flaws of generated ones (see :func:`degrade`): softer edges,
    # off-palette colour, uneven brightness, a noisy background.
    degrade: float = 0.5
    color_jitter: float = 25.0  # max shift of each colour channel of the object, in 0-255 units
    texture: float = 0.2  # max relative brightness change across the object (smooth, low-frequency)
    background: float = 0.1  # max lift and noise level of the black background ([-1, 1] units)
    seed: int = 0
    classes: dict[str, list[str]] = field(default_factory=_default_classes)

    @classmethod
    def smoke(cls) -> "ClassifierConfig":
        """Fewer steps for the smoke tier's 400 images (600: enough to read real val images almost all right)."""
        return cls(steps=600)


class AttributeClassifier(nn.Module):
    """Small CNN with one head per attribute; input images [B, 3, H, W] in [-1, 1].

    Two paths share one convolutional trunk. *What* (colour, shape, size): global max pooling, so
    a triangle is recognised by the same weights wherever it sits (a flattened map would have to
    learn every shape at each of the 9 positions from a few hundred images). *Where* (position): a
    1x1 convolution to a few channels, flattened, so the layout survives. The penultimate features,
    ``[what, where]``, are the proxy-FID feature space.
    """

    WHERE = ("position",)  # attributes read from the spatial path

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in self.config.channels:  # each halves the side
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        side = self.config.input_size // 2 ** len(self.config.channels)
        half = self.config.feature_dim // 2
        self.what = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c_in, half), nn.ReLU(inplace=True))
        self.where = nn.Sequential(nn.Conv2d(c_in, 4, 1), nn.ReLU(inplace=True), nn.Flatten(),
                                   nn.Linear(4 * side * side, self.config.feature_dim - half), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({
            name: nn.Linear(self.config.feature_dim - half if name in self.WHERE else half, len(values))
            for name, values in self.config.classes.items()})

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.config.classes)

    def resize(self, images: Tensor) -> Tensor:
        """Images at the network's input size (bilinear, antialiased)."""
        size = self.config.input_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images

    def _paths(self, images: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(self.resize(images.float()))
        return self.what(h), self.where(h)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features [B, feature_dim] = [what, where] (the proxy-FID feature space)."""
        return torch.cat(self._paths(images), dim=1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per attribute: ``{"color": [B, 6], "shape": [B, 3], ...}``."""
        what, where = self._paths(images)
        return {name: head(where if name in self.WHERE else what) for name, head in self.heads.items()}

    def digest(self) -> str:
        """A short hash of the weights: names the feature network, so cached FID statistics follow it."""
        return weights_digest(self)

    def feature_network(self) -> "ClassifierFeatures":
        """This classifier's features as a FID feature network (uint8 in, float features out)."""
        return ClassifierFeatures(self)


class ClassifierFeatures(nn.Module):
    """The FID-style feature network view of a classifier.

    Takes uint8 images [B, 3, H, W] (like torchmetrics' Inception wrapper) and returns
    ``[B, num_features]``, so it plugs into :func:`t2i_helpers.metrics.extract_features` and into
    ``torchmetrics.image.fid.FrechetInceptionDistance(feature=...)`` alike. ``name`` includes a hash
    of the weights: cached real statistics are keyed by it.
    """

    def __init__(self, classifier: AttributeClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.config.feature_dim
        self.name = f"shapes-attribute-cnn-{classifier.config.feature_dim}d-{classifier.digest()}"

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)  # a feature network never leaves eval mode (BatchNorm statistics)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise T2IError(f"feature network expects uint8 images [B, 3, H, W], got {images.dtype}")
        return self.classifier.features(images.float() / 127.5 - 1.0)


# ------------------------------------------------------------------------------------------ helpers
# Shapes objects are flat palette colours on black; the dimmest palette colour's brightest channel is
# 180/255. An object is drawn where a 2x2 block reaches half of that (0.35); blank samples of noise stay
# under it and every real render is far above (measured: docs/measurements.md, "blank samples").
DRAWN_THRESHOLD = min(max(rgb) for rgb in COLORS.values()) / 255 / 2


def object_drawn(images: np.ndarray | Tensor) -> Tensor:
    """[N] bool: does the image show an object? True where some 2x2 block's brightest channel averages
    at least :data:`DRAWN_THRESHOLD` (in [0, 1]); a 2x2 block, so that single speckles of noise do not count."""
    x = (to_float(images).clamp(-1, 1) + 1) / 2
    blocks = F.avg_pool2d(x.amax(dim=1, keepdim=True), 2, stride=1)
    return blocks.flatten(1).amax(dim=1) >= DRAWN_THRESHOLD


@torch.no_grad()
def predict_attributes(model: AttributeClassifier, images: np.ndarray | Tensor, batch_size: int = 256) -> list[dict]:
    """Predicted attributes per image, e.g. ``{"color": "red", "shape": "circle", ...}``, or
    :data:`NOTHING` for every attribute where no object is drawn (:func:`object_drawn`).

    ``images``: float [N, 3, H, W] in [-1, 1] (what models generate) or uint8 (what the cache holds).
    """
    model.eval()
    device = next(model.parameters()).device
    indices: dict[str, list[Tensor]] = {name: [] for name in model.attributes}
    drawn: list[Tensor] = []
    for start in range(0, len(images), batch_size):
        batch = to_float(images[start:start + batch_size]).to(device)
        drawn.append(object_drawn(batch).cpu())  # converted once, checked where the batch is
        for name, logits in model(batch).items():
            indices[name].append(logits.argmax(dim=1).cpu())
    if not len(images):
        return []
    cat = {name: torch.cat(v).tolist() for name, v in indices.items()}
    seen = torch.cat(drawn).tolist()
    classes = model.config.classes
    return [{name: classes[name][cat[name][i]] if seen[i] else NOTHING for name in classes}
            for i in range(len(images))]


def accuracy_per_attribute(model: AttributeClassifier, images: np.ndarray | Tensor, attributes: Sequence[dict]) -> dict:
    """Fraction right per attribute and ``all`` (every attribute right), on labelled images."""
    pred = predict_attributes(model, images)
    out = {name: float(np.mean([p[name] == t[name] for p, t in zip(pred, attributes)])) for name in model.attributes}
    out["all"] = float(np.mean([all(p[n] == t[n] for n in model.attributes) for p, t in zip(pred, attributes)]))
    return out


def _has_attributes(ann_file: Path) -> bool:
    try:
        with open(ann_file, encoding="utf-8") as f:
            images = json.load(f).get("images") or []
    except (OSError, ValueError, AttributeError) as exc:
        raise T2IError(f"cannot read annotation file {ann_file}: {exc}") from None
    return bool(images) and all(k in images[0] for k in ("color", "shape", "size", "position"))


# ----------------------------------------------------------------------------------------- training
# Part of the cache key: bump it when the training code changes what a config trains into, so that
# cached judges from the old code are retrained instead of reused. 2: degrade, masks flipped with images.
TRAINING_VERSION = 2


def _val_report(model: AttributeClassifier, image_root, val_ann: Path) -> dict:
    val = load_eval_data(image_root, val_ann)
    report = {"val_images": len(val.images), "val_accuracy": accuracy_per_attribute(model, val.images, val.attributes)}
    held = val.held_out_images()
    if held.any():
        report["val_accuracy_held_out"] = accuracy_per_attribute(
            model, val.images[held], [a for a, h in zip(val.attributes, held) if h])
        report["val_held_out_images"] = int(held.sum())
    return report


def train_attribute_classifier(
    image_root: str | os.PathLike,
    ann_file: str | os.PathLike,
    steps: int | None = None,
    *,
    val_ann_file: str | os.PathLike | None = None,
    config: ClassifierConfig | None = None,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> tuple[AttributeClassifier, dict]:
    """Train on the real images of ``ann_file`` (Shapes train split); report accuracy on real val images.

    ``val_ann_file`` defaults to the sibling ``captions_val.json``. Returns ``(model in eval mode,
    report)``; the report holds the per-attribute val accuracy (also on the held-out colour-shape
    pairs), the image counts, steps and seconds.
    """
    config = config or tier_config(ClassifierConfig)
    if steps is not None:
        config = ClassifierConfig(**{**asdict(config), "steps": int(steps)})
    ann_file = Path(ann_file)
    val_ann = Path(val_ann_file) if val_ann_file is not None else sibling_split(ann_file, "val")
    if not _has_attributes(ann_file):
        raise T2IError(f"{ann_file} has no image attributes (shape/color/size/position): not a Shapes annotation file")
    train = load_eval_data(image_root, ann_file)
    torch.manual_seed(config.seed)
    device = torch.device(device)
    model = AttributeClassifier(config).to(device)
    data = Augmenter(model.resize, train, config, device)
    model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(config.seed)

    def batch_loss(step: int) -> Tensor:
        x, targets = data.batch(generator)
        logits = model(x)
        return sum(F.cross_entropy(logits[k], targets[k]) for k in logits)

    final_loss, seconds = fit(model, model.parameters(), batch_loss, config.steps, config.lr, "classifier", verbose)
    report: dict = {"train_images": len(train.images), "steps": config.steps, "seconds": round(seconds, 2),
                    "image_size": int(train.images.shape[1]), "input_size": config.input_size,
                    "final_loss": final_loss}
    if val_ann is not None:
        report.update(_val_report(model, image_root, val_ann))
    return model.cpu().to(memory_format=torch.contiguous_format), report


# ------------------------------------------------------------------------------------ save and load
def save_classifier(model: AttributeClassifier, path: str | os.PathLike, report: dict | None = None) -> Path:
    """Atomic save: weights + JSON config + report (temp file, then ``os.replace``)."""
    return save_judge({"state_dict": model.state_dict(), "config": json.dumps(asdict(model.config)),
                       "report": json.dumps(report or {})}, path)


def _build(payload: dict) -> AttributeClassifier:
    values = json.loads(payload["config"])
    values["channels"] = tuple(values["channels"])
    return AttributeClassifier(ClassifierConfig(**values))


def load_classifier(path: str | os.PathLike) -> tuple[AttributeClassifier, dict]:
    """Load what :func:`save_classifier` wrote (``weights_only=True``: no code runs from the file)."""
    return read_judge(path, "attribute classifier", _build)


def load_or_train_attribute_classifier(
    image_root: str | os.PathLike,
    ann_file: str | os.PathLike,
    *,
    config: ClassifierConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    verbose: bool = False,
) -> tuple[AttributeClassifier, dict]:
    """The classifier for this dataset: trained once, then read from ``data_dir()/cache/classifier``.

    ``ann_file`` may be either split's JSON: training always uses the train split, the report the val
    split. A Chinese or paraphrase file (``*.zh.json``, ``*.phrasings.json``, ``*.paraphrased.json``) gets the
    judge of its standard English file. The cache key hashes both annotation files and the config, so a regenerated dataset or a
    changed setting retrains.
    """
    ann_file = standard_annotation(Path(ann_file))  # Chinese or paraphrased captions: the same images, the same judge
    train_ann = sibling_split(ann_file, "train") or ann_file
    val_ann = sibling_split(ann_file, "val")
    config = config or tier_config(ClassifierConfig)
    key = {"train": file_digest(train_ann), "val": file_digest(val_ann) if val_ann else None,
           "config": asdict(config), "training": TRAINING_VERSION}
    path = cache_path("classifier", key, cache_dir, "attributes")
    return load_or_train(path, load_classifier, lambda: train_attribute_classifier(
        image_root, train_ann, val_ann_file=val_ann, config=config, device=device, verbose=verbose), save_classifier)
