"""The `modes` dataset: many known, discrete modes, counted classically (mode coverage of a generator).

One small anti-aliased disc per image on black, at one of `grid` x `grid` positions and in one of `colours`
hues: grid**2 * colours modes (5 x 5 x 4 = 100 by default), drawn uniformly, like the 2D grid of Gaussians
of the mode-collapse literature but as images. One class ("dot"): every mode is unconditional, so a
class-conditional model cannot be handed a mode through its label. Each image sits within a small jitter of its
mode's centre and hue, so the modes are narrow but not single points.

Factors (float32 columns): x, y (centre as a fraction of width / height, y down from the top) and hue. The mode
of an image is `mode_index(gx, gy, colour)` = (gy * grid + gx) * colours + colour; `models/judges/modes.py`
recovers it from pixels (centroid and hue, no network). Image i of a split is a pure function of
(seed, split, i).
"""
from __future__ import annotations

import numpy as np

from latentserve.errors import ValidationError

from .base import DataSplit, Dataset, Factor, check_build_args, check_int
from .render import MaskRenderer, colourise, ellipse_polygon, hue_to_rgb, unit_draws

NAME = "modes"
STREAM = 3  # random-stream id (shapes 1, disks 2)
CLASS_NAMES = ["dot"]
RADIUS = 0.07  # disc radius as a fraction of the image side (2.2 px at 32 px)
SPAN = (0.15, 0.85)  # first and last grid position, fraction of the side (margin 0.08 beyond the disc)
JITTER = 0.012  # half-width of the uniform position jitter around a mode's centre, fraction of the side
HUE_JITTER = 0.015  # half-width of the uniform hue jitter around a mode's hue


def grid_positions(grid: int) -> np.ndarray:
    """Centres (grid,) of the grid's rows/columns as fractions of the side."""
    return np.linspace(SPAN[0], SPAN[1], grid)


def colour_hues(colours: int) -> np.ndarray:
    """Hues (colours,) evenly spread around the colour circle, starting at red."""
    return np.arange(colours) / colours


def factors_for() -> list[Factor]:
    return [Factor("x", SPAN[0] - JITTER, SPAN[1] + JITTER, "fraction of image width", "disc centre from the left"),
            Factor("y", SPAN[0] - JITTER, SPAN[1] + JITTER, "fraction of image height", "disc centre from the top"),
            Factor("hue", -HUE_JITTER, 1.0 - HUE_JITTER, "HSV hue", "the disc's colour (modes at k / colours)")]


def sample(seed: int, split: str, n: int, grid: int, colours: int) -> tuple[np.ndarray, np.ndarray]:
    """Mode ids int64 (n,) and factors float32 (n, 3) [x, y, hue] of images 0..n-1 of a split."""
    u = unit_draws(seed, STREAM, split, n, 4)
    n_modes = grid * grid * colours
    mode = np.minimum((u[:, 0] * n_modes).astype(np.int64), n_modes - 1)
    cell, colour = np.divmod(mode, colours)
    gy, gx = np.divmod(cell, grid)
    pos = grid_positions(grid)
    jit = (u[:, 1:3] * 2.0 - 1.0) * JITTER
    hue = colour_hues(colours)[colour] + (u[:, 3] * 2.0 - 1.0) * HUE_JITTER
    factors = np.stack([pos[gx] + jit[:, 0], pos[gy] + jit[:, 1], hue], axis=1).astype(np.float32)
    return mode, factors


def render(factors: np.ndarray, image_size: int = 32) -> np.ndarray:
    """Discs from factors float (N, 3) [x, y, hue] -> uint8 (N, H, W, 3)."""
    factors = np.asarray(factors, np.float64)
    if factors.ndim != 2 or factors.shape[1] != 3:
        raise ValidationError(f"modes factors must be (N, 3) [x, y, hue], got {factors.shape}")
    renderer = MaskRenderer(image_size)
    r = RADIUS * image_size
    masks = np.empty((len(factors), image_size, image_size), np.uint8)
    for i, (x, y, _) in enumerate(factors.tolist()):
        masks[i] = renderer.polygon(ellipse_polygon(r, r, renderer.inset) + np.array([x, y]) * image_size)
    return colourise(masks, hue_to_rgb(np.mod(factors[:, 2], 1.0)))


def build(image_size: int = 32, n_train: int = 20000, n_test: int = 2000, seed: int = 0, grid: int = 5,
          colours: int = 4) -> Dataset:
    """The modes dataset. image_size in [32, 256] px (at 16 px the disc is ~1 px across and no longer measurable); n_train in [1, 1e6]; n_test in [0, 1e6]; seed in
    [0, 2**32 - 1]; grid in [2, 5] positions per axis (more would not fit the disc between neighbours at 32 px);
    colours in [1, 6] hues (6 keeps neighbouring hues 0.17 apart, far beyond the jitter)."""
    image_size, n_train, n_test, seed = check_build_args(
        (32, 256), image_size=image_size, n_train=n_train, n_test=n_test, seed=seed)
    grid = check_int("grid", grid, 2, 5)
    colours = check_int("colours", colours, 1, 6)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        _, f = sample(seed, split, n, grid, colours)
        splits[split] = DataSplit(render(f, image_size), np.zeros(n, np.int64), f)
    return Dataset(name=NAME, image_size=image_size, class_names=list(CLASS_NAMES), factors=factors_for(),
                   train=splits["train"], test=splits["test"],
                   config={"image_size": image_size, "n_train": n_train, "n_test": n_test, "seed": seed,
                           "grid": grid, "colours": colours},
                   info={"n_modes": grid * grid * colours})
