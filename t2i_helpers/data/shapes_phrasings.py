"""Caption paraphrase for Shapes, and a split of phrasings never seen in training (issue 19).

Two extra files beside a Shapes folder's English ones, written from them (the images, attributes
and the standard files are not touched, so checkpoints, judges and caches stay valid):

* ``captions_val.phrasings.json``: the same val images, each captioned five times in sentence
  frames and a word order that no training file ever uses (``HELD_OUT_TEMPLATES``: "the picture
  shows ...", "a circle that is small and red", the position first). It asks whether a model
  understands a caption or only recognises its training sentences.
* ``captions_train.paraphrased.json``: the standard five train captions per image plus five
  paraphrases in other new frames and word orders (``PARAPHRASE_TEMPLATES``, disjoint from the
  held-out ones): the text-side augmentation.

Which attributes a caption names (``mentions``) is drawn exactly as for the standard captions, so
the judge scores them the same way. Both files keep the standard file's ``info`` and ``images``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from t2i_helpers.data.drawing import pick_option, with_article
from t2i_helpers.data.shapes import (OMIT_PROBABILITY, POSITION_WORDS, SHAPE_WORDS, SIZE_WORDS, TEMPLATES,
                                     ShapesPaths)
from t2i_helpers.data.shapes_zh import english_annotation
from t2i_helpers.errors import T2IError
from t2i_helpers.files import atomic_write_bytes, file_digest

PHRASINGS_VERSION = 1  # bump when the templates change: the files are then rewritten
SALT = 1919  # their own random stream, apart from the standard and the Chinese captions
PARAPHRASES_PER_IMAGE = 5
DRAWS = 7  # uniform numbers one caption consumes

# Noun phrases in a new word order. {size} may be empty, then the phrase reads without it.
# Held out: a relative clause. Paraphrase (training): a participle after the noun.
NP_HELD_OUT = ("a {shape} that is {size} and {color}", "a {shape} that is {color}")
NP_PARAPHRASE = ("a {size} {shape} coloured {color}", "a {shape} coloured {color}")

# (with position, without position); {np} a noun phrase in the standard order ("a small red circle"),
# {alt} the new order above, {pos}/{Pos} a position phrase.
HELD_OUT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("the picture shows {np} {pos}", "the picture shows {np}"),
    ("{Pos} there is {np}", "here we see {np}"),
    ("you can see {alt} {pos}", "you can see {alt}"),
    ("{Pos}: {alt}", "a black image with {alt}"),
)
PARAPHRASE_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("{Pos} is {np}", "the image contains {np}"),
    ("we are looking at {alt} {pos}", "we are looking at {alt}"),
    ("{alt} {pos}", "{alt}"),
    ("a photo of {np}, {pos}", "a photo of {np}"),
    ("{np} is drawn {pos}", "{np} is drawn on black"),
)


def phrase_caption(attributes: dict, u, templates: tuple[tuple[str, str], ...], noun_phrases: tuple[str, str]
                   ) -> tuple[str, list[str]]:
    """One caption in ``templates`` for an image's attributes, and its ``mentions`` (``u``: 7 numbers)."""
    with_size, with_position = u[0] >= OMIT_PROBABILITY, u[1] >= OMIT_PROBABILITY
    size = pick_option(SIZE_WORDS[attributes["size"]], u[2]) if with_size else ""
    shape, color = pick_option(SHAPE_WORDS[attributes["shape"]], u[3]), attributes["color"]
    standard = with_article(" ".join([size, color, shape]).strip())
    alt = noun_phrases[0 if with_size else 1].format(shape=shape, size=size, color=color)
    template = pick_option(templates, u[4])[0 if with_position else 1]
    fields = {"np": standard, "alt": alt}
    if with_position:
        pos = pick_option(POSITION_WORDS[attributes["position"]][0], u[5])
        fields.update(pos=pos, Pos=pos[0].upper() + pos[1:])
    mentions = ["color", "shape"] + (["size"] if with_size else []) + (["position"] if with_position else [])
    return template.format(**fields), mentions


def phrasing_paths(paths: ShapesPaths) -> tuple[Path, Path]:
    """(train file with paraphrases, val file in held-out phrasings) beside the standard files."""
    return (paths.train_json.with_name("captions_train.paraphrased.json"),
            paths.val_json.with_name("captions_val.phrasings.json"))


def _new_annotations(doc: dict, seed: int, held_out: bool) -> list[dict]:
    templates, nps = (HELD_OUT_TEMPLATES, NP_HELD_OUT) if held_out else (PARAPHRASE_TEMPLATES, NP_PARAPHRASE)
    images = doc["images"]
    draws = np.random.default_rng([int(seed), SALT, int(held_out)]).random((len(images), 3 * PARAPHRASES_PER_IMAGE, DRAWS))
    next_id = max((a["id"] for a in doc["annotations"]), default=0) + 1
    out = []
    for image, rows in zip(images, draws.tolist()):
        captions: dict[str, list[str]] = {}
        for row in rows:  # distinct captions, as many as the draws allow
            caption, mentions = phrase_caption(image, row, templates, nps)
            captions.setdefault(caption, mentions)
            if len(captions) == PARAPHRASES_PER_IMAGE:
                break
        for caption, mentions in captions.items():
            out.append({"id": next_id, "image_id": image["id"], "caption": caption, "mentions": mentions})
            next_id += 1
    return out


def _write(source: Path, out: Path, seed: int, held_out: bool) -> Path:
    digest = file_digest(source, length=16)
    try:
        info = json.loads(out.read_text(encoding="utf-8")).get("info", {})
        if info.get("source_digest") == digest and info.get("phrasings_version") == PHRASINGS_VERSION:
            return out
    except (OSError, ValueError, AttributeError):
        pass
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
        new = _new_annotations(doc, seed, held_out)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise T2IError(f"not a Shapes annotation file: {source} ({err})") from err
    kept = [] if held_out else doc["annotations"]
    info = dict(doc.get("info", {}), source_digest=digest, phrasings_version=PHRASINGS_VERSION,
                phrasings="held-out phrasings (never in training)" if held_out else "standard + paraphrased captions")
    text = json.dumps({"info": info, "licenses": [], "images": doc["images"], "annotations": kept + new},
                      ensure_ascii=False, separators=(",", ":"))
    atomic_write_bytes(out, (text + "\n").encode("utf-8"))
    return out


def write_phrasing_files(paths: ShapesPaths | str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write (or keep, if current) both files for a Shapes folder (its :class:`ShapesPaths` or its root,
    as :func:`shapes_dataset` returns it); returns the (train, val) paths."""
    if not isinstance(paths, ShapesPaths):
        paths = ShapesPaths.at(paths)
    train_out, val_out = phrasing_paths(paths)
    return _write(paths.train_json, train_out, seed, False), _write(paths.val_json, val_out, seed, True)


def standard_annotation(ann_file: str | Path) -> Path:
    """The standard English file a variant is parallel to (``.phrasings``, ``.paraphrased``, ``.zh``):
    the one judges train on (same images, same attributes). Any other file unchanged."""
    path = Path(ann_file)
    for variant in (".phrasings.json", ".paraphrased.json"):
        if path.name.endswith(variant):
            standard = path.with_name(path.name[: -len(variant)] + ".json")
            return standard if standard.is_file() else path
    return english_annotation(path)


def standard_templates() -> set[str]:
    """Every sentence frame of the standard captions (for the check that held-out ones are new)."""
    return {frame for pair in TEMPLATES for frame in pair}


__all__ = ["HELD_OUT_TEMPLATES", "PARAPHRASE_TEMPLATES", "NP_HELD_OUT", "NP_PARAPHRASE", "phrase_caption",
           "phrasing_paths", "standard_annotation", "standard_templates", "write_phrasing_files"]
