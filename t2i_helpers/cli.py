"""``python -m t2i_helpers COMMAND``: the same functions the notebooks call, for long runs outside them.

Every command prints a result a person can read (or one JSON object with ``--json``); a problem with
the input ends with one line ``error: ...`` and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import math
import json
import os
import sys
from pathlib import Path

from .config import TIERS
from .errors import T2IError


def _cmd_make_shapes(args: argparse.Namespace) -> None:
    from .data.shapes import ShapesConfig, make_shapes

    paths = make_shapes(args.out, ShapesConfig(images=args.images, image_size=args.size, seed=args.seed))
    print(f"shapes: {args.images} images at {args.size}px (seed {args.seed})")
    print(f"  images: {paths.images_dir}")
    print(f"  train:  {paths.train_json}")
    print(f"  val:    {paths.val_json}")


def _cmd_inspect(args: argparse.Namespace) -> None:
    from .data.coco import inspect_dataset

    stats = inspect_dataset(args.image_root, args.annotations)
    print(json.dumps(stats.to_dict(), indent=2) if args.json else stats.format())


def _cmd_download_coco(args: argparse.Namespace) -> None:
    from .data.download import download_coco

    result = download_coco(args.dest, split=args.split, max_images=args.max_images)
    print(result)


# `train` flags that set a TrainConfig field of the same name.
TRAIN_FLAGS = ("steps", "batch_size", "lr", "seed", "device", "precision", "checkpoint_every", "sample_every",
               "text_model", "max_minutes")


def _whole(minimum: int):
    """argparse type: a whole number of at least ``minimum`` (``--n 0`` is refused in one line)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


_positive_int = _whole(1)  # counts: steps, batch sizes, captions
_count = _whole(0)  # 0 = "never", as in --checkpoint-every 0


def _number(minimum: float, strict: bool):
    """argparse type: a finite float above (``strict``) or at least ``minimum``; nan and inf are refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a finite number {'above' if strict else 'of at least'} "
                                             f"{minimum:g}, got {text}")
        return value
    return parse


_positive_float = _number(0.0, strict=True)  # learning rates, minutes
_non_negative_float = _number(0.0, strict=False)  # guidance (0 = unconditional)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    config = TrainConfig()
    for name in TRAIN_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
    if args.no_progress:
        config.progress = False
    if args.compile:
        config.compile = True
    return config


def _cmd_train(args: argparse.Namespace) -> None:
    from .train import SESSION_FIELDS, train

    image_root, ann_file = args.data
    if args.resume:
        ignored = [_flag(n) for n in TRAIN_FLAGS if n not in SESSION_FIELDS and getattr(args, n) is not None]
        if ignored:
            applied = ", ".join(_flag(n) for n in TRAIN_FLAGS if n in SESSION_FIELDS)
            print(f"note: --resume continues with the run's saved settings; ignored: {', '.join(ignored)} "
                  f"(only {applied} apply)")
    result = train(args.model, image_root, ann_file, args.out, _train_config(args), resume=args.resume,
                   overwrite=args.overwrite)
    if result.interrupted:
        raise SystemExit(130)  # train() has said what it saved
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items())
    budget = " (time budget reached)" if result.stopped_by_time else ""
    print(f"trained {args.model} to step {result.step}{budget}: {losses}; {result.images_per_s:.0f} images/s")
    print(f"run folder: {result.run_dir}")


def _cmd_sample(args: argparse.Namespace) -> None:
    from .train import load_run
    from .viz import save_grid

    run = load_run(args.run, device=args.device)
    options = {k: v for k, v in (("guidance", args.guidance), ("steps", args.steps)) if v is not None}
    images = run.generate([args.caption] * args.n, seed=args.seed, **options)
    path = save_grid(images, args.out, nrow=min(args.n, 8))
    print(f"{args.n} samples of {run.family} (step {run.step}, EMA weights) for {args.caption!r} -> {path}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .metrics import evaluate_run, format_report

    image_root, ann_file = args.data
    options = {k: v for k, v in (("guidance", args.guidance), ("steps", args.sample_steps)) if v is not None}
    report = evaluate_run(args.run, image_root, ann_file, n=args.n, fid=args.fid,
                          inception_weights=args.inception_weights, seed=args.seed, generate_options=options,
                          contrastive=not args.no_retrieval, error_figure_path=args.error_figure)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if report.get("error_figure") and not args.json:
        print(f"error figure: {report['error_figure'][0]} (+ .pdf)")


def _cmd_compare(args: argparse.Namespace) -> None:
    from .compare import CompareConfig, compare_models

    config = CompareConfig(families=tuple(args.models), seed=args.seed, device=args.device, fid=args.fid,
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
    from .text import export_text_model

    out = export_text_model(args.out, args.model, half=not args.fp32)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"text encoder {args.model} -> {out} ({size:.0f} MB, {'float32' if args.fp32 else 'float16'}); "
          f"use it with --text-model {out}")


def _cmd_bench(args: argparse.Namespace) -> None:
    from . import bench

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise T2IError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.what == "data":
        result = bench.bench_data()
    elif args.what == "train":
        result = bench.bench_train(args.model, steps=args.steps, batch_size=args.batch_size,
                                   text_model=args.text_model, compile=args.compile)
    elif args.what == "curve":
        from .config import runs_dir
        from .curve import run_curves

        models = args.models or ["baseline", "gan", "diffusion"]
        result = run_curves(models, args.out or runs_dir() / "curve", n_eval=args.n, seeds=tuple(args.seeds),
                            ship=args.ship)
    else:
        from .metrics import bench_eval

        result = bench_eval()
    print(json.dumps(result, indent=2))


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo()  # main() has put --tier into T2I_TIER


class UsageError(Exception):
    """A bad flag or value, reported by :func:`main` in one line (argparse would print the usage too)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's hook for every bad argument
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m t2i_helpers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-shapes", help="write the Shapes benchmark (COCO captions format)")
    p.add_argument("out", type=Path)
    p.add_argument("--images", type=_positive_int, required=True, help="images in train + val together")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels (32..256)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_shapes)

    p = sub.add_parser("inspect", help="statistics of a COCO-format caption dataset")
    p.add_argument("image_root", type=Path)
    p.add_argument("annotations", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("download-coco", help="download COCO 2017 captions and images (needs the internet)")
    p.add_argument("dest", type=Path)
    p.add_argument("--split", default="val2017", choices=["train2017", "val2017"])
    p.add_argument("--max-images", type=_positive_int, default=None, help="only the first N images of the split")
    p.set_defaults(func=_cmd_download_coco)

    p = sub.add_parser("train", help="train a model (baseline, gan, diffusion)")
    p.add_argument("--model", required=True, choices=["baseline", "gan", "diffusion"])
    p.add_argument("--data", nargs=2, required=True, metavar=("IMAGE_ROOT", "ANNOTATION_JSON"))
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--steps", type=_positive_int, help="the run's total number of steps")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, mps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--checkpoint-every", type=_count)
    p.add_argument("--sample-every", type=_count)
    p.add_argument("--text-model", help="BERT name or folder (default all-MiniLM-L6-v2, offline)")
    p.add_argument("--max-minutes", type=_positive_float, help="stop (with a checkpoint) after this much training time")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt up to --steps")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its checkpoint and log)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _tier_option(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="sample a grid of images for a caption from a run")
    p.add_argument("run", type=Path)
    p.add_argument("--caption", required=True)
    p.add_argument("-n", type=_positive_int, default=8)
    p.add_argument("--guidance", type=_non_negative_float, help="classifier-free guidance scale (diffusion)")
    p.add_argument("--steps", type=_positive_int, help="DDIM steps (diffusion)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("evaluate", help="FID (or proxy), attribute accuracy and R-precision of a run")
    p.add_argument("run", type=Path)
    p.add_argument("--data", nargs=2, required=True, metavar=("IMAGE_ROOT", "ANNOTATION_JSON"))
    p.add_argument("--n", type=_positive_int, default=1000, help="generated images to score")
    p.add_argument("--fid", choices=["inception", "proxy"], default="inception")
    p.add_argument("--inception-weights", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=_non_negative_float, help="classifier-free guidance scale for the samples (diffusion)")
    p.add_argument("--sample-steps", type=_positive_int, help="DDIM steps for the samples (diffusion)")
    p.add_argument("--no-retrieval", action="store_true", help="skip the CLIP-style model and R-precision")
    p.add_argument("--error-figure", type=Path, metavar="PATH",
                   help="Shapes: save the samples behind the commonest errors as PATH.png and PATH.pdf")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="train several models for the same time, one results table + figure")
    p.add_argument("--data", nargs=2, required=True, metavar=("IMAGE_ROOT", "TRAIN_JSON"),
                   help="the train split; the val split next to it is scored")
    p.add_argument("--out", type=Path, required=True, help="folder for the runs, results.md/json and the figure")
    p.add_argument("--models", nargs="+", default=["baseline", "gan", "diffusion"],
                   choices=["baseline", "gan", "diffusion"])
    p.add_argument("--minutes", type=_positive_float, help="training time per model (default 10; smoke mode 0.1)")
    p.add_argument("--minutes-for", nargs="+", metavar="MODEL=MIN", help="per-model budgets, e.g. diffusion=6 gan=2")
    p.add_argument("--max-steps", type=_positive_int, help="upper bound on steps per model")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--n", type=_positive_int, help="validation captions to generate and score per model")
    p.add_argument("--curve-points", type=_positive_int,
                   help="score each model after this many equal slices of its budget (default 4; 1 = only at the end)")
    p.add_argument("--guidance", type=_non_negative_float, help="diffusion guidance (default 3)")
    p.add_argument("--sample-steps", type=_positive_int, help="diffusion DDIM steps (default 25)")
    p.add_argument("--fid", choices=["inception", "proxy"], default="proxy")
    p.add_argument("--inception-weights", type=Path)
    p.add_argument("--text-model", help="BERT name or folder (default all-MiniLM-L6-v2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    _tier_option(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("export-text-model", help="save the text encoder as a folder (float16) for offline machines")
    p.add_argument("out", type=Path)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights (twice the size)")
    p.set_defaults(func=_cmd_export_text_model)

    p = sub.add_parser("bench", help="speed benchmarks, printed as JSON")
    p.add_argument("what", choices=["data", "train", "eval", "curve"],
                   help="curve: all-right against CPU minutes of training per family (cpu tier)")
    p.add_argument("--model", default="diffusion", choices=["baseline", "gan", "diffusion"])
    p.add_argument("--steps", type=_positive_int, default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--text-model", help="bench train: BERT name or folder (default all-MiniLM-L6-v2)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: torch's, one per core); notebooks 04-05 use 1 in smoke mode")
    p.add_argument("--compile", action="store_true",
                   help="bench train: the step as train --compile runs it; diffusion also samples with a compiled UNet")
    p.add_argument("--models", nargs="+", choices=["baseline", "gan", "diffusion"],
                   help="bench curve: the families (default all three)")
    p.add_argument("--out", type=Path, help="bench curve: folder for the runs, curve.json and the figure")
    p.add_argument("--n", type=_positive_int, default=500, help="bench curve: val captions judged per point")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="bench curve: one run per seed (default 0)")
    p.add_argument("--ship", action="store_true",
                   help="bench curve: export each family's run of the first seed to t2i_helpers/checkpoints/cpu")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("demo", help="train the baseline and diffusion model, one figure of both (what `make demo` runs)")
    _tier_option(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def _tier_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", choices=TIERS,
                   help="smoke (CI), cpu (a 2-core laptop) or gpu; default: T2I_TIER, else smoke under "
                        "T2I_SMOKE=1, else gpu where CUDA is, else cpu")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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
