"""The StyleGAN2-style generator: modulated convolution against a per-image computation, style mixing,
truncation, seeds, and the family through the engine and the command line."""
from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

from t2i_helpers.cli import main
from t2i_helpers.data.batch import Batch
from t2i_helpers.models import build_model, model_classes
from t2i_helpers.models.stylegan import ModulatedConv, StyleGAN, StyleGANConfig, layer_channels
from t2i_helpers.train import load_run

TEXT_DIM = 24


def tiny(**overrides) -> StyleGANConfig:
    values = dict(image_size=16, noise_dim=8, gen_channels=4, disc_channels=4, disc_text_dim=8, w_dim=16,
                  mapping_layers=2, ma_gp_weight=0.0)
    return StyleGANConfig(**{**values, **overrides})


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_each_tier_draws_images_of_its_size_in_range(name):
    config = StyleGANConfig() if name == "gpu" else getattr(StyleGANConfig, name)()
    model = StyleGAN(config, 384).eval()
    images = model.generate(torch.randn(2, 384), generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, config.image_size, config.image_size)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.05
    assert model_classes("stylegan") == (StyleGANConfig, StyleGAN)


def test_modulated_convolution_equals_one_convolution_per_image():
    torch.manual_seed(0)
    conv = ModulatedConv(5, 7, w_dim=6)
    with torch.no_grad():
        conv.affine.weight.normal_()  # a style that is not 1 everywhere
    x, w = torch.randn(3, 5, 8, 8), torch.randn(3, 6)
    ours = conv(x, w)
    for i in range(3):
        style = F.linear(w[i:i + 1], conv.affine.weight * conv.affine.scale, conv.affine.bias)[0]  # [in]
        weight = conv.weight * conv.scale * style[None, :, None, None]
        weight = weight / weight.pow(2).sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()  # demodulate
        torch.testing.assert_close(ours[i:i + 1], F.conv2d(x[i:i + 1], weight, padding=1), rtol=1e-4, atol=1e-5)


def test_demodulation_keeps_unit_variance_whatever_the_style():
    torch.manual_seed(0)
    conv = ModulatedConv(64, 64, w_dim=8)
    x = torch.randn(4, 64, 16, 16)
    for scale in (0.1, 10.0):  # the style's size cancels out
        assert conv(x, torch.randn(4, 8) * scale).var().item() == pytest.approx(1.0, rel=0.15)


def test_style_mixing_switches_to_a_second_style_at_one_crossover():
    torch.manual_seed(0)
    gen = StyleGAN(tiny(), TEXT_DIM).generator
    z, text = torch.randn(6, 8), torch.randn(6, TEXT_DIM)
    plain = gen.styles(z, text)
    assert torch.equal(plain, plain[:, :1].expand_as(plain))  # one w for every layer
    mixed = gen.styles(z, text, mix=1.0)
    for row in mixed:
        changes = [i for i in range(1, gen.num_ws) if not torch.equal(row[i], row[i - 1])]
        assert len(changes) == 1 and changes[0] >= 1, changes  # one crossover, after the first layer
    assert not torch.equal(mixed, plain)


def test_truncation_to_psi_zero_gives_the_captions_mean_style():
    torch.manual_seed(0)
    model = StyleGAN(tiny(), TEXT_DIM).eval()  # noise strengths start at 0: the image is a function of w
    text = torch.randn(1, TEXT_DIM).expand(2, -1)
    a = model.generate(text, generator=torch.Generator().manual_seed(0), psi=0.0)
    b = model.generate(text, generator=torch.Generator().manual_seed(1), psi=0.0)
    torch.testing.assert_close(a, b)  # every z pulled all the way to the mean
    free = [model.generate(text, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not torch.allclose(free[0], free[1])
    centre = model.mean_style(text[:1])[:, None].expand(-1, model.generator.num_ws, -1)
    torch.testing.assert_close(a[:1], model.generate(text[:1], styles=centre))


def test_a_seed_reproduces_the_samples_noise_included():
    model = StyleGAN(tiny(), TEXT_DIM).eval()
    with torch.no_grad():
        for layer in model.generator.layers:
            layer.noise_strength.fill_(1.0)
    text = torch.randn(2, TEXT_DIM)
    same = [model.generate(text, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(same[0], same[1])


def test_both_phases_train_and_change_only_their_own_weights():
    torch.manual_seed(0)
    model = build_model("stylegan", tiny(), TEXT_DIM)
    batch = Batch(images=torch.rand(4, 3, 16, 16) * 2 - 1, text=torch.randn(4, TEXT_DIM))
    for phase, params in model.param_groups().items():
        before = [p.detach().clone() for p in params]
        optimizer = torch.optim.Adam(params, lr=1e-2)
        loss = model.training_losses(batch, phase)["loss"]
        model.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        assert any(not torch.equal(p, q) for p, q in zip(params, before)), phase


def test_unsupported_size_is_one_line():
    with pytest.raises(Exception, match="16, 32, 64 or 128"):
        layer_channels(tiny(image_size=48))


@pytest.mark.slow
def test_stylegan_trains_resumes_and_samples_through_the_cli(tiny_train_data, tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_TIER", "smoke")
    images, ann = tiny_train_data
    out = tmp_path / "run"
    flags = ["train", "--model", "stylegan", "--data", str(images), str(ann), "--out", str(out), "--device", "cpu",
             "--no-progress", "--batch-size", "4"]
    assert main(flags + ["--steps", "3"]) == 0
    assert main(flags + ["--steps", "5", "--resume"]) == 0
    run = load_run(out, device="cpu")
    assert run.family == "stylegan" and run.step == 5
    assert main(["sample", str(out), "--caption", "a red circle", "-n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_compare_and_the_curve_benchmark_accept_stylegan():
    from t2i_helpers.cli import commands
    from t2i_helpers.cli.curve import CURVE_STEPS
    from t2i_helpers.cli.parser import build_parser

    args = build_parser(commands.HANDLERS).parse_args(
        ["compare", "--data", "a", "b", "--out", "o", "--models", "gan", "stylegan"])
    assert args.models == ["gan", "stylegan"]
    assert build_parser(commands.HANDLERS).parse_args(["bench", "curve", "--models", "stylegan"]).models == ["stylegan"]
    assert CURVE_STEPS["stylegan"][-1] == CURVE_STEPS["gan"][-1]  # compared at the GAN's steps
