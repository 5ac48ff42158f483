"""Speed benchmarks: how fast data reaches the model and evaluation scores, measured rather than guessed.

:func:`bench_data` compares the reference's data path (decode + resize every file in every step,
through ``CocoCaptions`` and torchvision transforms) with the cache this package trains from
(:class:`~t2i_helpers.data.cache.CachedLoader`), and times the frozen text encoder, the one-off cost
the cache removes from every step. Functions here return dicts and print nothing; the CLI
(``python -m t2i_helpers bench data``) prints the JSON.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from t2i_helpers.config import coco_mini_dir
from t2i_helpers.data.cache import ImageCache
from t2i_helpers.data.loader import CachedLoader
from t2i_helpers.data.coco import CocoCaptionsDataset, collate_captions
from t2i_helpers.data.shapes import ShapesConfig, make_shapes
from t2i_helpers.errors import AssetMissingError
from t2i_helpers.evaluation.inception import extract_features, fid_from_images, inception_network
from t2i_helpers.judges.classifier import AttributeClassifier
from t2i_helpers.metrics import FeatureStats, frechet_distance
from t2i_helpers.text import TextEncoder, TextEncoderConfig


def window_rates(step_times: list[float], windows: int = 5) -> dict[str, float] | None:
    """Steps per second in ``windows`` consecutive equal windows of the timed steps: median, min, max.

    Why: on a shared machine (a cloud VM, a Colab session) other load comes in bursts, and the rate
    over the whole run can move by a third from one run to the next. The median window is what the
    machine does when left alone; min and max show how much the run was disturbed. None when there
    are fewer steps than windows.
    """
    if len(step_times) < windows:
        return None
    size = len(step_times) // windows
    rates = sorted(rate(size, sum(step_times[i * size:(i + 1) * size])) for i in range(windows))
    return {"median": rates[windows // 2], "min": rates[0], "max": rates[-1], "windows": windows,
            "steps_per_window": size}


@dataclass(eq=False)
class _RandomTable:
    """Stand-in caption table (random vectors) so the loader benchmark needs no text model."""

    pooled: torch.Tensor
    tokens: torch.Tensor | None
    mask: torch.Tensor | None
    captions: list[str]
    model_name: str = "random"


def rate(count: int, seconds: float) -> float:
    """``count / seconds``, rounded to 0.1 (infinite for no time)."""
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def _time_cached(cache, batch_size: int, batches: int, text_dim: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process)."""

    captions = cache.all_captions()
    table = _RandomTable(torch.randn(len(captions), text_dim), None, None, captions)
    loader = CachedLoader(cache, table, batch_size=batch_size, shuffle=True, seed=0,
                          drop_last=batch_size <= len(cache))
    stream = iter(loader)
    for _ in range(5):  # warm up: page cache, allocator
        next(stream)
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(batches):
        count += len(next(stream))
    return rate(count, time.perf_counter() - start), rate(count, time.process_time() - cpu)


def _time_files(image_root: Path, ann_file: Path, image_size: int, batch_size: int, max_images: int) -> float:
    """The reference's path: every item is decoded and resized when it is loaded (one process)."""


    transform = transforms.Compose([
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize([0.5] * 3, [0.5] * 3),
    ])
    dataset = CocoCaptionsDataset(image_root, ann_file, transform=transform)
    subset = Subset(dataset, range(min(max_images, len(dataset))))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_captions)
    count, start = 0, time.perf_counter()
    for images, _captions in loader:
        count += images.shape[0]
    return rate(count, time.perf_counter() - start)


def _time_text(encoder, captions: list[str]) -> float:
    encoder.encode(captions[:16])  # warm up
    start = time.perf_counter()
    encoder.encode(captions)
    return rate(len(captions), time.perf_counter() - start)


def _bench_dataset(image_root: Path, ann_file: Path, work: Path, image_size: int, batch_size: int,
                   cached_batches: int, file_images: int, encoder, text_captions: int) -> dict[str, Any]:

    start = time.perf_counter()
    cache = ImageCache.build(image_root, ann_file, image_size, cache_dir=work / "cache", progress=False)
    build_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "images": len(cache),
        "captions": sum(len(c) for c in cache.caption_ids_per_image),
        "cache_build_s": round(build_s, 3),
        "cache_build_images_per_s": rate(len(cache), build_s),
    }
    result["cached_images_per_s"], result["cached_images_per_cpu_s"] = _time_cached(
        cache, batch_size, cached_batches, text_dim=384)
    result["jpeg_images_per_s"] = _time_files(image_root, ann_file, image_size, batch_size, file_images)
    result["cached_speedup"] = round(result["cached_images_per_s"] / result["jpeg_images_per_s"], 1)
    if encoder is not None:
        captions = cache.all_captions()[:text_captions]
        result["text_captions_per_s"] = _time_text(encoder, captions)
    return result


def bench_data(
    coco_root: str | os.PathLike | None = None,
    shapes_images: int = 1000,
    image_size: int = 64,
    batch_size: int = 64,
    cached_batches: int = 500,
    file_images: int = 512,
    text: bool = True,
    text_captions: int = 256,
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Images per second from files vs. from the cache, and captions per second through the text encoder.

    Datasets: coco-mini val2017 (``coco_root``, default :func:`~t2i_helpers.config.coco_mini_dir`,
    left out if absent) and a freshly generated Shapes set. Everything temporary goes into
    ``work_dir`` (default: a temporary folder, deleted afterwards). Returns a nested dict; prints nothing.
    """

    result: dict[str, Any] = {
        "settings": {"image_size": image_size, "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
                     "cpus": os.cpu_count(), "device": "cpu",
                     "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None},
        "notes": [
            "cached_images_per_s: CachedLoader batches (float [-1,1] NCHW + caption vectors), memory-mapped uint8 cache; "
            "_per_cpu_s divides by this process's CPU time (less sensitive to other load on the machine)",
            "jpeg_images_per_s: CocoCaptionsDataset + torchvision Resize/CenterCrop/ToTensor, DataLoader num_workers=0 "
            "(the reference's path; the Shapes files are PNG)",
        ],
    }
    encoder = None
    if text:
        try:

            encoder = TextEncoder(TextEncoderConfig(device="cpu"))
            result["notes"].append(f"text_captions_per_s: {encoder.config.model_name} on the CPU, frozen, "
                                   f"batch {encoder.config.batch_size}")
        except Exception as err:  # no text module / no weights: the image numbers still stand
            result["notes"].append(f"text_captions_per_s left out: {type(err).__name__}: {str(err)[:120]}")
            encoder = None

    with tempfile.TemporaryDirectory(prefix="t2i-bench-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        coco = Path(coco_root) if coco_root is not None else coco_mini_dir()
        if coco is not None and (coco / "annotations" / "captions_val2017.json").is_file():
            result["coco-mini"] = _bench_dataset(
                coco / "val2017", coco / "annotations" / "captions_val2017.json", work,
                image_size, batch_size, cached_batches, file_images, encoder, text_captions)
        else:
            result["notes"].append("coco-mini left out: ../shared/coco-mini not found")
        start = time.perf_counter()
        paths = make_shapes(work / "shapes", ShapesConfig(images=shapes_images, image_size=image_size))
        generate_s = time.perf_counter() - start
        shapes = _bench_dataset(paths.images_dir, paths.train_json, work, image_size, batch_size,
                                cached_batches, file_images, encoder, text_captions)
        result["shapes"] = {"generate_images_per_s": rate(shapes_images, generate_s), **shapes}
    return result


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


__all__ = ["bench_data", "bench_eval", "rate", "window_rates"]
