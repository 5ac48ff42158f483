"""ConditionalGAN: shapes, phases and their gradients, the matching-aware loss, MA-GP, DiffAugment."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import torch.nn.functional as F
from pathlib import Path

from t2i_helpers.errors import T2IError
from t2i_helpers.data.batch import Batch
import t2i_helpers.models.gan as gan_module
from t2i_helpers.models.gan import (
    ConditionalGAN,
    GANConfig,
    diff_augment,
    ma_gp,
    matching_aware_hinge,
)
from t2i_helpers.models.diffaugment import rand_cutout, rand_translation

TEXT_DIM = 24


def tiny(**overrides) -> GANConfig:
    values = dict(image_size=32, noise_dim=8, gen_channels=4, disc_channels=4, disc_text_dim=8)
    return GANConfig(**{**values, **overrides})


def make_batch(b: int = 4, size: int = 32, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(images=torch.rand(b, 3, size, size, generator=g) * 2 - 1, text=torch.randn(b, TEXT_DIM, generator=g))


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_generate_and_discriminate_shapes(size):
    model = ConditionalGAN(tiny(image_size=size), TEXT_DIM).eval()
    text = torch.randn(3, TEXT_DIM)
    images = model.generate(text, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert model.discriminator(images, text).shape == (3,)


def test_parameter_counts_match_the_documentation():
    for name, config in [("GANConfig()`` (64 px)", GANConfig()), ("GANConfig.smoke()`` (16 px)", GANConfig.smoke())]:
        model = ConditionalGAN(config, 384)
        g = sum(p.numel() for p in model.generator.parameters()) / 1e6
        d = sum(p.numel() for p in model.discriminator.parameters()) / 1e6
        digits = 1 if g > 1 else 2
        documented = f"{re.escape(name)} G {g:.{digits}f} M \\+ D {d:.{digits}f} M"
        assert re.search(documented, gan_module.__doc__), (name, g, d)


def test_unsupported_image_size_is_a_one_line_error():
    with pytest.raises(T2IError, match="image_size must be one of"):
        ConditionalGAN(tiny(image_size=48), TEXT_DIM)


def test_param_groups_are_disjoint_cover_everything_and_d_comes_first():
    model = ConditionalGAN(tiny(), TEXT_DIM)
    groups = model.param_groups()
    assert list(groups) == ["d", "g"]
    d_ids, g_ids = {id(p) for p in groups["d"]}, {id(p) for p in groups["g"]}
    assert not d_ids & g_ids
    assert d_ids | g_ids == {id(p) for p in model.parameters()}
    assert set(model.config.optimizer_settings()) == set(groups)


def test_optimizer_settings_follow_config():
    settings = GANConfig(lr_g=1e-4, lr_d=4e-4).optimizer_settings()
    assert settings["g"]["lr"] == 1e-4 and settings["d"]["lr"] == 4e-4
    assert settings["d"]["betas"] == (0.0, 0.9)


def test_config_json_round_trip():
    config = GANConfig.smoke()
    assert GANConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config


def _grads(params):
    return [p.grad for p in params]


def test_d_phase_leaves_generator_without_gradients():
    torch.manual_seed(0)
    model = ConditionalGAN(tiny(), TEXT_DIM)
    losses = model.training_losses(make_batch(), "d")
    losses["loss"].backward()
    assert all(g is None for g in _grads(model.generator.parameters()))
    assert all(g is not None for g in _grads(model.discriminator.parameters()))
    assert {"d_real", "d_mismatch", "d_fake", "d_gp"} <= set(losses)
    assert all(not v.requires_grad for k, v in losses.items() if k != "loss")


def test_g_phase_leaves_discriminator_without_gradients():
    torch.manual_seed(0)
    model = ConditionalGAN(tiny(), TEXT_DIM)
    losses = model.training_losses(make_batch(), "g")
    losses["loss"].backward()
    assert all(g is None for g in _grads(model.discriminator.parameters()))
    assert all(g is not None for g in _grads(model.generator.parameters()))
    # D is trainable again afterwards (the freeze is only for the generator phase).
    assert all(p.requires_grad for p in model.discriminator.parameters())


def test_unknown_phase_raises():
    with pytest.raises(ValueError, match="phases 'd' and 'g'"):
        ConditionalGAN(tiny(), TEXT_DIM).training_losses(make_batch(), "main")


def test_matching_aware_hinge_against_hand_computation():
    real = torch.tensor([2.0, 0.5, -1.0])
    mismatch = torch.tensor([-2.0, 0.0, 3.0])
    fake = torch.tensor([-0.5, -3.0, 1.0])
    out = matching_aware_hinge(real, mismatch, fake)
    d_real = (0.0 + 0.5 + 2.0) / 3  # max(0, 1 - r)
    d_mismatch = (0.0 + 1.0 + 4.0) / 3  # max(0, 1 + m)
    d_fake = (0.5 + 0.0 + 2.0) / 3
    assert out["d_real"].item() == pytest.approx(d_real)
    assert out["d_mismatch"].item() == pytest.approx(d_mismatch)
    assert out["d_fake"].item() == pytest.approx(d_fake)
    assert out["loss"].item() == pytest.approx(d_real + 0.5 * d_mismatch + 0.5 * d_fake)
    # Pairs marked invalid (the rolled caption equals the real one) are left out of the mean.
    masked = matching_aware_hinge(real, mismatch, fake, torch.tensor([True, False, True]))
    assert masked["d_mismatch"].item() == pytest.approx((0.0 + 4.0) / 2)


def test_d_loss_uses_rolled_captions_real_images_and_generator_samples():
    """With augmentation and MA-GP off, each part equals an independent computation."""
    model = ConditionalGAN(tiny(diffaug_policy="", ma_gp_weight=0.0), TEXT_DIM)
    batch = make_batch(b=5)
    torch.manual_seed(3)
    losses = model.training_losses(batch, "d")
    with torch.no_grad():
        d = model.discriminator
        expected_real = F.relu(1 - d(batch.images, batch.text)).mean()
        expected_mismatch = F.relu(1 + d(batch.images, batch.text.roll(1, dims=0))).mean()
        torch.manual_seed(3)
        fake = model.generator(model.sample_noise(5), batch.text)
        expected_fake = F.relu(1 + d(fake, batch.text)).mean()
    assert losses["d_real"].item() == pytest.approx(expected_real.item(), rel=1e-5)
    assert losses["d_mismatch"].item() == pytest.approx(expected_mismatch.item(), rel=1e-5)
    assert losses["d_fake"].item() == pytest.approx(expected_fake.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx(
        (expected_real + 0.5 * expected_mismatch + 0.5 * expected_fake).item(), rel=1e-5
    )


def test_identical_captions_are_not_counted_as_mismatches():
    model = ConditionalGAN(tiny(diffaug_policy="", ma_gp_weight=0.0), TEXT_DIM)
    batch = make_batch(b=4)
    batch.text = batch.text[:1].expand(4, -1).clone()  # every image has the same caption
    losses = model.training_losses(batch, "d")
    assert losses["d_mismatch"].item() == 0.0
    assert losses["loss"].item() == pytest.approx((losses["d_real"] + 0.5 * losses["d_fake"]).item(), rel=1e-6)


def test_ma_gp_matches_closed_form_for_a_linear_critic():
    """For D(x, s) = w.x + u.s the gradient is (w, u) everywhere: penalty = k ||(w, u)||^p."""
    w, u = torch.randn(3 * 4 * 4), torch.randn(5)
    images = torch.randn(2, 3, 4, 4, requires_grad=True)
    text = torch.randn(2, 5, requires_grad=True)
    logits = images.flatten(1) @ w + text @ u
    expected = 2.0 * torch.cat([w, u]).norm() ** 6
    assert ma_gp(logits, images, text, 2.0, 6.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_diffaugment_is_differentiable_and_keeps_shape():
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    torch.manual_seed(0)
    y = diff_augment(x, "color,translation,cutout")
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_is_a_zero_filled_integer_shift():
    torch.manual_seed(1)
    x = torch.rand(6, 3, 16, 16) + 1  # strictly positive, so the zero fill is visible
    y = rand_translation(x, ratio=0.125)  # shifts of at most 2 pixels
    assert y.shape == x.shape
    for xi, yi in zip(x, y):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros_like(xi)
                src = xi[:, max(0, -dy) : 16 - max(0, dy), max(0, -dx) : 16 - max(0, dx)]
                shifted[:, max(0, dy) : 16 - max(0, -dy), max(0, dx) : 16 - max(0, -dx)] = src
                matches.append(torch.equal(shifted, yi))
        assert any(matches)


def test_cutout_zeroes_one_square_of_at_most_half_the_side():
    torch.manual_seed(2)
    x = torch.ones(8, 3, 16, 16)
    y = rand_cutout(x, ratio=0.5)
    zeroed = (y[:, 0] == 0).sum(dim=(1, 2))
    assert (zeroed > 0).all() and (zeroed <= 8 * 8).all()
    assert torch.equal(y[:, 0], y[:, 2])  # the same mask on every channel


def test_unknown_diffaugment_policy_raises():
    with pytest.raises(T2IError, match="unknown DiffAugment policy 'flip'"):
        diff_augment(torch.zeros(1, 3, 8, 8), "color,flip")


def test_generation_is_reproducible_per_seed():
    model = ConditionalGAN(tiny(), TEXT_DIM).eval()
    text = torch.randn(2, TEXT_DIM)
    a = model.generate(text, generator=torch.Generator().manual_seed(7))
    b = model.generate(text, generator=torch.Generator().manual_seed(7))
    c = model.generate(text, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_truncation_bounds_the_noise_and_unknown_options_raise():
    model = ConditionalGAN(tiny(), TEXT_DIM)
    z = model.sample_noise(64, torch.Generator().manual_seed(0), truncation=0.5)
    assert z.abs().max() <= 0.5
    with pytest.raises(TypeError, match="guidance"):
        model.generate(torch.randn(1, TEXT_DIM), guidance=3.0)


def test_batch_at_another_size_is_resized():
    model = ConditionalGAN(tiny(image_size=32), TEXT_DIM)
    losses = model.training_losses(make_batch(size=64), "d")
    assert torch.isfinite(losses["loss"])


def test_alternating_adam_steps_give_finite_losses_and_train_both_nets():
    torch.manual_seed(0)
    model = ConditionalGAN(tiny(), TEXT_DIM)
    settings = model.config.optimizer_settings()
    optimizers = {name: torch.optim.Adam(params, **settings[name]) for name, params in model.param_groups().items()}
    before = {name: [p.detach().clone() for p in params] for name, params in model.param_groups().items()}
    batch = make_batch(b=4)
    for _ in range(3):
        for name, optimizer in optimizers.items():
            optimizer.zero_grad(set_to_none=True)
            losses = model.training_losses(batch, name)
            losses["loss"].backward()
            optimizer.step()
            assert all(torch.isfinite(v) for v in losses.values())
    for name, params in model.param_groups().items():
        assert any(not torch.equal(p, q) for p, q in zip(params, before[name])), name


def test_training_flops_per_image_match_the_documentation():
    from torch.utils.flop_counter import FlopCounterMode

    notes = (Path(__file__).resolve().parents[1] / "docs" / "measurements.md").read_text()
    assert "10.7 GFLOP per training image at 64 px (42.5 at 64 channels" in notes
    batch = Batch(images=torch.rand(2, 3, 64, 64) * 2 - 1, text=torch.randn(2, 384))
    for channels, documented in {32: 10.7, 64: 42.5}.items():  # the default width, and twice it
        model = ConditionalGAN(GANConfig(gen_channels=channels, disc_channels=channels), 384)
        with FlopCounterMode(display=False) as counter:
            for phase in ("d", "g"):
                model.training_losses(batch, phase)["loss"].backward()
        assert counter.get_total_flops() / len(batch) / 1e9 == pytest.approx(documented, abs=0.05)
