"""Figures: one save helper (PNG + vector PDF), grids laid out as documented."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch
from PIL import Image

from t2i_helpers.data.images import to_pixels, to_float, to_uint8
from t2i_helpers.viz import image_grid, image_rows, plot_curves, save_figure


def test_to_pixels_maps_minus_one_to_zero_and_one_to_255():
    images = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert to_pixels(images)[0, :, :, 0].tolist() == [[0, 128], [255, 255]]


def test_the_converter_round_trips_uint8_in_either_layout():
    pixels = torch.randint(0, 256, (2, 5, 4, 3), dtype=torch.uint8)
    images = to_float(pixels.numpy())  # [N, H, W, 3] numpy -> [N, 3, H, W] float in [-1, 1]
    assert images.shape == (2, 3, 5, 4) and images.min() >= -1 and images.max() <= 1
    torch.testing.assert_close(images, pixels.permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(to_uint8(images), pixels.permute(0, 3, 1, 2))
    assert torch.equal(to_float(pixels.permute(0, 3, 1, 2)), images)  # channels-first uint8 too
    assert np.array_equal(to_pixels(images), pixels.numpy())


def test_image_grid_places_each_image_in_its_cell():
    batch = np.stack([np.full((4, 4, 3), 10 * (i + 1), dtype=np.uint8) for i in range(5)])
    grid = image_grid(batch, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert grid[1, 1, 0] == 10 and grid[1, 6, 0] == 20 and grid[6, 6, 0] == 50
    assert grid[0, 0, 0] == 0 and grid[6, 11, 0] == 0  # padding and the empty sixth cell


def test_image_rows_has_a_row_per_entry_and_save_figure_writes_png_and_pdf(tmp_path):
    rows = {"real": np.zeros((3, 8, 8, 3), dtype=np.uint8), "model": torch.zeros(2, 3, 16, 16)}
    fig = image_rows(rows, ["a", "b", "c"], title="t")
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["real", "model"]
    assert len(axes[1, 2].images) == 0 and len(axes[1, 1].images) == 1  # the shorter row leaves a gap
    png, pdf = save_figure(fig, "rows", tmp_path)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    with Image.open(png) as image:
        assert image.size[0] > image.size[1] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.pdf", "rows.png"]  # no temp files left


def test_plot_curves_shared_or_per_series_x_with_styles():
    fig = plot_curves([0, 1, 2], {"a": [1.0, 2.0, 3.0], "b": [5.0, 4.0]}, "x", "y")
    a, b = fig.axes[0].get_lines()
    assert list(a.get_xdata()) == [0, 1, 2] and list(b.get_xdata()) == [0, 1]  # shorter series: first xs
    fig = plot_curves({"a": [0.5, 3.0], "b": [1.0]}, {"a": [0.1, 0.2], "b": [0.9]}, "x", "y",
                      styles={"b": {"ls": "--", "color": "C3"}}, ylim=(0, 1))
    a, b = fig.axes[0].get_lines()
    assert list(a.get_xdata()) == [0.5, 3.0] and list(b.get_xdata()) == [1.0]
    assert b.get_linestyle() == "--" and fig.axes[0].get_ylim() == (0, 1)
