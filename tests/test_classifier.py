"""The Shapes attribute classifier: accuracy on real val images, caching, save/load, feature network."""
from __future__ import annotations

import pytest
import torch

from t2i_helpers.errors import T2IError
from t2i_helpers.judges.augment import _mirrored_positions
from t2i_helpers.judges.classifier import (
    AttributeClassifier,
    ClassifierConfig,
    load_classifier,
    load_or_train_attribute_classifier,
    predict_attributes,
    save_classifier,
)


@pytest.fixture(scope="module")
def shapes(cpu_tier_judge):
    # The cpu tier's 4,000 images (3,200 train, 800 val), shared with tests/test_shipped.py. Not fewer
    # than about 1,000: with 480 training images the judge of seed 0 made 1 shape error in 120 val images
    # on torch 2.14 and 3 on torch 2.3 (numerics differ), too close to the 0.99 asked below.
    return cpu_tier_judge[0]


@pytest.fixture(scope="module")
def trained(cpu_tier_judge):
    """The default configuration, trained once on the 3,200 train images (cached in a temp folder)."""
    _, model, report, cache = cpu_tier_judge
    return model, report, cache


@pytest.mark.slow  # trains the classifier: tens of seconds on 2 CPU cores
def test_classifier_reads_every_attribute_of_real_val_images(trained):
    _, report, _ = trained
    assert report["from_cache"] is False and report["train_images"] == 3200 and report["val_images"] == 800
    for name in ("color", "shape", "size", "position"):
        assert report["val_accuracy"][name] >= 0.99, report["val_accuracy"]
    # colour-shape pairs absent from the train split are read as well as the others
    assert report["val_held_out_images"] > 0
    assert report["val_accuracy_held_out"]["all"] >= 0.95, report["val_accuracy_held_out"]


@pytest.mark.slow
def test_second_call_reads_the_cache_and_predicts_the_same(trained, shapes):
    model, _, cache = trained
    again, report = load_or_train_attribute_classifier(shapes.images_dir, shapes.val_json,  # either split's file
                                                       config=ClassifierConfig(), cache_dir=cache)
    assert report["from_cache"] is True
    x = torch.rand(8, 3, 64, 64) * 2 - 1
    for a, b in zip(model(x).values(), again(x).values()):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_predictions_agree_for_uint8_and_float_inputs(trained, shapes):
    from t2i_helpers.data.evalset import load_eval_data

    model, _, _ = trained
    val = load_eval_data(shapes.images_dir, shapes.val_json)
    from_uint8 = predict_attributes(model, val.images[:20])
    as_float = torch.as_tensor(val.images[:20]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert predict_attributes(model, as_float) == from_uint8
    assert sum(p == t for p, t in zip(from_uint8, val.attributes[:20])) >= 19


class Payload:
    """An arbitrary pickled object: ``weights_only=True`` refuses to rebuild it."""


def test_save_load_round_trip_and_untrusted_files(tmp_path):
    model = AttributeClassifier(ClassifierConfig(input_size=32, channels=(4, 8), feature_dim=16)).eval()
    path = save_classifier(model, tmp_path / "c.pt", {"val_accuracy": {"color": 1.0}})
    loaded, report = load_classifier(path)
    assert report == {"val_accuracy": {"color": 1.0}} and loaded.config == model.config
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded.features(x), model.features(x))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]

    torch.save({"state_dict": {}, "config": Payload(), "report": "{}"}, tmp_path / "evil.pt")
    with pytest.raises(T2IError, match="evil.pt"):
        load_classifier(tmp_path / "evil.pt")


def test_feature_network_takes_uint8_and_is_named_by_its_weights():
    model = AttributeClassifier(ClassifierConfig(input_size=32, channels=(4, 8), feature_dim=16))
    net = model.feature_network()
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    features = net(images)
    assert features.shape == (5, 16) and net.num_features == 16
    torch.testing.assert_close(features, model.eval().features(images.float() / 127.5 - 1))
    with torch.no_grad():
        model.heads["color"].weight.add_(1.0)
    assert model.feature_network().name != net.name  # other weights, other cached statistics
    with pytest.raises(T2IError, match="uint8"):
        net(images.float())


def test_heads_have_one_output_per_class():
    model = AttributeClassifier(ClassifierConfig())
    logits = model(torch.zeros(2, 3, 64, 64))
    assert {k: v.shape[1] for k, v in logits.items()} == {"color": 6, "shape": 3, "size": 2, "position": 9}
    assert model.features(torch.zeros(2, 3, 48, 48)).shape == (2, 128)  # other sizes are resized


def test_mirroring_swaps_left_and_right_positions():
    from t2i_helpers.data.shapes import POSITIONS

    mirror = _mirrored_positions(POSITIONS)
    names = {POSITIONS[i]: POSITIONS[int(j)] for i, j in enumerate(mirror)}
    assert names["top left"] == "top right" and names["right"] == "left" and names["center"] == "center"
    assert names["bottom"] == "bottom"
    assert _mirrored_positions(["a", "b"]) is None


def test_training_refuses_coco_annotations(coco_mini):
    from t2i_helpers.judges.classifier import train_attribute_classifier

    with pytest.raises(T2IError, match="not a Shapes annotation file"):
        train_attribute_classifier(coco_mini / "val2017", coco_mini / "annotations" / "captions_val2017.json",
                                   steps=1, val_ann_file=None)


def test_degrade_keeps_every_label_and_the_black_background(shapes):
    """Independent check of the labels: the object's mean colour is still nearest its palette colour."""
    import torch.nn.functional as F

    from t2i_helpers.data.shapes import COLORS
    from t2i_helpers.data.evalset import load_eval_data
    from t2i_helpers.judges.augment import degrade
    from t2i_helpers.data.images import to_float

    val = load_eval_data(shapes.images_dir, shapes.val_json)
    x = to_float(val.images[:64])
    alpha = torch.as_tensor(val.images[:64].max(axis=-1) > 0).float()[:, None]
    config = ClassifierConfig(degrade=1.0)
    out = degrade(x, alpha, config, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32)
    inside = F.max_pool2d(1 - alpha, 5, stride=1, padding=2) == 0  # 2+ pixels in from the object's edge
    for image, clean, mask, attrs in zip(out, x, inside, val.attributes[:64]):
        mean = ((image + 1) * 127.5)[:, mask[0]].mean(dim=1)
        assert list(COLORS)[int(((palette - mean) ** 2).sum(1).argmin())] == attrs["color"]
        assert not torch.equal(image, clean)  # every chosen image really changed
    # The background, away from the (possibly softened) edge, is no longer pure black but stays dark.
    far = (F.max_pool2d(alpha, 7, stride=1, padding=3) == 0).expand_as(out)
    assert torch.all(x[far] == -1) and (out[far] > -1).any()
    assert out[far].mean() < -1 + config.background and torch.quantile(out[far], 0.99) < -1 + 4 * config.background
    # degrade = 0 chooses nothing; the same seed gives the same images
    assert torch.equal(degrade(x, alpha, ClassifierConfig(degrade=0.0), torch.Generator().manual_seed(0)), x)
    assert torch.equal(degrade(x, alpha, config, torch.Generator().manual_seed(0)), out)


@pytest.mark.slow
def test_the_judge_reads_degraded_real_images(trained, shapes):
    """What degrade is for: off-palette, unevenly lit, softened objects are still read right."""
    from t2i_helpers.data.evalset import load_eval_data
    from t2i_helpers.judges.classifier import accuracy_per_attribute
    from t2i_helpers.judges.augment import degrade
    from t2i_helpers.data.images import to_float

    model, _, _ = trained
    val = load_eval_data(shapes.images_dir, shapes.val_json)
    alpha = torch.as_tensor(val.images.max(axis=-1) > 0).float()[:, None]
    x = degrade(to_float(val.images), alpha, ClassifierConfig(degrade=1.0), torch.Generator().manual_seed(1))
    accuracy = accuracy_per_attribute(model, x, val.attributes)
    assert min(accuracy[k] for k in ("color", "size", "position")) >= 0.99, accuracy
    # Softened small shapes are the hard part (0.963 on torch 2.14, 0.950 on torch 2.3; clean: >= 0.99 above).
    assert accuracy["shape"] >= 0.93, accuracy


def test_training_degrades_each_image_with_its_own_object_mask(shapes, monkeypatch, tmp_path):
    """Mirrored images must bring their (mirrored) coverage along, or the colour shift lands beside the object."""
    import t2i_helpers.judges.augment as augment
    import t2i_helpers.judges.classifier as classifier

    calls = []
    real_degrade = augment.degrade

    def checking_degrade(x, alpha, config, generator):
        lit = (x + 1).amax(dim=1, keepdim=True) > 0.5  # the object's pixels (background is black)
        calls.append(((alpha > 0.5) == lit).float().mean().item())
        return real_degrade(x, alpha, config, generator)

    monkeypatch.setattr(augment, "degrade", checking_degrade)
    classifier.train_attribute_classifier(shapes.images_dir, shapes.train_json, steps=3, val_ann_file=shapes.val_json,
                                          config=ClassifierConfig(input_size=32, channels=(4, 8), feature_dim=16,
                                                                  noise_std=0.0))
    assert len(calls) == 3 and min(calls) > 0.98, calls


def test_a_new_training_version_retrains_instead_of_reusing_the_cache(shapes, monkeypatch, tmp_path):
    import t2i_helpers.judges.classifier as classifier

    tiny = ClassifierConfig(input_size=32, channels=(4, 8), feature_dim=16, steps=2)
    train = lambda: load_or_train_attribute_classifier(shapes.images_dir, shapes.train_json,  # noqa: E731
                                                       config=tiny, cache_dir=tmp_path)[1]["from_cache"]
    assert train() is False and train() is True
    monkeypatch.setattr(classifier, "TRAINING_VERSION", classifier.TRAINING_VERSION + 1)
    assert train() is False and len(list(tmp_path.glob("attributes-*.pt"))) == 2


def test_object_drawn_sees_every_real_object_and_no_blank_noisy_canvas():
    """Every render (each colour, shape, size and position, at every Shapes size and the 16 px of the
    smoke GAN) counts as drawn; black canvases with sample-like noise or lone bright speckles do not."""
    import numpy as np
    import torch.nn.functional as F

    from t2i_helpers.data.shapes import COLORS, POSITIONS, SHAPES, SIZES, render
    from t2i_helpers.judges.classifier import DRAWN_THRESHOLD, object_drawn
    from t2i_helpers.data.images import to_float

    assert DRAWN_THRESHOLD == pytest.approx(180 / 255 / 2)  # half the dimmest palette colour (green)
    renders = {size: np.stack([render(s, c, z, p, image_size=size) for s in SHAPES for c in COLORS
                               for z in SIZES for p in POSITIONS]) for size in (32, 64)}
    for size, real in renders.items():
        assert object_drawn(real).all(), size
    # 16 px, as the image cache resizes for the smoke GAN (bicubic, antialiased)
    small = F.interpolate(to_float(renders[32]), size=16, mode="bicubic", antialias=True, align_corners=False)
    assert object_drawn(small).all()
    g = torch.Generator().manual_seed(0)
    noise = (-1 + 0.15 * torch.randn(64, 3, 32, 32, generator=g).abs()).clamp(-1, 1)  # a lifted, speckled black
    assert not object_drawn(noise).any()
    speckled = torch.full((8, 3, 32, 32), -1.0)
    speckled[:, :, 5, 7] = 1.0  # one white pixel per image: noise, not an object
    speckled[:, 0, 20, 20] = 1.0
    assert not object_drawn(speckled).any()
    dim = torch.full((1, 3, 32, 32), -1.0)
    dim[:, 1, 10:14, 10:14] = 2 * 0.40 - 1  # a faint but visible green square (40% brightness)
    assert object_drawn(dim).all()
    # uint8 input (the cache layout, [N, H, W, 3]) gives the same answer
    assert object_drawn(((noise + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()).sum() == 0


def test_predict_attributes_reads_nothing_where_no_object_is_drawn():
    from t2i_helpers.data.shapes import render
    from t2i_helpers.judges.classifier import NOTHING
    from t2i_helpers.data.images import to_float

    torch.manual_seed(0)
    model = AttributeClassifier(ClassifierConfig())
    real = to_float(torch.as_tensor(render("triangle", "green", "small", "top", image_size=32))[None])
    images = torch.cat([real, torch.full((1, 3, 32, 32), -1.0)])
    pred = predict_attributes(model, images, batch_size=1)
    assert set(pred[0].values()) & {NOTHING} == set() and set(pred[0]) == set(model.config.classes)
    assert pred[1] == {name: NOTHING for name in model.config.classes}
