"""The text encoder: a frozen BERT-style model from ``transformers``, and how it pools its token states.

It turns a list of captions into ``pooled`` [B, D] (one vector per caption: the mean over the *real*
tokens, or the [CLS] state) and ``tokens`` [B, L, D] with ``mask`` [B, L] (one vector per word piece,
for models that attend to words).
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2i_helpers.errors import T2IError
from t2i_helpers.text.config import TextEncoderConfig, model_key
from t2i_helpers.text.hub import load_pretrained
from t2i_helpers.text.pooling import cls_pool, mean_pool


@dataclass(eq=False)
class TextFeatures:
    """What the encoder makes of a batch of captions."""

    pooled: Tensor  # [B, D] float32: one vector per caption ("mean" or "cls" by config)
    tokens: Tensor  # [B, L, D] float32 token states, zero on padding, L = config.max_length
    mask: Tensor  # [B, L] bool, True on real tokens (incl. [CLS] and [SEP])

    def to(self, device: torch.device | str) -> "TextFeatures":
        return TextFeatures(self.pooled.to(device), self.tokens.to(device), self.mask.to(device))


def check_captions(captions: Sequence[str]) -> list[str]:
    """The captions as a list, or a one-line error for a lone string or a caption that is not text."""
    if isinstance(captions, str):
        raise T2IError(f"expected a list of captions, got one string: {captions[:60]!r}")
    captions = list(captions)
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise T2IError(f"caption {i} is not a string: {caption!r:.60}")
    return captions


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, compute with one thread: with two, a caption's vector moved by ~6e-7 with the
    other captions of its batch (the matrix products split the work by batch shape), and cached
    vectors must not depend on what was encoded with them. Elsewhere: nothing changes."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TextEncoder(nn.Module):
    """A BERT-style encoder from ``transformers`` with the pooling of :class:`TextEncoderConfig`.

    Frozen (the default): eval mode (no dropout) even if a parent module calls ``.train()``, no
    parameter requires grad, and :meth:`encode` runs without building a graph.
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or TextEncoderConfig()
        self.tokenizer, bert = load_pretrained(self.config.model_name)
        # float32 whatever the files hold (transformers 5 keeps a float16 export in float16): the
        # vectors are computed once and cached, so the cheaper arithmetic buys nothing.
        self.bert = bert.float()
        self.key = model_key(self.config)
        if not self.config.trainable:
            self.bert.requires_grad_(False)
        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.to(device)
        self.train(False)

    # -- small facts ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Size D of one caption vector (384 for all-MiniLM-L6-v2, 768 for bert-base-uncased)."""
        return int(self.bert.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.bert.parameters()).device

    def train(self, mode: bool = True) -> "TextEncoder":
        """Keep a frozen encoder in eval mode: dropout would make cached vectors random."""
        super().train(mode)
        if not self.config.trainable:
            self.bert.eval()
        return self

    # -- tokens --------------------------------------------------------------------------------
    def tokenize(self, captions: Sequence[str], padding: str | bool = "longest") -> dict[str, Tensor]:
        """Word-piece ids and attention mask, cut to ``max_length``, on the encoder's device.

        (The reference left these on the CPU, which fails as soon as the model is on a GPU.)
        """
        captions = check_captions(captions)
        batch = self.tokenizer(
            captions,
            padding=padding,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return {name: value.to(self.device) for name, value in batch.items()}

    def token_strings(self, captions: Sequence[str]) -> list[list[str]]:
        """The word pieces each caption becomes (with [CLS]/[SEP], without padding), for display."""
        ids = self.tokenize(captions)
        out = []
        for row, mask in zip(ids["input_ids"].tolist(), ids["attention_mask"].tolist()):
            out.append(self.tokenizer.convert_ids_to_tokens([i for i, m in zip(row, mask) if m]))
        return out

    # -- encoding ------------------------------------------------------------------------------
    def _encode_tokens(self, inputs: dict[str, Tensor]) -> TextFeatures:
        hidden = self.bert(**inputs).last_hidden_state  # [B, max_length, D]
        mask = inputs["attention_mask"].bool()
        pooled = cls_pool(hidden) if self.config.pooling == "cls" else mean_pool(hidden, mask)
        # Pad to max_length so every batch (and the cached table) has the same token shape.
        hidden = hidden * mask.unsqueeze(-1)  # zero states on padding
        extra = self.config.max_length - hidden.shape[1]
        if extra > 0:
            hidden = nn.functional.pad(hidden, (0, 0, 0, extra))
            mask = nn.functional.pad(mask, (0, extra), value=False)
        return TextFeatures(pooled.float(), hidden.float(), mask)

    def _encode_frozen(self, inputs: dict[str, Tensor]) -> TextFeatures:
        # No graph (plain no_grad, not inference_mode, so the outputs may still feed a trainable
        # layer). Grad mode is per thread, so each call sets it itself, in a worker thread too.
        with torch.no_grad():
            return self._encode_tokens(inputs)

    def encode(self, captions: Sequence[str], batch_size: int | None = None) -> TextFeatures:
        """Encode captions in batches of ``batch_size`` (default: config), sorted by length.

        Sorting puts captions of similar length together, so little compute goes into padding;
        the results come back in the input order.
        """
        captions = check_captions(captions)
        if not captions:
            raise T2IError("no captions to encode")
        size = int(batch_size or self.config.batch_size)
        order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
        # Always pad to max_length: with "longest" padding a caption's vector moved by ~1e-6 with the
        # other captions in its batch, so cached embeddings depended on what was encoded together.
        # The fast tokenizer is not safe to share between threads, so every batch is tokenized here.
        inputs = [self.tokenize([captions[i] for i in order[start : start + size]], padding="max_length")
                  for start in range(0, len(order), size)]
        # Trainable: follow the caller's grad mode. Frozen, on the CPU: one batch per torch thread, each
        # batch on one thread (one_cpu_thread), the same numbers as one after the other in about half
        # the time on 2 cores.
        encode = self._encode_tokens if self.config.trainable else self._encode_frozen
        workers = min(torch.get_num_threads(), len(inputs)) if self.device.type == "cpu" else 1
        with one_cpu_thread(self.device):
            if self.config.trainable or workers < 2:
                parts = [encode(batch) for batch in inputs]
            else:
                with ThreadPoolExecutor(workers) as pool:
                    parts = list(pool.map(encode, inputs))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(parts[0].pooled.device)
        return TextFeatures(
            pooled=torch.cat([p.pooled for p in parts])[inverse],
            tokens=torch.cat([p.tokens for p in parts])[inverse],
            mask=torch.cat([p.mask for p in parts])[inverse],
        )

    def forward(self, captions: Sequence[str]) -> Tensor:
        """Pooled vectors [B, D] ("mean"/"cls"), or token states [B, L, D] for pooling="tokens"."""
        features = self.encode(captions)
        return features.tokens if self.config.pooling == "tokens" else features.pooled
