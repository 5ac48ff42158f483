"""Image to text, the other direction: a small captioning model, written out to be read.

* :class:`Vocabulary`: the words of the training captions (lower case, punctuation stripped) plus
  ``<pad> <bos> <eos> <unk>``; a word seen fewer than ``min_count`` times becomes ``<unk>``.
* :class:`Captioner`: a small CNN turns a 32 px image into a 4x4 grid of feature *tokens* (each with
  a learnt position embedding, so "top left" can be read off); a GRU decoder writes the caption one
  word at a time, attending to those tokens before each word (Show, Attend and Tell, shrunk).
* Training is *teacher forcing* (:meth:`Captioner.loss`): the decoder reads the true caption shifted
  by one and is scored by cross-entropy on every next word. Decoding is :meth:`Captioner.greedy`
  (the likeliest word each step) or :func:`beam_search` (the ``width`` likeliest partial captions).

The model never sees the text encoder of the generators: captions are word ids of its own vocabulary.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i_helpers.data.images import to_float
from t2i_helpers.errors import T2IError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3


def tokenize(caption: str) -> list[str]:
    """Lower case, punctuation stripped: ``"Top-left: a Red box."`` -> ``['top', 'left', 'a', 'red', 'box']``."""
    return re.findall(r"[a-z0-9]+", str(caption).lower())


class Vocabulary:
    """Word <-> id. Ids 0-3 are ``<pad> <bos> <eos> <unk>``, then the words by frequency (ties: alphabetical)."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        if tuple(self.words[:4]) != SPECIALS:
            raise T2IError(f"a vocabulary starts with {', '.join(SPECIALS)}; got {self.words[:4]}")
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad, self.bos, self.eos, self.unk = range(4)

    @classmethod
    def build(cls, captions: Sequence[str], min_count: int = 1) -> "Vocabulary":
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, max_len: int) -> list[int]:
        """``<bos> w1 ... wn <eos>`` padded with ``<pad>`` to ``max_len + 2`` ids (longer captions are cut)."""
        ids = [self.index.get(w, self.unk) for w in tokenize(caption)][:max_len]
        ids = [self.bos] + ids + [self.eos]
        return ids + [self.pad] * (max_len + 2 - len(ids))

    def encode_all(self, captions: Sequence[str], max_len: int) -> Tensor:
        """[C, max_len + 2] long: the caption table the training loop indexes with a batch's caption ids."""
        return torch.tensor([self.encode(c, max_len) for c in captions], dtype=torch.long).reshape(-1, max_len + 2)

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first ``<eos>``; ``<bos>`` and ``<pad>`` are dropped."""
        out = []
        for i in (int(i) for i in ids):
            if i == self.eos:
                break
            if i not in (self.bos, self.pad):
                out.append(self.words[i])
        return " ".join(out)


@dataclass
class CaptionerConfig:
    """The captioning model (defaults: the ``gpu`` tier; ``smoke()`` and ``cpu()`` are the others)."""

    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 convolution block each: 32 -> 4x4 tokens
    embed_dim: int = 128  # word embeddings and image tokens
    hidden: int = 256  # GRU state
    max_len: int = 16  # words per caption (Shapes' longest has 12; COCO's are cut)
    min_count: int = 1  # rarer words become <unk>
    dropout: float = 0.1
    # Teacher forcing with this share of the input words replaced by <unk>: the decoder must read more
    # from the image and less from the words before (the caption's colour says nothing about its shape).
    word_dropout: float = 0.0
    lr: float = 2e-3

    @classmethod
    def gpu(cls) -> "CaptionerConfig":
        return cls()

    @classmethod
    def cpu(cls) -> "CaptionerConfig":
        return cls()

    @classmethod
    def smoke(cls) -> "CaptionerConfig":
        return cls(channels=(8, 16, 32), embed_dim=32, hidden=48)

    @classmethod
    def from_dict(cls, values: dict) -> "CaptionerConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "channels" in known:
            known["channels"] = tuple(known["channels"])
        return cls(**known)


class ImageEncoder(nn.Module):
    """Image [B, 3, S, S] in [-1, 1] -> tokens [B, T, D]: a CNN grid, one token per cell, plus its position."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        layers, c_in = [], 3
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_in = c
        self.cnn = nn.Sequential(*layers)
        self.grid = config.image_size // 2 ** len(config.channels)
        self.proj = nn.Linear(c_in, config.embed_dim)
        self.position = nn.Parameter(0.02 * torch.randn(self.grid * self.grid, config.embed_dim))
        self.size = config.image_size

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True,
                                   align_corners=False)
        grid = self.cnn(images)  # [B, C, g, g]
        return self.proj(grid.flatten(2).transpose(1, 2)) + self.position  # [B, g*g, D]


class Captioner(nn.Module):
    """CNN tokens + GRU decoder with attention. ``vocab`` travels with the model (it is part of its weights' meaning)."""

    def __init__(self, vocab: Vocabulary, config: CaptionerConfig | None = None):
        super().__init__()
        self.vocab, self.config = vocab, config or CaptionerConfig()
        c, v = self.config, len(vocab)
        self.encoder = ImageEncoder(c)
        tokens = self.encoder.grid ** 2
        self.embed = nn.Embedding(v, c.embed_dim, padding_idx=vocab.pad)
        self.init_h = nn.Linear(tokens * c.embed_dim, c.hidden)  # the whole grid (where things are) starts the state
        self.query = nn.Linear(c.hidden, c.embed_dim)
        self.cell = nn.GRUCell(2 * c.embed_dim, c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden + c.embed_dim, v)

    # ---- the three pieces: start, one step, the teacher-forcing loss
    def start(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(memory [B, T, D], first state h0 [B, H]) for a batch of images in [-1, 1]."""
        memory = self.encoder(images)
        return memory, torch.tanh(self.init_h(memory.flatten(1)))

    def step(self, memory: Tensor, h: Tensor, words: Tensor) -> tuple[Tensor, Tensor]:
        """One decoder step: attend with the state, read the previous word, update the state, score the next word.

        Returns (logits [B, V], new state [B, H])."""
        q = self.query(h)  # [B, D]
        attention = torch.softmax((memory @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(q.shape[-1]), dim=-1)
        context = (attention.unsqueeze(-1) * memory).sum(1)  # [B, D]: the part of the image looked at
        h = self.cell(torch.cat([self.embed(words), context], dim=-1), h)
        return self.out(self.drop(torch.cat([h, context], dim=-1))), h

    def loss(self, images: Tensor, ids: Tensor) -> Tensor:
        """Teacher forcing: read ``ids[:, :-1]``, predict ``ids[:, 1:]``; mean cross-entropy over real (non-pad) targets.

        Trailing columns that are padding in every row are dropped first: they add nothing to the loss."""
        ids = ids[:, :int((ids != self.vocab.pad).sum(1).max())]
        inputs = ids[:, :-1]
        if self.training and self.config.word_dropout > 0:
            drop = (torch.rand(inputs.shape, device=ids.device) < self.config.word_dropout) & (inputs > self.vocab.unk)
            inputs = inputs.masked_fill(drop, self.vocab.unk)
        memory, h = self.start(images)
        logits = []
        for t in range(inputs.shape[1]):
            step_logits, h = self.step(memory, h, inputs[:, t])
            logits.append(step_logits)
        logits = torch.stack(logits, dim=1)  # [B, L-1, V]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                               ignore_index=self.vocab.pad)

    # ---- decoding
    @torch.no_grad()
    def greedy(self, images: Tensor, max_len: int | None = None) -> list[list[int]]:
        """The likeliest next word at every step, for a whole batch; word ids without <bos>/<eos>."""
        max_len = max_len or self.config.max_len
        memory, h = self.start(images)
        words = torch.full((len(images),), self.vocab.bos, dtype=torch.long, device=images.device)
        out, done = [], torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for _ in range(max_len):  # at most max_len words (beam search stops at the same length)
            logits, h = self.step(memory, h, words)
            words = logits.argmax(-1)
            out.append(torch.where(done, torch.full_like(words, self.vocab.eos), words))
            done |= words == self.vocab.eos
            if done.all():
                break
        rows = torch.stack(out, 1).tolist()
        return [row[:row.index(self.vocab.eos)] if self.vocab.eos in row else row for row in rows]

    @torch.no_grad()
    def beam(self, image: Tensor, width: int = 3, max_len: int | None = None) -> tuple[list[int], float]:
        """Beam search for one image [3, S, S]: (word ids, total log-probability)."""
        memory, h = self.start(image.unsqueeze(0))

        def next_log_probs(state: Tensor, words: Tensor) -> tuple[Tensor, Tensor]:
            logits, new = self.step(memory.expand(len(words), -1, -1), state, words)
            return torch.log_softmax(logits, -1), new

        return beam_search(next_log_probs, h, self.vocab.bos, self.vocab.eos, width, max_len or self.config.max_len)

    @torch.no_grad()
    def caption(self, images: np.ndarray | Tensor, beam: int = 1, batch_size: int = 256) -> list[str]:
        """Captions for uint8 [N, H, W, 3] or float [N, 3, H, W] images in [-1, 1]; ``beam`` 1 is greedy."""
        if beam < 1:
            raise T2IError(f"beam width must be at least 1, got {beam}")
        self.eval()
        device = next(self.parameters()).device
        out: list[str] = []
        for start in range(0, len(images), batch_size):
            batch = to_float(images[start:start + batch_size]).to(device)
            if beam == 1:
                out += [self.vocab.decode(ids) for ids in self.greedy(batch)]
            else:
                out += [self.vocab.decode(self.beam(image, beam)[0]) for image in batch]
        return out

    def record(self) -> dict:
        """What rebuilds the model: its config and its vocabulary (saved next to the weights)."""
        return {"model": asdict(self.config), "vocab": self.vocab.words}

    @classmethod
    def from_record(cls, record: dict) -> "Captioner":
        return cls(Vocabulary(record["vocab"]), CaptionerConfig.from_dict(record["model"]))


def beam_step(scores: Tensor, log_probs: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """One step of beam search: of the K x V ways to extend K beams by one word, keep the ``width`` best.

    ``scores`` [K] (log-probabilities of the beams so far), ``log_probs`` [K, V] (of each next word).
    Returns (new scores, which beam each extends, the word it adds), best first."""
    total = (scores.unsqueeze(1) + log_probs).flatten()  # [K * V]
    best, flat = total.topk(min(width, total.numel()))
    return best, flat // log_probs.shape[1], flat % log_probs.shape[1]


def beam_search(next_log_probs: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], state: Tensor, bos: int, eos: int,
                width: int, max_len: int) -> tuple[list[int], float]:
    """The best caption of at most ``max_len`` words by total log-probability, keeping ``width`` beams.

    ``next_log_probs(states [K, ...], last words [K]) -> (log_probs [K, V], new states [K, ...])``.
    A beam that picks ``<eos>`` is finished; the search stops when no live beam can still beat the best
    finished one (log-probabilities only fall). Width 1 is greedy decoding; a width that keeps every
    sequence is exhaustive search. Without a finished beam after ``max_len`` words, the best live one."""
    seqs, scores, words = [[]], torch.zeros(1), torch.tensor([bos])
    best: tuple[list[int], float] | None = None
    for _ in range(max_len + 1):
        log_probs, state = next_log_probs(state, words)
        if len(seqs[0]) == max_len:  # no room for another word: only <eos> may follow
            keep = torch.full_like(log_probs, -math.inf)
            keep[:, eos] = log_probs[:, eos]
            log_probs = keep
        new_scores, parent, word = beam_step(scores, log_probs.float().cpu(), width)
        alive = []
        for s, p, w in zip(new_scores.tolist(), parent.tolist(), word.tolist()):
            if s == -math.inf:
                continue
            if w == eos:
                if best is None or s > best[1]:
                    best = (seqs[p], s)
            else:
                alive.append((seqs[p] + [w], s, p))
        if not alive or (best is not None and best[1] >= max(s for _, s, _ in alive)):
            break
        seqs = [a[0] for a in alive]
        scores = torch.tensor([a[1] for a in alive])
        index = torch.tensor([a[2] for a in alive])
        state, words = state[index.to(state.device)], torch.tensor([a[0][-1] for a in alive], device=state.device)
    if best is None:
        return seqs[0], float(scores[0])
    return best[0], float(best[1])


__all__ = ["PAD", "BOS", "EOS", "UNK", "SPECIALS", "tokenize", "Vocabulary", "CaptionerConfig", "ImageEncoder",
           "Captioner", "beam_step", "beam_search"]
