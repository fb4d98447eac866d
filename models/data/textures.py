"""The `textures` dataset (issue #22, part 4): crops of procedural textures defined on the whole plane.

Classes: stripes, checks, dots, waves, noise. Each texture is a coverage field a(x, y) in [0, 1] over the
infinite pixel plane, coloured between a background and a foreground colour, so a crop at any offset and any
size is the same texture: images are random crops (`render` with an offset drawn per image), which is what a
spatial GAN trains on, and `render(..., size=512)` gives the real texture at any size to compare samples with.

Factors (float32 columns in this order):
- period: the pattern's period in pixels (stripe / check / dot spacing, wave length; noise: the wavelength at
  the centre of its frequency band), [4, 12] px;
- orientation: the direction of the pattern's wave vector, degrees counter-clockwise from the x axis, [0, 180)
  (checks and dots repeat every 90 degrees, so their orientation is read modulo 90);
- hue: the foreground's HSV hue, [0, 1) (saturation 0.85, value 0.95; the background is the opposite hue at
  saturation 0.5, value 0.2).
Noise is band-pass filtered white noise on a periodic tile (a narrow oriented band around the period's
frequency), so it too is defined everywhere (periodic with the tile, >= 128 px).

Image i of a split is a pure function of (seed, split, i). Each pixel's coverage is averaged over 2x2
sub-pixel samples (anti-aliasing).
"""
from __future__ import annotations

import numpy as np

from latentserve.errors import ValidationError

from .base import DataSplit, Dataset, Factor, check_build_args, check_int
from .render import hue_to_rgb, unit_draws

NAME = "textures"
STREAM = 5  # random-stream id (shapes 1, disks 2)
CLASS_NAMES = ["stripes", "checks", "dots", "waves", "noise"]
PERIOD_RANGE = (4.0, 12.0)
FACTORS = [
    Factor("period", *PERIOD_RANGE, unit="pixels", doc="spacing of the pattern (noise: wavelength of its band)"),
    Factor("orientation", 0.0, 180.0, unit="degrees",
           doc="direction of the wave vector, counter-clockwise from x; checks and dots repeat every 90"),
    Factor("hue", 0.0, 1.0, unit="HSV hue (0..1)", doc="foreground colour; background the opposite hue, dark"),
]
NOISE_TILE = 128  # side of the periodic noise tile (px); larger renders repeat it
MAX_SIZE = 1024


def colours(hue: float) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, background) RGB in [0, 1] for a foreground hue."""
    fg, bg = hue_to_rgb(np.array([hue % 1.0, (hue + 0.5) % 1.0]))
    return 0.95 * (1 - 0.85 + 0.85 * fg), 0.2 * (1 - 0.5 + 0.5 * bg)


def _noise_tile(period: float, orientation: float, seed: int) -> np.ndarray:
    """(NOISE_TILE, NOISE_TILE) float64 periodic band-pass noise in [0, 1] (percentile-normalised)."""
    n = NOISE_TILE
    white = np.random.default_rng([seed, STREAM, 99]).standard_normal((n, n))
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")  # cycles per pixel
    th = np.deg2rad(orientation)
    along, across = fx * np.cos(th) - fy * np.sin(th), fx * np.sin(th) + fy * np.cos(th)  # as u, v below
    f0 = 1.0 / period
    # two lobes at +-f0 along the orientation, narrow across it: oriented, roughly periodic blobs
    band = np.exp(-((np.abs(along) - f0) ** 2) / (2 * (0.25 * f0) ** 2) - across**2 / (2 * (0.35 * f0) ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * band))
    lo, hi = np.percentile(field, [2, 98])
    return np.clip((field - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def coverage(cls: int, period: float, orientation: float, size: int, offset: tuple[float, float] = (0.0, 0.0),
             noise_seed: int = 0) -> np.ndarray:
    """Coverage float64 (size, size) in [0, 1] of class `cls` on the square [offset, offset + size)^2."""
    sub = (np.arange(2 * size) + 0.5) / 2.0  # 2x2 sub-pixel sample positions
    ys, xs = np.meshgrid(sub + offset[1], sub + offset[0], indexing="ij")
    th = np.deg2rad(orientation)
    u = xs * np.cos(th) - ys * np.sin(th)  # along the wave vector (y runs down the image: on screen CCW)
    v = xs * np.sin(th) + ys * np.cos(th)
    p = float(period)
    sharp = p / 3.0  # edge width ~ 1 px whatever the period: cos has slope 2*pi/p at its zero
    if cls == 0:  # stripes: half the period on
        a = np.clip(0.5 + sharp * np.cos(2 * np.pi * u / p), 0, 1)
    elif cls == 1:  # checks: the sign of cos * cos
        a = np.clip(0.5 + sharp * np.cos(2 * np.pi * u / p) * np.cos(2 * np.pi * v / p), 0, 1)
    elif cls == 2:  # dots of radius 0.3 period on a square lattice
        du, dv = (u / p) % 1.0 - 0.5, (v / p) % 1.0 - 0.5
        a = np.clip(0.3 * p - np.hypot(du, dv) * p + 0.5, 0, 1)
    elif cls == 3:  # waves: stripes whose phase swings along them (amplitude 0.15 period, wavelength 3 periods;
        # small enough that the carrier, not a side band, is the strongest Fourier peak)
        a = np.clip(0.5 + sharp * np.cos(2 * np.pi * (u + 0.15 * p * np.sin(2 * np.pi * v / (3 * p))) / p), 0, 1)
    elif cls == 4:
        tile = _noise_tile(p, orientation, noise_seed)
        n = NOISE_TILE
        iy = (np.floor(ys).astype(np.int64)) % n
        ix = (np.floor(xs).astype(np.int64)) % n
        a = tile[iy, ix]
    else:
        raise ValidationError(f"texture class must be 0..{len(CLASS_NAMES) - 1}, got {cls}")
    return a.reshape(size, 2, size, 2).mean(axis=(1, 3))


def render(cls: int, period: float, orientation: float, hue: float, size: int,
           offset: tuple[float, float] = (0.0, 0.0), noise_seed: int = 0) -> np.ndarray:
    """One texture crop uint8 (size, size, 3) (see the module doc); size in [1, MAX_SIZE]."""
    size = check_int("size", size, 1, MAX_SIZE)
    a = coverage(cls, period, orientation, size, offset, noise_seed)[..., None]
    fg, bg = colours(hue)
    return np.rint(255.0 * (bg + a * (fg - bg))).astype(np.uint8)


def sample_params(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels int64 (n,), factors float32 (n, 3), offsets float64 (n, 2) in [0, 512), noise seeds int64 (n,))."""
    u = unit_draws(seed, STREAM, split, n, 7)
    labels = np.minimum((u[:, 0] * len(CLASS_NAMES)).astype(np.int64), len(CLASS_NAMES) - 1)
    factors = np.stack([PERIOD_RANGE[0] + u[:, 1] * (PERIOD_RANGE[1] - PERIOD_RANGE[0]), 180.0 * u[:, 2], u[:, 3]],
                       1).astype(np.float32)
    offsets = 512.0 * u[:, 4:6]
    return labels, factors, offsets, (u[:, 6] * 2**31).astype(np.int64)


def build(image_size: int = 32, n_train: int = 10000, n_test: int = 1000, seed: int = 0) -> Dataset:
    """The textures dataset: random crops of image_size (8..256) px; n_train 1..1e6; n_test 0..1e6."""
    image_size, n_train, n_test, seed = check_build_args(
        (8, 256), image_size=image_size, n_train=n_train, n_test=n_test, seed=seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels, factors, offsets, seeds = sample_params(seed, split, n)
        images = np.empty((n, image_size, image_size, 3), np.uint8)
        for i in range(n):
            images[i] = render(int(labels[i]), *map(float, factors[i]), image_size, tuple(offsets[i]), int(seeds[i]))
        splits[split] = DataSplit(images, labels, factors)
    return Dataset(name=NAME, image_size=image_size, class_names=list(CLASS_NAMES), factors=list(FACTORS),
                   train=splits["train"], test=splits["test"],
                   config={"image_size": image_size, "n_train": n_train, "n_test": n_test, "seed": seed})
