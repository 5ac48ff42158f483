"""Train several model families for the same time budget, score them the same way, report one table.

This is the experiment behind the course's results table (notebook 04's question, "which model
generates what the caption asks for?", answered at a fixed budget): each family trains for
``minutes`` on the same data, then generates images for the same seeded validation captions, which
the evaluation code scores (attribute accuracy on Shapes, FID or the labelled proxy). The grid figure
shows the real image and every model for the same captions and seeds. Each budget is trained in
slices (``curve_points``), scored after each one: a learning curve per model, written to the table
and to a second figure, which shows whether a model peaked, or drifted, before its time was up.

``python -m t2i_helpers compare --data IMAGES TRAIN_JSON --out runs/compare --minutes 10`` runs it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import numpy as np

from t2i_helpers.config import tier_config
from t2i_helpers.data.evalset import load_eval_data
from t2i_helpers.errors import T2IError
from t2i_helpers.evaluation.evaluate import evaluate_run
from t2i_helpers.files import atomic_write_text
from t2i_helpers.judges.fitting import sibling_split
from t2i_helpers.metrics import describe_errors
from t2i_helpers.models import default_config
from t2i_helpers.train import TrainConfig, load_run, train
from t2i_helpers.viz import image_rows, plot_curves, save_figure

ATTRIBUTES = ("color", "shape", "size", "position")


@dataclass
class CompareConfig:
    """What to compare and how long each model may train (defaults: the cpu and gpu tiers; ``smoke()`` for CI)."""

    # Each entry: a family, or a variant "family:field=value,field=value" of its tier config, e.g.
    # "gan:contrastive_weight=1.0" or "diffusion:objective=v" (model_variant).
    families: tuple[str, ...] = ("baseline", "gan", "diffusion")
    minutes: float = 10.0  # training time per model
    minutes_by_model: dict[str, float] = field(default_factory=dict)  # overrides, e.g. {"diffusion": 6.0}
    max_steps: int = 1_000_000  # upper bound; the budget stops first
    batch_size: int | None = None  # None: the engine's default (128 on a GPU run)
    eval_captions: int = 1000  # generated images scored per model
    guidance: float = 3.0  # diffusion: classifier-free guidance for every image scored and shown
    sample_steps: int = 25  # diffusion: sampler steps
    grid_captions: int = 8
    # A learning curve: the budget is trained in this many equal slices (a checkpoint and a resume in
    # between, which continue the run exactly), each scored on ``curve_captions`` val captions; 1 = only
    # the final score. Shows whether a model is still improving at the end or peaked (or drifts) earlier.
    curve_points: int = 4
    curve_captions: int = 500
    fid: str = "proxy"  # "inception" needs the Inception weights (see evaluation.inception)
    inception_weights: str | None = None
    text_model: str = "all-MiniLM-L6-v2"
    seed: int = 0
    device: str = "auto"

    @classmethod
    def smoke(cls) -> "CompareConfig":
        """Seconds per model: 6 s of training (at most 30 steps), 32 captions scored, two curve points."""
        return cls(minutes=0.1, max_steps=30, eval_captions=32, curve_points=2, curve_captions=16)


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]  # one per family: training and evaluation figures
    table: str  # the rows as a Markdown table
    json_path: Path
    table_path: Path
    figure_paths: tuple[Path, Path]  # PNG and PDF of the sample grid
    curve_paths: tuple[Path, Path]  # PNG and PDF of the learning curves


def grid_captions(data: Any, n: int = 8, seed: int = 0) -> list[int]:
    """Caption rows for the figure: on Shapes a mix of fully specified captions, captions that leave
    size or position open (where regression blurs) and held-out colour-shape pairs; else a seeded sample."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.captions))
    if not data.is_shapes:
        return [int(i) for i in order[:n]]
    held = data.held_out_captions()
    full = [i for i in order if len(data.mentions[i]) == len(ATTRIBUTES) and not held[i]]
    partial = [i for i in order if len(data.mentions[i]) < len(ATTRIBUTES) and not held[i]]
    unseen = [i for i in order if held[i]]
    n_unseen = min(len(unseen), n // 4)
    n_full = (n - n_unseen) // 2
    picked = full[:n_full] + partial[: n - n_unseen - n_full] + unseen[:n_unseen]
    picked += [i for i in order if i not in picked][: n - len(picked)]  # small splits: fill up
    return [int(i) for i in picked]


# Training settings a variant may name beside its model's fields: "baseline:flip=naive".
VARIANT_TRAIN_FIELDS = ("flip",)


def _variant_items(spec: str) -> tuple[str, list[tuple[str, Any]]]:
    """``"gan:a=1,b=[4, 8]"`` -> ("gan", [("a", 1), ("b", (4, 8))]): values as JSON where they parse, else as text."""
    family, _, fields = spec.partition(":")
    items = []
    for item in filter(None, re.split(r",(?=\s*\w+=)", fields)):  # a comma inside [4, 8] is not a separator
        name, eq, text = item.partition("=")
        if not eq:
            raise T2IError(f"{spec!r}: {item!r} is not FIELD=VALUE")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        items.append((name, tuple(value) if isinstance(value, list) else value))
    return family, items


def model_variant(spec: str) -> tuple[str, Any]:
    """``"gan"`` or ``"gan:contrastive_weight=1.0,diffaug_policy="`` -> (family, its tier config with
    those fields). Values are read as JSON where they parse (numbers, true, lists), else as text.
    Training settings of ``VARIANT_TRAIN_FIELDS`` (``flip=naive``) are left to :func:`variant_training`."""
    family, items = _variant_items(spec)
    try:
        config = default_config(family)
    except (KeyError, ValueError, T2IError):
        raise T2IError(f"unknown model {family!r} in {spec!r}") from None
    names = {f.name for f in dataclasses.fields(config)}
    unknown = [name for name, _ in items if name not in names and name not in VARIANT_TRAIN_FIELDS]
    if unknown:
        raise T2IError(f"{spec!r}: {unknown[0]!r} is not FIELD=VALUE with a field of {type(config).__name__}"
                       f" or one of {VARIANT_TRAIN_FIELDS}")
    return family, dataclasses.replace(config, **{name: value for name, value in items if name in names})


def variant_training(spec: str) -> dict[str, Any]:
    """The training settings a variant names (``"baseline:flip=naive"`` -> ``{"flip": "naive"}``)."""
    return {name: value for name, value in _variant_items(spec)[1] if name in VARIANT_TRAIN_FIELDS}


def _train_one(spec: str, image_root: Path, train_ann: Path, run_dir: Path, config: CompareConfig,
               score: Callable[[], dict[str, Any]]) -> dict:
    """Train the model ``spec`` names for its budget in ``config.curve_points`` slices, calling ``score()``
    after every slice but the last (the caller scores the finished run in full); the summary holds the curve."""
    family, model_config = model_variant(spec)
    minutes = config.minutes_by_model.get(spec, config.minutes_by_model.get(family, config.minutes))
    slices = config.curve_points
    train_config = dataclasses.replace(tier_config(TrainConfig), steps=config.max_steps,
                                       max_minutes=minutes / slices, seed=config.seed, device=config.device,
                                       text_model=config.text_model, checkpoint_every=0, sample_every=0,
                                       **variant_training(spec))
    if config.batch_size is not None:
        train_config.batch_size = config.batch_size
    record = run_dir / "training.json"
    settings = {"model": asdict(model_config), "train": asdict(train_config), "minutes": minutes,
                "curve": [slices, config.curve_captions, config.guidance, config.sample_steps]}
    if record.exists() and (run_dir / "checkpoint.pt").exists():
        saved = json.loads(record.read_text())
        if saved.get("settings") == json.loads(json.dumps(settings)):
            print(f"{spec}: reusing the finished run in {run_dir}", flush=True)
            return saved["result"]
    seconds, curve = 0.0, []
    for k in range(slices):
        # compare owns its run folders: a run with other settings than these is replaced (overwrite).
        result = train(family, image_root, train_ann, run_dir, train_config, model_config, resume=k > 0,
                       overwrite=k == 0)
        if result.interrupted:
            raise KeyboardInterrupt  # train() saved and said so; do not start the next slice
        seconds += result.train_seconds
        curve.append({"step": result.step, "train_minutes": round(seconds / 60, 3)})
        if k == slices - 1 or not result.stopped_by_time or result.step >= train_config.steps:
            break  # the budget is spent, or max_steps came first: nothing left to train
        curve[-1].update(score())
        # The curve so far, after every scored slice: a run stopped before it ends (a Colab disconnect,
        # a time limit) still shows how far it got. training.json, below, marks a finished run.
        atomic_write_text(run_dir / "curve.json", json.dumps(curve, indent=2))
    summary = {
        "steps": result.step,
        "train_minutes": round(seconds / 60, 2),
        "train_images_per_s": round(result.step * train_config.batch_size / max(seconds, 1e-9), 1),
        "batch_size": train_config.batch_size,
        "image_size": model_config.image_size,
        "stopped_by_time": result.stopped_by_time,
        "curve": curve,  # the last point's scores are filled in from the full evaluation
    }
    atomic_write_text(record, json.dumps({"settings": settings, "result": summary}, indent=2))
    return summary


def _scores(report: dict) -> dict[str, Any]:
    """The two numbers of a learning-curve point: every mentioned attribute right, val and held-out pairs."""
    acc = report.get("attribute_accuracy") or {}
    return {"val_all": (acc.get("val") or {}).get("all"), "held_out_all": (acc.get("held_out") or {}).get("all")}


def format_curves(rows: list[dict[str, Any]]) -> str:
    """One Markdown line per model: all-right share (val / held-out pairs) after each slice of training."""
    def point(p: dict) -> str:
        val, held = p.get("val_all"), p.get("held_out_all")
        scores = "-" if val is None else f"{100 * val:.0f}%" + ("" if held is None else f" / {100 * held:.0f}%")
        return f"{p['train_minutes']:.1f} min (step {p['step']}): {scores}"

    return "\n".join(f"- {r['model']}: " + "; ".join(point(p) for p in r["curve"]) for r in rows if r.get("curve"))


def curve_figure(rows: list[dict[str, Any]]):
    """All attributes right vs training minutes, per model: solid val captions, dashed held-out pairs."""
    xs, series, styles = {}, {}, {}
    for i, r in enumerate(rows):
        points = [p for p in r.get("curve", []) if p.get("val_all") is not None]
        for key, label, style in (("val_all", "val", {"marker": "o"}),
                                  ("held_out_all", "held-out pairs", {"marker": "s", "ls": "--", "alpha": 0.7})):
            scored = [p for p in points if p.get(key) is not None]
            if scored:
                name = f"{r['model']} ({label})"
                xs[name], series[name] = [p["train_minutes"] for p in scored], [p[key] for p in scored]
                styles[name] = {"color": f"C{i}", **style}
    return plot_curves(xs, series, "training minutes", "every mentioned attribute right", styles=styles,
                       ylim=(0, 1.02))


def _row(family: str, training: dict, report: dict) -> dict[str, Any]:
    row: dict[str, Any] = {"model": family, **training}
    acc = report.get("attribute_accuracy") or {}
    if row.get("curve"):  # the final point of the learning curve is the full evaluation
        row["curve"] = [*row["curve"][:-1], {**row["curve"][-1], **_scores(report)}]
    for group in ("val", "held_out", "real_images"):
        if group in acc:
            row[f"{group}_all"] = acc[group]["all"]
            row[f"{group}_n"] = acc[group]["n"]
    for attr in ATTRIBUTES:
        if "val" in acc:
            row[f"val_{attr}"] = acc["val"].get(attr)
    for key in ("fid", "fid_proxy"):
        if key in report:
            row[key] = report[key]
    row["errors"] = report.get("attribute_errors", [])
    row["errors_held_out"] = report.get("attribute_errors_held_out", [])
    row["generate_options"] = report.get("generate_options", {})
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per model; accuracies are shares of captions with every mentioned attribute right."""
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    fid_key = "fid" if any("fid" in r for r in rows) else "fid_proxy"
    head = ["model", "params", "steps", "train min", "img/s", "all right (val)", "all right (held-out pairs)",
            *ATTRIBUTES, fid_key.replace("_", " ")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['parameters'] / 1e6:.1f}M", str(r["steps"]), f"{r['train_minutes']:.1f}",
                 f"{r['train_images_per_s']:.0f}", pct(r.get("val_all")), pct(r.get("held_out_all")),
                 *[pct(r.get(f"val_{a}")) for a in ATTRIBUTES],
                 "-" if fid_key not in r else f"{r[fid_key]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    real = next((r.get("real_images_all") for r in rows if r.get("real_images_all") is not None), None)
    if real is not None:
        lines.append(f"\nThe attribute classifier on the real validation images: {pct(real)} all right.")
    if any(r.get("errors") or r.get("errors_held_out") for r in rows):
        lines.append("\nCommonest errors (share of the captions that mention the attribute):\n")
        for r in rows:
            if "errors" in r:
                lines.append(f"- {r['model']}: {describe_errors(r['errors'])}")
            if r.get("errors_held_out"):
                lines.append(f"- {r['model']}, held-out pairs: {describe_errors(r['errors_held_out'])}")
    return "\n".join(lines)


def _write_results(config: CompareConfig, rows: list[dict], captions: list[str], json_path: Path,
                   table_path: Path) -> str:
    """results.json and results.md for the models done so far (after each one: a run stopped part-way
    keeps the finished models' rows); ``captions`` are the sample grid's."""
    table = format_table(rows)
    curves = format_curves(rows)
    if curves:
        table += ("\n\nEvery mentioned attribute right (val / held-out pairs) during training; the last point "
                  "is the table's:\n\n" + curves)
    atomic_write_text(json_path, json.dumps({"config": asdict(config), "rows": rows, "grid_captions": captions},
                                            indent=2, default=str))
    atomic_write_text(table_path, table + "\n")
    return table


def _check(config: CompareConfig, train_ann: Path) -> Path:
    """The val split next to ``train_ann``, after checking the budgets."""
    for family in config.families:
        minutes = config.minutes_by_model.get(family, config.minutes)
        if not minutes or minutes <= 0:
            raise T2IError(f"compare: the training budget of {family} must be more than 0 minutes, got {minutes}")
    if config.curve_points < 1:
        raise T2IError(f"compare: curve_points (--curve-points) must be at least 1, got {config.curve_points}")
    val_ann = sibling_split(train_ann, "val")
    if val_ann is None:
        raise T2IError(f"compare needs the val split next to {train_ann} (e.g. captions_val.json)")
    return val_ann


def compare_models(image_root: str | Path, train_ann: str | Path, out_dir: str | Path,
                   config: CompareConfig | None = None) -> CompareResult:
    """Train each family in ``config.families`` for ``config.minutes``, evaluate on the val split
    next to ``train_ann``, and write ``results.json``, ``results.md`` and the sample-grid figure."""
    config = config or tier_config(CompareConfig)
    image_root, train_ann, out = Path(image_root), Path(train_ann), Path(out_dir)
    val_ann = _check(config, train_ann)
    val = load_eval_data(image_root, val_ann, image_size=64)
    ids = grid_captions(val, config.grid_captions, config.seed)
    captions = [val.captions[i] for i in ids]
    rows, samples = [], {"real": val.images[val.caption_image[ids]]}
    json_path, table_path = out / "results.json", out / "results.md"
    for spec in config.families:
        family, _ = model_variant(spec)
        run_dir = out / "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)
        options = {"guidance": config.guidance, "steps": config.sample_steps} if family == "diffusion" else {}

        def score_slice(run_dir=run_dir, options=options) -> dict[str, Any]:
            report = evaluate_run(run_dir, image_root, val_ann, n=config.curve_captions, fid="none",
                                  seed=config.seed, contrastive=False, device=config.device, generate_options=options)
            return _scores(report)

        training = _train_one(spec, image_root, train_ann, run_dir, config, score_slice)
        run = load_run(run_dir, device=config.device)  # loaded once: scored, then drawn in the figure
        training["parameters"] = sum(p.numel() for p in run.model.parameters())
        report = evaluate_run(run, image_root, val_ann, n=config.eval_captions, fid=config.fid,
                              inception_weights=config.inception_weights, seed=config.seed, contrastive=False,
                              device=config.device, generate_options=options,
                              error_figure_path=out / f"compare_errors_{run_dir.name}")
        rows.append(_row(spec, training, report))
        samples[spec] = run.generate(captions, seed=config.seed, **options)
        print(f"{spec}: step {training['steps']}, all attributes right on val "
              f"{rows[-1].get('val_all', float('nan')):.3f}", flush=True)
        table = _write_results(config, rows, captions, json_path, table_path)
    trained = ", ".join(f"{r['model']} {r['train_minutes']:.1f} min" for r in rows)
    fig = image_rows(samples, captions, size=1.0, title=f"same captions and seeds; training time: {trained}")
    figure_paths = save_figure(fig, "compare_samples", out)
    plt.close(fig)
    fig = curve_figure(rows)
    curve_paths = save_figure(fig, "compare_curve", out)
    plt.close(fig)
    return CompareResult(rows, table, json_path, table_path, figure_paths, curve_paths)


__all__ = ["CompareConfig", "CompareResult", "compare_models", "model_variant", "variant_training", "curve_figure", "format_curves", "format_table",
           "grid_captions"]
