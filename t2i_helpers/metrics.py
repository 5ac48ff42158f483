"""The numbers of evaluation, as pure functions of features, predictions and embeddings.

* FID: the Frechet distance between Gaussian fits of two feature sets (:func:`frechet_distance`),
  the feature sets summarised by :class:`FeatureStats`, and the :class:`FIDProtocol` that every FID
  number is printed with (network, N, resolution, split, seed);
* does the image show what the caption says: per-attribute accuracy on Shapes
  (:func:`attribute_accuracy`, the commonest errors), R-precision (AttnGAN) and a CLIP-style score.

Nothing here reads files, trains or downloads: the networks that make features and predictions are
in :mod:`t2i_helpers.judges` and :mod:`t2i_helpers.evaluation.inception`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from t2i_helpers.errors import T2IError

NOTHING = "nothing"  # what the judge reads, for every attribute, where no object is drawn


# ------------------------------------------------------------------------------------ the distance
def _as_float64(x: Any) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach().cpu(), dtype=torch.float64)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet (Wasserstein-2) distance between N(mu1, sigma1) and N(mu2, sigma2).

    The hard term is ``Tr((sigma1 sigma2)^(1/2))``. ``sigma1 sigma2`` is not symmetric, so a general
    matrix square root (``scipy.linalg.sqrtm``) can return complex noise. It has the same
    eigenvalues as the symmetric positive semi-definite ``A = sigma1^(1/2) sigma2 sigma1^(1/2)``
    (similar matrices), so the trace is the sum of square roots of A's eigenvalues, which ``eigh``
    computes stably (tiny negative round-off is clipped to 0). All in float64.
    """
    mu1, mu2, s1, s2 = (_as_float64(v) for v in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise T2IError(f"frechet_distance: shapes do not match: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, "
                       f"sigma {tuple(s1.shape)}/{tuple(s2.shape)}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = torch.linalg.eigh(s1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    a = root1 @ s2 @ root1
    tr_covmean = torch.linalg.eigvalsh((a + a.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    value = float(diff @ diff + s1.trace() + s2.trace() - 2 * tr_covmean)
    return max(value, 0.0)  # a squared distance: only round-off can make it negative


@dataclass
class FeatureStats:
    """The Gaussian fit of one feature set: mean [d], covariance [d, d] (unbiased, n - 1), count."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: Any) -> "FeatureStats":
        f = np.asarray(features.detach().cpu() if isinstance(features, Tensor) else features, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise T2IError(f"need at least 2 feature vectors [N, d] for a covariance, got shape {f.shape}")
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), n=int(f.shape[0]))

    def distance(self, other: "FeatureStats") -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


@dataclass
class FIDProtocol:
    """Everything a FID number depends on; print :meth:`describe` next to every score."""

    metric: str  # "fid" (Inception, comparable to papers) or "fid_proxy" (project network)
    feature_network: str
    n_real: int
    n_generated: int
    resolution: int  # side of real and generated images before the feature network
    resize: str  # how images reach the network's input size
    dataset: str
    split: str
    seed: int

    def describe(self) -> str:
        return (f"{self.metric} | features: {self.feature_network} | real: {self.n_real} {self.dataset} "
                f"{self.split} images | generated: {self.n_generated} | {self.resolution}px, {self.resize} | "
                f"seed {self.seed}")

    def to_dict(self) -> dict:
        return asdict(self)


# -------------------------------------------------------------------------------- caption metrics
def _judged(target: dict, mentioned: Sequence[str] | None) -> list[str]:
    """The attributes a caption is judged on: those it mentions (all of the target's if unknown)."""
    return list(target) if mentioned is None else [m for m in mentioned if m in target]


def attribute_accuracy(pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                       mentions: Sequence[Sequence[str]] | None = None) -> dict:
    """Accuracy per attribute, judged only where the caption mentions it, and ``all``.

    ``all`` is the fraction of captions whose *every* mentioned attribute is right. An attribute no
    caption mentions gets ``None`` (not 0: there was nothing to judge). ``n`` = captions judged,
    ``n_<attribute>`` = captions mentioning it. ``mentions=None`` judges every target attribute.
    """
    if len(pred_attrs) != len(target_attrs) or (mentions is not None and len(mentions) != len(target_attrs)):
        raise T2IError(f"attribute_accuracy: {len(pred_attrs)} predictions, {len(target_attrs)} targets, "
                       f"{'-' if mentions is None else len(mentions)} mention lists: lengths must match")
    names: list[str] = []
    for t in target_attrs:
        names += [k for k in t if k not in names]
    right = {k: 0 for k in names}
    count = {k: 0 for k in names}
    all_right = 0
    for i, (p, t) in enumerate(zip(pred_attrs, target_attrs)):
        judged = _judged(t, None if mentions is None else mentions[i])
        ok = True
        for k in judged:
            count[k] += 1
            hit = p.get(k) == t[k]
            right[k] += hit
            ok = ok and hit
        all_right += ok
    out: dict[str, Any] = {k: (right[k] / count[k] if count[k] else None) for k in names}
    out["all"] = all_right / len(target_attrs) if len(target_attrs) else None
    out["n"] = len(target_attrs)
    out.update({f"n_{k}": count[k] for k in names})
    return out


NOTHING_DRAWN = {"attribute": "object", "wanted": "an object", "drawn": "nothing"}  # an error of its own


def _blank(pred: dict) -> bool:
    """The judge saw no object (it reads :data:`NOTHING` for every attribute)."""
    return bool(pred) and all(v == NOTHING for v in pred.values())


def attribute_errors(pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                     mentions: Sequence[Sequence[str]] | None = None, top: int = 5) -> list[dict]:
    """The commonest mistakes: ``{"attribute", "wanted", "drawn", "count", "share"}``, most frequent first.

    Judged like :func:`attribute_accuracy` (only what a caption mentions); ``share`` is ``count``
    over the captions that mention the attribute. "shape: circle drawn as square, 54 of 400" says
    more about what to fix than "shape 0.82". An image with no object at all is one error,
    :data:`NOTHING_DRAWN` (its share is over every caption), not one per attribute.
    """
    if len(pred_attrs) != len(target_attrs) or (mentions is not None and len(mentions) != len(target_attrs)):
        raise T2IError(f"attribute_errors: {len(pred_attrs)} predictions, {len(target_attrs)} targets, "
                       f"{'-' if mentions is None else len(mentions)} mention lists: lengths must match")
    errors: dict[tuple[str, Any, Any], int] = {}
    judged: dict[str, int] = {NOTHING_DRAWN["attribute"]: len(target_attrs)}
    for i, (p, t) in enumerate(zip(pred_attrs, target_attrs)):
        blank = _blank(p)
        if blank:
            key = (NOTHING_DRAWN["attribute"], NOTHING_DRAWN["wanted"], NOTHING_DRAWN["drawn"])
            errors[key] = errors.get(key, 0) + 1
        for k in _judged(t, None if mentions is None else mentions[i]):
            judged[k] = judged.get(k, 0) + 1
            if p.get(k) != t[k] and not blank:
                key = (k, t[k], p.get(k))
                errors[key] = errors.get(key, 0) + 1
    ranked = sorted(errors.items(), key=lambda kv: (-kv[1], kv[0][0], str(kv[0][1]), str(kv[0][2])))
    return [{"attribute": k, "wanted": wanted, "drawn": drawn, "count": n, "share": n / judged[k]}
            for (k, wanted, drawn), n in ranked[:top]]


def error_examples(pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                   mentions: Sequence[Sequence[str]] | None, error: dict, limit: int = 8) -> list[int]:
    """Indices of (up to ``limit``) images showing ``error``, one entry of :func:`attribute_errors`.

    For looking before believing: a judge that has only seen clean renders can misread a sample that
    a person reads at once (a speckled blue square read as white), and only the images tell.
    """
    k, wanted, drawn = error["attribute"], error["wanted"], error["drawn"]
    blank = k == NOTHING_DRAWN["attribute"]
    found = []
    for i, (p, t) in enumerate(zip(pred_attrs, target_attrs)):
        if (blank and _blank(p)) or (not blank and k in _judged(t, None if mentions is None else mentions[i])
                                     and t[k] == wanted and p.get(k) == drawn and not _blank(p)):
            found.append(i)
            if len(found) == limit:
                break
    return found


def describe_errors(errors: Sequence[dict], top: int = 3) -> str:
    """``attribute_errors`` in words: "shape circle drawn as square 13.5%; ..." (share of the captions
    that mention the attribute)."""
    return "; ".join((f"nothing drawn {100 * e['share']:.1f}%" if e["attribute"] == NOTHING_DRAWN["attribute"] else
                      f"{e['attribute']} {e['wanted']} drawn as {e['drawn']} {100 * e['share']:.1f}%")
                     for e in errors[:top]) or "none"


def attribute_accuracy_by(pred_attrs: Sequence[dict], target_attrs: Sequence[dict],
                          mentions: Sequence[Sequence[str]] | None, group_by: str) -> dict[Any, dict]:
    """:func:`attribute_accuracy` separately for each value of ``group_by`` *as drawn* (predicted).

    E.g. ``group_by="size"``: is the shape right as often on the objects the model drew small as on
    the large ones? If not, the shape errors are a resolution problem.
    """
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(pred_attrs):
        groups.setdefault(p.get(group_by), []).append(i)
    return {value: attribute_accuracy([pred_attrs[i] for i in rows], [target_attrs[i] for i in rows],
                                      None if mentions is None else [mentions[i] for i in rows])
            for value, rows in sorted(groups.items(), key=lambda kv: str(kv[0]))}


def _normalise(x: Tensor) -> Tensor:
    x = torch.as_tensor(x).float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def r_precision(image_emb: Tensor, text_emb: Tensor, true_index: Sequence[int] | Tensor,
                n_candidates: int = 100, seed: int = 0, exclude: Tensor | None = None) -> float:
    """AttnGAN's R-precision (R = 1): per generated image, rank its true caption among candidates.

    Each image gets ``n_candidates`` captions: its true one and ``n_candidates - 1`` others drawn at
    random (without replacement) from the other rows of ``text_emb``; it scores 1 if the true caption
    has the highest cosine similarity. Chance level is ``1 / n_candidates``. ``text_emb`` rows should be
    *distinct* captions, so a "mismatched" candidate never has the same text. With fewer rows than
    ``n_candidates``, all rows are candidates.

    ``exclude`` [N, C] bool marks rows that may not serve as mismatched captions for an image, e.g.
    on Shapes a different caption that describes the image just as well ("a red circle" for a small
    red circle captioned "a small red circle"). The number of candidates then shrinks to what every
    image has left.
    """
    img, txt = _normalise(image_emb), _normalise(text_emb)
    true = torch.as_tensor(true_index, dtype=torch.long)
    n, c = img.shape[0], txt.shape[0]
    if true.shape != (n,) or (n and (true.min() < 0 or true.max() >= c)):
        raise T2IError(f"r_precision: true_index must hold {n} rows in [0, {c}), got shape {tuple(true.shape)}")
    if n == 0:
        raise T2IError("r_precision: no images")
    allowed = torch.ones(n, c, dtype=torch.bool) if exclude is None else ~torch.as_tensor(exclude, dtype=torch.bool)
    allowed[torch.arange(n), true] = False  # the true caption is never a mismatched one
    k = min(n_candidates - 1, int(allowed.sum(dim=1).min()))
    if k == 0:
        return 1.0
    # k distinct mismatched rows per image: the k largest of random keys over the allowed rows
    keys = torch.rand(n, c, generator=torch.Generator().manual_seed(seed)).masked_fill(~allowed, -1.0)
    candidates = torch.cat([true[:, None], keys.topk(k, dim=1).indices], dim=1)  # column 0 = true caption
    scores = torch.einsum("nd,nkd->nk", img, txt[candidates])
    return float((scores[:, 1:].max(dim=1).values < scores[:, 0]).float().mean())


def caption_fits(caption_attrs: Sequence[dict], image_attrs: Sequence[dict]) -> Tensor:
    """[N_images, N_captions] bool: every attribute a caption names matches the image (Shapes).

    ``caption_attrs[j]`` holds only what caption j names, e.g. ``{"color": "red", "shape": "circle"}``.
    """
    out = np.ones((len(image_attrs), len(caption_attrs)), dtype=bool)
    names = {k for a in caption_attrs for k in a}
    for name in names:
        values: dict[Any, int] = {}
        image_value = np.array([values.setdefault(a.get(name), len(values)) for a in image_attrs])
        named = np.array([name in a for a in caption_attrs])
        caption_value = np.array([values.setdefault(a[name], len(values)) if name in a else -1 for a in caption_attrs])
        out &= ~named[None, :] | (caption_value[None, :] == image_value[:, None])
    return torch.from_numpy(out)


def clip_score(image_emb: Tensor, text_emb: Tensor) -> float:
    """CLIPScore-style mean of ``100 * max(cos(image_i, text_i), 0)`` over paired rows (torchmetrics' scale).

    Only meaningful with the contrastive model that produced both embeddings; not comparable to
    scores from OpenAI's CLIP.
    """
    img, txt = _normalise(image_emb), _normalise(text_emb)
    if img.shape != txt.shape:
        raise T2IError(f"clip_score: paired embeddings must have one shape, got {tuple(img.shape)} "
                       f"and {tuple(txt.shape)}")
    return float((100 * (img * txt).sum(dim=1).clamp_min(0)).mean())




# -------------------------------------------------------------------------------- uncertainty
def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a share ``successes / n``; NaN ends where ``n`` is 0."""
    if n <= 0:
        return math.nan, math.nan
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """The mean and its Student-t interval (NaN ends for fewer than two values)."""
    a = np.asarray(values, dtype=float)
    mean = float(a.mean()) if len(a) else math.nan
    if len(a) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + level) / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return mean, mean - half, mean + half
