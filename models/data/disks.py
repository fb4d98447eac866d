"""The `disks` dataset: one anti-aliased white disk on black; its radius is the factor of interest.

Factors (float32 columns in this order):
- radius: disk radius as a fraction of the image side, in [0.1, 0.35] (area = pi * (radius * size)^2 px).
- x, y (only with `vary_position=True`): disk centre as a fraction of image width / height, y down from
  the top, in [0.39, 0.61], so the largest disk stays 0.04 of the side (1.3 px at 32 px) inside the
  frame. Without it the disk is centred at (0.5, 0.5).

One class, "disk". Image i of a split is a pure function of (seed, split, i) (default_rng([seed, 2,
split_id, i])); `holdout={"radius": (0.2, 0.25)}` removes a band of a factor from the training split only.
The smallest sanity check for a latent model: a 1-D factor whose ground truth is known exactly.
"""
from __future__ import annotations

import numpy as np

from latentserve.errors import ValidationError

from .base import DataSplit, Dataset, Factor, check_build_args
from .render import MaskRenderer, colourise, ellipse_polygon, normalize_holdout, sample_factor, unit_draws

NAME = "disks"
STREAM = 2  # random-stream id (shapes use 1)
CLASS_NAMES = ["disk"]
RADIUS_RANGE = (0.1, 0.35)
POSITION_RANGE = (0.39, 0.61)  # 0.35 (largest radius) + 0.04 margin (1.3 px at 32 px) from either edge

RADIUS = Factor(
    "radius", *RADIUS_RANGE, unit="fraction of image side", doc="disk radius / image side; area = pi*(radius*size)^2 px"
)
X = Factor("x", *POSITION_RANGE, unit="fraction of image width", doc="disk centre, from the left edge")
Y = Factor("y", *POSITION_RANGE, unit="fraction of image height", doc="disk centre, from the top edge")


def factors_for(vary_position: bool) -> list[Factor]:
    """The factor list (column order) for this option."""
    return [RADIUS, X, Y] if vary_position else [RADIUS]


def render(factors: np.ndarray, image_size: int = 32) -> np.ndarray:
    """Disks from factors float (N, 1) [radius] or (N, 3) [radius, x, y] -> uint8 (N, H, W, 3), white on black."""
    factors = np.asarray(factors, np.float64)
    if factors.ndim != 2 or factors.shape[1] not in (1, 3):
        raise ValidationError(f"disk factors must be (N, 1) [radius] or (N, 3) [radius, x, y], got {factors.shape}")
    renderer = MaskRenderer(image_size)
    masks = np.empty((len(factors), image_size, image_size), np.uint8)  # coverage 0..255
    for i, row in enumerate(factors.tolist()):
        r = row[0] * image_size
        cx, cy = (row[1], row[2]) if len(row) == 3 else (0.5, 0.5)
        outline = ellipse_polygon(r, r, renderer.inset) + np.array([cx * image_size, cy * image_size])
        masks[i] = renderer.polygon(outline)
    return colourise(masks, np.ones((len(factors), 3)))


def sample_factors(seed: int, split: str, n: int, vary_position: bool, holdout: dict | None = None) -> np.ndarray:
    """Factors float32 (n, K) of images 0..n-1 of a split (holdout applies to train only)."""
    factors = factors_for(vary_position)
    u = unit_draws(seed, STREAM, split, n, 3)  # always 3 draws, so radius i is the same with or without position
    bands = (holdout or {}) if split == "train" else {}
    out = np.empty((n, len(factors)), np.float32)
    for j, f in enumerate(factors):
        band = bands.get(f.name)
        out[:, j] = sample_factor(u[:, j], f.low, f.high, tuple(band) if band else None)
    return out


def build(image_size: int = 32, n_train: int = 20000, n_test: int = 2000, seed: int = 0,
          vary_position: bool = False, holdout: dict | None = None) -> Dataset:
    """The disks dataset. image_size in [16, 256]; n_train in [1, 1e6]; n_test in [0, 1e6]; seed in
    [0, 2**32 - 1]; vary_position adds x, y factors; holdout {factor: (low, high)} (train only)."""
    image_size, n_train, n_test, seed = check_build_args(
        (16, 256), image_size=image_size, n_train=n_train, n_test=n_test, seed=seed)
    if not isinstance(vary_position, (bool, np.bool_)):
        raise ValidationError(f"vary_position must be true or false, got {vary_position!r}")
    vary_position = bool(vary_position)
    factors = factors_for(vary_position)
    spec = normalize_holdout(holdout, factors)

    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        f = sample_factors(seed, split, n, vary_position, spec)
        splits[split] = DataSplit(render(f, image_size), np.zeros(n, np.int64), f)
    return Dataset(
        name=NAME,
        image_size=image_size,
        class_names=list(CLASS_NAMES),
        factors=factors,
        train=splits["train"],
        test=splits["test"],
        config={"image_size": image_size, "n_train": n_train, "n_test": n_test, "seed": seed,
                "vary_position": vary_position, "holdout": spec},
    )
