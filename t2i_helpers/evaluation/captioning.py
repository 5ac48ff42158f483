"""Scoring generated captions: attribute match on Shapes, BLEU-4 and CIDEr on COCO, and the cycle back to an image.

* :func:`attribute_match`: each generated caption is read with the keyword parser of the studio
  (:func:`~t2i_helpers.evaluation.studio.asked_attributes`) and compared with the image's true
  attributes: per attribute, of the captions that name it, the share right; how many name colour and
  shape; and the share that name both and get everything they name right (``exact``).
* :func:`caption_scores`: BLEU-4 and CIDEr-D-style CIDEr (pycocoevalcap's scorers, which are Python). Its
  PTB tokenizer needs Java, so captions are tokenized here in Python instead: lower case, punctuation
  stripped (:func:`t2i_helpers.models.captioner.tokenize`). Numbers are therefore close to, not
  identical with, the official COCO evaluation.
* :func:`constant_caption`, :func:`nearest_neighbour_captions`: the trivial baselines a captioner
  must beat before its BLEU means anything.
* :func:`cycle_consistency`: caption -> image with a text-to-image model -> the judge's reading; the
  share of images whose regenerated image shows the same attributes as the original.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from t2i_helpers.data.images import to_float
from t2i_helpers.errors import T2IError
from t2i_helpers.evaluation.studio import asked_attributes
from t2i_helpers.judges import best_captions, predict_attributes
from t2i_helpers.models.captioner import tokenize
from t2i_helpers.viz import share_with_ci

ATTRIBUTES = ("color", "shape", "size", "position")


def attribute_match(captions: Sequence[str], attributes: Sequence[dict]) -> dict:
    """Counts and shares for captions of images with known ``attributes`` (one caption per image).

    ``named[a]`` captions name attribute ``a`` (one value, by keyword), ``right[a]`` of them name the
    true value; ``color_shape`` name both colour and shape; ``exact`` name both and every attribute
    they name is right; ``complete`` name all four, all right."""
    if len(captions) != len(attributes):
        raise T2IError(f"{len(captions)} captions for {len(attributes)} images")
    named, right = Counter(), Counter()
    color_shape = exact = complete = 0
    for caption, truth in zip(captions, attributes):
        asked = asked_attributes(caption)
        ok = {a: asked[a] == truth[a] for a in ATTRIBUTES if a in asked}
        named.update(ok.keys())
        right.update(a for a, good in ok.items() if good)
        both = "color" in ok and "shape" in ok
        color_shape += both
        exact += both and all(ok.values())
        complete += len(ok) == len(ATTRIBUTES) and all(ok.values())
    n = len(captions)
    share = lambda k, m: k / m if m else float("nan")  # noqa: E731
    return {"n": n, "named": dict(named), "right": dict(right), "color_shape": color_shape, "exact": exact,
            "complete": complete, "exact_share": share(exact, n), "color_shape_share": share(color_shape, n),
            "per_attribute": {a: share(right[a], named[a]) for a in ATTRIBUTES}}


def match_row(name: str, result: dict) -> dict:
    """One table row for :func:`t2i_helpers.viz.save_table`: each share with its 95% (Clopper-Pearson) interval."""
    n = result["n"]
    row: dict[str, Any] = {"captions": name, "n": n}
    row |= share_with_ci("exact", result["exact_share"], n)
    row |= share_with_ci("names colour+shape", result["color_shape_share"], n)
    for a in ATTRIBUTES:
        row |= share_with_ci(a, result["per_attribute"][a], result["named"].get(a, 0))
    return row


def caption_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """BLEU-4 and CIDEr of one candidate per image against that image's references (Python tokenization)."""
    if len(candidates) != len(references) or not candidates:
        raise T2IError(f"caption_scores needs one candidate per image and at least one image; got "
                       f"{len(candidates)} candidates for {len(references)} images")
    res = {i: [" ".join(tokenize(c))] for i, c in enumerate(candidates)}
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    if any(not refs for refs in gts.values()):
        raise T2IError("caption_scores: an image has no reference captions")
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": float(bleu[3]), "cider": float(cider), "n_images": len(candidates),
            "references_per_image": float(np.mean([len(r) for r in references]))}


def constant_caption(train_captions: Sequence[Sequence[str]], candidates: int = 60, seed: int = 0) -> str:
    """The training caption that scores the best CIDEr when it is said of *every* training image
    (chosen among ``candidates`` seeded picks): the "always say the same thing" baseline."""
    pool = [c for caps in train_captions for c in caps]
    picks = np.random.default_rng(seed).choice(len(pool), size=min(candidates, len(pool)), replace=False)
    scored = [(caption_scores([pool[i]] * len(train_captions), train_captions)["cider"], pool[i]) for i in picks]
    return max(scored)[1]


def nearest_neighbour_captions(train_images: np.ndarray, train_captions: Sequence[Sequence[str]],
                               images: np.ndarray, size: int = 8) -> list[str]:
    """For each image, the first caption of the training image closest in pixels (downsampled to ``size``)."""
    def features(x: np.ndarray) -> torch.Tensor:
        small = torch.nn.functional.adaptive_avg_pool2d(to_float(x), size).flatten(1)
        return torch.nn.functional.normalize(small - small.mean(1, keepdim=True), dim=1)

    nearest = (features(images) @ features(train_images).T).argmax(1).tolist()
    return [train_captions[j][0] for j in nearest]


def retrieve_captions(clip: Any, images: np.ndarray, pooled: torch.Tensor, candidates: Sequence[str]) -> list[str]:
    """Image -> text by retrieval: the candidate caption the contrastive model ranks first for each image."""
    with torch.no_grad():
        return [matches[0][0] for matches in best_captions(clip, images, pooled, list(candidates), k=1)]


def read_back(run: Any, data: Any, n: int = 500) -> dict:
    """Image -> text with a model's own encoder (the two-way diffusion model, ``read_weight > 0``):
    each of the split's first ``n`` images gets the split's caption the model ranks first, scored by
    :func:`attribute_match`. ``run`` is a loaded run (its ``model`` and ``encode``); ``data`` an EvalData."""
    candidates = sorted(set(data.captions))
    picked = retrieve_captions(run.model, data.images[:n], run.encode(candidates).pooled, candidates)
    return attribute_match(picked, data.attributes[:n])


def cycle_consistency(captions: Sequence[str], attributes: Sequence[dict], generator: Any, judge: Any,
                      seed: int = 0, batch_size: int = 64) -> dict:
    """Caption -> image (``generator.generate``, e.g. the shipped diffusion model) -> the judge's reading.

    ``same_all``: the regenerated image shows all four attributes of the original image; ``same_color_shape``:
    its colour and shape. A caption that leaves out the position cannot be expected to keep it, which is
    why both are reported. Returns counts, shares, the readings and the images (float, [-1, 1])."""
    if len(captions) != len(attributes):
        raise T2IError(f"{len(captions)} captions for {len(attributes)} images")
    images = torch.cat([generator.generate(list(captions[i:i + batch_size]), seed=seed + i)
                        for i in range(0, len(captions), batch_size)])
    readings = predict_attributes(judge, images)
    same = [{a: r[a] == t[a] for a in ATTRIBUTES} for r, t in zip(readings, attributes)]
    n = len(captions)
    all_same = sum(all(s.values()) for s in same)
    color_shape = sum(s["color"] and s["shape"] for s in same)
    return {"n": n, "same_all": all_same, "same_color_shape": color_shape, "same_all_share": all_same / n,
            "same_color_shape_share": color_shape / n,
            "per_attribute": {a: sum(s[a] for s in same) / n for a in ATTRIBUTES},
            "readings": readings, "images": images}


def cycle_row(name: str, result: dict) -> dict:
    """A table row of :func:`cycle_consistency`, with 95% (Clopper-Pearson) intervals."""
    n = result["n"]
    return {"captions from": name, "n": n} | share_with_ci("same 4 attributes", result["same_all_share"], n) | \
        share_with_ci("same colour+shape", result["same_color_shape_share"], n)


__all__ = ["ATTRIBUTES", "attribute_match", "match_row", "caption_scores", "constant_caption",
           "nearest_neighbour_captions", "retrieve_captions", "cycle_consistency", "cycle_row"]
