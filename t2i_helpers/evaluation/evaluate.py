"""Score a run, or a batch of generated images: FID (or its labelled proxy), attributes, R-precision.

:func:`evaluate_run` samples a run for a seeded sample of a split's captions and hands the images to
:func:`evaluate_images`, which computes each part of the report with the networks that fit the
data: the Shapes attribute classifier (the judge, and the proxy FID's features), a contrastive model
for R-precision, and Inception-v3 for the standard FID. :func:`format_report` prints it for people.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from t2i_helpers.data.evalset import EvalData, load_eval_data, sample_caption_ids, unique_captions
from t2i_helpers.errors import T2IError
from t2i_helpers.evaluation.inception import fid_from_images, inception_network, network_resize, real_statistics
from t2i_helpers.judges.classifier import load_or_train_attribute_classifier, predict_attributes
from t2i_helpers.judges.clip import load_or_train_clip
from t2i_helpers.judges.fitting import sibling_split
from t2i_helpers.metrics import (NOTHING_DRAWN, FIDProtocol, attribute_accuracy, attribute_accuracy_by,
                                 attribute_errors, caption_fits, clip_score, describe_errors, error_examples,
                                 r_precision)
from t2i_helpers.train import LoadedRun, load_run
from t2i_helpers.viz import image_rows, save_figure


def error_figure(images: Tensor, pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                 mentions: Sequence[Sequence[str]] | None, captions: Sequence[str], top: int = 4, per_error: int = 8,
                 title: str | None = None):
    """One row per commonest error (:func:`attribute_errors`), showing samples the judge marked with it.

    Returns a matplotlib figure, or None when nothing was judged wrong. Column titles are the captions
    of the first row's images.
    """
    errors = attribute_errors(pred_attrs, target_attrs, mentions, top=top)
    if not errors:
        return None
    rows, first = {}, None
    for e in errors:
        idx = error_examples(pred_attrs, target_attrs, mentions, e, per_error)
        first = idx if first is None else first
        what = ("nothing drawn" if e["attribute"] == NOTHING_DRAWN["attribute"]
                else f"{e['attribute']}: {e['wanted']}\nread as {e['drawn']}")
        rows[f"{what}\n({100 * e['share']:.1f}%)"] = images[idx]
    return image_rows(rows, [captions[i] for i in first], size=1.0, title=title)


def fid_part(images: Tensor, data: EvalData, fid: str, classifier: nn.Module | None, contrastive: nn.Module | None,
             inception_weights: Any, n_real: int | None, seed: int, cache_dir: Any, device: Any) -> dict:
    """``fid`` (Inception) or ``fid_proxy`` (a judge's features), with its protocol, or nothing for "none"."""
    if fid == "none":
        return {}
    if fid == "inception":
        network, metric = inception_network(inception_weights), "fid"
    elif fid == "proxy":
        metric = "fid_proxy"
        judge = classifier if classifier is not None else contrastive
        if judge is None:
            raise T2IError("proxy FID needs a feature network trained on this data: pass classifier= "
                           "(Shapes) or contrastive=, or use fid='inception'")
        network = judge.feature_network()
    else:
        raise T2IError(f"fid must be 'inception', 'proxy' or 'none', got {fid!r}")
    real, from_cache = real_statistics(network, data, n_real, seed, cache_dir, device=device)
    start = time.perf_counter()
    report: dict[str, Any] = {metric: fid_from_images(images, network, real, device=device),
                              "fid_network": network.name}
    report["fid_seconds"] = round(time.perf_counter() - start, 3)
    report["real_stats_from_cache"] = from_cache
    protocol = FIDProtocol(metric=metric, feature_network=network.name, n_real=real.n, n_generated=len(images),
                           resolution=data.resolution,
                           resize=f"real files centre-cropped + bicubic to {data.resolution}px if needed; "
                                  f"network input {network_resize(network)}",
                           dataset=data.dataset, split=data.split, seed=seed)
    report["protocol"] = protocol.to_dict()
    report["protocol_line"] = protocol.describe()
    return report


def _keep(mask: np.ndarray, seq: Sequence) -> list:
    return [x for x, m in zip(seq, mask) if m]


def attribute_part(images: Tensor, caption_ids: np.ndarray, data: EvalData, classifier: nn.Module,
                   error_figure_path: Any = None, error_figure_title: str | None = None) -> dict:
    """Shapes: what the judge reads in each image against what its caption asks, by caption group."""
    pred = predict_attributes(classifier, images)
    targets = [data.attributes[data.caption_image[c]] for c in caption_ids]
    mentions = [data.mentions[c] for c in caption_ids]
    held = data.held_out_captions()[caption_ids]
    acc = {"val": attribute_accuracy(pred, targets, mentions),
           "seen_pairs": attribute_accuracy(_keep(~held, pred), _keep(~held, targets), _keep(~held, mentions))}
    report: dict[str, Any] = {}
    if held.any():  # pairs never trained on fail in their own ways
        acc["held_out"] = attribute_accuracy(_keep(held, pred), _keep(held, targets), _keep(held, mentions))
        report["attribute_errors_held_out"] = attribute_errors(
            _keep(held, pred), _keep(held, targets), _keep(held, mentions))
    real_pred = predict_attributes(classifier, data.images[data.caption_image[caption_ids]])
    acc["real_images"] = attribute_accuracy(real_pred, targets, mentions)  # the judge's ceiling
    report["attribute_accuracy"] = acc
    report["attribute_errors"] = attribute_errors(pred, targets, mentions)  # val: what goes wrong most
    report["attribute_accuracy_by_drawn_size"] = attribute_accuracy_by(pred, targets, mentions, "size")
    if error_figure_path is not None:
        fig = error_figure(images, pred, targets, mentions, [data.captions[c] for c in caption_ids],
                           title=error_figure_title)
        if fig is not None:
            path = Path(error_figure_path)
            report["error_figure"] = [str(p) for p in save_figure(fig, path.name, path.parent)]
            plt.close(fig)
    return report


@torch.no_grad()
def contrastive_part(images: Tensor, caption_ids: np.ndarray, data: EvalData, contrastive: nn.Module,
                     caption_embeddings: Tensor, seed: int, device: Any) -> dict:
    """R-precision and the CLIP-style score of the images, and of the real images (the ceiling)."""
    if len(caption_embeddings) != len(data.captions):
        raise T2IError(f"caption_embeddings has {len(caption_embeddings)} rows, {data.ann_file.name} "
                       f"{len(data.captions)} captions")
    unique, inverse = unique_captions(data.captions)
    first = np.unique(inverse, return_index=True)[1]
    image_emb = contrastive.encode_images(images.to(device)).cpu()
    text_emb = contrastive.encode_text(torch.as_tensor(caption_embeddings)[first].float().to(device)).cpu()
    real_emb = contrastive.encode_images(data.images[data.caption_image[caption_ids]]).cpu()
    true = torch.as_tensor(inverse[caption_ids])
    report: dict[str, Any] = {"r_precision": r_precision(image_emb, text_emb, true, 100, seed),
                              "r_precision_real": r_precision(real_emb, text_emb, true, 100, seed),
                              "r_precision_candidates": int(min(100, len(unique)))}
    if data.is_shapes:
        # Shapes captions are often true of other images too ("a red circle"): a random
        # "mismatched" caption may fit the image. The clean variant draws only captions that do not.
        meaning = [{k: data.attributes[data.caption_image[f]][k] for k in data.mentions[f]} for f in first]
        fits = caption_fits(meaning, [data.attributes[data.caption_image[c]] for c in caption_ids])
        report["r_precision_clean"] = r_precision(image_emb, text_emb, true, 100, seed, exclude=fits)
        report["r_precision_clean_real"] = r_precision(real_emb, text_emb, true, 100, seed, exclude=fits)
        report["r_precision_clean_candidates"] = int(min(100, int((~fits).sum(dim=1).min()) + 1))
    report["clip_score"] = clip_score(image_emb, text_emb[true])
    report["clip_score_real"] = clip_score(real_emb, text_emb[true])
    report["contrastive_network"] = getattr(contrastive, "name", type(contrastive).__name__)
    return report


def evaluate_images(
    images: Tensor, caption_ids: Sequence[int], data: EvalData, *, fid: str = "proxy",
    classifier: nn.Module | None = None, inception_weights: str | os.PathLike | None = None,
    contrastive: nn.Module | None = None, caption_embeddings: Tensor | None = None, n_real: int | None = None,
    seed: int = 0, cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
    error_figure_path: str | os.PathLike | None = None, error_figure_title: str | None = None,
) -> dict:
    """Score generated images (in [-1, 1]) made for ``data.captions[caption_ids]``.

    Returns ``fid`` (Inception) or ``fid_proxy`` (+ ``fid_network``), ``protocol`` and ``protocol_line``
    (:func:`fid_part`; ``fid="none"`` skips it); on Shapes with a ``classifier``, ``attribute_accuracy``
    for ``val`` (every caption), ``seen_pairs``, ``held_out`` (colour-shape pairs absent from
    training) and ``real_images`` (the ceiling) (:func:`attribute_part`); with a ``contrastive`` model
    and ``caption_embeddings`` [C, D] (pooled embeddings of ``data.captions``), ``r_precision`` and
    ``clip_score`` (:func:`contrastive_part`). ``error_figure_path`` (no extension) saves
    :func:`error_figure` as PNG and PDF.
    """
    caption_ids = np.asarray(caption_ids, dtype=np.int64)
    if len(caption_ids) != len(images):
        raise T2IError(f"{len(images)} images but {len(caption_ids)} caption ids")
    if len(images) and (caption_ids.min() < 0 or caption_ids.max() >= len(data.captions)):
        raise T2IError(f"caption ids must be rows of the {len(data.captions)} captions of {data.ann_file.name}")
    if images.shape[-1] != data.resolution:
        raise T2IError(f"generated images are {images.shape[-1]}px but real images were loaded at "
                       f"{data.resolution}px: load_eval_data(..., image_size={images.shape[-1]})")
    images = images.detach().float().cpu()
    report: dict[str, Any] = {"dataset": data.dataset, "split": data.split, "n_generated": int(len(images))}
    report.update(fid_part(images, data, fid, classifier, contrastive, inception_weights, n_real, seed,
                           cache_dir, device))
    if data.is_shapes and classifier is not None:
        report.update(attribute_part(images, caption_ids, data, classifier, error_figure_path, error_figure_title))
    if contrastive is not None and caption_embeddings is not None:
        report.update(contrastive_part(images, caption_ids, data, contrastive, caption_embeddings, seed, device))
    return report


def evaluate_run(run_dir: Any, image_root: str | os.PathLike, ann_file: str | os.PathLike,
                 n: int = 1000, fid: str = "proxy", inception_weights: str | os.PathLike | None = None,
                 seed: int = 0, batch_size: int = 100, contrastive: bool = True, device: str = "auto",
                 classifier_config: Any = None, clip_config: Any = None, n_real: int | None = None,
                 generate_options: dict | None = None, error_figure_path: str | os.PathLike | None = None) -> dict:
    """Generate ``n`` images for (a seeded sample of) the split's captions and score them.

    ``ann_file`` is the split to evaluate (normally val). On Shapes the attribute classifier trains
    once on the train split (cached); with ``contrastive=True`` a small CLIP-style model trains once on
    the train split's captions, embedded by the run's own text encoder (cached), for R-precision
    (and the proxy FID on COCO). ``classifier_config`` / ``clip_config`` override the judges' configs
    (default: the tier's). ``n_real`` samples the real images (default: all). ``generate_options`` go
    to the sampler (e.g. ``guidance``, ``steps``) and into the report. ``run_dir`` may also be a run
    already loaded with :func:`t2i_helpers.train.load_run`.
    """
    if fid == "inception":
        inception_network(inception_weights)  # fail in a second, before generating anything
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir, device=device)
    size = int(getattr(run.model_config, "image_size", 64))
    data = load_eval_data(image_root, ann_file, image_size=size)
    ids = sample_caption_ids(data, n, seed)
    options = dict(generate_options or {})
    chunks = [run.generate([data.captions[i] for i in ids[s:s + batch_size]], seed=seed + s, **options)
              for s in range(0, len(ids), batch_size)]
    images = torch.cat(chunks).float().cpu()

    classifier, extra = None, {}
    if data.is_shapes:
        classifier, cls_report = load_or_train_attribute_classifier(image_root, ann_file, config=classifier_config,
                                                                    device=run.device)
        extra["classifier"] = {k: cls_report.get(k) for k in ("val_accuracy", "val_accuracy_held_out", "train_images")}
    model = caption_emb = None
    if contrastive:
        train_ann = sibling_split(Path(ann_file), "train") or Path(ann_file)
        encode = lambda caps: run.encode(caps).pooled  # noqa: E731
        name = str(getattr(run.text_encoder_config, "model_name", "text"))
        model, clip_report = load_or_train_clip(image_root, train_ann, encode, name, image_size=size,
                                                config=clip_config, device=run.device)
        caption_emb = encode(data.captions)
        extra["contrastive"] = {k: clip_report.get(k) for k in ("val_r_precision", "train_images", "steps")}
    report = evaluate_images(images, ids, data, fid=fid, classifier=classifier, inception_weights=inception_weights,
                             contrastive=model, caption_embeddings=caption_emb, n_real=n_real, seed=seed,
                             device=run.device, error_figure_path=error_figure_path,
                             error_figure_title=f"{run.family}, step {run.step}: samples behind the commonest errors")
    report.update(run=str(getattr(run, "run_dir", run_dir)), family=run.family, step=run.step,
                  generate_options=options, **extra)
    return report


def format_report(report: dict) -> str:
    """A few readable lines for the terminal (``--json`` prints the whole dict instead)."""
    lines = [f"run: {report.get('run', '-')} ({report.get('family', '-')}, step {report.get('step', '-')}), "
             f"{report.get('n_generated')} generated images, {report.get('dataset')} {report.get('split')}"]
    for key in ("fid", "fid_proxy"):
        if key in report:
            lines.append(f"{key}: {report[key]:.3f}   [{report['protocol_line']}]")
    for group, acc in (report.get("attribute_accuracy") or {}).items():
        parts = [f"{k} {v:.3f}" for k, v in acc.items() if k != "n" and not k.startswith("n_") and v is not None]
        lines.append(f"attribute accuracy ({group}, n={acc['n']}): " + ", ".join(parts))
    by_size = report.get("attribute_accuracy_by_drawn_size") or {}
    if len(by_size) > 1:
        lines.append("all right, by the size the model drew: " + ", ".join(
            f"{size} {acc['all']:.3f} (n={acc['n']})" for size, acc in by_size.items()))
    for key, group in (("attribute_errors", "val"), ("attribute_errors_held_out", "held-out pairs")):
        if report.get(key):
            lines.append(f"commonest errors ({group}): " + describe_errors(report[key]))
    if "r_precision" in report:
        c = report["r_precision_candidates"]
        lines.append(f"R-precision: {report['r_precision']:.3f} (real images {report['r_precision_real']:.3f}; "
                     f"1 true among {c} captions, chance {1 / c:.3f})")
        if "r_precision_clean" in report:
            c = report["r_precision_clean_candidates"]
            lines.append(f"R-precision, only non-fitting captions as negatives: {report['r_precision_clean']:.3f} "
                         f"(real images {report['r_precision_clean_real']:.3f}; {c} candidates)")
        lines.append(f"CLIP-style score: {report['clip_score']:.2f} (real images {report['clip_score_real']:.2f}; "
                     f"{report['contrastive_network']})")
    return "\n".join(lines)
