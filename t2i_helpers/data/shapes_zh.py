"""Chinese captions for Shapes, beside the English ones: same images, same ``mentions``, same held-out pairs.

The English files (``captions_train.json`` / ``captions_val.json``) are never touched: the Chinese
ones (``captions_train.zh.json`` / ``captions_val.zh.json``) are written next to them from the same
image attributes. Each English caption gets one parallel Chinese caption with the same id and the
same ``mentions`` (so size and position are each left out with probability 1/3, as in English, and
the two files are parallel by construction); the wording is drawn from its own seeded random
stream, so adding Chinese files changes no English byte nor any draw that made them.

Templates vary the word order (the position before or after the object: 左上角有一个红色的圆形 /
一个红色的大圆形在左上角), the measure word (一个, 一枚, 一块, or none), the verb (在, 位于, 画着,
有, 是) and the size's form (红色的大圆形 / 一个很大的红色圆形).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from t2i_helpers.data.drawing import pick_option
from t2i_helpers.errors import T2IError
from t2i_helpers.files import atomic_write_bytes, file_digest

ZH_VERSION = 1  # bump when the templates change: the Chinese files are then rewritten
ZH_SEED_SALT = 0x7A68  # "zh": the Chinese stream is default_rng([seed, ZH_SEED_SALT]), apart from the English one

# --- vocabulary: the colour is always its canonical word, shapes and sizes have synonyms ---
COLOR_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "white": "白色"}
SHAPE_ZH = {"circle": ("圆形", "圆", "圆盘"), "square": ("正方形", "方块", "方形"), "triangle": ("三角形",)}
# Measure words that fit each shape ("" : no numeral at all, "红色的圆形").
MEASURE_ZH = {"circle": ("一个", "一枚", ""), "square": ("一个", "一块", ""), "triangle": ("一个", "")}
# (bound form before the noun without 的, free form with 的): 大圆形 / 很大的红色圆形
SIZE_ZH = {"small": (("小",), ("小的", "很小的", "小小的")), "large": (("大",), ("大的", "很大的", "大大的"))}
POSITION_ZH = {
    "top left": ("左上角", "左上方"), "top": ("顶部", "上方", "上边"), "top right": ("右上角", "右上方"),
    "left": ("左侧", "左边"), "center": ("中央", "中间", "正中间"), "right": ("右侧", "右边"),
    "bottom left": ("左下角", "左下方"), "bottom": ("底部", "下方", "下边"), "bottom right": ("右下角", "右下方"),
}
# "{posp}": a place phrase after the noun ("在左上角" / "位于图像的左上角"); "{pos}": the bare place word.
PLACE_PHRASES = ("在{pos}", "位于{pos}", "在图像的{pos}", "位于画面{pos}")
# Each phrasing: (with position, without position); {np} is the noun phrase "一个红色的大圆形".
TEMPLATES_ZH: tuple[tuple[str, str], ...] = (
    ("{np}{posp}", "{np}"),
    ("{pos}有{np}", "有{np}"),
    ("画面{pos}画着{np}", "画面上画着{np}"),
    ("黑色背景上，{np}{posp}", "黑色背景上有{np}"),
    ("图中{pos}是{np}", "图中是{np}"),
    ("一张图片：{np}{posp}", "一张图片：{np}"),
    ("{pos}：{np}", "{np}，黑色背景"),
    ("{np}出现在{pos}", "只有{np}"),
    ("在{pos}可以看到{np}", "可以看到{np}"),
    ("{pos}画着{np}", "黑底上画着{np}"),
)
ZH_DRAWS = 6  # uniform numbers one Chinese caption consumes
ZH_TRIES = 4  # wordings tried per caption to keep an image's captions distinct


def make_caption_zh(attributes: dict, mentions, u) -> str:
    """The Chinese caption for an image's ``attributes`` naming exactly ``mentions`` (colour and shape
    always; size and position if listed). ``u``: six uniform numbers in [0, 1) or a Generator."""
    if isinstance(u, np.random.Generator):
        u = u.random(ZH_DRAWS)
    shape = attributes["shape"]
    color, noun = COLOR_ZH[attributes["color"]], pick_option(SHAPE_ZH[shape], u[0])
    measure = pick_option(MEASURE_ZH[shape], u[1])
    if "size" in mentions:
        bound, free = SIZE_ZH[attributes["size"]]
        # half the time 红色的大圆形, half the time 很大的红色圆形
        body = f"{color}的{bound[0]}{noun}" if u[2] < 0.5 else f"{pick_option(free, 2 * u[2] - 1)}{color}{noun}"
    else:
        body = f"{color}的{noun}" if u[2] < 0.5 else f"{color}{noun}"
    template = pick_option(TEMPLATES_ZH, u[3])
    if "position" not in mentions:
        return template[1].format(np=measure + body)
    pos = pick_option(POSITION_ZH[attributes["position"]], u[4])
    return template[0].format(np=measure + body, pos=pos, posp=pick_option(PLACE_PHRASES, u[5]).format(pos=pos))


def zh_path(english_json: str | Path) -> Path:
    """``captions_train.json`` -> ``captions_train.zh.json`` (the Chinese file beside it)."""
    path = Path(english_json)
    return path.with_name(f"{path.stem}.zh.json")


def english_annotation(ann_file: str | Path) -> Path:
    """The English file a Chinese one is parallel to (the judges train on it: same images, same
    attributes); any other file unchanged."""
    path = Path(ann_file)
    if path.name.endswith(".zh.json"):
        english = path.with_name(path.name[: -len(".zh.json")] + ".json")
        if english.is_file():
            return english
    return path


def _chinese_doc(doc: dict, seed: int, english_digest: str) -> dict:
    """The Chinese document for an English Shapes document (its own random stream, in annotation order)."""
    images = {e["id"]: e for e in doc["images"]}
    anns = doc["annotations"]
    split = str(doc.get("info", {}).get("split", ""))
    salt = [int(seed), ZH_SEED_SALT, 1 if split == "val" else 0]
    draws = np.random.default_rng(salt).random((len(anns), ZH_TRIES, ZH_DRAWS))
    seen: dict[int, set[str]] = {}
    out = []
    for ann, rows in zip(anns, draws.tolist()):
        used = seen.setdefault(ann["image_id"], set())
        attributes = images[ann["image_id"]]
        for row in rows:  # the first wording not yet used for this image (else the last one tried)
            caption = make_caption_zh(attributes, ann["mentions"], row)
            if caption not in used:
                break
        used.add(caption)
        out.append({"id": ann["id"], "image_id": ann["image_id"], "caption": caption, "mentions": ann["mentions"]})
    info = dict(doc.get("info", {}), language="zh", zh_version=ZH_VERSION, english_digest=english_digest,
                description="Shapes benchmark, Chinese captions")
    return {"info": info, "licenses": [], "images": doc["images"], "annotations": out}


def _zh_up_to_date(path: Path, english_digest: str) -> bool:
    try:
        info = json.loads(path.read_text(encoding="utf-8")).get("info", {})
    except (OSError, ValueError, AttributeError):
        return False
    return info.get("english_digest") == english_digest and info.get("zh_version") == ZH_VERSION


def write_chinese_captions(english_json: str | Path, seed: int = 0) -> Path:
    """Write (or keep, if current) the Chinese file beside ``english_json``; returns its path."""
    english_json = Path(english_json)
    out = zh_path(english_json)
    digest = file_digest(english_json, length=16)
    if _zh_up_to_date(out, digest):
        return out
    try:
        doc = json.loads(english_json.read_text(encoding="utf-8"))
        doc["images"], doc["annotations"]  # noqa: B018 (the keys a Shapes file has)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise T2IError(f"not a Shapes annotation file: {english_json} ({err})") from err
    zh = _chinese_doc(doc, seed, digest)
    atomic_write_bytes(out, (json.dumps(zh, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
    return out


__all__ = ["COLOR_ZH", "SHAPE_ZH", "MEASURE_ZH", "SIZE_ZH", "POSITION_ZH", "PLACE_PHRASES", "TEMPLATES_ZH",
           "ZH_VERSION", "english_annotation", "make_caption_zh", "write_chinese_captions", "zh_path"]
