"""``python -m t2i_helpers COMMAND``: the same functions the notebooks call, for long runs outside them.

Every command prints a result a person can read (or one JSON object with ``--json``); a problem with
the input ends with one line ``error: ...`` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from t2i_helpers.cli import bench, bench_train
from t2i_helpers.cli.compare import CompareConfig, compare_models
from t2i_helpers.cli.curve import caption_files, run_curves
from t2i_helpers.cli.demo import run_demo
from t2i_helpers.cli.figures import make_figures
from t2i_helpers.cli.parser import UsageError, build_parser
from t2i_helpers.config import runs_dir, tier, tier_config
from t2i_helpers.data.stats import inspect_dataset
from t2i_helpers.data.download import download_coco
from t2i_helpers.data.shapes import ShapesConfig, make_shapes, shapes_dataset
from t2i_helpers.errors import T2IError
from t2i_helpers.evaluation.evaluate import evaluate_run, format_report
from t2i_helpers.models import default_config
from t2i_helpers.text import export_text_model
from t2i_helpers.text.hub import PACKAGED_ROOT
from t2i_helpers.train.char_encoder import CharEncoderConfig, distillation_report, train_char_encoder
from t2i_helpers.train import SESSION_FIELDS, TrainConfig, load_run, train
from t2i_helpers.cli.captioning import cmd_caption, cmd_train_captioner
from t2i_helpers.viz import save_grid


def _cmd_make_shapes(args: argparse.Namespace) -> None:
    paths = make_shapes(args.out, ShapesConfig(images=args.images, image_size=args.size, seed=args.seed))
    print(f"shapes: {args.images} images at {args.size}px (seed {args.seed})")
    print(f"  images: {paths.images_dir}")
    print(f"  train:  {paths.train_json}")
    print(f"  val:    {paths.val_json}")


def _cmd_inspect(args: argparse.Namespace) -> None:
    stats = inspect_dataset(args.image_root, args.annotations)
    print(json.dumps(stats.to_dict(), indent=2) if args.json else stats.format())


def _cmd_download_coco(args: argparse.Namespace) -> None:
    result = download_coco(args.dest, split=args.split, max_images=args.max_images)
    print(result)


# `train` flags that set a TrainConfig field of the same name.
TRAIN_FLAGS = ("steps", "batch_size", "lr", "seed", "device", "precision", "checkpoint_every", "sample_every",
               "text_model", "max_minutes", "flip")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _train_config(args: argparse.Namespace):

    config = tier_config(TrainConfig)
    for name in TRAIN_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
    if args.no_progress:
        config.progress = False
    if args.compile:
        config.compile = True
    return config


def _model_config(args: argparse.Namespace):
    """The tier's model config with ``--augment`` and ``--contrastive`` (GANs) or ``--read`` (diffusion)
    applied; None keeps the engine's default."""
    flags = {"augment": ("gan", "stylegan"), "contrastive": ("gan", "stylegan"), "read": ("diffusion",)}
    given = [name for name in flags if getattr(args, name, None) is not None]
    if not given:
        return None
    for name in given:
        if args.model not in flags[name]:
            raise T2IError(f"--{name} applies to {' and '.join(flags[name])}, not {args.model}")
    if args.resume:
        raise T2IError(f"--{given[0]} cannot change a run being resumed (its model config is saved with it)")
    if args.model == "diffusion":
        return dataclasses.replace(default_config("diffusion"), read_weight=args.read)
    augment = getattr(args, "augment", None) or "diffaugment"
    fields = {"diffaugment": {}, "ada": {"ada_target": 0.6}, "none": {"diffaug_policy": ""}}[augment]
    if getattr(args, "contrastive", None) is not None:
        fields["contrastive_weight"] = args.contrastive
    return dataclasses.replace(default_config(args.model), **fields)


def _cmd_train(args: argparse.Namespace) -> None:
    image_root, ann_file = args.data
    if args.resume:
        ignored = [_flag(n) for n in TRAIN_FLAGS if n not in SESSION_FIELDS and getattr(args, n) is not None]
        if ignored:
            applied = ", ".join(_flag(n) for n in TRAIN_FLAGS if n in SESSION_FIELDS)
            print(f"note: --resume continues with the run's saved settings; ignored: {', '.join(ignored)} "
                  f"(only {applied} apply)")
    result = train(args.model, image_root, ann_file, args.out, _train_config(args), _model_config(args),
                   resume=args.resume, overwrite=args.overwrite)
    if result.interrupted:
        raise SystemExit(130)  # train() has said what it saved
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items())
    budget = " (time budget reached)" if result.stopped_by_time else ""
    print(f"trained {args.model} to step {result.step}{budget}: {losses}; {result.images_per_s:.0f} images/s")
    print(f"run folder: {result.run_dir}")


def _cmd_sample(args: argparse.Namespace) -> None:
    run = load_run(args.run, device=args.device)
    options = {k: v for k, v in (("guidance", args.guidance), ("steps", args.steps)) if v is not None}
    images = run.generate([args.caption] * args.n, seed=args.seed, **options)
    path = save_grid(images, args.out, nrow=min(args.n, 8))
    print(f"{args.n} samples of {run.family} (step {run.step}, EMA weights) for {args.caption!r} -> {path}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    image_root, ann_file = args.data
    options = {k: v for k, v in (("guidance", args.guidance), ("steps", args.sample_steps)) if v is not None}
    report = evaluate_run(args.run, image_root, ann_file, n=args.n, fid=args.fid,
                          inception_weights=args.inception_weights, seed=args.seed, generate_options=options,
                          contrastive=not args.no_retrieval, error_figure_path=args.error_figure)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if report.get("error_figure") and not args.json:
        print(f"error figure: {report['error_figure'][0]} (+ .pdf)")


def _cmd_compare(args: argparse.Namespace) -> None:
    config = dataclasses.replace(tier_config(CompareConfig), families=tuple(args.models), seed=args.seed,
                                 device=args.device, fid=args.fid,
                                 inception_weights=str(args.inception_weights) if args.inception_weights else None)
    for name in ("minutes", "max_steps", "batch_size", "guidance", "sample_steps", "text_model", "curve_points"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    for item in args.minutes_for or []:
        family, _, value = item.partition("=")
        try:
            config.minutes_by_model[family] = float(value)
        except ValueError:
            raise T2IError(f"--minutes-for expects MODEL=MINUTES, e.g. diffusion=6, got {item!r}") from None
    if args.n is not None:
        config.eval_captions = args.n
    result = compare_models(*args.data, args.out, config)
    if args.json:
        print(json.dumps({"rows": result.rows}, indent=2, default=str))
    else:
        print(result.table)
    print(f"results: {result.table_path}, {result.json_path}; figures: {result.figure_paths[0]}, "
          f"{result.curve_paths[0]} (+ .pdf)")


def _cmd_export_text_model(args: argparse.Namespace) -> None:
    out = export_text_model(args.out, args.model, half=not args.fp32)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"text encoder {args.model} -> {out} ({size:.0f} MB, {'float32' if args.fp32 else 'float16'}); "
          f"use it with --text-model {out}")


def _cmd_bench(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise T2IError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.what == "data":
        result = bench.bench_data()
    elif args.what == "train":
        result = bench_train.bench_train(args.model, steps=args.steps, batch_size=args.batch_size,
                                   text_model=args.text_model, compile=args.compile)
    elif args.what == "curve":
        models = args.models or ["baseline", "gan", "diffusion"]
        default_out = runs_dir() / ("curve" if args.captions == "en" else f"curve-{args.captions}")
        result = run_curves(models, args.out or default_out, n_eval=args.n, seeds=tuple(args.seeds),
                            ship=args.ship, captions=args.captions)
    else:
        result = bench.bench_eval()
    print(json.dumps(result, indent=2))


def _cmd_train_zh_encoder(args: argparse.Namespace) -> None:
    root = args.data or shapes_dataset(images=4000)
    train_json, val_json = caption_files(Path(root), "zh")
    if not train_json.is_file():
        raise T2IError(f"no Chinese captions in {root}: {train_json.name} is missing (make-shapes writes them)")
    config = CharEncoderConfig(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    out = args.out or PACKAGED_ROOT / "shapes-zh-char"
    command = "python -m t2i_helpers train-zh-encoder" + (f" --steps {args.steps}" if args.steps else "")
    folder = train_char_encoder(train_json, out, config, command=command)
    print(json.dumps({"folder": str(folder), "val": distillation_report(val_json, folder, config)}, indent=1))
    print(f"use it with --text-model {folder}" if args.out else "use it with --text-model shapes-zh-char")


def _cmd_demo(args: argparse.Namespace) -> None:
    run_demo()  # main() has put --tier into T2I_TIER


def _cmd_figures(args: argparse.Namespace) -> None:
    make_figures(tier(), args.out, args.notebooks, args.notebooks_dir, keep=args.keep_work)


HANDLERS = {"make_shapes": _cmd_make_shapes, "inspect": _cmd_inspect, "download_coco": _cmd_download_coco,
            "train": _cmd_train, "sample": _cmd_sample, "evaluate": _cmd_evaluate, "compare": _cmd_compare,
            "export_text_model": _cmd_export_text_model, "bench": _cmd_bench, "demo": _cmd_demo,
            "figures": _cmd_figures, "train_zh_encoder": _cmd_train_zh_encoder, "train_captioner": cmd_train_captioner, "caption": cmd_caption}


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 for a bad input (one line on stderr), 130 when interrupted."""
    try:
        args = build_parser(HANDLERS).parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc} (--help lists the options)", file=sys.stderr)
        return 2
    if getattr(args, "tier", None):
        os.environ["T2I_TIER"] = args.tier  # every default below reads the tier from here (config.tier)
    try:
        args.func(args)
    except T2IError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: anything saved before is kept", file=sys.stderr)
        return 130
    return 0
