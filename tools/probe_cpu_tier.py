"""One row of the cpu-tier ablation: train one model for a fixed wall-clock budget, judge it, print JSON.

    python tools/probe_cpu_tier.py --name p2-c48 --family diffusion --minutes 10 \
        --config '{"image_size": 32, "patch_size": 2, "base_channels": 48, "channel_mults": [1, 2, 2]}'

Every probe uses the same data (the notebooks' Shapes: 4,000 images at 64 px, seed 0, resized to the model), the same judge (the
attribute classifier, trained once and cached), the same 1,000 val captions and 25 guided sampler
steps, so rows compare at an equal time budget. The JSON goes to stdout and to
``<runs>/probes/<name>/probe.json``. The results are recorded in docs/measurements.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from t2i_helpers.config import data_dir, runs_dir
from t2i_helpers.data.shapes import ShapesConfig, make_shapes
from t2i_helpers.data.evalset import load_eval_data
from t2i_helpers.evaluation.evaluate import evaluate_run
from t2i_helpers.metrics import describe_errors
from t2i_helpers.models import model_classes
from t2i_helpers.cli.curve import background_level
from t2i_helpers.data.images import to_float
from t2i_helpers.train import TrainConfig, load_run, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--family", default="diffusion")
    parser.add_argument("--config", default="{}", help="model config fields as JSON")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--image-size", type=int, default=64, help="of the Shapes files (the model resizes)")
    parser.add_argument("--eval-n", type=int, default=1000)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--guidance-from", type=float, default=0.0)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10**7, help="a fixed step count (--minutes stays the cap)")
    parser.add_argument("--decay-steps", type=int, default=0, help="linear learning-rate decay over the last N steps")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    shapes = make_shapes(data_dir() / f"shapes-{args.images}-{args.image_size}px-seed0",
                         ShapesConfig(images=args.images, image_size=args.image_size, seed=0))
    config_cls, _ = model_classes(args.family)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.config).items()}
    model_config = config_cls(**fields)
    out = runs_dir() / "probes" / args.name
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                               decay_steps=args.decay_steps,
                               max_minutes=args.minutes, checkpoint_every=0, sample_every=0, log_every=50,
                               progress=False, seed=args.seed, device="cpu")
    start = time.perf_counter()
    train(args.family, shapes.images_dir, shapes.train_json, out, train_config, model_config, overwrite=True)
    wall = time.perf_counter() - start
    run = load_run(out, device="cpu")
    options = ({"guidance": args.guidance, "steps": args.sample_steps, "guidance_from": args.guidance_from}
               if args.family == "diffusion" else {})
    start = time.perf_counter()
    report = evaluate_run(run, shapes.images_dir, shapes.val_json, n=args.eval_n, fid="proxy", seed=0,
                          contrastive=False, device="cpu", generate_options=options)
    eval_s = time.perf_counter() - start
    val = load_eval_data(shapes.images_dir, shapes.val_json, image_size=run.model_config.image_size)
    generated = run.generate(val.captions[:200], seed=1, **options)  # [-1, 1], as background_level wants
    real = to_float(val.images)
    acc = report["attribute_accuracy"]
    result = {
        "name": args.name, "family": args.family, "config": json.loads(args.config), "minutes": args.minutes,
        "batch_size": args.batch_size, "lr": args.lr, "decay_steps": args.decay_steps, "threads": args.threads, "steps": run.step,
        "wall_s_train_call": round(wall, 1), "eval_s": round(eval_s, 1),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "all_val": acc["val"]["all"], "all_held_out": acc.get("held_out", {}).get("all"),
        "val": acc["val"], "held_out": acc.get("held_out"), "fid_proxy": report["fid_proxy"],
        "background_generated": background_level(generated), "background_real": background_level(real),
        "errors": describe_errors(report["attribute_errors"]) if report.get("attribute_errors") else "",
        "by_drawn_size": report.get("attribute_accuracy_by_drawn_size"),
        "sampler": options, "eval_n": args.eval_n,
    }
    (out / "probe.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
