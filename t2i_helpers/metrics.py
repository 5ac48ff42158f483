"""Evaluation a thesis can cite: FID (or a labelled offline proxy), attribute accuracy, R-precision.

**FID in three steps.** (1) *Features*: a fixed network maps every image to a vector (Inception-v3's
2048-d pool layer, with the original TensorFlow weights, for the standard FID). (2) *Gaussian fit*:
the real and the generated feature sets are each summarised by a mean ``mu`` and covariance
``sigma``. (3) *Frechet distance* between the two Gaussians::

    FID = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

Lower is better; 0 means the two Gaussians coincide. FID depends on the feature network, on the
number of images (it is biased upwards for small sets), on resizing and on the real split, so every
score here comes with a :class:`FIDProtocol` that records all of them.

**Offline.** The Inception weights (torch-fidelity's conversion of the TF FID weights) are
downloaded at first use; without the internet pass a local copy (``inception_weights=PATH``). The
alternative is ``fid_proxy``: the same distance in the feature space of a network this project
trains on the data itself (the Shapes attribute classifier). It is reported under its own key with
the network's name, never as ``fid``.

**Does the image show what the caption says?** On Shapes, :func:`attribute_accuracy` reads the
generated object's attributes with the classifier and checks those the caption mentions (with a
separate score for colour-shape pairs never seen in training). On any data, :func:`r_precision`
(AttnGAN) ranks the true caption among 100 with a contrastive image-text model.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from t2i_helpers.config import data_dir
from t2i_helpers.errors import AssetMissingError, DatasetError, T2IError
from t2i_helpers.files import atomic_path

__all__ = [
    "INCEPTION_URL",
    "frechet_distance",
    "FeatureStats",
    "FIDProtocol",
    "EvalData",
    "load_eval_data",
    "images_to_uint8",
    "extract_features",
    "inception_network",
    "real_statistics",
    "fid_from_images",
    "attribute_accuracy",
    "attribute_errors",
    "attribute_accuracy_by",
    "describe_errors",
    "error_examples",
    "error_figure",
    "r_precision",
    "clip_score",
    "caption_fits",
    "evaluate_images",
    "evaluate_run",
    "format_report",
    "bench_eval",
]

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
INCEPTION_NAME = "inception-v3-compat-2048"  # torch-fidelity's name for the TF FID network, pool3 features


# ------------------------------------------------------------------------------------ the distance
def _as_float64(x: Any) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach().cpu(), dtype=torch.float64)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet (Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2).

    The hard term is ``Tr((sigma1 sigma2)^(1/2))``. ``sigma1 sigma2`` is not symmetric, so a general
    matrix square root (``scipy.linalg.sqrtm``) can return complex noise. It has the same
    eigenvalues as the symmetric positive semi-definite ``A = sigma1^(1/2) sigma2 sigma1^(1/2)``
    (similar matrices), so the trace is the sum of square roots of A's eigenvalues, which ``eigh``
    computes stably (tiny negative round-off is clipped to 0). All in float64.
    """
    mu1, mu2, s1, s2 = (_as_float64(v) for v in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise T2IError(f"frechet_distance: shapes do not match: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                       f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    a = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((a + a.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    value = float(diff @ diff + s1.trace() + s2.trace() - 2 * tr_covmean)
    return max(value, 0.0)  # a squared distance: only round-off can make it negative


@dataclass
class FeatureStats:
    """The Gaussian fit of one feature set: mean [d], covariance [d, d] (unbiased, n - 1), count."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: Any) -> "FeatureStats":
        f = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise T2IError(f"need at least 2 feature vectors [N, d] for a covariance, got shape {f.shape}")
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), n=int(f.shape[0]))

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> Path:
        """Atomic ``.npz`` (temp file in the same folder, then ``os.replace``)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz"
            np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), meta=np.array(json.dumps(meta or {})))
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(mu=data["mu"], sigma=data["sigma"], n=int(data["n"]))
        except (OSError, KeyError, ValueError) as exc:
            raise T2IError(f"cannot read feature statistics {path}: {exc}") from None

    def distance(self, other: "FeatureStats") -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


@dataclass
class FIDProtocol:
    """Everything a FID number depends on; print :meth:`describe` next to every score."""

    metric: str  # "fid" (Inception, comparable to papers) or "fid_proxy" (project network)
    feature_network: str
    n_real: int
    n_generated: int
    resolution: int  # side of real and generated images before the feature network
    resize: str  # how images reach the network's input size
    dataset: str
    split: str
    seed: int

    def describe(self) -> str:
        return (f"{self.metric} | features: {self.feature_network} | real: {self.n_real} {self.dataset} "
                f"{self.split} images | generated: {self.n_generated} | {self.resolution}px, {self.resize} | "
                f"seed {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------- data
@dataclass
class EvalData:
    """One COCO-captions-format split loaded for evaluation (Shapes adds attributes and mentions)."""

    image_root: Path
    ann_file: Path
    dataset: str  # "shapes" or "coco" (the JSON's info.description decides)
    split: str
    fingerprint: str  # hash of the annotation file: keys the cached real statistics
    images: np.ndarray  # uint8 [N, H, W, 3], at the evaluation resolution
    image_ids: list[int]
    captions: list[str]  # one row per annotation: the caption ids used here
    caption_image: np.ndarray  # [C] row in ``images`` of each caption's image
    mentions: list[list[str]] | None  # Shapes: attributes each caption names
    attributes: list[dict] | None  # Shapes: per image {"color", "shape", "size", "position"}
    held_out_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def is_shapes(self) -> bool:
        return self.attributes is not None

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def held_out_images(self) -> np.ndarray:
        """[N] bool: the image shows a colour-shape pair that training never saw."""
        if self.attributes is None:
            return np.zeros(len(self.images), dtype=bool)
        pairs = set(self.held_out_pairs)
        return np.array([(a["color"], a["shape"]) in pairs for a in self.attributes], dtype=bool)

    def held_out_captions(self) -> np.ndarray:
        """[C] bool: the caption describes a held-out colour-shape pair."""
        return self.held_out_images()[self.caption_image]


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _read_image(path: Path, size: int | None) -> np.ndarray:
    """uint8 [H, W, 3]; resized exactly as the training cache does (centre square, PIL bicubic)."""
    from PIL import Image

    from t2i_helpers.data.cache import center_crop_resize

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is None or im.size == (size, size):
                return np.asarray(im, dtype=np.uint8)
            return center_crop_resize(im, size)
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def load_eval_data(image_root: str | os.PathLike, ann_file: str | os.PathLike,
                   image_size: int | None = None) -> EvalData:
    """Read a split's annotations and its images (uint8, resized to ``image_size`` if given).

    ``image_size=None`` keeps the files' size (all images must then share it, as Shapes' do).
    Otherwise images go through the training cache's resize (:func:`t2i_helpers.data.cache.center_crop_resize`:
    largest centred square, PIL bicubic), so real and training images are prepared alike.
    """
    image_root, ann_file = Path(image_root), Path(ann_file)
    try:
        with open(ann_file, encoding="utf-8") as f:
            doc = json.load(f)
        entries, annotations = doc["images"], doc["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"cannot read COCO captions file {ann_file}: {type(exc).__name__}: {exc}") from None
    info = doc.get("info") or {}
    is_shapes = str(info.get("description", "")).startswith("Shapes") or all(
        k in e for e in entries[:1] for k in ("color", "shape", "size", "position"))
    guess = "val" if "val" in ann_file.name else "train" if "train" in ann_file.name else "?"
    split = str(info.get("split") or guess)

    row_of = {e["id"]: i for i, e in enumerate(entries)}
    captions, caption_image, mentions = [], [], []
    for a in annotations:
        if a.get("image_id") not in row_of:
            continue  # a caption of an image not in this file: skipped (COCO files are consistent)
        captions.append(str(a["caption"]).strip())
        caption_image.append(row_of[a["image_id"]])
        mentions.append(list(a.get("mentions") or []))
    if not captions:
        raise DatasetError(f"{ann_file} has no captions")

    paths = [image_root / e["file_name"] for e in entries]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} images of {ann_file.name} not found under {image_root}, e.g. {missing[0]}")
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
        pixels = list(pool.map(lambda p: _read_image(p, image_size), paths))
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise DatasetError(f"images of {ann_file.name} differ in size ({sorted(shapes)[:3]}...): pass image_size")

    attributes = None
    held = ()
    if is_shapes:
        attributes = [{k: e[k] for k in ("color", "shape", "size", "position")} for e in entries]
        if "held_out_pairs" in info:
            held = tuple(tuple(p) for p in info["held_out_pairs"])
        else:
            from t2i_helpers.data.shapes import HELD_OUT_PAIRS

            held = HELD_OUT_PAIRS
    return EvalData(
        image_root=image_root, ann_file=ann_file, dataset="shapes" if is_shapes else "coco", split=split,
        fingerprint=_file_digest(ann_file), images=np.stack(pixels), image_ids=[e["id"] for e in entries],
        captions=captions, caption_image=np.asarray(caption_image, dtype=np.int64),
        mentions=mentions if is_shapes else None, attributes=attributes, held_out_pairs=held,
    )


# -------------------------------------------------------------------------------- feature networks
def images_to_uint8(images: Tensor) -> Tensor:
    """Generated images in [-1, 1] [B, 3, H, W] -> uint8 (what a saved PNG would hold)."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _to_nchw_uint8(images: np.ndarray | Tensor) -> Tensor:
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8:
        x = images_to_uint8(x)
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.contiguous()


@torch.no_grad()
def extract_features(network: nn.Module, images: np.ndarray | Tensor, batch_size: int = 100,
                     device: str | torch.device | None = None) -> np.ndarray:
    """Features [N, d] (float64) of images: uint8 [N, H, W, 3] / [N, 3, H, W], or float in [-1, 1].

    The network gets uint8 [B, 3, H, W] and does its own resizing, like torchmetrics' Inception.
    """
    if device is None:
        device = next((p.device for p in network.parameters()), torch.device("cpu"))
    device = torch.device(device)
    network = network.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = _to_nchw_uint8(images[start:start + batch_size]).to(device)
        out.append(network(batch).double().cpu())
    return torch.cat(out).numpy()


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _online(host: str = "github.com", port: int = 443, timeout: float = 2.0) -> bool:
    """False quickly when offline: offline flags set, or no TCP connection within ``timeout`` s."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("T2I_OFFLINE"):
        return False
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _inception_missing(detail: str) -> AssetMissingError:
    return AssetMissingError(
        f"Inception-v3 FID weights unavailable ({detail}): download {INCEPTION_URL} on a machine with the "
        f"internet and pass --inception-weights PATH (inception_weights=PATH), or use --fid proxy offline "
        f"(a labelled proxy, not comparable to published FID)")


def inception_network(weights: str | os.PathLike | None = None, antialias: bool = False) -> nn.Module:
    """The standard FID feature network: torchmetrics' Inception-v3 (torch-fidelity FID weights).

    Weights come from ``weights`` (a local copy of :data:`INCEPTION_URL`), else from torch's hub
    cache, else are downloaded. Offline with neither: :class:`AssetMissingError` at once, no hang.
    ``antialias=False`` keeps torch-fidelity's TF1-compatible bilinear resize to 299 px (the
    original FID's); torchmetrics' default (antialiased) gives slightly different numbers.
    """
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if weights is not None:
        path: Path | None = Path(weights).expanduser()
        if not path.is_file():
            raise _inception_missing(f"{path} does not exist")
    elif hub_file.is_file():
        path = hub_file
    else:
        path = None
        if not _online():
            raise _inception_missing(f"offline and not in {hub_file.parent}")
    tag = "aa" if antialias else "tf1"
    if path is not None:
        try:  # only a plain state dict (tensors) is accepted; torch-fidelity then reads the same bytes
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable or unsafe file: one line naming it
            detail = f"{path} is not a torch-fidelity Inception state dict: {type(exc).__name__}"
            raise _inception_missing(detail) from None
        if path.name != INCEPTION_FILE:  # not the official file name: name the network by the file's hash
            tag += "-" + _file_digest(path)[:8]
    from torchmetrics.image.fid import FrechetInceptionDistance  # after the checks: importing takes seconds

    try:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path) if path else None,
                                          antialias=antialias)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a bad file a RuntimeError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _inception_missing(f"{type(exc).__name__}: {reason[:120]}") from None
    network = metric.inception
    network.name = f"{INCEPTION_NAME}-{tag}"  # type: ignore[attr-defined]
    network.num_features = 2048  # type: ignore[attr-defined]
    network.resize = "299px bilinear (" + ("antialiased" if antialias else "TF1-compatible, torch-fidelity") + ")"
    return network


def _network_resize(network: nn.Module) -> str:
    if hasattr(network, "resize"):
        return str(network.resize)
    inner = getattr(network, "classifier", None)
    size = getattr(getattr(inner, "config", None), "input_size", None)
    return f"{size}px bilinear (antialiased)" if size else "network's own"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _sample_rows(n_total: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def real_statistics(network: nn.Module, data: EvalData, n_real: int | None = None, seed: int = 0,
                    cache_dir: str | os.PathLike | None = None, batch_size: int = 100,
                    device: str | torch.device | None = None) -> tuple[FeatureStats, bool]:
    """Gaussian fit of real-image features, computed once and cached as ``.npz``.

    Key: dataset fingerprint, split, resolution, sample count (and seed), feature network name. Returns
    ``(stats, from_cache)``. Default location ``data_dir()/cache/fid``.
    """
    rows = _sample_rows(len(data.images), n_real, seed)
    name = getattr(network, "name", type(network).__name__)
    key = _safe(f"{data.dataset}-{data.split}-{data.fingerprint}-{data.resolution}px-n{len(rows)}"
                f"{'-s' + str(seed) if len(rows) < len(data.images) else ''}-{name}")
    path = (Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "fid") / f"{key}.npz"
    if path.exists():
        try:
            return FeatureStats.load(path), True
        except T2IError:
            pass  # unreadable: recompute and overwrite
    stats = FeatureStats.from_features(extract_features(network, data.images[rows], batch_size, device))
    stats.save(path, meta={"key": key, "ann_file": str(data.ann_file), "network": name})
    return stats, False


def fid_from_images(generated: Tensor | np.ndarray, network: nn.Module, real: FeatureStats,
                    batch_size: int = 100, device: str | torch.device | None = None) -> float:
    """Frechet distance between generated images' features and cached real statistics."""
    fake = FeatureStats.from_features(extract_features(network, generated, batch_size, device))
    return frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)


# -------------------------------------------------------------------------------- caption metrics
def _judged(target: dict, mentioned: Sequence[str] | None) -> list[str]:
    """The attributes a caption is judged on: those it mentions (all of the target's if unknown)."""
    return list(target) if mentioned is None else [m for m in mentioned if m in target]


def attribute_accuracy(pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                       mentions: Sequence[Sequence[str]] | None = None) -> dict:
    """Accuracy per attribute, judged only where the caption mentions it, and ``all``.

    ``all`` is the fraction of captions whose *every* mentioned attribute is right. An attribute no
    caption mentions gets ``None`` (not 0: there was nothing to judge). ``n`` = captions judged,
    ``n_<attribute>`` = captions mentioning it. ``mentions=None`` judges every target attribute.
    """
    if len(pred_attrs) != len(target_attrs) or (mentions is not None and len(mentions) != len(target_attrs)):
        raise T2IError(f"attribute_accuracy: {len(pred_attrs)} predictions, {len(target_attrs)} targets, "
                       f"{'-' if mentions is None else len(mentions)} mention lists: lengths must match")
    names: list[str] = []
    for t in target_attrs:
        names += [k for k in t if k not in names]
    right = {k: 0 for k in names}
    count = {k: 0 for k in names}
    all_right = 0
    for i, (p, t) in enumerate(zip(pred_attrs, target_attrs)):
        judged = _judged(t, None if mentions is None else mentions[i])
        ok = True
        for k in judged:
            count[k] += 1
            hit = p.get(k) == t[k]
            right[k] += hit
            ok = ok and hit
        all_right += ok
    out: dict[str, Any] = {k: (right[k] / count[k] if count[k] else None) for k in names}
    out["all"] = all_right / len(target_attrs) if len(target_attrs) else None
    out["n"] = len(target_attrs)
    out.update({f"n_{k}": count[k] for k in names})
    return out


NOTHING_DRAWN = {"attribute": "object", "wanted": "an object", "drawn": "nothing"}  # an error of its own


def _blank(pred: dict) -> bool:
    """The judge saw no object (it reads "nothing" for every attribute, see ``object_drawn``)."""
    from t2i_helpers.models.classifier import NOTHING

    return bool(pred) and all(v == NOTHING for v in pred.values())


def attribute_errors(pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                     mentions: Sequence[Sequence[str]] | None = None, top: int = 5) -> list[dict]:
    """The commonest mistakes: ``{"attribute", "wanted", "drawn", "count", "share"}``, most frequent first.

    Judged like :func:`attribute_accuracy` (only what a caption mentions); ``share`` is ``count``
    over the captions that mention the attribute. "shape: circle drawn as square, 54 of 400" says
    more about what to fix than "shape 0.82". An image with no object at all is one error,
    :data:`NOTHING_DRAWN` (its share is over every caption), not one per attribute.
    """
    if len(pred_attrs) != len(target_attrs) or (mentions is not None and len(mentions) != len(target_attrs)):
        raise T2IError(f"attribute_errors: {len(pred_attrs)} predictions, {len(target_attrs)} targets, "
                       f"{'-' if mentions is None else len(mentions)} mention lists: lengths must match")
    errors: dict[tuple[str, Any, Any], int] = {}
    judged: dict[str, int] = {NOTHING_DRAWN["attribute"]: len(target_attrs)}
    for i, (p, t) in enumerate(zip(pred_attrs, target_attrs)):
        blank = _blank(p)
        if blank:
            key = (NOTHING_DRAWN["attribute"], NOTHING_DRAWN["wanted"], NOTHING_DRAWN["drawn"])
            errors[key] = errors.get(key, 0) + 1
        for k in _judged(t, None if mentions is None else mentions[i]):
            judged[k] = judged.get(k, 0) + 1
            if p.get(k) != t[k] and not blank:
                key = (k, t[k], p.get(k))
                errors[key] = errors.get(key, 0) + 1
    ranked = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0][0], str(kv[0][1]), str(kv[0][2])))
    return [{"attribute": k, "wanted": wanted, "drawn": drawn, "count": n, "share": n / judged[k]}
            for (k, wanted, drawn), n in ranked[:top]]


def error_examples(pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                   mentions: Sequence[Sequence[str]] | None, error: dict, limit: int = 8) -> list[int]:
    """Indices of (up to ``limit``) images showing ``error``, one entry of :func:`attribute_errors`.

    For looking before believing: a judge that has only seen clean renders can misread a sample that
    a person reads at once (a speckled blue square read as white), and only the images tell.
    """
    k, wanted, drawn = error["attribute"], error["wanted"], error["drawn"]
    blank = k == NOTHING_DRAWN["attribute"]
    found = []
    for i, (p, t) in enumerate(zip(pred_attrs, target_attrs)):
        if (blank and _blank(p)) or (not blank and k in _judged(t, None if mentions is None else mentions[i])
                                     and t[k] == wanted and p.get(k) == drawn and not _blank(p)):
            found.append(i)
            if len(found) == limit:
                break
    return found


def error_figure(images: Tensor, pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                 mentions: Sequence[Sequence[str]] | None, captions: Sequence[str], top: int = 4, per_error: int = 8,
                 title: str | None = None):
    """One row per commonest error (:func:`attribute_errors`), showing samples the judge marked with it.

    Returns a matplotlib figure, or None when nothing was judged wrong. Column titles are the captions
    of the first row's images.
    """
    from t2i_helpers.viz import image_rows

    errors = attribute_errors(pred_attrs, target_attrs, mentions, top=top)
    if not errors:
        return None
    rows, first = {}, None
    for e in errors:
        idx = error_examples(pred_attrs, target_attrs, mentions, e, per_error)
        first = idx if first is None else first
        what = ("nothing drawn" if e["attribute"] == NOTHING_DRAWN["attribute"]
                else f"{e['attribute']}: {e['wanted']}\nread as {e['drawn']}")
        rows[f"{what}\n({100 * e['share']:.1f}%)"] = images[idx]
    return image_rows(rows, [captions[i] for i in first], size=1.0, title=title)


def describe_errors(errors: Sequence[dict], top: int = 3) -> str:
    """``attribute_errors`` in words: "shape circle drawn as square 13.5%; ..." (share of the captions
    that mention the attribute)."""
    return "; ".join((f"nothing drawn {100 * e['share']:.1f}%" if e["attribute"] == NOTHING_DRAWN["attribute"] else
                      f"{e['attribute']} {e['wanted']} drawn as {e['drawn']} {100 * e['share']:.1f}%")
                     for e in errors[:top]) or "none"


def attribute_accuracy_by(pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                          mentions: Sequence[Sequence[str]] | None, group_by: str) -> dict[Any, dict]:
    """:func:`attribute_accuracy` separately for each value of ``group_by`` *as drawn* (predicted).

    E.g. ``group_by="size"``: is the shape right as often on the objects the model drew small as on
    the large ones? (A 32 px probe: 58% vs 98%, so its shape errors were a resolution problem.)
    """
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(pred_attrs):
        groups.setdefault(p.get(group_by), []).append(i)
    return {value: attribute_accuracy([pred_attrs[i] for i in rows], [target_attrs[i] for i in rows],
                                      None if mentions is None else [mentions[i] for i in rows])
            for value, rows in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def _normalise(x: Tensor) -> Tensor:
    x = torch.as_tensor(x).float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def r_precision(image_emb: Tensor, text_emb: Tensor, true_index: Sequence[int] | Tensor,
                n_candidates: int = 100, seed: int = 0, exclude: Tensor | None = None) -> float:
    """AttnGAN's R-precision (R = 1): per generated image, rank its true caption among candidates.

    Each image gets ``n_candidates`` captions: its true one and ``n_candidates - 1`` others drawn at
    random (without replacement) from the other rows of ``text_emb``; it scores 1 if the true caption
    has the highest cosine similarity. Chance level is ``1 / n_candidates``. ``text_emb`` rows should be
    *distinct* captions, so a "mismatched" candidate never has the same text. With fewer rows than
    ``n_candidates``, all rows are candidates.

    ``exclude`` [N, C] bool marks rows that may not serve as mismatched captions for an image, e.g.
    on Shapes a different caption that describes the image just as well ("a red circle" for a small
    red circle captioned "a small red circle"). The number of candidates then shrinks to what every
    image has left.
    """
    img, txt = _normalise(image_emb), _normalise(text_emb)
    true = torch.as_tensor(true_index, dtype=torch.long)
    n, c = img.shape[0], txt.shape[0]
    if true.shape != (n,) or (n and (true.min() < 0 or true.max() >= c)):
        raise T2IError(f"r_precision: true_index must hold {n} rows in [0, {c}), got shape {tuple(true.shape)}")
    if n == 0:
        raise T2IError("r_precision: no images")
    allowed = torch.ones(n, c, dtype=torch.bool) if exclude is None else ~torch.as_tensor(exclude, dtype=torch.bool)
    allowed[torch.arange(n), true] = False  # the true caption is never a mismatched one
    k = min(n_candidates - 1, int(allowed.sum(dim=1).min()))
    if k == 0:
        return 1.0
    # k distinct mismatched rows per image: the k largest of random keys over the allowed rows
    keys = torch.rand(n, c, generator=torch.Generator().manual_seed(seed)).masked_fill(~allowed, -1.0)
    candidates = torch.cat([true[:, None], keys.topk(k, dim=1).indices], dim=1)  # column 0 = true caption
    scores = torch.einsum("nd,nkd->nk", img, txt[candidates])
    return float((scores[:, 1:].max(dim=1).values < scores[:, 0]).float().mean())


def caption_fits(caption_attrs: Sequence[dict], image_attrs: Sequence[dict]) -> Tensor:
    """[N_images, N_captions] bool: every attribute a caption names matches the image (Shapes).

    ``caption_attrs[j]`` holds only what caption j names, e.g. ``{"color": "red", "shape": "circle"}``.
    """
    out = np.ones((len(image_attrs), len(caption_attrs)), dtype=bool)
    names = {k for a in caption_attrs for k in a}
    for name in names:
        values: dict[Any, int] = {}
        image_value = np.array([values.setdefault(a.get(name), len(values)) for a in image_attrs])
        named = np.array([name in a for a in caption_attrs])
        caption_value = np.array([values.setdefault(a[name], len(values)) if name in a else -1 for a in caption_attrs])
        out &= ~named[None, :] | (caption_value[None, :] == image_value[:, None])
    return torch.from_numpy(out)


def clip_score(image_emb: Tensor, text_emb: Tensor) -> float:
    """CLIPScore-style mean of ``100 * max(cos(image_i, text_i), 0)`` over paired rows (torchmetrics' scale).

    Only meaningful with the contrastive model that produced both embeddings; not comparable to
    scores from OpenAI's CLIP.
    """
    img, txt = _normalise(image_emb), _normalise(text_emb)
    if img.shape != txt.shape:
        raise T2IError(f"clip_score: paired embeddings must have one shape, got {tuple(img.shape)} "
                       f"and {tuple(txt.shape)}")
    return float((100 * (img * txt).sum(dim=1).clamp_min(0)).mean())


# ----------------------------------------------------------------------------------------- driver
def _unique_rows(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct captions (first-seen order) and each caption's row among them."""
    rows: dict[str, int] = {}
    inverse = np.array([rows.setdefault(c, len(rows)) for c in captions], dtype=np.int64)
    return list(rows), inverse


def evaluate_images(
    images: Tensor,
    caption_ids: Sequence[int],
    data: EvalData,
    *,
    fid: str = "proxy",
    classifier: nn.Module | None = None,
    inception_weights: str | os.PathLike | None = None,
    contrastive: nn.Module | None = None,
    caption_embeddings: Tensor | None = None,
    n_real: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    error_figure_path: str | os.PathLike | None = None,
    error_figure_title: str | None = None,
) -> dict:
    """Score generated images (in [-1, 1]) made for ``data.captions[caption_ids]``.

    Returns ``fid`` (Inception) or ``fid_proxy`` (+ ``fid_network``), ``protocol`` (dict) and
    ``protocol_line``; on Shapes ``attribute_accuracy`` with ``val`` (every caption), ``seen_pairs``,
    ``held_out`` (colour-shape pairs absent from training) and ``real_images`` (the classifier on the
    real images of the same captions: the ceiling); with a ``contrastive`` model and
    ``caption_embeddings`` [C, D] (pooled text embeddings of ``data.captions``) ``r_precision`` and
    ``clip_score``. ``fid="none"`` skips FID. Proxy FID uses the classifier's features on Shapes, the
    contrastive model's image features elsewhere. On Shapes, ``error_figure_path`` (a path without
    extension) saves :func:`error_figure` there as PNG and PDF, listed in the report as ``error_figure``.
    """
    caption_ids = np.asarray(caption_ids, dtype=np.int64)
    if len(caption_ids) != len(images):
        raise T2IError(f"{len(images)} images but {len(caption_ids)} caption ids")
    if len(images) and (caption_ids.min() < 0 or caption_ids.max() >= len(data.captions)):
        raise T2IError(f"caption ids must be rows of the {len(data.captions)} captions of {data.ann_file.name}")
    if images.shape[-1] != data.resolution:
        raise T2IError(f"generated images are {images.shape[-1]}px but real images were loaded at "
                       f"{data.resolution}px: load_eval_data(..., image_size={images.shape[-1]})")
    images = images.detach().float().cpu()
    report: dict[str, Any] = {"dataset": data.dataset, "split": data.split, "n_generated": int(len(images))}

    if fid != "none":
        if fid == "inception":
            network, metric = inception_network(inception_weights), "fid"
        elif fid == "proxy":
            metric = "fid_proxy"
            if classifier is not None:
                network = classifier.feature_network()
            elif contrastive is not None:
                network = contrastive.feature_network()
            else:
                raise T2IError("proxy FID needs a feature network trained on this data: pass classifier= "
                               "(Shapes) or contrastive=, or use fid='inception'")
        else:
            raise T2IError(f"fid must be 'inception', 'proxy' or 'none', got {fid!r}")
        real, from_cache = real_statistics(network, data, n_real, seed, cache_dir, device=device)
        start = time.perf_counter()
        report[metric] = fid_from_images(images, network, real, device=device)
        report["fid_network"] = network.name
        report["fid_seconds"] = round(time.perf_counter() - start, 3)
        report["real_stats_from_cache"] = from_cache
        protocol = FIDProtocol(metric=metric, feature_network=network.name, n_real=real.n,
                               n_generated=len(images), resolution=data.resolution,
                               resize=f"real files centre-cropped + bicubic to {data.resolution}px if needed; "
                                      f"network input {_network_resize(network)}",
                               dataset=data.dataset, split=data.split, seed=seed)
        report["protocol"] = protocol.to_dict()
        report["protocol_line"] = protocol.describe()

    if data.is_shapes and classifier is not None:
        from t2i_helpers.models.classifier import predict_attributes

        pred = predict_attributes(classifier, images)
        targets = [data.attributes[data.caption_image[c]] for c in caption_ids]
        mentions = [data.mentions[c] for c in caption_ids]
        held = data.held_out_captions()[caption_ids]
        pick = lambda mask, seq: [x for x, m in zip(seq, mask) if m]  # noqa: E731
        acc = {"val": attribute_accuracy(pred, targets, mentions),
               "seen_pairs": attribute_accuracy(pick(~held, pred), pick(~held, targets), pick(~held, mentions))}
        if held.any():
            acc["held_out"] = attribute_accuracy(pick(held, pred), pick(held, targets), pick(held, mentions))
        real_pred = predict_attributes(classifier, data.images[data.caption_image[caption_ids]])
        acc["real_images"] = attribute_accuracy(real_pred, targets, mentions)
        report["attribute_accuracy"] = acc
        report["attribute_errors"] = attribute_errors(pred, targets, mentions)  # val: what goes wrong most
        if held.any():  # pairs never trained on fail in their own ways
            report["attribute_errors_held_out"] = attribute_errors(
                pick(held, pred), pick(held, targets), pick(held, mentions))
        report["attribute_accuracy_by_drawn_size"] = attribute_accuracy_by(pred, targets, mentions, "size")
        if error_figure_path is not None:
            fig = error_figure(images, pred, targets, mentions, [data.captions[c] for c in caption_ids],
                               title=error_figure_title)
            if fig is not None:
                import matplotlib.pyplot as plt

                from t2i_helpers.viz import save_figure

                path = Path(error_figure_path)
                report["error_figure"] = [str(p) for p in save_figure(fig, path.name, path.parent)]
                plt.close(fig)

    if contrastive is not None and caption_embeddings is not None:
        if len(caption_embeddings) != len(data.captions):
            raise T2IError(f"caption_embeddings has {len(caption_embeddings)} rows, {data.ann_file.name} "
                           f"{len(data.captions)} captions")
        unique, inverse = _unique_rows(data.captions)
        first = np.unique(inverse, return_index=True)[1]
        with torch.no_grad():
            image_emb = contrastive.encode_images(images.to(device)).cpu()
            text_emb = contrastive.encode_text(torch.as_tensor(caption_embeddings)[first].float().to(device)).cpu()
            real_emb = contrastive.encode_images(data.images[data.caption_image[caption_ids]]).cpu()
        true = torch.as_tensor(inverse[caption_ids])
        report["r_precision"] = r_precision(image_emb, text_emb, true, 100, seed)
        report["r_precision_real"] = r_precision(real_emb, text_emb, true, 100, seed)  # the ceiling
        report["r_precision_candidates"] = int(min(100, len(unique)))
        if data.is_shapes:
            # Shapes captions are often true of other images too ("a red circle"): a random
            # "mismatched" caption may fit the image. The clean variant draws only captions that do not.
            meaning = [{k: data.attributes[data.caption_image[f]][k] for k in data.mentions[f]} for f in first]
            fits = caption_fits(meaning, [data.attributes[data.caption_image[c]] for c in caption_ids])
            report["r_precision_clean"] = r_precision(image_emb, text_emb, true, 100, seed, exclude=fits)
            report["r_precision_clean_real"] = r_precision(real_emb, text_emb, true, 100, seed, exclude=fits)
            report["r_precision_clean_candidates"] = int(min(100, int((~fits).sum(dim=1).min()) + 1))
        report["clip_score"] = clip_score(image_emb, text_emb[true])
        report["clip_score_real"] = clip_score(real_emb, text_emb[true])
        report["contrastive_network"] = getattr(contrastive, "name", type(contrastive).__name__)
    return report


def sample_caption_ids(data: EvalData, n: int, seed: int = 0) -> np.ndarray:
    """``n`` caption rows: a seeded permutation of all captions, repeated if ``n`` exceeds them."""
    rng = np.random.default_rng(seed)
    reps = -(-n // len(data.captions))
    return np.concatenate([rng.permutation(len(data.captions)) for _ in range(reps)])[:n]


def evaluate_run(run_dir: Any, image_root: str | os.PathLike, ann_file: str | os.PathLike,
                 n: int = 1000, fid: str = "proxy", inception_weights: str | os.PathLike | None = None,
                 seed: int = 0, batch_size: int = 100, contrastive: bool = True, device: str = "auto",
                 classifier_config: Any = None, clip_config: Any = None, n_real: int | None = None,
                 generate_options: dict | None = None, error_figure_path: str | os.PathLike | None = None) -> dict:
    """Generate ``n`` images for (a seeded sample of) the split's captions and score them.

    ``ann_file`` is the split to evaluate (normally val). On Shapes the attribute classifier trains
    once on the train split (cached); with ``contrastive=True`` a small CLIP-style model trains once on
    the train split's captions, embedded by the run's own text encoder (cached), for R-precision
    (and for the proxy FID on COCO). ``classifier_config`` / ``clip_config`` override those models'
    default (full or smoke) configurations. Real statistics use every image of the split unless
    ``n_real`` picks a seeded sample. ``generate_options`` go to the sampler (e.g. ``guidance``,
    ``steps`` for diffusion) and are recorded in the report. ``run_dir`` may also be a run already
    loaded with :func:`t2i_helpers.train.load_run` (it is then not read again). On Shapes,
    ``error_figure_path`` saves the samples behind the commonest errors (see :func:`evaluate_images`),
    to check the judge by eye.
    """
    from t2i_helpers.models.classifier import _sibling, load_or_train_attribute_classifier
    from t2i_helpers.train import LoadedRun, load_run

    if fid == "inception":
        inception_network(inception_weights)  # fail in a second, before generating anything
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir, device=device)
    run_dir = getattr(run, "run_dir", run_dir)
    dev = run.device
    size = int(getattr(run.model_config, "image_size", 64))
    data = load_eval_data(image_root, ann_file, image_size=size)
    ids = sample_caption_ids(data, n, seed)
    options = dict(generate_options or {})
    chunks = [run.generate([data.captions[i] for i in ids[s:s + batch_size]], seed=seed + s, **options)
              for s in range(0, len(ids), batch_size)]
    images = torch.cat(chunks).float().cpu()

    classifier = None
    extra: dict[str, Any] = {}
    if data.is_shapes:
        classifier, cls_report = load_or_train_attribute_classifier(image_root, ann_file, config=classifier_config,
                                                                 device=dev)
        extra["classifier"] = {k: cls_report.get(k) for k in ("val_accuracy", "val_accuracy_held_out", "train_images")}
    model = caption_emb = None
    if contrastive:
        from t2i_helpers.models.clip import load_or_train_clip

        train_ann = _sibling(Path(ann_file), "train") or Path(ann_file)
        encode = lambda caps: run.encode(caps).pooled  # noqa: E731
        name = str(getattr(run.text_encoder_config, "model_name", "text"))
        model, clip_report = load_or_train_clip(image_root, train_ann, encode, name, image_size=size,
                                                config=clip_config, device=dev)
        caption_emb = encode(data.captions)
        extra["contrastive"] = {k: clip_report.get(k) for k in ("val_r_precision", "train_images", "steps")}
    report = evaluate_images(images, ids, data, fid=fid, classifier=classifier, inception_weights=inception_weights,
                             contrastive=model, caption_embeddings=caption_emb, n_real=n_real, seed=seed, device=dev,
                             error_figure_path=error_figure_path,
                             error_figure_title=f"{run.family}, step {run.step}: samples behind the commonest errors")
    report.update(run=str(run_dir), family=run.family, step=run.step, generate_options=options, **extra)
    return report


def format_report(report: dict) -> str:
    """A few readable lines for the terminal (``--json`` prints the whole dict instead)."""
    lines = [f"run: {report.get('run', '-')} ({report.get('family', '-')}, step {report.get('step', '-')}), "
             f"{report.get('n_generated')} generated images, {report.get('dataset')} {report.get('split')}"]
    for key in ("fid", "fid_proxy"):
        if key in report:
            lines.append(f"{key}: {report[key]:.3f}   [{report['protocol_line']}]")
    for group, acc in (report.get("attribute_accuracy") or {}).items():
        parts = [f"{k} {v:.3f}" for k, v in acc.items() if k != "n" and not k.startswith("n_") and v is not None]
        lines.append(f"attribute accuracy ({group}, n={acc['n']}): " + ", ".join(parts))
    by_size = report.get("attribute_accuracy_by_drawn_size") or {}
    if len(by_size) > 1:
        lines.append("all right, by the size the model drew: " + ", ".join(
            f"{size} {acc['all']:.3f} (n={acc['n']})" for size, acc in by_size.items()))
    for key, group in (("attribute_errors", "val"), ("attribute_errors_held_out", "held-out pairs")):
        if report.get(key):
            lines.append(f"commonest errors ({group}): " + describe_errors(report[key]))
    if "r_precision" in report:
        c = report["r_precision_candidates"]
        lines.append(f"R-precision: {report['r_precision']:.3f} (real images {report['r_precision_real']:.3f}; "
                     f"1 true among {c} captions, chance {1 / c:.3f})")
        if "r_precision_clean" in report:
            c = report["r_precision_clean_candidates"]
            lines.append(f"R-precision, only non-fitting captions as negatives: {report['r_precision_clean']:.3f} "
                         f"(real images {report['r_precision_clean_real']:.3f}; {c} candidates)")
        lines.append(f"CLIP-style score: {report['clip_score']:.2f} (real images {report['clip_score_real']:.2f}; "
                     f"{report['contrastive_network']})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- bench
def _images_per_second(network: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> float:
    extract_features(network, images[:batch_size], batch_size, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    extract_features(network, images, batch_size, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def bench_eval(n_score: int = 1000, image_size: int = 64, inception_weights: str | os.PathLike | None = None,
               device: str | None = None) -> dict:
    """Evaluation speed: feature images/s (proxy, Inception where loadable) and the time to score
    ``n_score`` generated images against cached real statistics (features + Gaussian fit + distance).

    Uses random images and an untrained proxy network: speed does not depend on the weights.
    """
    from t2i_helpers.models.classifier import AttributeClassifier

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(0)
    fake = torch.randint(0, 256, (n_score, 3, image_size, image_size), dtype=torch.uint8, generator=g)
    real = FeatureStats.from_features(np.random.default_rng(0).normal(size=(500, 128)))
    out: dict[str, Any] = {"device": str(dev), "threads": torch.get_num_threads(), "image_size": image_size,
                           "n_score": n_score}

    proxy = AttributeClassifier().feature_network()
    out["proxy_network"] = proxy.name
    out["proxy_features_images_per_s"] = round(_images_per_second(proxy, fake[:1000], 250, dev), 1)
    start = time.perf_counter()
    fid_from_images(fake, proxy, real, batch_size=250, device=dev)
    out["proxy_score_seconds"] = round(time.perf_counter() - start, 3)

    try:
        inception = inception_network(inception_weights)
    except AssetMissingError as exc:
        out["inception"] = f"unavailable: {exc}"
        return out
    n_time = n_score if dev.type == "cuda" else min(n_score, 64)  # on a CPU: time 64, extrapolate
    rate = _images_per_second(inception, fake[:n_time], 32 if dev.type == "cpu" else 200, dev)
    out["inception_features_images_per_s"] = round(rate, 1)
    real2048 = FeatureStats(mu=np.zeros(2048), sigma=np.eye(2048), n=2)
    start = time.perf_counter()
    frechet_distance(real2048.mu, real2048.sigma, real2048.mu, real2048.sigma)
    fd_seconds = time.perf_counter() - start
    out["inception_score_seconds"] = round(n_score / rate + fd_seconds, 3)
    out["inception_score_seconds_is"] = "measured" if n_time == n_score else f"extrapolated from {n_time} images"
    return out
