"""A small character-level Chinese text encoder for Shapes, distilled from the frozen English MiniLM.

all-MiniLM-L6-v2 is English: its WordPiece vocabulary turns most Chinese characters into ``[UNK]``.
This trains a 2-layer BERT (hidden size 384, like MiniLM) over a vocabulary of single characters
(Chinese needs no word segmentation for this) to map each Chinese training caption to the MiniLM
vector of its parallel English caption (the Shapes files are parallel by construction, same ids):
mean squared error plus cosine distance on the mean-pooled output, the pooling the text encoder
uses. It is saved as a plain ``transformers`` folder (``BertModel`` + ``BertTokenizer``, float16
safetensors), so ``TextEncoderConfig(model_name=<folder>)`` loads it offline like MiniLM, and the
caption cache and the training engine work unchanged. Only train-split captions are seen: the
held-out colour-shape pairs are new to it too.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import BertConfig, BertModel, BertTokenizerFast

from t2i_helpers.data.shapes_zh import english_annotation
from t2i_helpers.errors import T2IError
from t2i_helpers.files import atomic_write_text
from t2i_helpers.text import TextEncoder, TextEncoderConfig, encode_captions, mean_pool
from t2i_helpers.text.hub import DEFAULT_MODEL
from t2i_helpers.train.shipped import sha256

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Beyond the captions' own characters: Chinese and ASCII punctuation, digits and letters, so that
# mixed or odd input is split into characters the model knows (or [UNK]) rather than failing.
EXTRA_CHARS = "，。：；！？、（）“”《》 " + "".join(chr(c) for c in range(33, 127))


@dataclass
class CharEncoderConfig:
    """The student's size and how it is trained (hidden size 384: the teacher's vector size)."""

    layers: int = 2
    heads: int = 6
    hidden: int = 384
    intermediate: int = 512
    max_length: int = 32  # characters per caption incl. [CLS]/[SEP]; the longest Shapes caption has 26
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 100
    cosine_weight: float = 1.0
    seed: int = 0
    teacher: str = DEFAULT_MODEL


def character_vocab(captions: list[str]) -> list[str]:
    """Special tokens, then every character of the captions and of :data:`EXTRA_CHARS`, sorted
    (lower-cased: the tokenizer lower-cases), then ``##`` forms of the ASCII letters and digits
    (WordPiece continues a Latin word with them)."""
    chars = sorted({ch for text in captions for ch in text.lower()} | set(EXTRA_CHARS.lower()) - {" "})
    ascii_alnum = [c for c in chars if c.isascii() and c.isalnum()]
    return list(SPECIAL) + chars + [f"##{c}" for c in ascii_alnum]


def build_tokenizer(vocab: list[str], folder: Path, max_length: int) -> BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    # positional: the vocabulary file is `vocab_file` in transformers 4 and `vocab` in 5
    return BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True, tokenize_chinese_chars=True,
                             model_max_length=max_length)


def parallel_captions(zh_train_json: str | Path) -> tuple[list[str], list[str]]:
    """(Chinese, English) caption pairs of a Shapes split, matched by annotation id."""
    zh_train_json = Path(zh_train_json)
    english_json = english_annotation(zh_train_json)
    if english_json == zh_train_json:
        raise T2IError(f"{zh_train_json} is not a Chinese Shapes file (*.zh.json beside its English one)")
    zh, en = (json.loads(p.read_text(encoding="utf-8"))["annotations"] for p in (zh_train_json, english_json))
    english = {a["id"]: a["caption"] for a in en}
    try:
        return [a["caption"] for a in zh], [english[a["id"]] for a in zh]
    except KeyError as err:
        raise T2IError(f"{zh_train_json}: annotation {err.args[0]} has no English caption in {english_json}") from None


def teacher_vectors(english: list[str], config: CharEncoderConfig) -> Tensor:
    """The frozen teacher's mean-pooled vectors of the English captions (read from the caption cache)."""
    table, _ = encode_captions(english, TextEncoderConfig(model_name=config.teacher, max_length=32, pooling="mean"))
    return table.pooled


def _student(vocab_size: int, config: CharEncoderConfig) -> BertModel:
    torch.manual_seed(config.seed)
    return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
                                num_attention_heads=config.heads, intermediate_size=config.intermediate,
                                max_position_embeddings=64, type_vocab_size=1))


def _loss(model: BertModel, batch: dict, target: Tensor, config: CharEncoderConfig) -> Tensor:
    hidden = model(**batch).last_hidden_state
    pooled = mean_pool(hidden, batch["attention_mask"].bool())
    mse = (pooled - target).pow(2).mean()
    cosine = 1 - torch.nn.functional.cosine_similarity(pooled, target, dim=-1).mean()
    return mse + config.cosine_weight * cosine


def fit_char_encoder(zh: list[str], target: Tensor, tokenizer: BertTokenizerFast, config: CharEncoderConfig,
                     log=print) -> tuple[BertModel, list[float], float]:
    """Train the student on (caption, teacher vector) pairs; returns it (eval mode), losses, seconds."""
    model = _student(len(tokenizer.get_vocab()), config)
    ids = tokenizer(zh, padding="max_length", truncation=True, max_length=config.max_length, return_tensors="pt",
                    return_token_type_ids=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    rng = np.random.default_rng(config.seed)
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(config.steps):
        rows = torch.as_tensor(rng.integers(len(zh), size=config.batch_size))
        width = int(ids["attention_mask"][rows].sum(1).max())  # cut the batch to its longest caption
        batch = {k: v[rows, :width] for k, v in ids.items()}
        warm = min(1.0, (step + 1) / config.warmup_steps)
        decay = 0.5 * (1 + np.cos(np.pi * step / config.steps))  # cosine to 0
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warm * decay
        loss = _loss(model, batch, target[rows], config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % 250 == 0:
            log(f"char encoder: step {step + 1}/{config.steps}, loss {np.mean(losses[-250:]):.4f}, "
                f"{time.perf_counter() - start:.0f} s")
    model.eval()
    return model, losses, time.perf_counter() - start


def train_char_encoder(zh_train_json: str | Path, out_dir: str | Path, config: CharEncoderConfig | None = None,
                       command: str = "", log=print) -> Path:
    """Train the character-level encoder on a Chinese Shapes train file and save it as a folder
    (written under a temporary name, then renamed: complete or absent)."""
    config = config or CharEncoderConfig()
    torch.set_num_threads(1)  # the numbers in docs/chinese.md are single-thread
    zh, en = parallel_captions(zh_train_json)
    target = teacher_vectors(en, config)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer = build_tokenizer(character_vocab(zh), tmp, config.max_length)
        model, losses, seconds = fit_char_encoder(zh, target, tokenizer, config, log)
        model.half().save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"config": asdict(config), "train_file": Path(zh_train_json).name, "pairs": len(zh),
                  "distinct_captions": len(set(zh)), "train_seconds": round(seconds, 1),
                  "final_loss": round(float(np.mean(losses[-100:])), 5), "command": command,
                  "parameters": sum(p.numel() for p in model.parameters()), "threads": 1}
        atomic_write_text(tmp / "training.json", json.dumps(record, indent=1))
        for f in tmp.iterdir():
            f.chmod(0o644)  # readable by all, as a package file must be (mkdtemp made the folder private)
        tmp.chmod(0o755)
        sums = {f.name: sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        atomic_write_text(tmp / "SHA256SUMS", "".join(f"{d}  {n}\n" for n, d in sums.items()))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@torch.no_grad()
def distillation_report(zh_json: str | Path, student: str | Path, config: CharEncoderConfig | None = None) -> dict:
    """How close the student's vectors are to the teacher's on a split (normally val): mean cosine,
    and how often the nearest teacher vector of a distinct English caption means the same thing
    (names the same attribute values), overall and on the held-out colour-shape pairs."""
    config = config or CharEncoderConfig()
    zh, en = parallel_captions(zh_json)
    doc = json.loads(Path(zh_json).read_text(encoding="utf-8"))
    images = {e["id"]: e for e in doc["images"]}
    held_pairs = {tuple(p) for p in doc["info"].get("held_out_pairs", [])}
    meaning = [tuple((k, images[a["image_id"]][k]) for k in sorted(a["mentions"])) for a in doc["annotations"]]
    is_held = np.array([(images[a["image_id"]]["color"], images[a["image_id"]]["shape"]) in held_pairs
                        for a in doc["annotations"]])
    target = teacher_vectors(en, config)
    vectors = TextEncoder(TextEncoderConfig(model_name=str(student), max_length=config.max_length)).encode(zh).pooled
    cosine = torch.nn.functional.cosine_similarity(vectors, target, dim=-1).numpy()
    first = list({caption: i for i, caption in reversed(list(enumerate(en)))}.values())  # one row per distinct caption
    bank = torch.nn.functional.normalize(target[first], dim=-1)
    nearest = (torch.nn.functional.normalize(vectors, dim=-1) @ bank.T).argmax(1).numpy()
    same = np.array([meaning[first[j]] == meaning[i] for i, j in enumerate(nearest)])
    return {"n": len(zh), "n_held_out": int(is_held.sum()), "cosine_mean": round(float(cosine.mean()), 4),
            "cosine_held_out": round(float(cosine[is_held].mean()), 4) if is_held.any() else None,
            "same_meaning_at_1": round(float(same.mean()), 4),
            "same_meaning_at_1_held_out": round(float(same[is_held].mean()), 4) if is_held.any() else None}


__all__ = ["CharEncoderConfig", "build_tokenizer", "character_vocab", "distillation_report", "fit_char_encoder",
           "parallel_captions", "teacher_vectors", "train_char_encoder"]
