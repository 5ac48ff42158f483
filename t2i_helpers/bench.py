"""Speed benchmarks: how fast data reaches the model, measured rather than guessed.

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

import torch


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
    rates = sorted(_rate(size, sum(step_times[i * size:(i + 1) * size])) for i in range(windows))
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


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def _time_cached(cache, batch_size: int, batches: int, text_dim: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process)."""
    from t2i_helpers.data.cache import CachedLoader

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
    return _rate(count, time.perf_counter() - start), _rate(count, time.process_time() - cpu)


def _time_files(image_root: Path, ann_file: Path, image_size: int, batch_size: int, max_images: int) -> float:
    """The reference's path: every item is decoded and resized when it is loaded (one process)."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    from t2i_helpers.data.coco import CocoCaptionsDataset, collate_captions

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
    return _rate(count, time.perf_counter() - start)


def _time_text(encoder, captions: list[str]) -> float:
    encoder.encode(captions[:16])  # warm up
    start = time.perf_counter()
    encoder.encode(captions)
    return _rate(len(captions), time.perf_counter() - start)


def _bench_dataset(image_root: Path, ann_file: Path, work: Path, image_size: int, batch_size: int,
                   cached_batches: int, file_images: int, encoder, text_captions: int) -> dict[str, Any]:
    from t2i_helpers.data.cache import ImageCache

    start = time.perf_counter()
    cache = ImageCache.build(image_root, ann_file, image_size, cache_dir=work / "cache", progress=False)
    build_s = time.perf_counter() - start
    result: dict[str, Any] = {
        "images": len(cache),
        "captions": sum(len(c) for c in cache.caption_ids_per_image),
        "cache_build_s": round(build_s, 3),
        "cache_build_images_per_s": _rate(len(cache), build_s),
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
    from t2i_helpers.config import coco_mini_dir
    from t2i_helpers.data.shapes import ShapesConfig, make_shapes

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
            from t2i_helpers.text import TextEncoder, TextEncoderConfig

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
        result["shapes"] = {"generate_images_per_s": _rate(shapes_images, generate_s), **shapes}
    return result



def bench_train(
    family: str = "diffusion", steps: int | None = None, batch_size: int | None = None, image_size: int | None = None,
    sample_steps: int = 25, guidance: float = 3.0, shapes_images: int | None = None, device: str = "auto",
    precision: str = "auto", work_dir: str | os.PathLike | None = None, text_model: str | None = None,
    compile: bool = False,
) -> dict[str, Any]:
    """Training and sampling speed of one model family on Shapes, with the engine's own step.

    Reports training images/s, where a step's time goes (data + text vs the optimisation itself),
    sampling images/s at ``sample_steps`` DDIM steps with guidance (one batch of ``batch_size``
    captions), the FLOPs behind both (counted by torch) and the TFLOP/s they reach, peak memory,
    parameter count, precision and device. Uses the family's full config (its smoke config under
    ``T2I_SMOKE=1``).
    ``train_*_per_s`` time the steps as the engine runs them, without waiting for the GPU in between.
    A second pass of as many steps waits after the data and after each step: it gives
    ``data_and_text_fraction`` and ``profiled_steps_per_s``, split into five windows (median, min, max)
    in ``profiled_steps_per_s_windows``, so a burst of other load on a shared machine shows as spread.
    On the CPU the two passes do the same thing; on a GPU the difference is what the waits cost.
    ``compile=True`` times the step as ``train --compile`` runs it (``torch.compile`` of the loss
    computation) and, for diffusion, samples with the UNet compiled; compiling happens in the warm-up,
    outside the timings, and the FLOPs are counted on the uncompiled model (the counter cannot see
    inside compiled kernels).
    """
    from t2i_helpers.config import pick
    from t2i_helpers.data.cache import CachedLoader
    from t2i_helpers.data.shapes import MIN_IMAGE_SIZE, ShapesConfig, make_shapes
    from t2i_helpers.models import build_model, default_config
    from t2i_helpers.train import (TrainConfig, _Losses, build_optimizers, generate_images, optimisation_step,
                                   pick_device, pick_precision, prepare_data, text_config_for,
                                   use_fast_gpu_kernels)

    dev = pick_device(device)
    prec = pick_precision(precision, dev)
    use_fast_gpu_kernels(dev)  # as train() does
    on_gpu = dev.type == "cuda"
    steps = steps or (pick(60, 15) if not on_gpu else 50)  # per pass; two passes (see above)
    batch_size = batch_size or (256 if on_gpu else pick(64, 8))  # smoke: the smoke runs' own batch
    model_config = default_config(family)
    if image_size is None:
        image_size = model_config.image_size  # the family's own size (smaller in smoke mode)
    model_config.image_size = image_size
    tmp = tempfile.TemporaryDirectory(prefix="t2i-bench-") if work_dir is None else None
    work = Path(work_dir or tmp.name)
    try:
        # Shapes draws at 32 px or more; the image cache resizes to a smaller model's size (the 16 px smoke GAN).
        paths = make_shapes(work / "shapes", ShapesConfig(images=shapes_images or pick(2000, 200),
                                                           image_size=max(image_size, MIN_IMAGE_SIZE), seed=0))
        train_config = TrainConfig(batch_size=batch_size, device=str(dev), precision=prec, progress=False)
        if text_model is not None:  # e.g. a float16 export carried to a machine without the MiniLM wheel
            train_config.text_model = text_model
        from t2i_helpers.models import model_classes

        uses_tokens = model_classes(family)[1].uses_tokens
        data = prepare_data(paths.images_dir, paths.train_json, image_size, text_config_for(train_config),
                            uses_tokens, verbose=False)
        torch.manual_seed(0)
        model = build_model(family, model_config, data.text_dim).to(dev)
        optimizers, base_lr = build_optimizers(model, model_config, train_config)
        groups = model.param_groups()
        scaler = torch.amp.GradScaler(dev.type, enabled=(prec == "fp16"))
        eager_losses = _Losses(model)
        losses_module = torch.compile(eager_losses) if compile else eager_losses
        cached = CachedLoader(data.cache, data.table, batch_size=batch_size, seed=0, device=dev)
        loader = iter(cached)

        def sync() -> None:
            if on_gpu:
                torch.cuda.synchronize(dev)

        warmup = max(3, steps // 10)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(dev)
        step = 0

        def train_step(batch, module: torch.nn.Module = losses_module) -> None:
            nonlocal step
            step += 1
            optimisation_step(module, batch, optimizers, groups, scaler, dev, prec, 1.0, base_lr, step)

        for _ in range(warmup):
            train_step(next(loader))
        # 1. As the engine trains: the CPU queues step after step and waits for the GPU only at the end,
        #    so the next batch is prepared while the GPU still works on the previous step.
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(next(loader))
        sync()
        loop_s = time.perf_counter() - t0
        # 2. The profile: a wait after the data and after each step, to see where a step's time goes.
        data_s = step_s = 0.0
        step_times: list[float] = []  # wall seconds of each profiled step (data + optimisation)
        for _ in range(steps):
            sync()
            t0 = time.perf_counter()
            batch = next(loader)
            sync()
            t1 = time.perf_counter()
            train_step(batch)
            sync()
            t2 = time.perf_counter()
            data_s += t1 - t0
            step_s += t2 - t1
            step_times.append(t2 - t0)
        images = steps * batch_size
        # FLOPs of one training step (forward + backward, every phase), counted by torch, not timed:
        # with the images/s above it gives the achieved TFLOP/s, i.e. how well the device is used.
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            train_step(next(loader), eager_losses)
        train_gflop = counter.get_total_flops() / batch_size / 1e9

        # Sampling runs at the training batch size (256 on a GPU): one knob sizes the whole benchmark, and
        # a CPU run of the full 64 px UNet (25 guided steps, about 0.2 TFLOP per image) stays in minutes.
        captions = data.table.captions[:batch_size]
        options = {"steps": sample_steps, "guidance": guidance} if family == "diffusion" else {}
        # FLOPs of sampling one image, counted on a few captions: one sampler step (for diffusion, the
        # guided forward pass of a DDIM step) times the number of steps. With the rate below it says how
        # well sampling uses the device, beside the training figure.
        few = list(captions[:4])
        with FlopCounterMode(display=False) as counter:
            generate_images(model, data.table, few, dev, prec, seed=0, **({**options, "steps": 1} if options else {}))
        sample_gflop = counter.get_total_flops() / len(few) / 1e9 * (sample_steps if options else 1)
        if compile and family == "diffusion":
            model.unet.compile()  # in place: the module (and its state_dict keys) stay as they are
        # Warm-up at the timed batch size (2 sampler steps): cuDNN picks its algorithms per shape (and a
        # compiled UNet compiles for it), and that one-off cost must not land in the timed run.
        warm_options = options | {"steps": min(2, sample_steps)} if family == "diffusion" else options
        generate_images(model, data.table, captions, dev, prec, seed=0, **warm_options)
        sync()
        t0 = time.perf_counter()
        generate_images(model, data.table, captions, dev, prec, seed=0, **options)
        sync()
        sample_s = time.perf_counter() - t0
        result = {
            "model": family,
            "device": torch.cuda.get_device_name(dev) if on_gpu else "cpu",
            "precision": prec,
            "compiled": {"train": compile, "sample": compile and family == "diffusion"},
            "parameters": sum(p.numel() for p in model.parameters()),
            "image_size": image_size,
            "batch_size": batch_size,
            "steps_timed": steps,
            "train_images_per_s": _rate(images, loop_s),
            "train_steps_per_s": _rate(steps, loop_s),
            "train_gflop_per_image": round(train_gflop, 3),
            "train_tflop_per_s": round(train_gflop * images / loop_s / 1e3, 3),
            "profiled_steps_per_s": _rate(steps, data_s + step_s),
            "profiled_steps_per_s_windows": window_rates(step_times),
            "data_and_text_fraction": round(data_s / (data_s + step_s), 4),
            "data_on_device": cached.resident,  # images and caption table copied to the GPU once (CachedLoader)
            "sample_batch_size": len(captions),
            "sample_images_per_s": _rate(len(captions), sample_s),
            "sample_options": options,
            "sample_gflop_per_image": round(sample_gflop, 3),
            "sample_tflop_per_s": round(sample_gflop * len(captions) / sample_s / 1e3, 3),
            "peak_memory_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if on_gpu else None,
            "threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


__all__ = ["bench_data", "bench_train", "window_rates"]
