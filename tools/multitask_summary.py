"""The summary of tools/multitask.sh that notebook 06 reads: one row per (share of the data, variant).

    python tools/multitask_summary.py MODEL VARIANT STEPS OUT_NAME SHAPES_FOLDER

For the two-way diffusion runs it also measures the other direction: each of 500 val images gets the
val caption its own model ranks first (retrieval captioning), scored by attribute_match (notebook 08).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from t2i_helpers.data.evalset import load_eval_data
from t2i_helpers.evaluation import read_back
from t2i_helpers.files import atomic_write_bytes
from t2i_helpers.train import load_run, read_metrics, shipped_dir

READ_IMAGES = 500


def reading(run, shapes: Path) -> dict:
    """Image -> text with the model's own encoder: the exact share of the captions it picks (notebook 08's measure)."""
    match = read_back(run, load_eval_data(shapes / "images", shapes / "annotations" / "captions_val.json"), READ_IMAGES)
    return {"read_exact": match["exact_share"], "read_n": match["n"], "read_per_attribute": match["per_attribute"]}


def row(folder: Path, percent: int, variant: str, shapes: Path) -> dict:
    report = json.loads(Path(f"{folder}.json").read_text())
    acc = report["attribute_accuracy"]
    held = acc.get("held_out", {"all": float("nan"), "n": 0})
    run = load_run(folder)
    out = {"percent": percent, "variant": variant, "all_val": acc["val"]["all"], "n_val": acc["val"]["n"],
           "all_held_out": held["all"], "n_held_out": held["n"], "fid_proxy": report["fid_proxy"],
           "images_per_s": float(np.median(read_metrics(folder / "metrics.csv")["images_per_s"])),
           "parameters": sum(p.numel() for p in run.model.parameters())}
    if getattr(run.model, "reader", None) is not None:
        out |= reading(run, shapes)
    return out


def main() -> None:
    model, variant, steps, out_name, shapes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
    rows = [row(Path(f"runs/multitask/{model}-{percent}-{v}"), percent, v, shapes)
            for percent in (10, 30, 100) for v in ("plain", variant)]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc = {"model": model, "rows": rows, "steps": steps,
           "machine": f"tools/multitask.sh at {commit}, {cpu}, 2 cores, "
                      + os.environ.get("RUN_NOTE", "one run after another, 2 threads"),
           "command": f"MODEL={model} bash tools/multitask.sh"}
    atomic_write_bytes(shipped_dir("cpu") / out_name, (json.dumps(doc, indent=1) + "\n").encode())
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
