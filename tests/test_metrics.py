"""FID math vs scipy and torchmetrics, statistics cache, protocol, offline Inception, caption metrics."""
from __future__ import annotations

import json
import urllib.error
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from t2i_helpers import metrics
from t2i_helpers.cli import bench
from t2i_helpers.data import evalset
from t2i_helpers import network
from t2i_helpers.evaluation import evaluate, inception
from t2i_helpers.errors import AssetMissingError, T2IError
from t2i_helpers.data.evalset import EvalData
from t2i_helpers.evaluation.evaluate import evaluate_images
from t2i_helpers.evaluation.inception import real_statistics
from t2i_helpers.metrics import (
    FeatureStats,
    FIDProtocol,
    attribute_accuracy,
    attribute_accuracy_by,
    attribute_errors,
    describe_errors,
    clip_score,
    frechet_distance,
    r_precision,
)


def _gaussian_features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features, like a network's
    return rng.normal(size=(n, d)) @ mixing + shift


def _scipy_fid(a: FeatureStats, b: FeatureStats) -> float:
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d", [8, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    a = FeatureStats.from_features(_gaussian_features(500, d, 0))
    b = FeatureStats.from_features(_gaussian_features(400, d, 1, shift=0.3))
    ours = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-3)
    assert frechet_distance(b.mu, b.sigma, a.mu, a.sigma) == pytest.approx(ours, rel=1e-6)  # symmetric


def test_self_distance_is_zero_and_a_shift_adds_its_squared_length():
    x = _gaussian_features(300, 32, 2)
    a = FeatureStats.from_features(x)
    assert a.distance(a) < 1e-6 * np.trace(a.sigma)
    delta = np.full(32, 0.25)
    shifted = FeatureStats.from_features(x + delta)  # same covariance: FID = ||delta||^2 exactly
    assert a.distance(shifted) == pytest.approx(float(delta @ delta), rel=1e-6)
    further = FeatureStats.from_features(x + 2 * delta)
    assert a.distance(further) > a.distance(shifted) > 0.0


def test_rank_deficient_covariances_stay_finite():
    # fewer samples than dimensions (singular covariance): scipy's sqrtm struggles, eigh does not
    a = FeatureStats.from_features(_gaussian_features(10, 40, 3))
    b = FeatureStats.from_features(_gaussian_features(10, 40, 4))
    value = a.distance(b)
    assert np.isfinite(value) and value > 0


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(T2IError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


class PixelFeatures(nn.Module):
    """A stand-in feature network: the first 12 pixel values of a uint8 image, as floats."""

    name = "pixels-12"
    num_features = 12

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, images):
        assert images.dtype == torch.uint8
        self.calls += 1
        return images.flatten(1)[:, :12].float() / 25.0


@pytest.mark.slow  # importing torchmetrics alone takes several seconds on a busy CPU
def test_pipeline_equals_torchmetrics_fid_with_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (80, 3, 8, 8), dtype=torch.uint8, generator=g)
    fake = torch.randint(40, 200, (60, 3, 8, 8), dtype=torch.uint8, generator=g)
    net = PixelFeatures()
    reference = FrechetInceptionDistance(feature=net)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    stats = FeatureStats.from_features(inception.extract_features(net, real))
    ours = inception.fid_from_images(fake, net, stats)
    assert ours == pytest.approx(float(reference.compute()), rel=1e-4)


def test_feature_stats_npz_round_trip_is_atomic(tmp_path):
    stats = FeatureStats.from_features(_gaussian_features(50, 6, 5))
    path = inception.save_statistics(stats, tmp_path / "sub" / "stats.npz", meta={"network": "x"})
    loaded = inception.load_statistics(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.n == 50
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temp file left behind
    with np.load(path, allow_pickle=False) as data:
        assert json.loads(str(data["meta"])) == {"network": "x"}
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(T2IError, match="bad.npz"):
        inception.load_statistics(tmp_path / "bad.npz")


def _tiny_data(tmp_path, n=40, size=8) -> EvalData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return EvalData(image_root=tmp_path, ann_file=tmp_path / "captions_val.json", dataset="coco", split="val",
                    fingerprint="abc123", images=images, image_ids=list(range(n)),
                    captions=[f"caption {i}" for i in range(n)], caption_image=np.arange(n),
                    mentions=None, attributes=None)


def test_real_statistics_are_computed_once_and_cached_by_key(tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_DATA", str(tmp_path / "data"))
    data = _tiny_data(tmp_path)
    net = PixelFeatures()
    first, cached = real_statistics(net, data)
    assert not cached and net.calls > 0
    calls = net.calls
    again, cached = real_statistics(net, data)
    assert cached and net.calls == calls  # read from disk, no feature extraction
    np.testing.assert_allclose(again.sigma, first.sigma)
    (path,) = (tmp_path / "data" / "cache" / "fid").iterdir()
    for part in ("coco", "val", "abc123", "8px", "n40", "pixels-12"):
        assert part in path.name
    subset, cached = real_statistics(net, data, n_real=20, seed=1)  # another sample count: another key
    assert not cached and subset.n == 20
    assert len(list(path.parent.iterdir())) == 2


def test_protocol_describes_every_setting_in_one_line():
    p = FIDProtocol("fid_proxy", "shapes-attribute-cnn-128d-0123", 400, 1000, 64, "64px bilinear", "shapes", "val", 0)
    line = p.describe()
    assert "\n" not in line
    for value in ("fid_proxy", "shapes-attribute-cnn-128d-0123", "400", "1000", "64px", "val", "seed 0"):
        assert value in line
    assert p.to_dict()["n_generated"] == 1000


def test_evaluate_images_reports_proxy_fid_with_protocol_never_as_fid(tmp_path):
    from t2i_helpers.judges.clip import ClipConfig, ContrastiveModel

    data = _tiny_data(tmp_path)
    model = ContrastiveModel(text_dim=5, config=ClipConfig(input_size=8, channels=(8,)))
    real_as_fake = torch.as_tensor(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    ids = np.arange(len(data.images))
    report = evaluate_images(real_as_fake, ids, data, fid="proxy", contrastive=model,
                             caption_embeddings=torch.randn(len(data.captions), 5), cache_dir=tmp_path / "fid")
    assert "fid" not in report and report["fid_proxy"] < 1e-3  # the real images themselves
    assert report["fid_network"] == model.name and report["protocol"]["metric"] == "fid_proxy"
    assert report["protocol"]["n_real"] == 40 and report["protocol"]["n_generated"] == 40
    assert 0.0 <= report["r_precision"] <= 1.0 and "clip_score" in report
    noise = torch.rand(40, 3, 8, 8) * 2 - 1
    worse = evaluate_images(noise, ids, data, fid="proxy", contrastive=model, cache_dir=tmp_path / "fid")
    assert worse["real_stats_from_cache"] and worse["fid_proxy"] > report["fid_proxy"]
    assert "r_precision" not in worse  # no caption embeddings given
    assert "fid_proxy" in evaluate.format_report(worse)
    with pytest.raises(T2IError, match="caption ids"):
        evaluate_images(noise, ids[:5], data, contrastive=model)
    with pytest.raises(T2IError, match="proxy FID needs"):
        evaluate_images(noise, ids, data, fid="proxy")


@pytest.fixture
def one_thread():
    """Tiny CNNs train faster on one thread than on two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ offline Inception
@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """An empty torch hub folder and a download function that fails the test if it is ever called."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def forbidden(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(tfi, "load_state_dict_from_url", forbidden)
    return tfi


def test_inception_offline_raises_one_clear_line(no_network, monkeypatch):
    monkeypatch.setattr(inception, "_online", lambda *a, **k: False)
    with pytest.raises(AssetMissingError) as err:
        inception.inception_network()
    message = str(err.value)
    assert "\n" not in message
    assert inception.INCEPTION_URL in message and "--fid proxy" in message and "--inception-weights" in message


@pytest.mark.slow  # imports torchmetrics and builds the (random-weight) Inception network
def test_inception_download_failure_becomes_asset_missing(no_network, monkeypatch):
    monkeypatch.setattr(inception, "_online", lambda *a, **k: True)

    def fail(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(no_network, "load_state_dict_from_url", fail)
    with pytest.raises(AssetMissingError, match="URLError.*--fid proxy"):
        inception.inception_network()


def test_inception_missing_local_file_is_named(no_network, tmp_path):
    with pytest.raises(AssetMissingError, match="nowhere.pth does not exist"):
        inception.inception_network(tmp_path / "nowhere.pth")


def test_offline_flag_skips_the_socket_check(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("socket opened although offline was declared")

    monkeypatch.setattr(network.socket, "create_connection", forbidden)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert inception._online() is False


def test_evaluate_images_with_inception_offline_fails_fast(no_network, tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "_online", lambda *a, **k: False)
    data = _tiny_data(tmp_path)
    with pytest.raises(AssetMissingError):
        evaluate_images(torch.zeros(40, 3, 8, 8), np.arange(40), data, fid="inception")


# ----------------------------------------------------------------------------- caption metrics
def test_attribute_accuracy_judges_only_mentioned_attributes():
    targets = [
        {"color": "red", "shape": "circle", "size": "small", "position": "top"},
        {"color": "blue", "shape": "square", "size": "large", "position": "left"},
        {"color": "green", "shape": "triangle", "size": "small", "position": "center"},
    ]
    preds = [
        {"color": "red", "shape": "circle", "size": "large", "position": "top"},  # size wrong, not mentioned
        {"color": "blue", "shape": "circle", "size": "large", "position": "left"},  # shape wrong
        {"color": "green", "shape": "triangle", "size": "large", "position": "right"},  # size, position wrong
    ]
    mentions = [["color", "shape"], ["color", "shape", "size"], ["color", "shape", "size", "position"]]
    acc = attribute_accuracy(preds, targets, mentions)
    assert acc["color"] == 1.0
    assert acc["shape"] == pytest.approx(2 / 3)
    assert acc["size"] == pytest.approx(1 / 2) and acc["n_size"] == 2
    assert acc["position"] == 0.0 and acc["n_position"] == 1
    assert acc["all"] == pytest.approx(1 / 3) and acc["n"] == 3
    everything = attribute_accuracy(preds, targets)  # mentions=None: judge every attribute
    assert everything["size"] == pytest.approx(1 / 3) and everything["all"] == 0.0
    unmentioned = attribute_accuracy(preds[:1], targets[:1], [["color"]])
    assert unmentioned["shape"] is None  # nothing to judge is not 0%
    with pytest.raises(T2IError, match="lengths must match"):
        attribute_accuracy(preds, targets[:2], mentions)


def _five_judged_images():
    """(preds, targets, mentions) of five images with hand-counted mistakes (see the next test)."""
    targets = [{"shape": "circle", "size": "small"}] * 3 + [{"shape": "square", "size": "large"}] * 2
    preds = [{"shape": "square", "size": "large"}, {"shape": "square", "size": "small"},
             {"shape": "triangle", "size": "small"}, {"shape": "circle", "size": "small"},
             {"shape": "square", "size": "large"}]
    mentions = [["shape"], ["shape", "size"], ["shape"], ["shape", "size"], ["shape"]]
    return preds, targets, mentions


def test_attribute_errors_count_only_mentioned_mistakes_most_frequent_first():
    preds, targets, mentions = _five_judged_images()
    errors = attribute_errors(preds, targets, mentions)
    # shape judged 5 times: circle->square twice, circle->triangle once, square->circle once;
    # size judged twice: large->small once (the first image's wrong size is not mentioned).
    assert [(e["attribute"], e["wanted"], e["drawn"], e["count"]) for e in errors] == [
        ("shape", "circle", "square", 2), ("shape", "circle", "triangle", 1),
        ("shape", "square", "circle", 1), ("size", "large", "small", 1)]
    assert errors[0]["share"] == pytest.approx(2 / 5) and errors[-1]["share"] == pytest.approx(1 / 2)
    assert len(attribute_errors(preds, targets, mentions, top=2)) == 2
    assert attribute_errors(targets, targets, mentions) == []
    assert describe_errors(errors, top=1) == "shape circle drawn as square 40.0%"
    assert describe_errors([]) == "none"
    with pytest.raises(T2IError, match="lengths must match"):
        attribute_errors(preds, targets[:2])


def test_error_examples_and_error_figure_show_the_images_behind_each_error():
    import matplotlib.pyplot as plt

    from t2i_helpers.evaluation.evaluate import error_figure
    from t2i_helpers.metrics import error_examples

    preds, targets, mentions = _five_judged_images()
    errors = attribute_errors(preds, targets, mentions)
    assert error_examples(preds, targets, mentions, errors[0]) == [0, 1]  # circle read as square
    assert error_examples(preds, targets, mentions, errors[0], limit=1) == [0]
    assert error_examples(preds, targets, mentions, errors[3]) == [3]  # size large->small: image 3 only
    # image 0's wrong size is not mentioned, so it is no example of a size error
    assert error_examples(preds, targets, mentions, {"attribute": "size", "wanted": "small", "drawn": "large"}) == []

    images = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 3, 8, 8)
    captions = [f"caption {i}" for i in range(5)]
    fig = error_figure(images, preds, targets, mentions, captions, top=2)
    image_axes = [ax for ax in fig.axes if ax.images]
    # two rows (the two commonest errors), as wide as the longest row (2 examples): images 0, 1 then 2
    assert len(image_axes) == 3
    assert [ax.get_title() for ax in fig.axes[:2]] == ["caption 0", "caption 1"]
    assert "read as square" in fig.axes[0].get_ylabel() and "read as triangle" in fig.axes[2].get_ylabel()
    plt.close(fig)
    assert error_figure(images, targets, targets, mentions, captions) is None  # nothing wrong, no figure


def test_a_blank_sample_is_one_nothing_drawn_error_and_wrong_on_every_attribute():
    """The judge reads "nothing" for every attribute of an image without an object; that is one error of
    its own (share over every caption), not a colour or shape confusion, and never right by chance."""
    import matplotlib.pyplot as plt

    from t2i_helpers.evaluation.evaluate import error_figure
    from t2i_helpers.metrics import NOTHING_DRAWN, error_examples
    from t2i_helpers.judges.classifier import NOTHING

    preds, targets, mentions = _five_judged_images()
    blank = {"shape": NOTHING, "size": NOTHING}
    preds = preds + [blank, blank]
    targets = targets + [{"shape": "circle", "size": "small"}, {"shape": "square", "size": "large"}]
    mentions = mentions + [["shape"], ["shape", "size"]]
    errors = attribute_errors(preds, targets, mentions)
    assert [(e["attribute"], e["wanted"], e["drawn"], e["count"]) for e in errors] == [
        ("object", "an object", "nothing", 2), ("shape", "circle", "square", 2), ("shape", "circle", "triangle", 1),
        ("shape", "square", "circle", 1), ("size", "large", "small", 1)]
    assert errors[0]["share"] == pytest.approx(2 / 7)  # of every caption
    assert errors[1]["share"] == pytest.approx(2 / 7)  # shape judged 7 times now
    assert errors[-1]["share"] == pytest.approx(1 / 3)  # size judged 3 times
    assert {k: errors[0][k] for k in NOTHING_DRAWN} == NOTHING_DRAWN
    assert describe_errors(errors, top=2) == "nothing drawn 28.6%; shape circle drawn as square 28.6%"
    assert error_examples(preds, targets, mentions, errors[0]) == [5, 6]
    assert error_examples(preds, targets, mentions, errors[1]) == [0, 1]  # the blank circle is not one of them
    acc = attribute_accuracy(preds, targets, mentions)
    assert acc["shape"] == pytest.approx(1 / 7) and acc["all"] == pytest.approx(1 / 7)  # only image 4 is right
    images = torch.linspace(-1, 1, 7).view(7, 1, 1, 1).expand(7, 3, 8, 8)
    fig = error_figure(images, preds, targets, mentions, [f"caption {i}" for i in range(7)], top=1)
    assert fig.axes[0].get_ylabel() == "nothing drawn\n(28.6%)" and fig.axes[0].get_title() == "caption 5"
    plt.close(fig)


def test_attribute_accuracy_by_splits_on_the_drawn_value():
    targets = [{"shape": "circle", "size": "small"}] * 4
    preds = [{"shape": "square", "size": "small"}, {"shape": "circle", "size": "small"},
             {"shape": "circle", "size": "large"}, {"shape": "circle", "size": "large"}]
    by = attribute_accuracy_by(preds, targets, [["shape"]] * 4, "size")
    assert list(by) == ["large", "small"]
    assert by["small"]["shape"] == 0.5 and by["small"]["n"] == 2
    assert by["large"]["shape"] == 1.0 and by["large"]["all"] == 1.0
    # Each group equals attribute_accuracy on its own rows.
    assert by["small"] == attribute_accuracy(preds[:2], targets[:2], [["shape"]] * 2)


def test_r_precision_is_one_for_identical_embeddings_and_near_chance_for_random():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(500, 32, generator=g)
    true = torch.randint(500, (300,), generator=g)
    assert r_precision(text[true], text, true, n_candidates=100, seed=0) == 1.0
    random_images = torch.randn(300, 32, generator=g)
    assert r_precision(random_images, text, true, n_candidates=100, seed=0) < 0.1


def test_r_precision_with_all_rows_as_candidates_equals_nearest_neighbour():
    g = torch.Generator().manual_seed(1)
    text = torch.randn(50, 16, generator=g)
    true = torch.randint(50, (200,), generator=g)
    images = text[true] + 1.2 * torch.randn(200, 16, generator=g)  # right about half the time
    t = text / text.norm(dim=1, keepdim=True)
    nearest = (images @ t.T).argmax(dim=1)  # independent: rank the true row among all 50 rows
    expected = float((nearest == true).float().mean())
    assert 0.1 < expected < 0.95
    assert r_precision(images, text, true, n_candidates=100, seed=3) == pytest.approx(expected)


def test_clip_score_is_scaled_clipped_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    expected = (100 * 1.0 + 0.0 + 100 * np.cos(np.pi / 4)) / 3  # cos 1, cos -1 -> clipped to 0, cos 45 degrees
    assert clip_score(a, b) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(T2IError):
        clip_score(a, b[:2])


def test_bench_eval_reports_proxy_speed_and_inception_status(no_network, monkeypatch, one_thread):
    monkeypatch.setattr(inception, "_online", lambda *a, **k: False)
    result = bench.bench_eval(n_score=100, image_size=32)
    assert result["proxy_features_images_per_s"] > 0 and result["proxy_score_seconds"] > 0
    assert result["inception"].startswith("unavailable")


def test_caption_fits_checks_only_named_attributes():
    images = [{"color": "red", "shape": "circle", "size": "small"},
              {"color": "blue", "shape": "circle", "size": "large"}]
    captions = [{"color": "red", "shape": "circle"}, {"shape": "circle"}, {"color": "red", "size": "large"}]
    expected = torch.tensor([[True, True, False], [False, True, False]])
    assert torch.equal(metrics.caption_fits(captions, images), expected)


def test_r_precision_never_draws_excluded_captions():
    g = torch.Generator().manual_seed(2)
    text = torch.randn(30, 8, generator=g)
    true = torch.arange(10)
    images = text[true] + 0.8 * torch.randn(10, 8, generator=g)
    exclude = torch.zeros(10, 30, dtype=torch.bool)
    exclude[:, 20:] = True  # only rows 0..19 may be mismatched captions
    t = text / text.norm(dim=1, keepdim=True)
    nearest = (images @ t[:20].T).argmax(dim=1)  # independent: all 20 allowed rows are candidates
    expected = float((nearest == true).float().mean())
    assert r_precision(images, text, true, n_candidates=100, exclude=exclude) == pytest.approx(expected)
    exclude[:, :] = True
    assert r_precision(images, text, true, exclude=exclude) == 1.0  # no negatives left: trivially right


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    from t2i_helpers.data.shapes import ShapesConfig, make_shapes

    return make_shapes(tmp_path_factory.mktemp("shapes"), ShapesConfig(images=100, image_size=32, seed=1))


def test_evaluate_images_on_shapes_reports_attribute_groups(small_shapes, tmp_path):
    from t2i_helpers.judges.classifier import AttributeClassifier, ClassifierConfig, predict_attributes
    from t2i_helpers.judges.clip import ClipConfig, ContrastiveModel

    data = evalset.load_eval_data(small_shapes.images_dir, small_shapes.val_json)
    assert data.is_shapes and data.split == "val" and data.held_out_captions().any()
    classifier = AttributeClassifier(ClassifierConfig(input_size=32, channels=(4, 8), feature_dim=16))
    clip = ContrastiveModel(6, ClipConfig(input_size=32, channels=(8,)))
    ids = evalset.sample_caption_ids(data, 50, seed=0)
    real = torch.as_tensor(data.images[data.caption_image[ids]]).permute(0, 3, 1, 2).float() / 127.5 - 1
    report = evaluate_images(real, ids, data, fid="proxy", classifier=classifier, contrastive=clip,
                             caption_embeddings=torch.randn(len(data.captions), 6), cache_dir=tmp_path)
    acc = report["attribute_accuracy"]
    assert set(acc) == {"val", "seen_pairs", "held_out", "real_images"}
    assert acc["val"] == acc["real_images"]  # the "generated" images are the real ones
    assert acc["seen_pairs"]["n"] + acc["held_out"]["n"] == 50
    # An untrained classifier makes plenty of mistakes: the report lists them as attribute_errors does.
    targets = [data.attributes[data.caption_image[c]] for c in ids]
    expected = metrics.attribute_errors(predict_attributes(classifier, real), targets, [data.mentions[c] for c in ids])
    assert report["attribute_errors"] == expected and expected
    held = data.held_out_captions()[ids]
    drawn = predict_attributes(classifier, real)
    assert report["attribute_errors_held_out"] == metrics.attribute_errors(
        [d for d, h in zip(drawn, held) if h], [t for t, h in zip(targets, held) if h],
        [data.mentions[c] for c, h in zip(ids, held) if h])
    by_size = report["attribute_accuracy_by_drawn_size"]
    assert sum(group["n"] for group in by_size.values()) == 50
    assert report["fid_network"].startswith("shapes-attribute-cnn")
    assert report["r_precision"] == report["r_precision_real"]
    assert 2 <= report["r_precision_clean_candidates"] <= report["r_precision_candidates"]
    text = evaluate.format_report(report)
    assert "held_out" in text and "R-precision" in text


class FakeRun:
    """What evaluate_run needs from ``load_run``: a generator and the run's text encoder."""

    family, step, device = "fake", 7, torch.device("cpu")

    def __init__(self, data):
        from types import SimpleNamespace

        self.model_config = SimpleNamespace(image_size=32)
        self.text_encoder_config = SimpleNamespace(model_name="fake-encoder")
        self.lookup = {c: data.images[data.caption_image[i]] for i, c in enumerate(data.captions)}

    def generate(self, captions, seed=0):
        # a "perfect" model: the real image of each caption, plus a little noise
        images = torch.as_tensor(np.stack([self.lookup[c] for c in captions])).permute(0, 3, 1, 2).float() / 127.5 - 1
        return (images + 0.02 * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)

    def encode(self, captions):
        from types import SimpleNamespace

        rows = [np.random.default_rng(zlib.crc32(c.encode())).normal(size=8) for c in captions]
        return SimpleNamespace(pooled=torch.tensor(np.stack(rows), dtype=torch.float32))


@pytest.mark.slow  # trains a (tiny) classifier and contrastive model
def test_evaluate_run_scores_a_run(small_shapes, tmp_path, monkeypatch, one_thread):
    from t2i_helpers.judges.classifier import ClassifierConfig
    from t2i_helpers.judges.clip import ClipConfig

    monkeypatch.setenv("T2I_DATA", str(tmp_path / "data"))
    val = evalset.load_eval_data(small_shapes.images_dir, small_shapes.val_json)
    lookup = FakeRun(val).lookup
    lookup.update(FakeRun(evalset.load_eval_data(small_shapes.images_dir, small_shapes.train_json)).lookup)
    run = FakeRun(val)
    run.lookup = lookup
    monkeypatch.setattr(evaluate, "load_run", lambda run_dir, device="auto": run)
    report = evaluate.evaluate_run(tmp_path / "run", small_shapes.images_dir, small_shapes.val_json, n=60,
                                  fid="proxy", classifier_config=ClassifierConfig(input_size=32, steps=30),
                                  clip_config=ClipConfig(steps=20, batch_size=32),
                                  error_figure_path=tmp_path / "figs" / "errors")
    assert report["family"] == "fake" and report["step"] == 7 and report["n_generated"] == 60
    # a 30-step judge makes mistakes; the samples behind them are saved as PNG and PDF
    assert report["attribute_errors"]
    png, pdf = (Path(p) for p in report["error_figure"])
    assert png == tmp_path / "figs" / "errors.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert pdf.read_bytes()[:4] == b"%PDF"
    assert report["protocol"]["n_generated"] == 60 and report["protocol"]["resolution"] == 32
    assert report["fid_proxy"] >= 0 and "fid" not in report
    assert {"val", "held_out", "real_images"} <= set(report["attribute_accuracy"])
    assert 0 <= report["r_precision"] <= 1
    cache = tmp_path / "data" / "cache"
    assert {p.name for p in cache.iterdir()} == {"fid", "classifier", "clip"}


@pytest.mark.slow  # builds Inception-v3 (24M parameters) and runs it at 299 px on the CPU
def test_local_inception_weights_file_gives_2048_features(no_network, tmp_path):
    from unittest import mock

    # Random weights in torch-fidelity's format (the real file cannot be downloaded in a test).
    with mock.patch.object(no_network, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(no_network.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        random_net = no_network.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / inception.INCEPTION_FILE
    torch.save(random_net.state_dict(), path)
    network = inception.inception_network(path)
    assert network.name == inception.INCEPTION_NAME + "-tf1" and "TF1-compatible" in network.resize
    features = inception.extract_features(network, np.zeros((2, 32, 32, 3), dtype=np.uint8))
    assert features.shape == (2, 2048) and np.isfinite(features).all()
    torch.save({"state_dict": Payload()}, tmp_path / "pickled.pth")  # arbitrary objects are refused
    with pytest.raises(AssetMissingError, match="pickled.pth is not a torch-fidelity"):
        inception.inception_network(tmp_path / "pickled.pth")


class Payload:
    """An arbitrary pickled object."""


def test_coco_split_is_scored_without_attributes(coco_mini, tmp_path):
    from t2i_helpers.judges.clip import ClipConfig, ContrastiveModel

    data = evalset.load_eval_data(coco_mini / "val2017", coco_mini / "annotations" / "captions_val2017.json",
                                  image_size=32)
    assert data.dataset == "coco" and data.split == "val" and not data.is_shapes
    assert data.images.shape[1:] == (32, 32, 3) and len(data.captions) >= len(data.images)
    clip = ContrastiveModel(4, ClipConfig(input_size=32, channels=(8,)))
    ids = evalset.sample_caption_ids(data, 30, seed=0)
    report = evaluate_images(torch.rand(30, 3, 32, 32) * 2 - 1, ids, data, fid="proxy", contrastive=clip,
                             caption_embeddings=torch.randn(len(data.captions), 4), cache_dir=tmp_path)
    assert "attribute_accuracy" not in report and "r_precision_clean" not in report
    assert report["protocol"]["dataset"] == "coco" and report["r_precision_candidates"] == 100
