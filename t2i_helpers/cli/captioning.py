"""``caption`` and ``train-captioner``: notebook 08's captioner on the command line.

``python -m t2i_helpers caption RUN a.png b.png`` prints one caption per image, in the order given;
RUN is a run folder of ``train-captioner`` or ``shipped`` / ``shipped:<tier>`` for the shipped
checkpoint. Every image is read before any is captioned, so a missing or unreadable file stops the
command with one line naming it (exit status 2) and no partial output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from t2i_helpers.config import runs_dir, tier
from t2i_helpers.data.evalset import read_image
from t2i_helpers.data.shapes import shapes_dataset
from t2i_helpers.errors import T2IError
from t2i_helpers.train import TrainConfig
from t2i_helpers.train.captioning import (RECIPE, captioner_train_config, export_captioner, load_captioner,
                                          load_shipped_captioner, train_captioner)


def read_images(paths: list[Path], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3], resized as the training cache is; one line naming the first bad file."""
    if not paths:
        raise T2IError("no images given: pass one or more image files, e.g. caption shipped a.png b.png")
    for path in paths:
        if not path.is_file():
            raise T2IError(f"image not found: {path}")
    return np.stack([read_image(path, size) for path in paths])


def open_captioner(run: str, device: str = "auto"):
    """``shipped`` / ``shipped:<tier>``, or a run folder."""
    if run == "shipped" or run.startswith("shipped:"):
        return load_shipped_captioner(run.partition(":")[2] or "cpu", device=device)
    return load_captioner(Path(run), device=device)


def cmd_caption(args: argparse.Namespace) -> None:
    model = open_captioner(args.run, args.device)
    images = read_images(list(args.images), model.config.image_size)
    for line in model.caption(images, beam=args.beam):
        print(line)
    sys.stdout.flush()


def cmd_train_captioner(args: argparse.Namespace) -> None:
    if args.data:
        image_root, ann_file = args.data
    else:
        root = shapes_dataset()
        image_root, ann_file = root / "images", root / "annotations" / "captions_train.json"
    changes = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "device")
               if getattr(args, k) is not None}
    if args.no_progress:
        changes["progress"] = False
    config: TrainConfig = captioner_train_config(**changes)
    out = args.out or runs_dir() / "captioner"
    result = train_captioner(image_root, ann_file, out, config, overwrite=args.overwrite)
    print(f"trained the captioner ({tier()} tier) to step {result.step}: loss {result.final_loss:.4f}, "
          f"{result.train_seconds:.0f} s, {result.images_per_s:.0f} images/s; run folder: {out}")
    if args.ship:
        default = not args.data and not changes.get("steps") and tier() == "cpu"
        command = RECIPE if default else "train-captioner " + " ".join(sys.argv[2:])
        print(f"shipped: {export_captioner(out, command=command)}")


__all__ = ["read_images", "open_captioner", "cmd_caption", "cmd_train_captioner"]
