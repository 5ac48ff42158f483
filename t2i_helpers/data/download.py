"""Download COCO 2017 captions and images (for machines with internet, e.g. Colab).

Two ways to get images:

* the whole split as the official zip (``val2017``: 5,000 images, 778 MB; ``train2017``: 118,287
  images, 18 GB), checked against its published size and MD5;
* only the first ``max_images`` images of a split, one file each from its ``coco_url`` (a quick
  start: 2,000 images take a minute), with a matching cut-down captions file.

Every download goes to ``NAME.part`` first and is renamed when complete and checked, so an interrupted
run never leaves a file that looks finished; running again resumes a ``.part`` file with an HTTP
``Range`` request. Only the standard library (``urllib``) is used, plus ``tqdm.auto`` for progress.

Command line: ``python -m t2i_helpers download-coco data/coco --split val2017 --max-images 2000``.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from t2i_helpers.config import coco_mini_dir, data_dir, smoke
from t2i_helpers.errors import DatasetError
from t2i_helpers.files import atomic_path, atomic_write_text

ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
IMAGES_URL = "http://images.cocodataset.org/zips/{split}.zip"
SPLITS = ("train2017", "val2017")
# Published sizes and MD5 sums of the official archives (the same values appear in many dataset tools).
KNOWN_FILES: dict[str, tuple[int, str]] = {
    "annotations_trainval2017.zip": (252_907_541, "f4bbac642086de4f52a3fdda2de5fa2c"),
    "val2017.zip": (815_585_330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "train2017.zip": (19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
}
USER_AGENT = "t2i_helpers-coco-downloader"
CHUNK = 1 << 20


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK * 8), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, have: int, expected_size: int | None, timeout: float):
    """The HTTP response for the bytes from ``have`` on (a Range request), or None when none are left."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and (expected_size is None or have == expected_size):
            return None  # the .part file is already complete
        raise DatasetError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DatasetError(f"{url}: cannot connect ({reason}); check the internet connection") from None


def _append(response, url: str, part: Path, have: int, expected_size: int | None, progress: bool,
            name: str) -> int | None:
    """Write the response's bytes after the ``have`` already in ``part``; the size the file should reach."""
    with response:
        if getattr(response, "status", 200) != 206:  # the server ignored Range: start again from byte 0
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else expected_size
        if expected_size is not None and total is not None and total != expected_size:
            raise DatasetError(f"{url}: server announces {total} bytes, expected {expected_size}")
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=name, disable=not progress, leave=False,
        ) as bar:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
                raise DatasetError(f"{url}: download interrupted ({err}); run again to resume from {part}") from None
    return expected_size if expected_size is not None else total


def download_file(
    url: str,
    dest: str | os.PathLike,
    expected_size: int | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed with HTTP Range), then check and rename.

    The size is checked against ``expected_size`` and the server's Content-Length; ``md5`` (if given)
    against the finished file. A mismatch raises a one-line :class:`DatasetError` and deletes the
    bad ``.part`` file; a connection that ends early keeps it, so the next call resumes.
    An existing ``dest`` is trusted if its size matches (or no size is known).
    """
    dest = Path(dest)
    if dest.is_file() and (expected_size is None or dest.stat().st_size == expected_size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if expected_size is not None and have > expected_size:
        part.unlink()
        have = 0

    response = _open(url, have, expected_size, timeout)
    if response is not None:
        expected_size = _append(response, url, part, have, expected_size, progress, dest.name)

    got = part.stat().st_size
    if expected_size is not None and got != expected_size:
        if got > expected_size:
            part.unlink()
            raise DatasetError(f"{url}: got {got} bytes, expected {expected_size}; deleted {part.name}, run again")
        raise DatasetError(f"{url}: got {got} of {expected_size} bytes; run again to resume from {part}")
    if md5 is not None:
        actual = _md5(part)
        if actual != md5:
            part.unlink()
            raise DatasetError(f"{url}: MD5 {actual} does not match the published {md5}; deleted the download, run again")
    os.replace(part, dest)
    return dest


def _download_known(url: str, dest: Path, progress: bool, verify_md5: bool) -> Path:
    """Download an official archive with its published size and MD5 (a mirror's file: size from the server)."""
    official = url in (ANNOTATIONS_URL, *(IMAGES_URL.format(split=s) for s in SPLITS))
    size, md5 = KNOWN_FILES.get(dest.name, (None, None)) if official else (None, None)
    return download_file(url, dest, expected_size=size, md5=md5 if verify_md5 else None, progress=progress)


def _extract_members(archive: Path, members: list[str], out_dir: Path) -> None:
    """Extract ``members`` of a zip, each file written atomically (temp + rename)."""
    try:
        with zipfile.ZipFile(archive) as z:
            for name in members:
                target = out_dir / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as tmp, open(tmp, "wb") as f, z.open(name) as src:
                    shutil.copyfileobj(src, f, CHUNK)
    except zipfile.BadZipFile as err:
        raise DatasetError(f"{archive}: not a valid zip file ({err}); delete it and run again") from None
    except KeyError as err:
        raise DatasetError(f"{archive}: has no {err.args[0]}") from None


def _extract_all(archive: Path, out_dir: Path, progress: bool) -> None:
    """Unzip an image archive into ``out_dir`` via a temporary folder renamed at the end."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with zipfile.ZipFile(archive) as z:
            for info in tqdm(z.infolist(), desc=f"unzipping {archive.name}", disable=not progress, leave=False):
                z.extract(info, tmp)
        inner = tmp / out_dir.name  # the official zips hold one top folder named like the split
        os.replace(inner if inner.is_dir() else tmp, out_dir)
    except zipfile.BadZipFile as err:
        raise DatasetError(f"{archive}: not a valid zip file ({err}); delete it and run again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class CocoDownload:
    """Where the data went: pass ``image_root`` and ``ann_file`` to the loaders."""

    root: Path
    image_root: Path
    ann_file: Path
    images: int

    def __str__(self) -> str:
        return f"COCO {self.image_root.name}: {self.images} images in {self.image_root}, captions in {self.ann_file}"


def download_coco(
    dest: str | os.PathLike | None = None,
    split: str = "val2017",
    max_images: int | None = None,
    progress: bool = True,
    verify_md5: bool = True,
    workers: int = 8,
    annotations_url: str = ANNOTATIONS_URL,
    images_url: str | None = None,
) -> CocoDownload:
    """COCO 2017 captions plus images into ``dest`` (default ``data_dir()/coco``), resumable.

    Layout: ``dest/annotations/captions_{split}.json`` and ``dest/{split}/*.jpg``. With
    ``max_images=N`` only the first N images (in the annotation file's order) are fetched and
    ``dest/annotations/captions_{split}_first{N}.json`` holds just their captions. Re-running skips
    everything already there. ``annotations_url`` / ``images_url`` exist for mirrors and tests.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown COCO split {split!r}; expected one of {', '.join(SPLITS)}")
    if max_images is not None and max_images < 1:
        raise DatasetError(f"max_images must be at least 1, got {max_images}")
    root = Path(dest) if dest is not None else data_dir() / "coco"
    ann_dir, image_root = root / "annotations", root / split
    ann_file = ann_dir / f"captions_{split}.json"

    if not ann_file.is_file():
        archive = _download_known(annotations_url, root / "annotations_trainval2017.zip", progress, verify_md5)
        _extract_members(archive, [f"annotations/captions_{s}.json" for s in SPLITS], ann_dir)

    if max_images is None:
        if not image_root.is_dir():
            url = images_url or IMAGES_URL.format(split=split)
            archive = _download_known(url, root / f"{split}.zip", progress, verify_md5)
            _extract_all(archive, image_root, progress)
        with open(ann_file, encoding="utf-8") as f:
            count = len(json.load(f)["images"])
        return CocoDownload(root, image_root, ann_file, count)

    with open(ann_file, encoding="utf-8") as f:
        data = json.load(f)
    entries = data["images"][:max_images]
    image_root.mkdir(parents=True, exist_ok=True)

    def fetch(entry: dict) -> None:
        download_file(entry["coco_url"], image_root / entry["file_name"], progress=False)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(fetch, entries), total=len(entries), desc=f"{split} images", disable=not progress):
            pass
    ids = {e["id"] for e in entries}
    subset = dict(data, images=entries, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    subset_file = ann_dir / f"captions_{split}_first{max_images}.json"
    atomic_write_text(subset_file, json.dumps(subset))
    return CocoDownload(root, image_root, subset_file, len(entries))


def annotations_for(root: str | os.PathLike, split: str) -> Path:
    """The caption file that matches the images of ``root/split`` that are really there.

    After ``download_coco(max_images=N)`` only the first N images exist, and ``captions_{split}.json``
    would list every image of the split (the loader would skip and count the rest as missing); this
    returns ``captions_{split}_first{N}.json`` instead (the largest N whose images are all present).
    """
    root = Path(root)
    ann_dir, image_root = root / "annotations", root / split
    full = ann_dir / f"captions_{split}.json"
    present = {p.name for p in image_root.glob("*.jpg")} if image_root.is_dir() else set()
    subsets = []
    for path in ann_dir.glob(f"captions_{split}_first*.json"):
        match = re.fullmatch(rf"captions_{split}_first(\d+)\.json", path.name)
        if match:
            subsets.append((int(match.group(1)), path))
    if full.is_file():
        with open(full, encoding="utf-8") as f:
            names = [e["file_name"] for e in json.load(f)["images"]]
        if set(names) <= present:
            return full
        subsets = [(n, p) for n, p in subsets if set(names[:n]) <= present]
    if subsets:
        return max(subsets)[1]
    if full.is_file():
        return full  # partly downloaded: the loader reports the missing images
    raise DatasetError(f"no COCO captions file for {split} in {ann_dir}; run download_coco(split={split!r}) first")


COCO_MISSING = ("no COCO here: coco-mini sits beside a checkout of the course (../shared/coco-mini), not on Colab; "
                "run `python -m t2i_helpers download-coco {dest} --max-images 500` (needs the internet, about "
                "100 MB), then rerun. The rest of this notebook works without it.")


def locate_coco(prefer_full: bool | None = None, announce: bool = True) -> Path | None:
    """The COCO folder to use: ``data/coco`` once downloaded, else ``../shared/coco-mini``, else None.

    ``prefer_full`` (default: not in smoke mode) puts a downloaded ``data/coco`` first. Where neither
    exists (Colab, a plain pip install) it prints one line saying what to run, and returns None, so a
    notebook can skip its COCO cells instead of failing.
    """
    prefer_full = (not smoke()) if prefer_full is None else prefer_full
    full = data_dir() / "coco"
    full = full if (full / "annotations").is_dir() else None
    mini = coco_mini_dir()
    for root in ((full, mini) if prefer_full else (mini, full)):
        if root is not None:
            return root
    if announce:
        print(COCO_MISSING.format(dest=_coco_hint()))
    return None


def _coco_hint() -> str:
    """Where ``download-coco`` should put COCO so that :func:`locate_coco` finds it (relative if possible)."""
    target = data_dir() / "coco"
    try:
        return str(target.relative_to(Path.cwd()))
    except ValueError:
        return str(target)


__all__ = ["COCO_MISSING", "CocoDownload", "KNOWN_FILES", "annotations_for", "download_coco", "download_file",
           "locate_coco"]
