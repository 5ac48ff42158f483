"""COCO captions (and the Shapes benchmark, which uses the same format): validate, load, inspect.

Three things the reference pipeline got wrong, fixed here:

* A malformed annotation file gave a pycocotools ``AssertionError``; here it is one line naming the
  file and the problem (:class:`~t2i_helpers.errors.DatasetError`).
* One unreadable JPEG stopped a whole epoch with a PIL traceback; here bad or missing images are
  skipped and counted with the reason (``dataset.skipped``).
* The default ``DataLoader`` collate turns a batch of 5-caption lists into 5 tuples, one per caption
  *position*; :func:`collate_captions` keeps one list of captions per image.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.datasets import CocoCaptions, VisionDataset

from t2i_helpers.errors import DatasetError

LONG_CAPTION_WORDS = 50  # COCO captions average ~10 words; longer ones are kept but counted
_WORD = re.compile(r"\w+", re.UNICODE)
REQUIRED_IMAGE_KEYS = ("id", "file_name")
REQUIRED_ANNOTATION_KEYS = ("id", "image_id", "caption")
SHAPES_ATTRIBUTE_KEYS = ("shape", "color", "size", "position")


def words(caption: str) -> list[str]:
    """Lower-cased word tokens (letters/digits runs): what "words per caption" and "vocabulary" count."""
    return _WORD.findall(caption.lower())


@dataclass
class CaptionsIndex:
    """A validated COCO captions file: image entries in id order and the captions of each image.

    Empty captions are dropped; long and non-ASCII captions are kept. Every oddity is counted.
    """

    ann_file: Path
    image_root: Path | None
    images: list[dict]  # the JSON's image entries, sorted by id
    captions: dict[int, list[str]]  # image id -> its captions (stripped, empty ones dropped), JSON order
    mentions: dict[int, list[list[str] | None]]  # image id -> per caption ``mentions`` (Shapes) or None
    info: dict = field(default_factory=dict)
    images_without_captions: int = 0
    empty_captions: int = 0
    long_captions: int = 0
    non_ascii_captions: int = 0
    unknown_image_annotations: int = 0  # annotations whose image_id has no image entry (ignored)
    duplicate_image_ids: int = 0
    missing_files: list[str] = field(default_factory=list)  # only checked when image_root is given

    @property
    def image_ids(self) -> list[int]:
        return [entry["id"] for entry in self.images]

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions.values())

    def attributes(self, entry: dict) -> dict | None:
        """The Shapes attributes of an image entry, or None for real COCO images."""
        if all(k in entry for k in SHAPES_ATTRIBUTE_KEYS):
            return {k: entry[k] for k in SHAPES_ATTRIBUTE_KEYS}
        return None

    def counts(self) -> dict[str, int]:
        return {
            "images_without_captions": self.images_without_captions,
            "empty_captions": self.empty_captions,
            "long_captions": self.long_captions,
            "non_ascii_captions": self.non_ascii_captions,
            "unknown_image_annotations": self.unknown_image_annotations,
            "duplicate_image_ids": self.duplicate_image_ids,
            "missing_files": len(self.missing_files),
        }


def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, expected a COCO captions JSON file") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not a JSON file (not UTF-8 text: {err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror or err})") from None


def _check_entries(path: Path, name: str, entries: Any, required: Sequence[str]) -> None:
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: '{name}' must be a list, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: {name}[{i}] must be an object, got {type(entry).__name__}")
        missing = [k for k in required if k not in entry]
        if missing:
            raise DatasetError(f"{path}: {name}[{i}] lacks {', '.join(repr(k) for k in missing)}")


def load_captions_index(ann_file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> CaptionsIndex:
    """Read and validate a COCO captions JSON file; with ``image_root``, also list missing image files.

    Raises :class:`DatasetError` (one line, naming the file) for anything that is not COCO captions:
    not JSON, not an object, no ``images`` / ``annotations`` lists, entries without their keys.
    """
    path = Path(ann_file)
    return _index_from_dict(path, _read_captions_json(path), image_root)


def _read_captions_json(path: Path) -> dict:
    """The parsed file, validated as COCO captions (DatasetError otherwise)."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'images' and 'annotations', got a {type(data).__name__}")
    missing = [k for k in ("images", "annotations") if k not in data]
    if missing:
        raise DatasetError(f"{path}: not a COCO captions file (no {' or '.join(repr(k) for k in missing)} key)")
    _check_entries(path, "images", data["images"], REQUIRED_IMAGE_KEYS)
    _check_entries(path, "annotations", data["annotations"], REQUIRED_ANNOTATION_KEYS)
    return data


def _index_from_dict(path: Path, data: dict, image_root: str | os.PathLike | None) -> CaptionsIndex:
    images: dict[int, dict] = {}
    duplicates = 0
    for entry in data["images"]:
        if entry["id"] in images:
            duplicates += 1
        images[entry["id"]] = entry
    captions: dict[int, list[str]] = {image_id: [] for image_id in images}
    mentions: dict[int, list] = {image_id: [] for image_id in images}
    empty = long = non_ascii = unknown = 0
    for i, ann in enumerate(data["annotations"]):
        caption = ann["caption"]
        if not isinstance(caption, str):
            raise DatasetError(f"{path}: annotations[{i}] caption must be a string, got {type(caption).__name__}")
        if ann["image_id"] not in images:
            unknown += 1
            continue
        caption = caption.strip()
        if not caption:
            empty += 1
            continue
        if len(words(caption)) > LONG_CAPTION_WORDS:
            long += 1
        if not caption.isascii():
            non_ascii += 1
        captions[ann["image_id"]].append(caption)
        mentions[ann["image_id"]].append(ann.get("mentions"))
    index = CaptionsIndex(
        ann_file=path,
        image_root=Path(image_root) if image_root is not None else None,
        images=[images[k] for k in sorted(images)],
        captions=captions,
        mentions=mentions,
        info=data.get("info") if isinstance(data.get("info"), dict) else {},
        images_without_captions=sum(1 for c in captions.values() if not c),
        empty_captions=empty,
        long_captions=long,
        non_ascii_captions=non_ascii,
        unknown_image_annotations=unknown,
        duplicate_image_ids=duplicates,
    )
    if image_root is not None:
        root = Path(image_root)
        if not root.is_dir():
            raise DatasetError(f"{root}: image folder not found (annotations: {path})")
        index.missing_files = [e["file_name"] for e in index.images if not (root / e["file_name"]).is_file()]
    return index


# ------------------------------------------------------------------------------------------ images
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: grayscale, CMYK and palette convert; transparency goes onto white.

    A plain ``convert("RGB")`` would turn transparent pixels into whatever colour they hide (often
    black), so alpha is composited onto white first.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: scale to 8 bits, don't clip
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB (a truncated file fails here, not later in a worker)."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def image_error_reason(err: BaseException) -> str:
    """A short, stable reason for a failed image (used as a key when counting skipped files)."""
    if isinstance(err, FileNotFoundError):
        return "missing file"
    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image"
    text = str(err).lower()
    if "truncated" in text or "premature" in text:
        return "truncated"
    if isinstance(err, Image.DecompressionBombError):
        return "too large"
    return "unreadable: " + (str(err).splitlines()[0][:80] if str(err) else type(err).__name__)


@contextlib.contextmanager
def quiet_stdout():
    """Silence pycocotools' "loading annotations into memory..." prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


class CocoCaptionsDataset(CocoCaptions):
    """torchvision's ``CocoCaptions``, made robust: items are ``(RGB image, list of all captions)``.

    * the annotation file is validated first (one-line :class:`DatasetError`, not an ``AssertionError``);
    * images without captions and missing files are left out at construction;
    * an image that fails to decode (corrupt, truncated) is recorded in ``skipped`` and the next good
      image is returned in its place, so an epoch never dies on one bad file;
    * every image becomes RGB (grayscale, CMYK, palette, RGBA), whatever ``transform`` expects.

    ``skipped`` maps a reason ("missing file", "truncated", "no captions", ...) to file names. It is
    filled in the process that loads the image: with ``DataLoader(num_workers>0)`` the workers' copies
    fill theirs; call :meth:`check_images` up front to find every bad file in this process.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        ann_file: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        transforms: Callable | None = None,
        check_images: bool = False,
    ) -> None:
        path = Path(ann_file)
        data = _read_captions_json(path)  # validated: DatasetError (one line) instead of an AssertionError
        self.index = _index_from_dict(path, data, root)
        # What CocoDetection.__init__ does, but from the JSON already read (no second parse). Captions
        # need no "categories"; pycocotools would demand a category_id per caption if the key existed.
        VisionDataset.__init__(self, str(root), transforms, transform, target_transform)
        self.coco = COCO()
        self.coco.dataset = {k: v for k, v in data.items() if k != "categories"}
        with quiet_stdout():
            self.coco.createIndex()
        self.skipped: dict[str, list[str]] = defaultdict(list)
        missing = set(self.index.missing_files)
        keep = []
        for entry in self.index.images:
            if not self.index.captions[entry["id"]]:
                self.skipped["no captions"].append(entry["file_name"])
            elif entry["file_name"] in missing:
                self.skipped["missing file"].append(entry["file_name"])
            else:
                keep.append(entry["id"])
        self.ids = keep
        self._file_names = {e["id"]: e["file_name"] for e in self.index.images}
        if check_images:
            self.check_images()

    # torchvision calls these two from __getitem__
    def _load_image(self, id: int) -> Image.Image:
        return open_rgb(os.path.join(self.root, self._file_names[id]))

    def _load_target(self, id: int) -> list[str]:
        return list(self.index.captions[id])  # validated, stripped, empty captions dropped

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not self.ids:
            raise DatasetError(f"{self.index.ann_file}: no readable images with captions under {self.root}")
        for attempt in range(len(self.ids)):
            i = (int(index) + attempt) % len(self.ids)
            try:
                return super().__getitem__(i)
            except IMAGE_ERRORS as err:
                name = self._file_names[self.ids[i]]
                bucket = self.skipped[image_error_reason(err)]
                if name not in bucket:
                    bucket.append(name)
        raise DatasetError(f"{self.index.ann_file}: none of the {len(self.ids)} images under {self.root} could be read")

    def check_images(self) -> dict[str, list[str]]:
        """Decode every image once and drop those that fail (recorded in ``skipped``)."""
        keep = []
        for id_ in self.ids:
            try:
                open_rgb(os.path.join(self.root, self._file_names[id_]))
                keep.append(id_)
            except IMAGE_ERRORS as err:
                self.skipped[image_error_reason(err)].append(self._file_names[id_])
        self.ids = keep
        return dict(self.skipped)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())


def collate_captions(batch: Sequence[tuple[Any, list[str]]]) -> tuple[Any, list[list[str]]]:
    """Collate ``(image, captions)`` pairs: stacked image tensors and one caption list per image.

    ``torch.utils.data.default_collate`` zips lists across the batch, so 5 captions per image become
    5 tuples of B captions (and different caption counts raise an error). Here ``captions[i]`` stays
    the list of image ``i``. Images that are not tensors (PIL) are returned as a list.
    """
    images = [item[0] for item in batch]
    captions = [list(item[1]) for item in batch]
    if images and all(isinstance(im, torch.Tensor) for im in images):
        return torch.stack(images), captions
    return images, captions


__all__ = [
    "CaptionsIndex",
    "CocoCaptionsDataset",
    "collate_captions",
    "load_captions_index",
    "open_rgb",
    "to_rgb",
    "words",
]
