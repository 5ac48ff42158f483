"""The GAN's losses (DF-GAN's): the matching-aware hinge loss of the discriminator, its MA-GP gradient
penalty, and :class:`Frozen`, which keeps D's weights out of the generator's step. Notebook 04
writes them out and checks them against these. Also the optional multi-task term, a contrastive
loss between D's image features and the captions (notebook 06)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def matching_aware_hinge(
    real: Tensor,
    mismatch: Tensor,
    fake: Tensor,
    mismatch_valid: Tensor | None = None,
    mismatch_weight: float = 0.5,
    fake_weight: float = 0.5,
) -> dict[str, Tensor]:
    """Discriminator hinge loss over three kinds of pairs (DF-GAN's weighting by default).

    ``relu(1 - real)`` pushes real matched logits above +1; ``relu(1 + x)`` pushes mismatched and
    fake logits below -1. Past the margin a sample contributes nothing, which keeps D from
    spending capacity on examples it already gets right. ``mismatch_valid`` marks mismatched
    pairs that really are mismatched (a rolled caption can be identical to the original one);
    invalid ones are left out of the mean.
    """
    d_real = F.relu(1 - real).mean()
    d_fake = F.relu(1 + fake).mean()
    mis = F.relu(1 + mismatch)
    if mismatch_valid is None:
        d_mismatch = mis.mean()
    else:
        valid = mismatch_valid.to(mis.dtype)
        d_mismatch = (mis * valid).sum() / valid.sum().clamp(min=1)
    loss = d_real + mismatch_weight * d_mismatch + fake_weight * d_fake
    return {"loss": loss, "d_real": d_real, "d_mismatch": d_mismatch, "d_fake": d_fake}


def ma_gp(logits: Tensor, images: Tensor, text: Tensor, weight: float = 2.0, power: float = 6.0) -> Tensor:
    """DF-GAN's matching-aware gradient penalty ``weight * mean(||grad D(x, s) wrt (x, s)||^power)``.

    Taken on real *matched* pairs, it flattens D around the data it should call real, so the
    generator is pulled smoothly toward that region instead of chasing a steep, jittery surface.
    ``create_graph=True`` makes the penalty itself differentiable (a second-order gradient).
    """
    grad_img, grad_txt = torch.autograd.grad(logits.sum(), (images, text), create_graph=True)
    grad = torch.cat([grad_img.flatten(1), grad_txt.flatten(1)], dim=1)
    return weight * grad.norm(dim=1).pow(power).mean()


class Frozen:
    """Context manager: parameters get ``requires_grad = False`` inside, restored afterwards.

    In the generator phase gradients must flow *through* D to the fake images but not *into* D's
    weights: this keeps them out of D's ``.grad`` and skips computing them at all.
    """

    def __init__(self, module: nn.Module):
        self.params = list(module.parameters())

    def __enter__(self):
        self.saved = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in zip(self.params, self.saved):
            p.requires_grad_(flag)


def same_captions(text: Tensor) -> Tensor:
    """[B, B] True where two rows of pooled embeddings are identical: the same caption, not a negative."""
    return (text[:, None, :] == text[None, :, :]).all(dim=2)


def caption_contrastive(image_emb: Tensor, text_emb: Tensor, same: Tensor, temperature: float) -> Tensor:
    """InfoNCE between the images and the captions of one batch (as in XMC-GAN, Zhang et al. 2021).

    Each image should pick its own caption out of the batch's, and each caption its own image: a
    cross-entropy over cosine similarities / ``temperature``, both ways, averaged. ``same`` [B, B] is
    True where two captions are identical (two "a red circle" in one batch): such a pair is not a
    negative, so it is left out of the softmax.
    """
    image = F.normalize(image_emb.float(), dim=1)
    text = F.normalize(text_emb.float(), dim=1)
    logits = image @ text.T / temperature
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
