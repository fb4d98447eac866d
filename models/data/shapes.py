"""The `shapes` dataset (the default): procedural dSprites-like RGB images with known factors.

One filled shape per image on black: class square | ellipse | triangle, and five continuous factors in
natural units (float32 columns in this order):

- scale: diameter of the circle through the shape's outermost points (square: diagonal, ellipse: major
  axis, triangle: circumcircle) as a fraction of the image side, in [0.3, 0.6]. Area in pixels is
  `AREA_COEF[class] * (scale * image_size) ** 2`.
- rotation: degrees counter-clockwise on screen, limited to one symmetry period so the label is
  unambiguous: square [0, 90), triangle [0, 120), ellipse [0, 180). At 0 the square is axis-aligned,
  the triangle points up and the ellipse's major axis is horizontal.
- x, y: the shape's centre (centroid) as a fraction of image width / height, y measured down from the
  top, in [0.34, 0.66]: the circumradius is at most 0.3, so every shape at every scale and rotation stays
  at least 0.04 of the side (1.3 px at 32 px) inside the frame.
- hue: HSV hue in [0, 0.8] (red .. green .. blue .. purple, never wrapping back to red) with full
  saturation and value, so an edge pixel is the same colour at lower brightness.

Image i of a split is a pure function of (seed, split, i): its factors come from
default_rng([seed, 1, split_id, i]) and its class is i % 3 (balanced), so it does not depend on how many
images are generated. `holdout={"scale": (0.42, 0.48)}` maps the training draws of that factor to its
range minus the band (test keeps the full range); other factors of image i are unchanged.
`correlate={"hue": "scale"}` makes training factors correlated (the test split keeps them independent, so
control can be measured on the whole grid): the dependent factor's unit draw becomes (1 - mix) * the driver's
+ mix * its own, `mix = correlate_mix` (0.3: Pearson correlation (1-mix)/sqrt((1-mix)^2 + mix^2) = 0.92
before the factors' ranges are applied; hue then rises with scale).
"""
from __future__ import annotations

import math

import numpy as np

from latentserve.errors import ValidationError

from .base import DataSplit, Dataset, Factor, check_build_args
from .render import (
    MaskRenderer,
    colourise,
    ellipse_polygon,
    hue_to_rgb,
    normalize_holdout,
    regular_polygon,
    rotate,
    sample_factor,
    unit_draws,
)

NAME = "shapes"
STREAM = 1  # random-stream id of this dataset (disks use another), so datasets never share draws
CLASS_NAMES = ["square", "ellipse", "triangle"]
ELLIPSE_ASPECT = 0.5  # minor / major axis: clearly non-circular, so the rotation is visible
# rotation period per class (degrees): the shape's symmetry, so each image has exactly one rotation label
ROTATION_PERIOD = np.array([90.0, 180.0, 120.0])
# area / scale_px**2 per class, with scale_px the circumdiameter d in pixels:
# square (d^2/2), ellipse (pi * d/2 * d/4), equilateral triangle (3*sqrt(3)/4 * (d/2)^2)
AREA_COEF = np.array([0.5, math.pi * ELLIPSE_ASPECT / 4.0, 3.0 * math.sqrt(3.0) / 16.0])

SCALE_RANGE = (0.3, 0.6)
POSITION_RANGE = (0.34, 0.66)  # 0.3 (largest circumradius) + 0.04 margin from either edge
HUE_RANGE = (0.0, 0.8)

FACTORS = [
    Factor(
        "scale", *SCALE_RANGE, unit="fraction of image side",
        doc="diameter of the circle through the shape's outermost points (square diagonal, ellipse major "
        "axis, triangle circumcircle) / image side; area = k * (scale * size)^2 px, k = 0.5 square, "
        "pi/8 ellipse, 3*sqrt(3)/16 triangle",
    ),
    Factor(
        "rotation", 0.0, 180.0, unit="degrees",
        doc="counter-clockwise on screen within one symmetry period: square [0, 90), triangle [0, 120), "
        "ellipse [0, 180); 0 = square axis-aligned, triangle apex up, ellipse major axis horizontal",
    ),
    Factor("x", *POSITION_RANGE, unit="fraction of image width", doc="shape centre, from the left edge"),
    Factor("y", *POSITION_RANGE, unit="fraction of image height", doc="shape centre, from the top edge"),
    Factor(
        "hue", *HUE_RANGE, unit="HSV hue (0..1)",
        doc="colour of the shape at full saturation and value: 0 red, 1/3 green, 2/3 blue, 0.8 purple",
    ),
]
FACTOR_NAMES = [f.name for f in FACTORS]

DEFAULTS = {"image_size": 32, "n_train": 20000, "n_test": 2000, "seed": 0, "holdout": None}


def shape_vertices(label: int, scale: float, rotation: float, x: float, y: float, image_size: int,
                   inset: float = 0.0) -> np.ndarray:
    """Outline (V, 2) of one shape in output pixel units (see render.py for the coordinate convention)."""
    d = scale * image_size  # circumdiameter in pixels
    if label == 0:  # square: vertices on the circumcircle at 45 + k*90 degrees -> axis-aligned at 0
        pts = regular_polygon(4, d / 2, 45.0 + rotation, inset)
    elif label == 1:  # ellipse: major axis horizontal at 0
        pts = rotate(ellipse_polygon(d / 2, d / 2 * ELLIPSE_ASPECT, inset), rotation)
    elif label == 2:  # triangle: apex up at 0
        pts = regular_polygon(3, d / 2, 90.0 + rotation, inset)
    else:
        raise ValidationError(f"shapes label must be 0..2 ({', '.join(CLASS_NAMES)}), got {label}")
    return pts + np.array([x * image_size, y * image_size])


def analytic_area(labels: np.ndarray, scale: np.ndarray, image_size: int) -> np.ndarray:
    """Exact area in pixels (N,) of shapes with these labels (N,) and scales (N,)."""
    return AREA_COEF[np.asarray(labels)] * (np.asarray(scale, np.float64) * image_size) ** 2


def render(labels: np.ndarray, factors: np.ndarray, image_size: int = 32) -> np.ndarray:
    """Render shapes from labels int (N,) and factors float (N, 5) [scale, rotation, x, y, hue] -> uint8
    (N, H, W, 3). Factors outside the dataset's ranges are drawn as given (shapes may leave the frame)."""
    labels = np.asarray(labels, np.int64)
    factors = np.asarray(factors, np.float64)
    if factors.ndim != 2 or factors.shape != (len(labels), len(FACTORS)):
        raise ValidationError(f"factors must be (N, {len(FACTORS)}) {FACTOR_NAMES}, got {factors.shape}")
    renderer = MaskRenderer(image_size)
    masks = np.empty((len(labels), image_size, image_size), np.uint8)  # coverage 0..255
    for i, (lab, (scale, rot, x, y, _)) in enumerate(zip(labels.tolist(), factors.tolist())):
        masks[i] = renderer.polygon(shape_vertices(lab, scale, rot, x, y, image_size, renderer.inset))
    return colourise(masks, hue_to_rgb(factors[:, 4]))


def sample_factors(seed: int, split: str, n: int, holdout: dict | None = None, correlate: dict | None = None,
                   correlate_mix: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Labels int64 (n,) and factors float32 (n, 5) of images 0..n-1 of a split (holdout, correlate: train only)."""
    labels = np.arange(n, dtype=np.int64) % len(CLASS_NAMES)
    u = unit_draws(seed, STREAM, split, n, len(FACTORS))  # (n, 5) uniform [0, 1)
    if split == "train":
        for dep, driver in (correlate or {}).items():
            j, k = FACTOR_NAMES.index(dep), FACTOR_NAMES.index(driver)
            u[:, j] = (1.0 - correlate_mix) * u[:, k] + correlate_mix * u[:, j]
    bands = (holdout or {}) if split == "train" else {}
    factors = np.empty((n, len(FACTORS)), np.float32)
    for j, f in enumerate(FACTORS):
        high = ROTATION_PERIOD[labels] if f.name == "rotation" else f.high
        band = bands.get(f.name)
        factors[:, j] = sample_factor(u[:, j], f.low, high, tuple(band) if band else None)
    return labels, factors


def _check_holdout(holdout) -> dict | None:
    spec = normalize_holdout(holdout, FACTORS)
    if spec and "rotation" in spec:
        lo, hi = spec["rotation"]
        for name, period in zip(CLASS_NAMES, ROTATION_PERIOD):
            if lo <= 0.0 and hi >= period:
                raise ValidationError(
                    f"holdout band [{lo}, {hi}] for 'rotation' covers the whole range [0, {period:g}) of "
                    f"{name}s; training would have no {name}"
                )
    return spec


def _check_correlate(correlate, mix) -> tuple[dict | None, float]:
    if not correlate:
        return None, 0.3
    if not isinstance(correlate, dict):
        raise ValidationError(f"correlate must be {{dependent factor: driving factor}}, got {correlate!r}")
    drivers = set(correlate.values())
    for dep, driver in correlate.items():
        for what, name in (("dependent", dep), ("driving", driver)):
            if name not in FACTOR_NAMES:
                raise ValidationError(f"correlate: unknown {what} factor {name!r}; choose from {', '.join(FACTOR_NAMES)}")
        if dep == driver or dep in drivers:
            raise ValidationError(f"correlate: {dep!r} cannot depend on {driver!r} (a factor drives or follows, once)")
    if not (isinstance(mix, (int, float)) and 0.0 <= mix < 1.0):
        raise ValidationError(f"correlate_mix must be in [0, 1), got {mix!r}")
    return dict(correlate), float(mix)


def build(image_size: int = 32, n_train: int = 20000, n_test: int = 2000, seed: int = 0,
          holdout: dict | None = None, correlate: dict | None = None, correlate_mix: float = 0.3) -> Dataset:
    """The shapes dataset. image_size in [16, 256] px; n_train in [1, 1e6]; n_test in [0, 1e6];
    seed in [0, 2**32 - 1]; holdout {factor: (low, high)} over scale | rotation | x | y | hue (train only);
    correlate {dependent: driver} with correlate_mix in [0, 1) (train only, see the module doc).
    ~0.1 ms per 32 px image on one core (22k images in ~2.5 s)."""
    image_size, n_train, n_test, seed = check_build_args(
        (16, 256), image_size=image_size, n_train=n_train, n_test=n_test, seed=seed)
    spec = _check_holdout(holdout)
    correlate, correlate_mix = _check_correlate(correlate, correlate_mix)

    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels, factors = sample_factors(seed, split, n, spec, correlate, correlate_mix)
        splits[split] = DataSplit(render(labels, factors, image_size), labels, factors)
    return Dataset(
        name=NAME,
        image_size=image_size,
        class_names=list(CLASS_NAMES),
        factors=list(FACTORS),
        train=splits["train"],
        test=splits["test"],
        config={"image_size": image_size, "n_train": n_train, "n_test": n_test, "seed": seed, "holdout": spec,
                **({"correlate": correlate, "correlate_mix": correlate_mix} if correlate else {})},
    )
