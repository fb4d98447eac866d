"""Unit tests of the `modes` data set and its classical mode counter: real images are on their own mode, wrong
images are off-mode, and the coverage figures of collapsed, uniform and junk sample sets."""
from __future__ import annotations

import math

import numpy as np
import pytest

from latentserve.errors import ValidationError
from latentserve.models.data import load_dataset, modes
from latentserve.models.judges.geometric import judge_for
from latentserve.models.judges.modes import mode_figures, mode_of


@pytest.mark.parametrize("size,grid,colours", [(32, 5, 4), (64, 3, 6), (32, 2, 1)])
def test_real_images_are_on_their_own_mode(size, grid, colours):
    data = load_dataset("modes", image_size=size, n_train=1, n_test=400, grid=grid, colours=colours)
    truth, factors = modes.sample(0, "test", 400, grid, colours)
    ids, measured = mode_of(data.test.images, grid, colours)
    assert np.array_equal(ids, truth)
    assert np.abs(measured[:, :2] - factors[:, :2]).max() < 0.01  # centroid within a third of a pixel at 32 px
    assert data.info["n_modes"] == grid * grid * colours and data.class_names == ["dot"]


def test_wrong_images_are_off_mode():
    s, pos = 32, modes.grid_positions(5)
    mid = (pos[0] + pos[1]) / 2
    f = np.array([[mid, pos[2], 0.0],          # between two grid positions
                  [pos[1], pos[1], 0.125],     # a colour between red and green
                  [pos[3], pos[3], 0.5]])      # a proper mode (control)
    images = modes.render(f, s)
    two = np.maximum(modes.render(np.array([[pos[0], pos[0], 0.0]]), s), modes.render(np.array([[pos[4], pos[4], 0.0]]), s))
    big = load_dataset("shapes", n_train=1, n_test=1).test.images  # a large shape, not a small disc
    empty, noise = np.zeros((1, s, s, 3), np.uint8), np.random.default_rng(0).integers(0, 256, (1, s, s, 3), dtype=np.uint8)
    ids, _ = mode_of(np.concatenate([images, two, big, empty, noise]))
    assert ids[2] == (3 * 5 + 3) * 4 + 2
    assert (np.delete(ids, 2) == -1).all(), ids


def test_mode_figures():
    uniform = np.repeat(np.arange(100), 10)
    fig = mode_figures(uniform, 100)
    assert fig["recovered"] == 100 and fig["precision"] == 1.0 and fig["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    collapsed = np.concatenate([np.zeros(500, np.int64), np.full(500, -1)])  # one mode and junk
    fig = mode_figures(collapsed, 100)
    assert fig["recovered"] == 1 and fig["precision"] == 0.5 and fig["kl_uniform"] == pytest.approx(math.log(100))
    assert fig["min_count"] == 3  # a quarter of the uniform share (10) rounded up
    assert mode_figures(np.full(10, -1), 100)["kl_uniform"] is None


def test_judge_and_bounds():
    judge = judge_for("modes", {"grid": 3, "colours": 2})
    data = load_dataset("modes", n_train=1, n_test=30, grid=3, colours=2)
    j = judge(data.test.images)
    assert (j.labels == 0).all() and j.factor_names == ["x", "y", "hue"]
    for bad in (dict(grid=6), dict(colours=0), dict(image_size=16)):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            load_dataset("modes", n_train=1, n_test=1, **bad)
