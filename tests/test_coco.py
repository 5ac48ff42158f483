"""COCO captions: validation, the torchvision-based dataset, collate, inspect, and the (offline-tested) downloader."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import re
import threading
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from torchvision import transforms

from t2i_helpers.data import download as D
from t2i_helpers.data.coco import CocoCaptionsDataset, collate_captions, load_captions_index
from t2i_helpers.data.stats import inspect_dataset
from t2i_helpers.errors import DatasetError


def _val(coco_mini: Path) -> tuple[Path, Path]:
    return coco_mini / "val2017", coco_mini / "annotations" / "captions_val2017.json"


def _captions_by_image(ann_file: Path) -> dict[int, list[str]]:
    """Independent reading of the raw JSON, in file order."""
    data = json.loads(ann_file.read_text())
    out = defaultdict(list)
    for a in data["annotations"]:
        out[a["image_id"]].append(a["caption"].strip())
    return out


# ---------------------------------------------------------------------------------------- coco-mini
def test_index_of_coco_mini(coco_mini):
    root, ann = _val(coco_mini)
    index = load_captions_index(ann, root)
    assert len(index.images) == 79 and index.num_captions == 395
    assert all(len(index.captions[i]) == 5 for i in index.image_ids)
    assert index.image_ids == sorted(index.image_ids)
    assert index.missing_files == [] and index.unknown_image_annotations == 0
    train = load_captions_index(coco_mini / "annotations" / "captions_train2017.json")
    assert len(train.images) == 80 and train.num_captions == 400


def test_dataset_returns_rgb_and_all_captions(coco_mini, capsys):
    root, ann = _val(coco_mini)
    dataset = CocoCaptionsDataset(root, ann)
    assert "loading annotations" not in capsys.readouterr().out  # pycocotools' prints are silenced
    assert len(dataset) == 79
    expected = _captions_by_image(ann)
    for i in (0, 40, 78):
        image, captions = dataset[i]
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert captions == expected[dataset.ids[i]] and len(captions) == 5
        with Image.open(root / dataset.index.images[[e["id"] for e in dataset.index.images].index(dataset.ids[i])]["file_name"]) as raw:
            assert image.size == raw.size
    assert dataset.num_skipped == 0


def test_dataloader_with_collate_keeps_caption_lists(coco_mini):
    root, ann = _val(coco_mini)
    tf = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    dataset = CocoCaptionsDataset(root, ann, transform=tf)
    images, captions = next(iter(DataLoader(dataset, batch_size=4, collate_fn=collate_captions)))
    assert images.shape == (4, 3, 32, 32)
    expected = _captions_by_image(ann)
    assert captions == [expected[dataset.ids[i]] for i in range(4)]


def test_default_collate_mangles_and_ours_does_not():
    batch = [(torch.full((3, 4, 4), float(i)), [f"image {i} caption {k}" for k in range(5)]) for i in range(3)]
    _, mangled = default_collate(batch)
    # the reference's bug: 5 tuples, one per caption position, each mixing the 3 images
    assert len(mangled) == 5 and mangled[0] == ("image 0 caption 0", "image 1 caption 0", "image 2 caption 0")
    images, captions = collate_captions(batch)
    assert images.shape == (3, 3, 4, 4) and torch.equal(images[2], batch[2][0])
    assert captions == [item[1] for item in batch]
    uneven = batch + [(torch.zeros(3, 4, 4), ["only one caption"])]
    with pytest.raises(RuntimeError):
        default_collate(uneven)
    assert collate_captions(uneven)[1][3] == ["only one caption"]
    pil_batch = [(Image.new("RGB", (2, 2)), ["a"]), (Image.new("RGB", (2, 2)), ["b", "c"])]
    images, captions = collate_captions(pil_batch)
    assert isinstance(images, list) and captions == [["a"], ["b", "c"]]


def test_inspect_coco_mini_numbers(coco_mini):
    root, ann = _val(coco_mini)
    stats = inspect_dataset(root, ann)
    captions = [c for caps in _captions_by_image(ann).values() for c in caps]
    tokens = [re.findall(r"\w+", c.lower()) for c in captions]
    assert stats.images == 79 and stats.captions == 395
    assert stats.captions_per_image == {"min": 5, "mean": 5.0, "max": 5}
    assert stats.words_per_caption["min"] == min(map(len, tokens))
    assert stats.words_per_caption["max"] == max(map(len, tokens))
    assert stats.words_per_caption["mean"] == pytest.approx(np.mean([len(t) for t in tokens]))
    assert stats.vocabulary == len({w for t in tokens for w in t})
    assert stats.unreadable_images == {} and stats.images_without_captions == 0
    d = json.loads(json.dumps(stats.to_dict()))
    assert d["images"] == 79 and d["captions"] == 395 and d["readable_images"] == 79
    assert "395" in stats.format() and "79" in stats.format()


# ------------------------------------------------------------------------------------- bad inputs
def _jpeg(path: Path, mode: str = "RGB", size=(40, 30), color=None) -> bytes:
    rng = np.random.default_rng(len(path.name))
    if color is not None:
        image = Image.new(mode, size, color)
    else:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def messy(tmp_path) -> tuple[Path, Path]:
    """A small COCO-format dataset with every kind of problem a real one can have."""
    root = tmp_path / "images"
    root.mkdir()
    _jpeg(root / "good.jpg")
    _jpeg(root / "gray.jpg", mode="L")
    _jpeg(root / "cmyk.jpg", mode="CMYK", color=(0, 255, 255, 0))  # pure red in CMYK
    rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # one fully transparent pixel
    rgba.save(root / "rgba.png")
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 200, 0, 9, 9, 9] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(root / "palette.png", transparency=1)
    data = _jpeg(root / "truncated.jpg")
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "corrupt.jpg").write_bytes(b"this is not a JPEG at all")
    _jpeg(root / "uncaptioned.jpg")
    names = ["good.jpg", "gray.jpg", "cmyk.jpg", "rgba.png", "palette.png", "truncated.jpg", "corrupt.jpg",
             "missing.jpg", "uncaptioned.jpg"]
    images = [{"id": i + 1, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(names)]
    annotations, ann_id = [], 1
    for entry in images:
        if entry["file_name"] == "uncaptioned.jpg":
            continue
        for k in range(2):
            annotations.append({"id": ann_id, "image_id": entry["id"], "caption": f"{entry['file_name']} number {k}"})
            ann_id += 1
    annotations += [
        {"id": 100, "image_id": 1, "caption": "   "},  # empty
        {"id": 101, "image_id": 1, "caption": " ".join(["word"] * 60)},  # long
        {"id": 102, "image_id": 2, "caption": "Un café à Paris"},  # non-ASCII
        {"id": 103, "image_id": 999, "caption": "a caption of no image"},  # unknown image
    ]
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return root, ann


def test_index_counts_every_problem(messy):
    root, ann = messy
    index = load_captions_index(ann, root)
    assert index.empty_captions == 1 and index.long_captions == 1 and index.non_ascii_captions == 1
    assert index.unknown_image_annotations == 1 and index.images_without_captions == 1
    assert index.missing_files == ["missing.jpg"]
    assert index.captions[1] == ["good.jpg number 0", "good.jpg number 1", " ".join(["word"] * 60)]
    assert "Un café à Paris" in index.captions[2]


def test_dataset_skips_bad_images_and_converts_modes(messy):
    root, ann = messy
    dataset = CocoCaptionsDataset(root, ann)
    assert len(dataset) == 7  # missing and uncaptioned left out up front
    seen = {}
    for i in range(len(dataset)):
        image, captions = dataset[i]  # never raises
        assert image.mode == "RGB" and captions
        seen[captions[0].split()[0]] = image
    assert set(seen) == {"good.jpg", "gray.jpg", "cmyk.jpg", "rgba.png", "palette.png"}
    assert dict(dataset.skipped) == {
        "missing file": ["missing.jpg"], "no captions": ["uncaptioned.jpg"],
        "truncated": ["truncated.jpg"], "not an image": ["corrupt.jpg"],
    }
    r, g, b = seen["cmyk.jpg"].getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60
    assert seen["rgba.png"].getpixel((0, 0)) == (255, 255, 255)  # transparency onto white
    assert seen["rgba.png"].getpixel((5, 5)) == (0, 0, 255)
    assert seen["palette.png"].getpixel((1, 1)) == (255, 255, 255)
    assert seen["palette.png"].getpixel((5, 5)) == (0, 200, 0)
    gray = np.asarray(seen["gray.jpg"])
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_check_images_finds_bad_files_up_front(messy):
    root, ann = messy
    dataset = CocoCaptionsDataset(root, ann, check_images=True)
    assert len(dataset) == 5
    assert dataset.skipped["truncated"] == ["truncated.jpg"] and dataset.skipped["not an image"] == ["corrupt.jpg"]


def test_inspect_reports_problems(messy):
    root, ann = messy
    stats = inspect_dataset(root, ann)
    assert stats.images == 9 and stats.images_without_captions == 1
    assert stats.unreadable_images == {"missing file": ["missing.jpg"], "truncated": ["truncated.jpg"],
                                       "not an image": ["corrupt.jpg"]}
    assert stats.readable_images == 6
    assert stats.image_modes["CMYK"] == 1 and stats.image_modes["L"] == 1
    assert stats.empty_captions == 1 and stats.long_captions == 1 and stats.non_ascii_captions == 1
    assert stats.captions_per_image["min"] == 0
    text = stats.format()
    assert "truncated.jpg" in text and "missing.jpg" in text


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        ('{"images": []}', "'annotations'"),
        ('{"images": [{"id": 1}], "annotations": []}', "'file_name'"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1}]}', "'caption'"),
        ('{"images": {}, "annotations": []}', "must be a list"),
        ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": 5}]}', "must be a string"),
    ],
)
def test_non_coco_json_is_a_one_line_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "weird.json"
    path.write_text(content)
    for call in (lambda: load_captions_index(path), lambda: CocoCaptionsDataset(tmp_path, path),
                 lambda: inspect_dataset(tmp_path, path)):
        with pytest.raises(DatasetError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(path) in message and problem in message


def test_missing_annotation_file_and_folder(tmp_path, messy):
    with pytest.raises(DatasetError, match="not found"):
        load_captions_index(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match="image folder not found"):
        load_captions_index(messy[1], tmp_path / "no-such-folder")


def test_shapes_benchmark_loads_with_the_same_code(tmp_path):
    from t2i_helpers.data.shapes import make_shapes, ShapesConfig

    paths = make_shapes(tmp_path / "s", ShapesConfig(images=20, image_size=32))
    dataset = CocoCaptionsDataset(paths.images_dir, paths.val_json)
    image, captions = dataset[0]
    assert image.size == (32, 32) and len(captions) == 5
    entry = dataset.index.images[0]
    assert dataset.index.attributes(entry) == {k: entry[k] for k in ("shape", "color", "size", "position")}
    assert all(m[:2] == ["color", "shape"] for m in dataset.index.mentions[entry["id"]])


# ------------------------------------------------------------------------------- downloader (offline)
class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves files from the test folder; honours ``Range`` unless the server says not to."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.server.folder) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        wanted = self.headers.get("Range")
        if wanted and self.server.ranges:
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if self.server.truncate:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.folder, httpd.requests, httpd.ranges, httpd.truncate = folder, [], True, False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_a_part_file_with_range(server, tmp_path):
    payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (server.folder / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    (tmp_path / "out" / "blob.bin.part").write_bytes(payload[:100_000])
    md5 = hashlib.md5(payload).hexdigest()
    D.download_file(f"{server.url}/blob.bin", dest, expected_size=len(payload), md5=md5, progress=False)
    assert dest.read_bytes() == payload and not (tmp_path / "out" / "blob.bin.part").exists()
    assert server.requests == [("/blob.bin", "bytes=100000-")]
    D.download_file(f"{server.url}/blob.bin", dest, expected_size=len(payload), progress=False)
    assert len(server.requests) == 1  # a complete file is not fetched again


def test_download_restarts_when_the_server_ignores_range(server, tmp_path):
    server.ranges = False
    payload = b"0123456789" * 5000
    (server.folder / "f.bin").write_bytes(payload)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not stay")
    D.download_file(f"{server.url}/f.bin", dest, progress=False)
    assert dest.read_bytes() == payload


def test_download_size_mismatch_is_a_one_line_error(server, tmp_path):
    (server.folder / "f.bin").write_bytes(b"x" * 1000)
    with pytest.raises(DatasetError) as info:
        D.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", expected_size=1234, progress=False)
    assert "\n" not in str(info.value) and "1234" in str(info.value) and "f.bin" in str(info.value)
    assert not (tmp_path / "f.bin").exists()


def test_download_checksum_mismatch_deletes_the_file(server, tmp_path):
    (server.folder / "f.bin").write_bytes(b"x" * 1000)
    with pytest.raises(DatasetError, match="MD5"):
        D.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", md5="0" * 32, progress=False)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_interrupted_download_keeps_the_part_file_for_resume(server, tmp_path):
    payload = b"abcdefghij" * 10_000
    (server.folder / "f.bin").write_bytes(payload)
    server.truncate = True
    with pytest.raises(DatasetError, match="run again"):
        D.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", progress=False, timeout=5)
    part = tmp_path / "f.bin.part"
    have = part.stat().st_size if part.is_file() else 0
    assert 0 < have < len(payload) and not (tmp_path / "f.bin").exists()
    server.truncate = False
    D.download_file(f"{server.url}/f.bin", tmp_path / "f.bin", expected_size=len(payload), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == payload
    assert server.requests[-1][1] == f"bytes={have}-"


def test_download_coco_first_n_images(server, tmp_path):
    images, annotations = [], []
    for i in range(4):
        name = f"{i:012d}.jpg"
        _jpeg(server.folder / name)
        images.append({"id": i, "file_name": name, "coco_url": f"{server.url}/{name}"})
        annotations += [{"id": 10 * i + k, "image_id": i, "caption": f"image {i} caption {k}"} for k in range(5)]
    doc = json.dumps({"info": {}, "images": images, "annotations": annotations})
    with zipfile.ZipFile(server.folder / "ann.zip", "w") as z:
        z.writestr("annotations/captions_val2017.json", doc)
        z.writestr("annotations/captions_train2017.json", json.dumps({"images": [], "annotations": []}))
    result = D.download_coco(tmp_path / "coco", split="val2017", max_images=2, progress=False,
                             annotations_url=f"{server.url}/ann.zip")
    assert result.images == 2 and sorted(p.name for p in result.image_root.iterdir()) == [images[0]["file_name"], images[1]["file_name"]]
    index = load_captions_index(result.ann_file, result.image_root)
    assert len(index.images) == 2 and index.num_captions == 10 and index.missing_files == []
    assert (tmp_path / "coco" / "annotations" / "captions_val2017.json").is_file()
    count = len(server.requests)
    D.download_coco(tmp_path / "coco", split="val2017", max_images=2, progress=False,
                    annotations_url=f"{server.url}/ann.zip")
    assert len(server.requests) == count  # everything was already there
    # Notebook 01 asks which caption file fits the images on disk: the first-2 subset, not the full list.
    assert D.annotations_for(tmp_path / "coco", "val2017") == result.ann_file
    D.download_coco(tmp_path / "coco", split="val2017", max_images=3, progress=False,
                    annotations_url=f"{server.url}/ann.zip")
    assert D.annotations_for(tmp_path / "coco", "val2017").name == "captions_val2017_first3.json"
    for image in images[3:]:  # now every image is there: the full file wins
        shutil.copy(server.folder / image["file_name"], tmp_path / "coco" / "val2017" / image["file_name"])
    assert D.annotations_for(tmp_path / "coco", "val2017").name == "captions_val2017.json"
    with pytest.raises(DatasetError, match="no COCO captions file for train2017"):
        D.annotations_for(tmp_path / "empty", "train2017")


def test_download_coco_rejects_bad_arguments(tmp_path):
    with pytest.raises(DatasetError, match="split"):
        D.download_coco(tmp_path, split="test2015")
    with pytest.raises(DatasetError, match="max_images"):
        D.download_coco(tmp_path, max_images=0)


# ------------------------------------------------------------------------------------- locate_coco
def test_locate_coco_finds_coco_mini_beside_a_checkout(coco_mini, capsys):
    assert D.locate_coco(prefer_full=False) == coco_mini
    assert capsys.readouterr().out == ""


def test_locate_coco_prefers_a_downloaded_coco_outside_smoke_mode(coco_mini, tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_DATA", str(tmp_path))
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    assert D.locate_coco(prefer_full=True) == tmp_path / "coco"
    assert D.locate_coco(prefer_full=False) == coco_mini


def test_locate_coco_without_any_says_what_to_run_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("T2I_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(D, "coco_mini_dir", lambda: None)  # as on Colab: no ../shared beside the package
    assert D.locate_coco() is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "download-coco" in lines[0] and str(tmp_path / "data" / "coco") in lines[0]
    assert D.locate_coco(announce=False) is None and capsys.readouterr().out == ""
