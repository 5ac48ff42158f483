"""Training and sampling speed of one model family, with the engine's own step (``bench train``)."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from t2i_helpers.config import by_tier
from t2i_helpers.data.loader import CachedLoader
from t2i_helpers.data.shapes import MIN_IMAGE_SIZE, ShapesConfig, make_shapes
from t2i_helpers.models import build_model, default_config, model_classes
from t2i_helpers.train import (TrainConfig, TrainingData, generate_images, pick_device, pick_precision, prepare_data,
                               text_config_for, use_fast_gpu_kernels)
from t2i_helpers.train.state import build_optimizers
from t2i_helpers.train.step import LossModule, Optimiser, optimisation_step
from t2i_helpers.cli.bench import rate, window_rates


@dataclass
class _Bench:
    """What the timings share: the model, its data, and one training step as the engine takes it."""

    model: nn.Module
    data: TrainingData
    loader: CachedLoader
    step: Callable[..., None]  # step(batch, module=the timed losses module)
    eager: nn.Module  # the uncompiled losses module (for the FLOP counter)
    sync: Callable[[], None]


def _set_up(family: str, paths: Any, image_size: int, batch_size: int, dev: torch.device, prec: str,
            text_model: str | None, compile: bool) -> _Bench:
    model_config = default_config(family)
    model_config.image_size = image_size
    train_config = TrainConfig(batch_size=batch_size, device=str(dev), precision=prec, progress=False)
    if text_model is not None:  # e.g. a float16 export carried to a machine without the MiniLM wheel
        train_config.text_model = text_model
    data = prepare_data(paths.images_dir, paths.train_json, image_size, text_config_for(train_config),
                        model_classes(family)[1].uses_tokens, verbose=False)
    torch.manual_seed(0)
    model = build_model(family, model_config, data.text_dim).to(dev)
    optimizers, base_lr = build_optimizers(model, model_config, train_config)
    opt = Optimiser(optimizers, model.param_groups(), torch.amp.GradScaler(dev.type, enabled=prec == "fp16"),
                    dev, prec, 1.0)
    eager = LossModule(model)
    timed = torch.compile(eager) if compile else eager

    def step(batch: Any, module: nn.Module = timed) -> None:
        optimisation_step(module, batch, opt, base_lr)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    loader = CachedLoader(data.cache, data.table, batch_size=batch_size, seed=0, device=dev)
    return _Bench(model, data, loader, step, eager, sync)


def _time_training(b: _Bench, batches: Any, steps: int) -> dict[str, Any]:
    """Two passes of ``steps``: as the engine runs them (no waits), then with a wait after the data and
    after each step, to see where a step's time goes."""
    b.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        b.step(next(batches))
    b.sync()
    loop_s = time.perf_counter() - t0
    data_s = step_s = 0.0
    step_times: list[float] = []  # wall seconds of each profiled step (data + optimisation)
    for _ in range(steps):
        b.sync()
        t0 = time.perf_counter()
        batch = next(batches)
        b.sync()
        t1 = time.perf_counter()
        b.step(batch)
        b.sync()
        t2 = time.perf_counter()
        data_s, step_s = data_s + t1 - t0, step_s + t2 - t1
        step_times.append(t2 - t0)
    return {"loop_s": loop_s, "data_s": data_s, "step_s": step_s, "step_times": step_times}


def _time_sampling(b: _Bench, family: str, captions: list[str], dev: torch.device, prec: str, sample_steps: int,
                   guidance: float, compile: bool) -> dict[str, Any]:
    """GFLOP per sampled image (counted on 4 captions, one sampler step times the steps) and images/s."""
    options = {"steps": sample_steps, "guidance": guidance} if family == "diffusion" else {}
    few = list(captions[:4])
    with FlopCounterMode(display=False) as counter:
        generate_images(b.model, b.data.table, few, dev, prec, seed=0, **({**options, "steps": 1} if options else {}))
    gflop = counter.get_total_flops() / len(few) / 1e9 * (sample_steps if options else 1)
    if compile and family == "diffusion":
        b.model.unet.compile()  # in place: the module (and its state_dict keys) stay as they are
    # Warm-up at the timed batch size (2 sampler steps): cuDNN picks its algorithms per shape (and a
    # compiled UNet compiles for it), and that one-off cost must not land in the timed run.
    warm = options | {"steps": min(2, sample_steps)} if family == "diffusion" else options
    generate_images(b.model, b.data.table, captions, dev, prec, seed=0, **warm)
    b.sync()
    t0 = time.perf_counter()
    generate_images(b.model, b.data.table, captions, dev, prec, seed=0, **options)
    b.sync()
    seconds = time.perf_counter() - t0
    return {"sample_batch_size": len(captions), "sample_images_per_s": rate(len(captions), seconds),
            "sample_options": options, "sample_gflop_per_image": round(gflop, 3),
            "sample_tflop_per_s": round(gflop * len(captions) / seconds / 1e3, 3)}


def _training_figures(family: str, b: _Bench, t: dict, dev: torch.device, prec: str, image_size: int,
                      batch_size: int, steps: int, train_gflop: float, compile: bool) -> dict[str, Any]:
    n = steps * batch_size
    return {
        "model": family, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": prec, "compiled": {"train": compile, "sample": compile and family == "diffusion"},
        "parameters": sum(p.numel() for p in b.model.parameters()), "image_size": image_size,
        "batch_size": batch_size, "steps_timed": steps,
        "train_images_per_s": rate(n, t["loop_s"]), "train_steps_per_s": rate(steps, t["loop_s"]),
        "train_gflop_per_image": round(train_gflop, 3),
        "train_tflop_per_s": round(train_gflop * n / t["loop_s"] / 1e3, 3),
        "profiled_steps_per_s": rate(steps, t["data_s"] + t["step_s"]),
        "profiled_steps_per_s_windows": window_rates(t["step_times"]),
        "data_and_text_fraction": round(t["data_s"] / (t["data_s"] + t["step_s"]), 4),
        "data_on_device": b.loader.resident,  # images and caption table copied to the GPU once
    }


def bench_train(
    family: str = "diffusion", steps: int | None = None, batch_size: int | None = None, image_size: int | None = None,
    sample_steps: int = 25, guidance: float = 3.0, shapes_images: int | None = None, device: str = "auto",
    precision: str = "auto", work_dir: str | os.PathLike | None = None, text_model: str | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """Training and sampling speed of one model family on Shapes, with the engine's own step.

    Reports training images/s, where a step's time goes (``data_and_text_fraction``), sampling
    images/s at ``sample_steps`` guided DDIM steps (one batch of ``batch_size`` captions), the FLOPs
    behind both (counted by torch) and the TFLOP/s they reach, peak memory, parameters, precision and
    device, with the tier's config of the family. ``train_*_per_s`` time the steps as the engine runs
    them; a second pass waits after the data and each step (``profiled_steps_per_s``, in five windows,
    so a burst of other load shows as spread). ``compile=True`` times ``train --compile``'s step and
    samples with the UNet compiled; compiling happens in the warm-up, and FLOPs are counted uncompiled.
    """
    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    use_fast_gpu_kernels(dev)  # as train() does
    on_gpu = dev.type == "cuda"
    steps = steps or (50 if on_gpu else by_tier(smoke=15, cpu=60, gpu=60))  # per pass; two passes
    batch_size = batch_size or (256 if on_gpu else by_tier(smoke=8, cpu=64, gpu=64))
    image_size = image_size or default_config(family).image_size  # the family's own size (smaller in smoke)
    tmp = tempfile.TemporaryDirectory(prefix="t2i-bench-") if work_dir is None else None
    work = Path(work_dir or tmp.name)
    try:
        # Shapes draws at 32 px or more; the image cache resizes to a smaller model's size (the 16 px smoke GAN).
        images = shapes_images or by_tier(smoke=200, cpu=2000, gpu=2000)
        paths = make_shapes(work / "shapes", ShapesConfig(images=images, image_size=max(image_size, MIN_IMAGE_SIZE),
                                                           seed=0))
        b = _set_up(family, paths, image_size, batch_size, dev, prec, text_model, compile)
        batches = iter(b.loader)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(max(3, steps // 10)):  # warm-up
            b.step(next(batches))
        t = _time_training(b, batches, steps)
        # FLOPs of one training step (forward + backward, every phase), counted by torch, not timed.
        with FlopCounterMode(display=False) as counter:
            b.step(next(batches), b.eager)
        train_gflop = counter.get_total_flops() / batch_size / 1e9
        result = _training_figures(family, b, t, dev, prec, image_size, batch_size, steps, train_gflop, compile)
        # Sampling at the training batch size (256 on a GPU): one knob sizes the whole benchmark.
        result |= _time_sampling(b, family, b.data.table.captions[:batch_size], dev, prec, sample_steps, guidance,
                                 compile)
        result |= {"peak_memory_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if on_gpu else None,
                   "threads": torch.get_num_threads(),
                   "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()
