"""The reference decoder (fixed), its defects reproduced, and the conditional-mean lesson."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2i_helpers.models import build_model
from t2i_helpers.models.base import Batch
from t2i_helpers.models.baseline import BaselineConfig, ImageDecoder, TextToImageModel
from t2i_helpers.models import reference


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("upsample", ["transposed", "resize_conv"])
def test_decoder_output_shape_and_range(size, upsample):
    decoder = ImageDecoder(384, BaselineConfig(image_size=size, upsample=upsample))
    out = decoder(torch.randn(3, 384) * 10)
    assert out.shape == (3, 3, size, size)
    assert out.min() >= -1 and out.max() <= 1


def test_transposed_convolution_doubles_side_as_the_formula_says():
    conv = torch.nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1)
    for side in (4, 7, 16):
        expected = (side - 1) * 2 - 2 * 1 + 4  # (in - 1) * stride - 2 * padding + kernel
        assert conv(torch.zeros(1, 8, side, side)).shape[-1] == expected == 2 * side


def test_image_size_not_divisible_by_four_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by 4"):
        ImageDecoder(16, BaselineConfig(image_size=30))


def test_reference_decoder_fails_with_the_undefined_img_size():
    decoder = reference.ImageDecoder(text_dim=16, img_size=64)
    with pytest.raises(NameError, match="img_size"):
        decoder(torch.zeros(2, 16))


def test_loss_is_plain_pixel_mse():
    model = TextToImageModel(BaselineConfig(image_size=32, fc_channels=8, hidden_channels=4), text_dim=12)
    batch = Batch(images=torch.rand(4, 3, 32, 32) * 2 - 1, text=torch.randn(4, 12))
    loss = model.training_losses(batch)["loss"]
    expected = ((model.decoder(batch.text) - batch.images) ** 2).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_generate_ignores_the_seed_because_a_regressor_has_no_noise():
    model = build_model("baseline", BaselineConfig(image_size=32, fc_channels=8, hidden_channels=4), text_dim=12)
    text = torch.randn(2, 12)
    a = model.generate(text, generator=torch.Generator().manual_seed(0))
    b = model.generate(text, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_mse_learns_the_conditional_mean_of_two_possible_images():
    """One caption, two equally likely images (object left or right): MSE converges to their average."""
    torch.manual_seed(0)
    size = 16
    left = -torch.ones(3, size, size)
    left[:, 4:12, 0:8] = 0.8
    right = -torch.ones(3, size, size)
    right[:, 4:12, 8:16] = 0.8
    model = TextToImageModel(BaselineConfig(image_size=size, fc_channels=16, hidden_channels=8), text_dim=8)
    text = torch.randn(1, 8)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(150):
        pick_right = torch.rand(16) < 0.5
        images = torch.where(pick_right[:, None, None, None], right, left)
        loss = model.training_losses(Batch(images=images, text=text.expand(16, -1)))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model.generate(text)[0]
    average = (left + right) / 2
    # The prediction sits near the average (a half-bright smear over both halves), far from either image.
    assert F.mse_loss(out, average) < 0.02
    assert F.mse_loss(out, left) > 0.2 and F.mse_loss(out, right) > 0.2
