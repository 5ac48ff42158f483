"""TextDiffusion: schedule and v-parameterisation identities, guidance, DDIM, masking, training."""
from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch
from torch import nn

import t2i_helpers.models.diffusion as diffusion_module
from t2i_helpers.errors import T2IError
from t2i_helpers.models import build_model
from t2i_helpers.models.base import Batch
from t2i_helpers.models.diffusion import DiffusionConfig, TextDiffusion, alpha_bar, alpha_sigma, apply_dynamic_threshold

TEXT_DIM = 24


def tiny(**overrides) -> DiffusionConfig:
    """A small UNet on the v-objective, whose schedule, weighting and DDIM most tests here check;
    ``tiny(objective="flow")`` for the default objective (tested at the end of the file)."""
    values = dict(
        objective="v",
        image_size=16,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        head_dim=8,
        context_dim=8,
        dropout=0.0,
    )
    return DiffusionConfig(**{**values, **overrides})


def randomise_zero_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """Zero-initialised outputs make a fresh model predict v = 0 for every input, which would make
    the comparisons below trivial: give those parameters random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def conditions(b: int = 2, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, TEXT_DIM, generator=g)
    tokens = torch.randn(b, length, TEXT_DIM, generator=g)
    lengths = torch.tensor([3, length] * b)[:b, None]  # the first caption has 2 padding positions
    mask = torch.arange(length)[None].expand(b, length) < lengths
    return text, tokens, mask


# ---- schedule and parameterisation ------------------------------------------------------------------


def test_cosine_schedule_matches_closed_form_and_is_monotone():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    s = 0.008
    expected = [
        math.cos((ti + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2 for ti in t.tolist()
    ]
    got = alpha_bar(t)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12)
    assert got[0].item() == pytest.approx(1.0) and got[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert (got[1:] < got[:-1]).all()
    a, sigma = alpha_sigma(t)
    assert torch.allclose(a**2 + sigma**2, torch.ones_like(t))


def test_v_parameterisation_recovers_x0_and_eps():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 3, 4, 4, generator=g)
    t = torch.rand(8, generator=g)
    a, s = (z.view(-1, 1, 1, 1) for z in alpha_sigma(t))
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    assert torch.allclose(a * x_t - s * v, x0, atol=1e-5)
    assert torch.allclose(s * x_t + a * v, eps, atol=1e-5)


def test_dynamic_threshold_leaves_in_range_images_alone_and_rescales_others():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.equal(apply_dynamic_threshold(x, 0.995), x)
    big = x * 4
    out = apply_dynamic_threshold(big, 0.995)
    assert out.abs().max() <= 1 + 1e-6
    assert out.abs().max() > 0.9  # rescaled, not squashed to a constant


# ---- network and conditioning ------------------------------------------------------------------------


def test_parameter_counts_match_the_documentation():
    full = sum(p.numel() for p in TextDiffusion(DiffusionConfig(), 384).parameters())
    smoke = sum(p.numel() for p in TextDiffusion(DiffusionConfig.smoke(), 384).parameters())
    assert 20e6 < full < 40e6
    assert smoke < 1e6
    doc = diffusion_module.__doc__
    assert re.search(rf"DiffusionConfig\(\)`` \(64 px\) {full / 1e6:.1f} M", doc), full
    assert re.search(rf"DiffusionConfig.smoke\(\)`` \(32 px\) {smoke / 1e6:.2f} M", doc), smoke


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generate_shapes_and_range(size):
    model = TextDiffusion(tiny(image_size=size), TEXT_DIM).eval()
    randomise_zero_parameters(model)
    text, tokens, mask = conditions()
    images = model.generate(text, tokens, mask, generator=torch.Generator().manual_seed(0), steps=2)
    assert images.shape == (2, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1


def test_smoke_config_with_patches_trains_and_samples_at_full_size():
    model = TextDiffusion(DiffusionConfig.smoke(), TEXT_DIM)
    assert model.config.patch_size > 1
    text, tokens, mask = conditions()
    losses = model.training_losses(Batch(torch.rand(2, 3, 32, 32) * 2 - 1, text, tokens, mask))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    images = model.eval().generate(text, tokens, mask, steps=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32)


def test_generate_without_tokens_uses_the_pooled_embedding():
    model = TextDiffusion(tiny(), TEXT_DIM).eval()
    images = model.generate(torch.randn(3, TEXT_DIM), steps=1, guidance=2.0)
    assert images.shape == (3, 3, 16, 16)


def test_bad_options_raise():
    model = TextDiffusion(tiny(), TEXT_DIM)
    with pytest.raises(TypeError, match="truncation"):
        model.generate(torch.randn(1, TEXT_DIM), truncation=0.5)
    with pytest.raises(T2IError, match="steps must be at least 1"):
        model.generate(torch.randn(1, TEXT_DIM), steps=0)
    with pytest.raises(T2IError, match="not divisible"):
        TextDiffusion(tiny(image_size=18, channel_mults=(1, 2, 2)), TEXT_DIM)


def test_cross_attention_ignores_padded_tokens_but_not_real_ones():
    model = randomise_zero_parameters(TextDiffusion(tiny(), TEXT_DIM).eval())
    text, tokens, mask = conditions()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        out = model.unet(x, t, text, tokens, mask)
        padded = tokens.clone()
        padded[~mask] = torch.randn(int((~mask).sum()), TEXT_DIM) * 10
        assert torch.allclose(model.unet(x, t, text, padded, mask), out, atol=1e-5)
        real = tokens.clone()
        real[0, 1] = torch.randn(TEXT_DIM)  # a different real word
        assert not torch.allclose(model.unet(x, t, text, real, mask)[0], out[0], atol=1e-3)


def test_guidance_combines_conditional_and_unconditional_predictions():
    model = randomise_zero_parameters(TextDiffusion(tiny(), TEXT_DIM).eval())
    text, tokens, mask = conditions()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        v_cond = model.unet(x, t, text, tokens, mask)
        v_uncond = model.unet(x, t, *model.null_condition(2, tokens.shape[1]))
        assert not torch.allclose(v_cond, v_uncond, atol=1e-3)
        assert torch.allclose(model.guided_v(x, t, text, tokens, mask, 1.0), v_cond, atol=1e-5)
        assert torch.allclose(model.guided_v(x, t, text, tokens, mask, 0.0), v_uncond, atol=1e-5)
        expected = v_uncond + 3.0 * (v_cond - v_uncond)
        assert torch.allclose(model.guided_v(x, t, text, tokens, mask, 3.0), expected, atol=1e-4)


# ---- sampling ----------------------------------------------------------------------------------------
def test_guidance_from_guides_only_above_that_time(monkeypatch):
    """guidance_from=t0: the guided weight while t > t0, conditional-only (w = 1) from t0 down."""
    model = randomise_zero_parameters(TextDiffusion(tiny(), TEXT_DIM).eval())
    text, tokens, mask = conditions()
    weights = []
    real_guided_v = model.guided_v
    monkeypatch.setattr(model, "guided_v", lambda x, t, *a: weights.append((float(t[0]), a[-1])) or real_guided_v(x, t, *a))
    sample = lambda **o: model.generate(text, tokens, mask, torch.Generator().manual_seed(0), steps=4, **o)  # noqa: E731
    guided_early = sample(guidance=3.0, guidance_from=0.5)
    assert weights == [(1.0, 3.0), (0.75, 3.0), (0.5, 1.0), (0.25, 1.0)]
    assert torch.equal(sample(guidance=3.0, guidance_from=1.0), sample(guidance=1.0))  # never guided
    assert torch.equal(sample(guidance=3.0, guidance_from=0.0), sample(guidance=3.0))  # the default
    assert not torch.equal(guided_early, sample(guidance=3.0))



def test_ddim_is_deterministic_for_a_seed():
    model = randomise_zero_parameters(TextDiffusion(tiny(), TEXT_DIM).eval())
    text, tokens, mask = conditions()

    def run(seed, **options):
        return model.generate(text, tokens, mask, generator=torch.Generator().manual_seed(seed), steps=3, **options)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    assert torch.equal(run(1, eta=1.0), run(1, eta=1.0))
    assert not torch.equal(run(1, eta=1.0), run(1))


class Oracle(nn.Module):
    """A "network" that knows the answer: the exact v that points x_t at a fixed x0."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, text, tokens, mask):
        a, s = (z.view(-1, 1, 1, 1) for z in alpha_sigma(t))
        x0 = self.x0.repeat(x.shape[0] // self.x0.shape[0], 1, 1, 1)  # the guided call doubles the batch
        return (a * x - x0) / s  # v = alpha eps - sigma x0 with eps = (x_t - alpha x0) / sigma


@pytest.mark.parametrize(
    "options", [{}, {"eta": 1.0}, {"dynamic_threshold": 0.995}, {"clip_denoised": False, "steps": 1}]
)
def test_sampler_recovers_x0_from_an_oracle(options):
    model = TextDiffusion(tiny(), TEXT_DIM).eval()
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 1.8 - 0.9
    model.unet = Oracle(x0)
    text, tokens, mask = conditions()
    settings = {"steps": 7, "guidance": 3.0, **options}
    out = model.generate(text, tokens, mask, generator=torch.Generator().manual_seed(0), **settings)
    assert torch.allclose(out, x0, atol=1e-4)


# ---- training ----------------------------------------------------------------------------------------


def test_caption_dropout_rate_and_null_condition(monkeypatch):
    model = TextDiffusion(tiny(), TEXT_DIM)
    seen = {}

    def fake_loss(x0, t, noise, text, tokens, mask):
        seen.update(text=text, tokens=tokens, mask=mask, t=t)
        return {"loss": torch.zeros(())}

    monkeypatch.setattr(model, "diffusion_loss", fake_loss)
    b = 4000
    text, tokens, mask = torch.randn(b, TEXT_DIM), torch.randn(b, 4, TEXT_DIM), torch.ones(b, 4, dtype=torch.bool)
    torch.manual_seed(0)
    losses = model.training_losses(Batch(torch.zeros(b, 3, 16, 16), text, tokens, mask))
    dropped = (seen["text"] == model.null_text).all(dim=1)
    assert 0.08 < dropped.float().mean().item() < 0.12  # 10 % +- 3 standard deviations
    assert losses["dropped"].item() == pytest.approx(dropped.float().mean().item())
    assert torch.equal(seen["text"][~dropped], text[~dropped])
    assert (seen["tokens"][dropped] == model.null_token).all()
    assert torch.equal(seen["mask"][dropped], torch.tensor([True, False, False, False]).expand(int(dropped.sum()), 4))
    # Stratified draws: exactly one u in every 1/B slice of [0, 1], mapped to t = 1 - (1 - u)^p.
    u = 1 - (1 - seen["t"].double()) ** (1 / model.config.time_power)
    offset = u.sort().values * b - torch.arange(b)  # the same fraction for every slice
    offset = offset[: int(0.9 * b)]  # (near t = 1, float32 t cannot resolve 1 - t well enough to invert)
    assert offset.min() >= -1e-2 and offset.max() < 1 + 1e-2 and offset.max() - offset.min() < 1e-2
    p = model.config.time_power
    assert (seen["t"] > 0.9).float().mean().item() == pytest.approx(0.1 ** (1 / p), abs=1e-3)


def test_loss_weight_is_snr_clamped_between_floor_and_gamma_over_snr_plus_one(monkeypatch):
    model = TextDiffusion(tiny(min_snr_gamma=5.0, snr_floor=1.0), TEXT_DIM)
    class Zero(nn.Module):
        def forward(self, x_t, t, *cond):
            return torch.zeros_like(x_t)

    monkeypatch.setattr(model, "unet", Zero())
    t = torch.tensor([0.0, 0.3, 0.5, 0.7, 0.95, 1.0])
    x0, noise = torch.ones(6, 3, 16, 16), torch.zeros(6, 3, 16, 16)
    a, s = alpha_sigma(t)
    # With prediction 0 and noise 0, the per-image v-MSE is s^2; the loss is the mean of weight * s^2.
    snr = a.double() ** 2 / (s.double() ** 2).clamp(min=1e-30)
    weight = snr.clamp(1.0, 5.0) / (snr + 1)
    expected = (weight * s.double() ** 2).mean()
    text, tokens, mask = conditions(6)
    got = model.diffusion_loss(x0, t, noise, text, tokens, mask)["loss"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_few_adam_steps_on_one_batch_reduce_the_loss():
    torch.manual_seed(0)
    model = TextDiffusion(tiny(), TEXT_DIM)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    t, noise = torch.rand(4, generator=g) * 0.8 + 0.1, torch.randn(4, 3, 16, 16, generator=g)
    text, tokens, mask = model.condition(*conditions(4)[:1], None, None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model.diffusion_loss(x0, t, noise, text, tokens, mask)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # (0.33x here; the SNR floor weights the high-noise samples, the slowest to fit, more than Min-SNR alone)
    assert losses[-1] < 0.4 * losses[0]


def test_training_losses_backpropagate_to_every_parameter():
    torch.manual_seed(0)
    model = randomise_zero_parameters(TextDiffusion(tiny(cond_dropout=0.5), TEXT_DIM))
    text, tokens, mask = conditions(2)
    batch = Batch(torch.rand(2, 3, 32, 32) * 2 - 1, text, tokens.half(), mask)  # 32 px data for a 16 px model
    losses = model.training_losses(batch)
    assert torch.isfinite(losses["loss"]) and "mse_v" in losses
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith("null_")]
    assert not missing


def test_config_round_trips_through_json_and_the_registry():
    values = json.loads(json.dumps(dataclasses.asdict(DiffusionConfig.smoke())))
    model = build_model("diffusion", values, TEXT_DIM)
    assert model.config == DiffusionConfig.smoke()
    assert model.family == "diffusion" and model.uses_tokens
    assert list(model.param_groups()) == ["main"] == list(model.config.optimizer_settings())


def test_position_code_is_bounded_distinct_per_place_and_follows_the_formula():
    from t2i_helpers.models.unet import position_code

    code = position_code(4, 4, 18)  # 18 channels: 4 quarters of 4, then 2 zero channels
    assert code.shape == (16, 18) and code.abs().max() <= 1
    assert torch.equal(code[:, 16:], torch.zeros(16, 2))
    assert torch.cdist(code, code).add(torch.eye(16)).min() > 0.05  # every place has its own code
    # Independent check of the formula: channel 0 is sin(row centre), channel 2q is sin(column centre),
    # with centres in units of 1/16 of the image, whatever the grid.
    for h, w in ((4, 4), (8, 4)):
        code = position_code(h, w, 16).view(h, w, 16)
        rows = (torch.arange(h) + 0.5) * 16 / h
        cols = (torch.arange(w) + 0.5) * 16 / w
        torch.testing.assert_close(code[:, 0, 0], rows.sin())
        torch.testing.assert_close(code[0, :, 8], cols.sin())
        torch.testing.assert_close(code[:, 0, 1], (rows * math.exp(-math.log(100.0) / 4)).sin())
        torch.testing.assert_close(code[:, 0, 4], rows.cos())


@pytest.mark.parametrize("with_code", [False, True])
def test_cross_attention_tells_places_apart_only_with_the_position_code(with_code):
    from t2i_helpers.models.unet import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(channels=16, context_dim=8, head_dim=8, position_code=with_code)
    nn.init.normal_(block.out2.weight)  # zero-initialised in the model: give the residual a voice
    context, mask = torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    flat = torch.ones(1, 16, 4, 4)  # the same features everywhere: only the code can tell places apart
    out = block(flat, context, mask).flatten(2)
    spread = (out - out.mean(dim=2, keepdim=True)).abs().max()
    assert (spread > 1e-3) if with_code else (spread < 1e-5)


def test_configs_saved_before_the_position_code_load_without_it():
    from t2i_helpers.models import config_from_dict

    saved = dataclasses.asdict(DiffusionConfig.smoke())
    del saved["position_code"]  # a config.json written before the field existed
    assert config_from_dict("diffusion", saved).position_code is False
    assert config_from_dict("diffusion", dataclasses.asdict(DiffusionConfig())).position_code is True


def test_learned_position_embedding_is_wired_into_the_unet():
    on, off = TextDiffusion(tiny(position_code=True), TEXT_DIM), TextDiffusion(tiny(position_code=False), TEXT_DIM)
    grid = on.config.image_size // on.config.patch_size
    assert on.unet.position.shape == (1, on.config.base_channels, grid, grid) and off.unet.position is None
    randomise_zero_parameters(on)
    text, tokens, mask = conditions()
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), 0.5)
    with torch.no_grad():
        before = on.unet(x, t, text, tokens, mask)
        on.unet.position.add_(torch.randn_like(on.unet.position))
        after = on.unet(x, t, text, tokens, mask)
    assert (before - after).abs().mean() > 1e-3


def test_the_cached_position_code_equals_the_formula_and_serves_training_after_inference_mode():
    from t2i_helpers.models.unet import AttentionBlock, cached_position_code, position_code

    cached_position_code.cache_clear()
    torch.manual_seed(0)
    block = AttentionBlock(channels=16, context_dim=8, head_dim=8, position_code=True)
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 8)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with torch.inference_mode():  # the table is first built while sampling ...
        block(x, ctx, mask)
    assert torch.equal(cached_position_code(4, 4, 16, x.device, x.dtype), position_code(4, 4, 16))
    x.requires_grad_(True)
    block(x, ctx, mask).sum().backward()  # ... and then used where gradients are needed
    assert x.grad is not None and cached_position_code.cache_info().hits >= 1


def test_the_unet_traces_under_torch_compile_without_warnings_and_gives_the_eager_output():
    """dynamo (the graph capture of torch.compile; no C++ compiler needed) follows the whole UNet, the
    position code included, without its warning about the lru_cache that serves eager passes."""
    import warnings

    torch.manual_seed(0)
    model = TextDiffusion(DiffusionConfig.smoke(), text_dim=384).eval()
    for p in model.unet.parameters():  # zero-initialised outputs would hide any difference
        nn.init.normal_(p, std=0.05)
    args = (torch.randn(2, 3, 32, 32), torch.rand(2), torch.randn(2, 384), torch.randn(2, 7, 384),
            torch.tensor([[True] * 7, [True] * 3 + [False] * 4]))
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference = model.unet(*args)
        compiled = torch.compile(model.unet, backend="eager")(*args)
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    assert reference.abs().mean() > 0.01
    torch.testing.assert_close(compiled, reference, rtol=1e-4, atol=1e-5)


def test_without_a_guidance_the_sampler_uses_the_configs():
    model = randomise_zero_parameters(TextDiffusion(tiny(guidance=2.0), TEXT_DIM).eval())
    text, tokens, mask = conditions()
    sample = lambda **o: model.generate(text, tokens, mask, torch.Generator().manual_seed(0), steps=3, **o)  # noqa: E731
    assert torch.equal(sample(), sample(guidance=2.0)) and not torch.equal(sample(), sample(guidance=3.0))
    assert DiffusionConfig().guidance == 3.0 and DiffusionConfig.cpu().guidance == 2.0


# ---- flow matching (objective="flow") ----------------------------------------------------------------


def test_flow_loss_is_the_plain_velocity_mse_on_the_straight_path(monkeypatch):
    model = TextDiffusion(tiny(objective="flow"), TEXT_DIM)
    seen = {}

    class Echo(nn.Module):  # returns 0.5 x_t and records what it was given
        def forward(self, x_t, t, *cond):
            seen.update(x_t=x_t, t=t)
            return 0.5 * x_t

    monkeypatch.setattr(model, "unet", Echo())
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1, torch.randn(3, 3, 16, 16, generator=g)
    t = torch.tensor([0.1, 0.5, 0.9])
    got = model.diffusion_loss(x0, t, noise, *conditions(3))["loss"]
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    assert torch.allclose(seen["x_t"], x_t, atol=1e-6)
    expected = (0.5 * x_t - (noise - x0)).pow(2).mean()  # no weighting: every t counts the same
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_flow_times_are_logit_normal(monkeypatch):
    model = TextDiffusion(tiny(objective="flow", logit_mean=0.5, logit_std=1.0), TEXT_DIM)
    seen = {}
    monkeypatch.setattr(model, "diffusion_loss", lambda x0, t, *rest: seen.update(t=t) or {"loss": torch.zeros(())})
    b = 4000
    model.training_losses(Batch(torch.zeros(b, 3, 16, 16), torch.randn(b, TEXT_DIM), None, None))
    logit = torch.logit(seen["t"].double())
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01) and logit.std().item() == pytest.approx(1.0, abs=0.02)
    assert ((seen["t"] > 0) & (seen["t"] < 1)).all()


def test_flow_step_is_an_euler_step_and_the_true_velocity_lands_on_x0():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(2, 3, 8, 8, generator=g) * 1.8 - 0.9, torch.randn(2, 3, 8, 8, generator=g)
    u = eps - x0
    x = 0.4 * x0 + 0.6 * eps  # the straight path at t = 0.6
    step = TextDiffusion.ddim_step(x, u, 0.6, 0.25, clip_denoised=False, objective="flow")
    assert torch.allclose(step, x + (0.25 - 0.6) * u, atol=1e-6)
    assert torch.allclose(step, 0.75 * x0 + 0.25 * eps, atol=1e-6)  # still on the path
    assert torch.allclose(TextDiffusion.ddim_step(x, u, 0.6, 0.0, objective="flow"), x0, atol=1e-6)
    with pytest.raises(T2IError, match="eta"):
        TextDiffusion.ddim_step(x, u, 0.6, 0.25, eta=1.0, noise=torch.zeros_like(x), objective="flow")


def test_a_flow_model_samples_and_a_bad_objective_is_one_line():
    torch.manual_seed(0)
    model = randomise_zero_parameters(TextDiffusion(tiny(objective="flow"), TEXT_DIM)).eval()
    text, tokens, mask = conditions(2)
    images = model.generate(text, tokens, mask, generator=torch.Generator().manual_seed(0), steps=3, guidance=2.0)
    again = model.generate(text, tokens, mask, generator=torch.Generator().manual_seed(0), steps=3, guidance=2.0)
    assert images.shape == (2, 3, 16, 16) and torch.equal(images, again) and images.abs().max() <= 1
    with pytest.raises(T2IError, match="objective must be one of"):
        tiny(objective="eps")
