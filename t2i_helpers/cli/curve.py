"""``bench curve``: all-right against CPU minutes of training, per family, as JSON and a figure.

Each family trains on the cpu tier's data in segments (``--resume`` continues exactly, so the
segments add up to one uninterrupted run), and after each segment its EMA weights are judged on
the same val captions. Only the training loop is timed; judging is not. The curve is what a
student compares with their own laptop; the final run of each family is what ``--ship`` exports
to ``t2i_helpers/checkpoints/cpu`` (see :mod:`t2i_helpers.train.shipped`). Not imported by notebooks.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from t2i_helpers.data.shapes import shapes_dataset
from t2i_helpers.data.shapes_zh import zh_path
from t2i_helpers.evaluation.evaluate import evaluate_run
from t2i_helpers.files import atomic_write_text
from t2i_helpers.judges.classifier import DRAWN_THRESHOLD
from t2i_helpers.metrics import describe_errors
from t2i_helpers.models import default_config
from t2i_helpers.train import TrainConfig, export_run, load_run, shipped_dir, train
from t2i_helpers.viz import save_figure

# Steps after which each family is judged; the last one is the shipped checkpoint's.
CURVE_STEPS = {
    "baseline": (250, 500, 1000, 2000, 3000),
    "gan": (500, 1000, 2000, 3000, 3600),  # 3,600 GAN steps: about 12 minutes, like 6,000 v-diffusion steps
    "stylegan": (500, 1000, 2000, 3000, 3600),
    "diffusion": (500, 1000, 2000, 3000, 4500),
}
FINAL_N = 1000
CPU_TRAIN = {"batch_size": 32, "warmup_steps": 100, "device": "cpu", "checkpoint_every": 0, "sample_every": 0,
             "progress": False}
# Steps between rows of metrics.csv: notebook 03 compares the loss of single batches with epoch means.
LOG_EVERY = {"baseline": 1, "gan": 10, "diffusion": 50, "stylegan": 10}
# Which caption files and text encoder a curve trains on (--captions): English with MiniLM, or the
# parallel Chinese captions with the character encoder shipped in t2i_helpers/checkpoints/shapes-zh-char.
TEXT_MODELS = {"en": "all-MiniLM-L6-v2", "zh": "shapes-zh-char"}
BACKGROUND_CAPTIONS = {"en": [f"a {c}" for c in ("red circle", "blue square", "green triangle", "yellow circle")],
                       "zh": ["一个红色的圆形", "一个蓝色的正方形", "一个绿色的三角形", "一个黄色的圆形"]}


def caption_files(root: Path, captions: str = "en") -> tuple[Path, Path]:
    """(train, val) annotation files of a Shapes folder in the language ``captions`` ("en" or "zh")."""
    ann = root / "annotations"
    train_json, val_json = ann / "captions_train.json", ann / "captions_val.json"
    return (zh_path(train_json), zh_path(val_json)) if captions == "zh" else (train_json, val_json)


def shipped_name(family: str, captions: str = "en") -> str:
    """The shipped checkpoint's name: the family, with ``-zh`` for Chinese captions."""
    return family if captions == "en" else f"{family}-{captions}"


def background_level(images: torch.Tensor) -> float:
    """Mean brightness (0..1) of the pixels dimmer than the judge's "drawn" threshold: 0 on clean black.

    ``images`` in [-1, 1], [N, 3, H, W]. Speckle over the background raises it; the real cpu-tier
    images read about 0.002 (their antialiased edges).
    """
    value = ((images.float().clamp(-1, 1) + 1) / 2).amax(dim=1)
    dim = value < DRAWN_THRESHOLD
    return float(value[dim].mean()) if dim.any() else 0.0


def judge_point(run_dir: Path, images: Path, val_json: Path, n: int, seed: int = 0, captions: str = "en") -> dict:
    """The judge's verdict on one checkpoint: all-right on val and held-out pairs, background, errors."""
    run = load_run(run_dir, device="cpu")
    report = evaluate_run(run, images, val_json, n=n, fid="none", seed=seed, contrastive=False, device="cpu")
    acc = report["attribute_accuracy"]
    samples = run.generate(BACKGROUND_CAPTIONS[captions] * 8, seed=seed)
    return {"step": run.step, "all_val": acc["val"]["all"], "all_held_out": acc.get("held_out", {}).get("all"),
            "real_images": acc["real_images"]["all"], "background": round(background_level(samples), 4),
            "errors": describe_errors(report["attribute_errors"]) if report.get("attribute_errors") else ""}


def train_curve(family: str, out_dir: Path, steps: tuple[int, ...] | None = None, n_eval: int = 500,
                seed: int = 0, root: Path | None = None, final_n: int = FINAL_N, captions: str = "en") -> dict:
    """Train ``family`` (cpu-tier config) in segments ending at ``steps``, judging after each
    (the last point on ``final_n`` captions). ``root``: a Shapes folder (default the cpu tier's);
    ``captions``: "en", or "zh" (the Chinese files and encoder, :data:`TEXT_MODELS`)."""
    root = root or shapes_dataset(images=4000)
    images, (train_json, val_json) = root / "images", caption_files(root, captions)
    steps = steps or CURVE_STEPS[family]
    model_config, seconds, points = default_config(family, "cpu"), 0.0, []
    for i, step in enumerate(steps):
        config = TrainConfig(steps=step, seed=seed, log_every=LOG_EVERY[family], text_model=TEXT_MODELS[captions],
                             **CPU_TRAIN)
        result = train(family, images, train_json, out_dir, config, model_config, resume=i > 0, overwrite=i == 0)
        if result.interrupted:
            raise KeyboardInterrupt  # train() saved and said so; do not start the next segment
        seconds += result.train_seconds
        n = max(n_eval, final_n) if i == len(steps) - 1 else n_eval  # the goal is judged on 1,000 captions
        point = judge_point(out_dir, images, val_json, n, seed, captions) | {"train_minutes": round(seconds / 60, 3), "n": n}
        print(json.dumps({"family": family} | point), flush=True)
        points.append(point)
    return {"family": family, "captions": captions, "threads": torch.get_num_threads(), "n_eval": n_eval, "seed": seed,
            "parameters": sum(p.numel() for p in load_run(out_dir, device="cpu").model.parameters()),
            "points": points}


def curve_figure(curves: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """All-right (val, solid; held-out pairs, dashed) against training minutes: a colour per family,
    a line per seed (their spread is the run-to-run uncertainty)."""
    colours = {"baseline": "tab:gray", "gan": "tab:orange", "stylegan": "tab:red", "diffusion": "tab:blue"}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    labelled: set[str] = set()
    for curve in curves:
        family, colour = curve["family"], colours.get(curve["family"], "k")
        points = [p for p in curve["points"] if p.get("train_minutes") is not None]  # untimed runs: tables only
        minutes = [p["train_minutes"] for p in points]
        held = [p["all_held_out"] for p in points]
        for values, style, split in (([p["all_val"] for p in points], "o-", "val"), (held, "s--", "held-out pairs")):
            if not values or any(v is None for v in values):
                continue
            label = f"{family}, {split}"
            ax.plot(minutes, values, style, color=colour, ms=3, lw=1, alpha=0.8,
                    label=None if label in labelled else label)
            labelled.add(label)
    ax.set(xlabel=f"training minutes on this machine ({curves[0]['threads']} threads; judging not counted)",
           ylabel="every attribute right", ylim=(0, 1))
    ax.axhline(0.9, color="k", lw=0.5, ls=":")
    ax.legend(fontsize=7, loc="center right")
    paths = save_figure(fig, "cpu_tier_curve", out_dir)
    plt.close(fig)
    return paths


def run_curves(families: list[str], out_dir: Path, n_eval: int = 500, seeds: tuple[int, ...] = (0,),
               ship: bool = False, captions: str = "en") -> dict:
    """``bench curve``: every family's curve per seed into ``out_dir/curve.json`` + figure.

    ``ship`` exports each family's run of the first seed to ``t2i_helpers/checkpoints/cpu``
    (as ``<family>-zh`` for ``captions="zh"``).
    """
    curves = []
    for seed in seeds:  # every family's first seed first: a benchmark stopped early still compares them
        for family in families:
            run_dir = out_dir / f"{family}-seed{seed}"
            done = run_dir / "curve_result.json"
            if done.exists() and json.loads(done.read_text()).get("n_eval") == n_eval:
                print(f"{family}, seed {seed}: reusing the finished curve in {run_dir}", flush=True)
                curves.append(json.loads(done.read_text()))
                continue
            curves.append(train_curve(family, run_dir, n_eval=n_eval, seed=seed, captions=captions))
            atomic_write_text(done, json.dumps(curves[-1], indent=1))
            if ship and seed == seeds[0]:
                command = f"python -m t2i_helpers bench curve --models {family} --seeds {seed} --ship"
                command += f" --captions {captions}" if captions != "en" else ""
                print(f"shipped: {export_run(run_dir, shipped_dir('cpu'), command, shipped_name(family, captions))}",
                      flush=True)
            atomic_write_text(out_dir / "curve.json", json.dumps({"curves": curves}, indent=1))  # kept as it grows
    # Every finished curve in the folder goes into the figure and the JSON, also those of earlier calls.
    everything = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*-seed*/curve_result.json"))]
    order = {f: i for i, f in enumerate(("baseline", "gan", "stylegan", "diffusion"))}
    everything.sort(key=lambda c: (order.get(c["family"], 9), c["seed"]))
    result = {"curves": everything, "figure": [str(p) for p in curve_figure(everything, out_dir)]}
    atomic_write_text(out_dir / "curve.json", json.dumps(result, indent=1))
    return result


__all__ = ["CURVE_STEPS", "TEXT_MODELS", "caption_files", "shipped_name", "background_level", "judge_point", "train_curve", "curve_figure", "run_curves"]
