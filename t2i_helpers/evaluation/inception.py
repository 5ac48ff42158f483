"""FID's feature networks: Inception-v3 with the FID weights (downloaded once), and features from any network.

**FID in three steps.** (1) *Features*: a fixed network maps every image to a vector (Inception-v3's
2048-d pool layer, with the original TensorFlow weights, for the standard FID). (2) *Gaussian fit*:
the real and the generated feature sets are each summarised by a mean and a covariance
(:class:`~t2i_helpers.metrics.FeatureStats`). (3) *Frechet distance* between the two Gaussians::

    FID = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

FID depends on the feature network, the number of images, the resizing and the real split, so
every score comes with a :class:`~t2i_helpers.metrics.FIDProtocol` that records them.

**Offline.** The Inception weights (torch-fidelity's conversion of the TF FID weights) are
downloaded at first use; without the internet pass a local copy (``inception_weights=PATH``) or
use ``fid_proxy``: the same distance in the features of a judge trained on the data itself, reported
under its own key with the network's name, never as ``fid``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from t2i_helpers.config import data_dir
from t2i_helpers.data.evalset import EvalData, sample_rows
from t2i_helpers.data.images import to_uint8
from t2i_helpers.errors import AssetMissingError, T2IError
from t2i_helpers.files import atomic_path, file_digest
from t2i_helpers.metrics import FeatureStats, frechet_distance
from t2i_helpers.network import online

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
INCEPTION_NAME = "inception-v3-compat-2048"  # torch-fidelity's name for the TF FID network, pool3 features


def save_statistics(stats: FeatureStats, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Atomic ``.npz`` of a Gaussian fit (temp file in the same folder, then ``os.replace``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz"
        np.savez(f, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), meta=np.array(json.dumps(meta or {})))
    return Path(path)


def load_statistics(path: str | os.PathLike) -> FeatureStats:
    """What :func:`save_statistics` wrote; an unreadable file is a one-line :class:`T2IError`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return FeatureStats(mu=data["mu"], sigma=data["sigma"], n=int(data["n"]))
    except (OSError, KeyError, ValueError) as exc:
        raise T2IError(f"cannot read feature statistics {path}: {exc}") from None


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
        batch = to_uint8(images[start:start + batch_size]).to(device)
        out.append(network(batch).double().cpu())
    return torch.cat(out).numpy()


def _online() -> bool:
    return online("github.com", 443, timeout=2.0)


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
            tag += "-" + file_digest(path, 8)
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


def network_resize(network: nn.Module) -> str:
    """How a feature network brings images to its input size (for the FID protocol line)."""
    if hasattr(network, "resize"):
        return str(network.resize)
    inner = getattr(network, "classifier", None)
    size = getattr(getattr(inner, "config", None), "input_size", None)
    return f"{size}px bilinear (antialiased)" if size else "network's own"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def real_statistics(network: nn.Module, data: EvalData, n_real: int | None = None, seed: int = 0,
                    cache_dir: str | os.PathLike | None = None, batch_size: int = 100,
                    device: str | torch.device | None = None) -> tuple[FeatureStats, bool]:
    """Gaussian fit of real-image features, computed once and cached as ``.npz``.

    Key: dataset fingerprint, split, resolution, sample count (and seed), feature network name. Returns
    ``(stats, from_cache)``. Default location ``data_dir()/cache/fid``.
    """
    rows = sample_rows(len(data.images), n_real, seed)
    name = getattr(network, "name", type(network).__name__)
    key = _safe(f"{data.dataset}-{data.split}-{data.fingerprint}-{data.resolution}px-n{len(rows)}"
                f"{'-s' + str(seed) if len(rows) < len(data.images) else ''}-{name}")
    path = (Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "fid") / f"{key}.npz"
    if path.exists():
        try:
            return load_statistics(path), True
        except T2IError:
            pass  # unreadable: recompute and overwrite
    stats = FeatureStats.from_features(extract_features(network, data.images[rows], batch_size, device))
    save_statistics(stats, path, meta={"key": key, "ann_file": str(data.ann_file), "network": name})
    return stats, False


def fid_from_images(generated: Tensor | np.ndarray, network: nn.Module, real: FeatureStats,
                    batch_size: int = 100, device: str | torch.device | None = None) -> float:
    """Frechet distance between generated images' features and cached real statistics."""
    fake = FeatureStats.from_features(extract_features(network, generated, batch_size, device))
    return frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
