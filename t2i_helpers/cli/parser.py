"""The command line's parser: sub-commands, their flags, and argparse types that refuse bad values in one line."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable

from t2i_helpers.config import TIERS
from t2i_helpers.data.loader import FLIPS
from t2i_helpers.models import FAMILY_NAMES

DESCRIPTION = "python -m t2i_helpers COMMAND: the functions the notebooks call, for long runs outside them"


def whole(minimum: int):
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


positive_int = whole(1)  # counts: steps, batch sizes, captions
count = whole(0)  # 0 = "never", as in --checkpoint-every 0


def number(minimum: float, strict: bool):
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


positive_float = number(0.0, strict=True)  # learning rates, minutes
non_negative_float = number(0.0, strict=False)  # guidance (0 = unconditional)



class UsageError(Exception):
    """A bad flag or value, reported by :func:`main` in one line (argparse would print the usage too)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's hook for every bad argument
        raise UsageError(message)


def build_parser(handlers: dict[str, Callable[[argparse.Namespace], None]]) -> argparse.ArgumentParser:
    """The command line: one sub-command per entry of ``handlers`` (``handlers["train"]`` runs ``train``)."""
    parser = Parser(prog="python -m t2i_helpers", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_data_commands, _train_commands, _evaluate_commands, _tools_commands):
        add(sub, handlers)
    return parser


def _data_commands(sub: Any, handlers: dict) -> None:
    p = sub.add_parser("make-shapes", help="write the Shapes benchmark (COCO captions format)")
    p.add_argument("out", type=Path)
    p.add_argument("--images", type=positive_int, required=True, help="images in train + val together")
    p.add_argument("--size", type=int, default=64, help="canvas side in pixels (32..256)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=handlers["make_shapes"])

    p = sub.add_parser("inspect", help="statistics of a COCO-format caption dataset")
    p.add_argument("image_root", type=Path)
    p.add_argument("annotations", type=Path)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=handlers["inspect"])

    p = sub.add_parser("download-coco", help="download COCO 2017 captions and images (needs the internet)")
    p.add_argument("dest", type=Path)
    p.add_argument("--split", default="val2017", choices=["train2017", "val2017"])
    p.add_argument("--max-images", type=positive_int, default=None, help="only the first N images of the split")
    p.set_defaults(func=handlers["download_coco"])


AUGMENT_CHOICES = ("diffaugment", "ada", "none")


def _gan_options(p: argparse.ArgumentParser) -> None:
    """train's options that change a GAN's or the diffusion model's config (notebook 06)."""
    p.add_argument("--augment", choices=AUGMENT_CHOICES,
                   help="gan, stylegan: what D's images go through: diffaugment (default), ada (its adaptive "
                        "probability, target 0.6), none")
    p.add_argument("--contrastive", type=positive_float, metavar="WEIGHT",
                   help="gan, stylegan: add the multi-task contrastive loss between D's image features and the "
                        "captions, with this weight (notebook 06; 1.0 there)")
    p.add_argument("--read", type=positive_float, metavar="WEIGHT",
                   help="diffusion: also train the UNet's encoder to read the caption back from the clean image "
                        "(image to text, one model both ways), with this weight (notebook 06; 0.5 there)")


def _train_commands(sub: Any, handlers: dict) -> None:
    p = sub.add_parser("train", help="train a model (baseline, gan, diffusion, stylegan)")
    p.add_argument("--model", required=True, choices=FAMILY_NAMES)
    p.add_argument("--data", nargs=2, required=True, metavar=("IMAGE_ROOT", "ANNOTATION_JSON"))
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--steps", type=positive_int, help="the run's total number of steps")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, mps")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--checkpoint-every", type=count)
    p.add_argument("--sample-every", type=count)
    p.add_argument("--text-model", help="BERT name or folder (default all-MiniLM-L6-v2, offline)")
    p.add_argument("--max-minutes", type=positive_float, help="stop (with a checkpoint) after this much training time")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt up to --steps")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its checkpoint and log)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (GPU)")
    p.add_argument("--flip", choices=FLIPS, help="left-right flips of half the images: rewrite (the caption too), naive")
    _gan_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _tier_option(p)
    p.set_defaults(func=handlers["train"])

    p = sub.add_parser("train-captioner", help="train the image-to-text captioner (--ship: the shipped cpu checkpoint)")
    p.add_argument("--data", nargs=2, metavar=("IMAGE_ROOT", "ANNOTATION_JSON"),
                   help="default: the course's Shapes train split (generated on first use)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/captioner)")
    p.add_argument("--steps", type=positive_int, help="default: the tier's (cpu: 2,500)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, mps")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--ship", action="store_true", help="export the run to t2i_helpers/checkpoints/cpu (captioner.*)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _tier_option(p)
    p.set_defaults(func=handlers["train_captioner"])

    p = sub.add_parser("caption", help="caption images with a trained captioner, one line per image")
    p.add_argument("run", help="a captioner run folder, or shipped (= shipped:cpu) for the shipped checkpoint")
    p.add_argument("images", nargs="*", type=Path, help="image files (PNG, JPEG, ...)")
    p.add_argument("--beam", type=positive_int, default=3, help="beam width (default 3; 1 = greedy)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=handlers["caption"])

    p = sub.add_parser("sample", help="sample a grid of images for a caption from a run")
    p.add_argument("run", type=Path)
    p.add_argument("--caption", required=True)
    p.add_argument("-n", type=positive_int, default=8)
    p.add_argument("--guidance", type=non_negative_float, help="classifier-free guidance scale (diffusion)")
    p.add_argument("--steps", type=positive_int, help="sampler steps (diffusion; Euler for flow models, DDIM for v ones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=handlers["sample"])


def _evaluate_commands(sub: Any, handlers: dict) -> None:
    p = sub.add_parser("evaluate", help="FID (or proxy), attribute accuracy and R-precision of a run")
    p.add_argument("run", type=Path)
    p.add_argument("--data", nargs=2, required=True, metavar=("IMAGE_ROOT", "ANNOTATION_JSON"))
    p.add_argument("--n", type=positive_int, default=1000, help="generated images to score")
    p.add_argument("--fid", choices=["inception", "proxy"], default="proxy",
                   help="proxy (default, offline: a judge's features, labelled fid_proxy) or inception (the standard FID)")
    p.add_argument("--inception-weights", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=non_negative_float, help="classifier-free guidance scale for the samples (diffusion)")
    p.add_argument("--sample-steps", type=positive_int, help="sampler steps for the samples (diffusion)")
    p.add_argument("--no-retrieval", action="store_true", help="skip the CLIP-style model and R-precision")
    p.add_argument("--error-figure", type=Path, metavar="PATH",
                   help="Shapes: save the samples behind the commonest errors as PATH.png and PATH.pdf")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=handlers["evaluate"])

    p = sub.add_parser("compare", help="train several models for the same time, one results table + figure")
    p.add_argument("--data", nargs=2, required=True, metavar=("IMAGE_ROOT", "TRAIN_JSON"),
                   help="the train split; the val split next to it is scored")
    p.add_argument("--out", type=Path, required=True, help="folder for the runs, results.md/json and the figure")
    p.add_argument("--models", nargs="+", default=["baseline", "gan", "diffusion"], metavar="MODEL",
                   help=f"families ({', '.join(FAMILY_NAMES)}) or variants FAMILY:FIELD=VALUE,..., e.g. "
                        "gan:contrastive_weight=1.0 diffusion:objective=v diffusion:read_weight=0.1, "
                        "or the training setting flip: baseline:flip=naive")
    p.add_argument("--minutes", type=positive_float, help="training time per model (default 10; smoke mode 0.1)")
    p.add_argument("--minutes-for", nargs="+", metavar="MODEL=MIN", help="per-model budgets, e.g. diffusion=6 gan=2")
    p.add_argument("--max-steps", type=positive_int, help="upper bound on steps per model")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--n", type=positive_int, help="validation captions to generate and score per model")
    p.add_argument("--curve-points", type=positive_int,
                   help="score each model after this many equal slices of its budget (default 4; 1 = only at the end)")
    p.add_argument("--guidance", type=non_negative_float, help="diffusion guidance (default 3)")
    p.add_argument("--sample-steps", type=positive_int, help="diffusion sampler steps (default 25)")
    p.add_argument("--fid", choices=["inception", "proxy"], default="proxy",
                   help="proxy (default, offline) or inception (the standard FID; needs its weights)")
    p.add_argument("--inception-weights", type=Path)
    p.add_argument("--text-model", help="BERT name or folder (default all-MiniLM-L6-v2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    _tier_option(p)
    p.set_defaults(func=handlers["compare"])


def _tools_commands(sub: Any, handlers: dict) -> None:
    p = sub.add_parser("train-zh-encoder", help="train the Chinese character encoder (distilled from MiniLM) on Shapes")
    p.add_argument("--data", type=Path, help="a Shapes folder (default: the cpu tier's, data/shapes-4000-64px-seed0)")
    p.add_argument("--out", type=Path, help="output folder (default: the packaged t2i_helpers/checkpoints/shapes-zh-char)")
    p.add_argument("--steps", type=positive_int, help="training steps (default 2000, batch 64)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=handlers["train_zh_encoder"])

    p = sub.add_parser("export-text-model", help="save the text encoder as a folder (float16) for offline machines")
    p.add_argument("out", type=Path)
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights (twice the size)")
    p.set_defaults(func=handlers["export_text_model"])

    p = sub.add_parser("bench", help="speed benchmarks, printed as JSON")
    p.add_argument("what", choices=["data", "train", "eval", "curve"],
                   help="curve: all-right against CPU minutes of training per family (cpu tier)")
    p.add_argument("--model", default="diffusion", choices=FAMILY_NAMES)
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--text-model", help="bench train: BERT name or folder (default all-MiniLM-L6-v2)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's, one per core); notebooks 04-05 use 1 in smoke mode")
    p.add_argument("--compile", action="store_true",
                   help="bench train: the step as train --compile runs it; diffusion also samples with a compiled UNet")
    p.add_argument("--models", nargs="+", choices=FAMILY_NAMES,
                   help="bench curve: the families (default all three)")
    p.add_argument("--out", type=Path, help="bench curve: folder for the runs, curve.json and the figure")
    p.add_argument("--n", type=positive_int, default=500, help="bench curve: val captions judged per point")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="bench curve: one run per seed (default 0)")
    p.add_argument("--ship", action="store_true",
                   help="bench curve: export each family's run of the first seed to t2i_helpers/checkpoints/cpu")
    p.add_argument("--captions", choices=["en", "zh"], default="en",
                   help="bench curve: English captions (MiniLM) or the parallel Chinese ones (shapes-zh-char)")
    p.set_defaults(func=handlers["bench"])

    p = sub.add_parser("demo", help="train the baseline and diffusion model, one figure of both (what `make demo` runs)")
    _tier_option(p)
    p.set_defaults(func=handlers["demo"])

    p = sub.add_parser("figures", help="every figure (PNG + PDF) and table (Markdown + LaTeX) of the notebooks, "
                                       "and INDEX.md (docs/figures.md)")
    _tier_option(p)
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    p.add_argument("--notebooks", nargs="+", metavar="NN", help="only these notebooks, by number prefix (e.g. 00 04)")
    p.add_argument("--notebooks-dir", type=Path, help="the notebooks folder (default: the checkout's notebooks/)")
    p.add_argument("--keep-work", action="store_true", help="keep the temp folder of data and runs")
    p.set_defaults(func=handlers["figures"])


def _tier_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tier", choices=TIERS,
                   help="smoke (CI), cpu (a 2-core laptop) or gpu; default: T2I_TIER, else smoke under "
                        "T2I_SMOKE=1, else gpu where CUDA is, else cpu")
