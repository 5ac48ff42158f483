"""Shipped checkpoints: a trained run reduced to its sampling weights, small enough to keep in git.

A student without a GPU (and CI) should see trained models draw at once, so the ``cpu`` tier ships
one model per family in ``t2i_helpers/checkpoints/<tier>/``: ``<family>.safetensors`` holds the EMA
weights the sampler uses, in float16 (half the bytes; the weights are cast back to float32 on load),
``<family>.json`` the run record (configs, text encoder, step, the command that made it) and
``<family>.metrics.csv`` its loss log.
The GAN's discriminator is shipped as trained (its EMA copy is never used), so notebook 04 can ask
it whether a caption fits an image. ``SHA256SUMS`` lists the files' digests, and :func:`load_shipped` refuses a file whose digest differs. Notebooks call
:func:`load_or_train`: the shipped model if there is one (and ``retrain`` is off), else a fresh run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from t2i_helpers.config import data_dir, tier_config
from t2i_helpers.errors import TrainingError
from t2i_helpers.files import atomic_path, atomic_write_text
from t2i_helpers.models import build_model, config_from_dict
from t2i_helpers.text import TextEncoderConfig
from t2i_helpers.train.config import CHECKPOINT, METRICS, TrainConfig
from t2i_helpers.train.device import pick_device
from t2i_helpers.train.engine import train
from t2i_helpers.train.run import LoadedRun, load_run
from t2i_helpers.train.runfolder import read_checkpoint

SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "checkpoints"
MAX_BYTES = 5 * 2**20  # what one shipped file may weigh (issue 16: at most 5 MB)
# Weights shipped as trained rather than as their EMA (the EMA is what the sampler uses).
AS_TRAINED = {"gan": ("discriminator.",), "stylegan": ("discriminator.",)}
# The command that made each shipped file (`python -m t2i_helpers ...`): the cpu-tier curve benchmark,
# which trains for a fixed number of steps (t2i_helpers/cli/curve.py), so it means the same on every machine.
RECIPES = {family: f"bench curve --models {family} --seeds 0 --ship"
           for family in ("baseline", "gan", "stylegan", "diffusion")}
RECIPES["diffusion-zh"] = "bench curve --models diffusion --seeds 0 --ship --captions zh"  # Chinese captions


def shipped_dir(tier: str = "cpu") -> Path:
    return SHIPPED_ROOT / tier


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_sums(folder: Path) -> dict[str, str]:
    """``SHA256SUMS`` (``<digest>  <file name>`` per line, as ``sha256sum`` writes it) as a dict."""
    path = folder / "SHA256SUMS"
    if not path.exists():
        return {}
    pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {name.strip(): digest for digest, name in pairs}


def portable_path(value: Any) -> Any:
    """A path under the data folder as ``<T2I_DATA>/...``; other values unchanged."""
    try:
        return "<T2I_DATA>/" + Path(value).resolve().relative_to(data_dir().resolve()).as_posix()
    except (TypeError, ValueError):
        return value


def export_run(run_dir: str | Path, out_dir: str | Path, command: str = "", name: str | None = None) -> Path:
    """Write ``<name>.safetensors`` (EMA sampling weights, float16) and ``<name>.json`` into ``out_dir``
    (``name`` defaults to the family, e.g. ``diffusion``; ``diffusion-zh`` for the Chinese-caption model).

    Both files are written under temporary names and renamed into place; ``SHA256SUMS`` is updated.
    """
    checkpoint = read_checkpoint(Path(run_dir) / CHECKPOINT)  # read once: EMA and trained weights, record
    record = json.loads(checkpoint["config"])
    family, out_dir = record["family"], Path(out_dir)
    name = name or family
    as_trained = AS_TRAINED.get(family, ())
    state = {k: (checkpoint["model"][k] if k.startswith(as_trained) else v) for k, v in checkpoint["ema"].items()}
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    weights = out_dir / f"{name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp))
    if weights.stat().st_size > MAX_BYTES:
        raise TrainingError(f"{weights} is {weights.stat().st_size / 2**20:.1f} MiB, over the 5 MiB a shipped file may be")
    record |= {"step": int(checkpoint["step"]), "command": command, "dtype": "float16", "as_trained": list(as_trained)}
    record["data"] = {k: portable_path(v) for k, v in record.get("data", {}).items()}  # no local folders
    atomic_write_text(out_dir / f"{name}.json", json.dumps(record, indent=1))
    metrics = out_dir / f"{name}.metrics.csv"  # the loss curves the notebooks plot
    atomic_write_text(metrics, (Path(run_dir) / METRICS).read_text())
    sums = read_sums(out_dir) | {p.name: sha256(p) for p in (weights, out_dir / f"{name}.json", metrics)}
    atomic_write_text(out_dir / "SHA256SUMS", "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    return weights


def check_shipped_files(folder: Path, name: str, recipe: str, require_listed: bool = False) -> tuple[Path, Path]:
    """``<name>.safetensors`` and ``<name>.json`` of ``folder``, once they and ``<name>.metrics.csv`` exist
    and match ``SHA256SUMS`` (with ``require_listed``, a file it does not list is refused too); otherwise
    one line that says what to do. Read once: the digests file is not re-read per file."""
    weights, record_path = folder / f"{name}.safetensors", folder / f"{name}.json"
    sums = read_sums(folder)
    for path in (weights, record_path, folder / f"{name}.metrics.csv"):
        if not path.exists():
            raise TrainingError(f"no shipped {name} checkpoint: {path} is missing; "
                                f"train one with `python -m t2i_helpers {recipe}`")
        expected = sums.get(path.name)
        if (expected is None and require_listed) or (expected is not None and sha256(path) != expected):
            raise TrainingError(f"{path} does not match its SHA-256 in {folder / 'SHA256SUMS'}: "
                                "the file is damaged or was replaced; restore it with git")
    return weights, record_path


def load_shipped(family: str, tier: str = "cpu", device: str = "auto", folder: str | Path | None = None,
                 name: str | None = None) -> LoadedRun:
    """The shipped ``family`` model of ``tier`` as a :class:`LoadedRun` (float32 weights); ``name``
    picks another shipped model of the family (``load_shipped("diffusion", name="diffusion-zh")``)."""
    folder = Path(folder) if folder is not None else shipped_dir(tier)
    name = name or family
    weights, record_path = check_shipped_files(folder, name, RECIPES.get(name, RECIPES[family]))
    record = json.loads(record_path.read_text())
    model_config = config_from_dict(family, record["model"])
    model = build_model(family, model_config, int(record["text_dim"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        wrong = list(missing) + list(unexpected)
        raise TrainingError(f"{weights} does not fit the {family} model of {record_path.name}: "
                            f"{len(wrong)} mismatched weights, e.g. {wrong[0]}")
    dev = pick_device(device)
    model.to(dev).eval()
    fields = TrainConfig.__dataclass_fields__
    return LoadedRun(run_dir=folder, family=family, model=model, model_config=model_config,
                     train_config=TrainConfig(**{k: v for k, v in record["train"].items() if k in fields}),
                     text_encoder_config=TextEncoderConfig(**record["text"]), step=int(record["step"]),
                     device=dev, data=record.get("data", {}), metrics_file=folder / f"{name}.metrics.csv")


def load_or_train(family: str, image_root: Any, ann_file: Any, out_dir: str | Path, tier: str = "cpu",
                  retrain: bool = False, train_config: TrainConfig | None = None,
                  model_config: Any = None) -> LoadedRun:
    """The notebooks' "load if present, else train" (as the UvA notebooks do).

    Without ``retrain``: the run in ``out_dir`` if it has a checkpoint, else the shipped model of
    ``tier``; otherwise (or with ``retrain``) train ``family`` into ``out_dir`` and load that.
    """
    out_dir = Path(out_dir)
    if not retrain:
        if (out_dir / CHECKPOINT).exists():
            print(f"{family}: loading the run in {out_dir} (retrain=True trains it again)")
            return load_run(out_dir)
        if (shipped_dir(tier) / f"{family}.safetensors").exists():
            print(f"{family}: loading the shipped {tier}-tier checkpoint (retrain=True trains your own)")
            return load_shipped(family, tier)
    train(family, image_root, ann_file, out_dir, train_config or tier_config(TrainConfig, tier), model_config,
          overwrite=retrain)
    return load_run(out_dir)
