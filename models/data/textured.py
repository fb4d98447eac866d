"""The `textured` dataset: the shapes of `shapes` filled with generated textures, shape and texture independent.

One shape per image on black, filled with one of four textures. The class is the pair (shape, texture), label =
shape_index * 4 + texture_index, named "<shape>+<texture>" (e.g. "square+stripes"); `Dataset.info["class_factors"]`
lists the two class factors in that order, {"shape": [...], "texture": [...]}, which is what a model and the
server use to address shape and texture separately (models/nets/decoupled.py, SampleRequest.factor_classes).

Shape factors as in `shapes` (scale, rotation, x, y; same ranges and meaning). Texture factors:
- hue: the first colour (HSV hue in [0, 1), full saturation and value); solid shapes have only this one.
- hue2: the second colour, hue + an offset in [0.25, 0.75) (mod 1): always clearly another colour. NaN for solid.
- period: the pattern's period as a fraction of the image side, [0.2, 0.3] (stripes: one stripe of each colour;
  checks: two cells; dots: the lattice spacing, dot radius 0.3 period). NaN for solid.
- orientation: degrees counter-clockwise of the stripes' normal [0, 180) or of the checks' grid [0, 90). NaN for
  solid and dots (an axis-aligned lattice).
Both colours have full value, and the texture is sampled at pixel centres (no mixing of the two colours), so an
image's brightest channel is exactly the shape's anti-aliased coverage: the geometric judge reads the shape of a
textured image as it reads a solid one. image = coverage * texture (over a black background).

Image i of a split is a pure function of (seed, split, i), as in `shapes`; its class is i % 12 (balanced).
"""
from __future__ import annotations

import numpy as np

from latentserve.errors import ValidationError

from . import shapes
from .base import DataSplit, Dataset, Factor, check_build_args
from .render import MaskRenderer, hue_to_rgb, sample_factor, unit_draws

NAME = "textured"
STREAM = 4  # random-stream id of this dataset (shapes 1): no draws shared with another dataset
SHAPE_NAMES = list(shapes.CLASS_NAMES)
TEXTURE_NAMES = ["solid", "stripes", "dots", "checks"]
CLASS_NAMES = [f"{s}+{t}" for s in SHAPE_NAMES for t in TEXTURE_NAMES]  # label = shape * 4 + texture
CLASS_FACTORS = {"shape": SHAPE_NAMES, "texture": TEXTURE_NAMES}
PERIOD_RANGE = (0.2, 0.3)
HUE2_OFFSET = (0.25, 0.75)
DOT_RADIUS = 0.3  # of the period
ORIENTATION_PERIOD = {"stripes": 180.0, "checks": 90.0}

FACTORS = [f for f in shapes.FACTORS if f.name != "hue"] + [
    Factor("hue", 0.0, 1.0, unit="HSV hue (0..1)", doc="first texture colour (the only one of a solid shape)"),
    Factor("hue2", 0.0, 1.0, unit="HSV hue (0..1)",
           doc="second texture colour: hue + [0.25, 0.75) mod 1; NaN for solid"),
    Factor("period", *PERIOD_RANGE, unit="fraction of image side",
           doc="pattern period (stripes: a stripe of each colour; checks: two cells; dots: lattice spacing); NaN for solid"),
    Factor("orientation", 0.0, 180.0, unit="degrees",
           doc="counter-clockwise angle of the stripes' normal [0, 180) or the checks' grid [0, 90); NaN otherwise"),
]
FACTOR_NAMES = [f.name for f in FACTORS]  # scale, rotation, x, y, hue, hue2, period, orientation


def texture_rgb(texture: int, factors: np.ndarray, image_size: int) -> np.ndarray:
    """The texture of one image over the whole frame, float32 (S, S, 3) in [0, 1], sampled at pixel centres;
    factors (8,) in FACTOR_NAMES order (its pattern is centred on the shape's centre)."""
    _, _, x, y, hue, hue2, period, orient = factors.tolist()
    a, b = hue_to_rgb(np.array([hue % 1.0, (hue2 if np.isfinite(hue2) else hue) % 1.0]))
    if TEXTURE_NAMES[texture] == "solid":
        return np.broadcast_to(a.astype(np.float32), (image_size, image_size, 3)).copy()
    pix = np.arange(image_size) + 0.5
    u = (pix[None, :] - x * image_size) / (period * image_size)  # (1, S) periods right of the centre
    v = (y * image_size - pix[:, None]) / (period * image_size)  # (S, 1) periods above it
    name = TEXTURE_NAMES[texture]
    if name == "dots":
        du, dv = u - np.round(u), v - np.round(v)
        second = du ** 2 + dv ** 2 < DOT_RADIUS ** 2
    else:
        t = np.radians(orient)
        s1 = u * np.cos(t) + v * np.sin(t)  # (S, S) along the pattern's normal
        if name == "stripes":
            second = (s1 % 1.0) >= 0.5
        elif name == "checks":
            s2 = -u * np.sin(t) + v * np.cos(t)
            second = (np.floor(2 * s1) + np.floor(2 * s2)) % 2 == 1
        else:
            raise ValidationError(f"textured: unknown texture index {texture}")
    return np.where(second[..., None], b, a).astype(np.float32)


def render(labels: np.ndarray, factors: np.ndarray, image_size: int = 32) -> np.ndarray:
    """labels int (N,) in 0..11, factors float (N, 8) -> uint8 (N, S, S, 3): coverage * texture over black."""
    labels = np.asarray(labels, np.int64)
    factors = np.asarray(factors, np.float64)
    if factors.shape != (len(labels), len(FACTORS)):
        raise ValidationError(f"factors must be (N, {len(FACTORS)}) {FACTOR_NAMES}, got {factors.shape}")
    renderer = MaskRenderer(image_size)
    out = np.empty((len(labels), image_size, image_size, 3), np.uint8)
    for i, (lab, f) in enumerate(zip(labels.tolist(), factors)):
        shape, texture = divmod(lab, len(TEXTURE_NAMES))
        scale, rot, x, y = f[:4].tolist()
        cover = renderer.polygon(shapes.shape_vertices(shape, scale, rot, x, y, image_size, renderer.inset))
        out[i] = np.rint(cover[..., None].astype(np.float32) * texture_rgb(texture, f, image_size))
    return out


def sample_factors(seed: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels int64 (n,) and factors float32 (n, 8) of images 0..n-1 of a split."""
    labels = np.arange(n, dtype=np.int64) % len(CLASS_NAMES)
    shape, texture = np.divmod(labels, len(TEXTURE_NAMES))
    u = unit_draws(seed, STREAM, split, n, len(FACTORS))  # (n, 8) uniform [0, 1)
    f = np.full((n, len(FACTORS)), np.nan, np.float32)
    f[:, 0] = sample_factor(u[:, 0], *shapes.SCALE_RANGE)
    f[:, 1] = sample_factor(u[:, 1], 0.0, shapes.ROTATION_PERIOD[shape])
    f[:, 2] = sample_factor(u[:, 2], *shapes.POSITION_RANGE)
    f[:, 3] = sample_factor(u[:, 3], *shapes.POSITION_RANGE)
    f[:, 4] = sample_factor(u[:, 4], 0.0, 1.0)
    patterned = texture > 0
    f[patterned, 5] = (f[patterned, 4] + sample_factor(u[patterned, 5], *HUE2_OFFSET)) % 1.0
    f[patterned, 6] = sample_factor(u[patterned, 6], *PERIOD_RANGE)
    for name, period in ORIENTATION_PERIOD.items():
        rows = texture == TEXTURE_NAMES.index(name)
        f[rows, 7] = sample_factor(u[rows, 7], 0.0, period)
    return labels, f


def build(image_size: int = 32, n_train: int = 24000, n_test: int = 2400, seed: int = 0) -> Dataset:
    """The textured dataset. image_size in [16, 256] px; n_train in [1, 1e6]; n_test in [0, 1e6]; seed in
    [0, 2**32 - 1]."""
    image_size, n_train, n_test, seed = check_build_args(
        (16, 256), image_size=image_size, n_train=n_train, n_test=n_test, seed=seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels, factors = sample_factors(seed, split, n)
        splits[split] = DataSplit(render(labels, factors, image_size), labels, factors)
    return Dataset(name=NAME, image_size=image_size, class_names=list(CLASS_NAMES), factors=list(FACTORS),
                   train=splits["train"], test=splits["test"],
                   config={"image_size": image_size, "n_train": n_train, "n_test": n_test, "seed": seed},
                   info={"class_factors": {k: list(v) for k, v in CLASS_FACTORS.items()}})


def split_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combined labels (N,) -> (shape index (N,), texture index (N,))."""
    return np.divmod(np.asarray(labels, np.int64), len(TEXTURE_NAMES))
