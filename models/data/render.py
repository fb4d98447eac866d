"""Shared machinery of the procedural datasets (shapes, disks): per-image random draws, holdout bands,
anti-aliased polygon masks, HSV colours and contact sheets.

Coordinates are continuous pixel units of the output image: pixel (row i, column j) covers
[j, j+1) x [i, i+1), so a shape centred at fraction x of the width sits at x * image_size, and its
pixel-weighted centroid (with pixel centres at j + 0.5) equals x * image_size.

Anti-aliasing: each mask is drawn at `supersample_factor(image_size)` times the resolution with PIL and
box-filtered down, so a pixel's value is the fraction of it the shape covers (0..255).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from latentserve.errors import ValidationError

from .base import Factor

# Vertices used to approximate curved outlines (ellipse, disk). At 8x supersampling a radius of 0.35 * 32
# px becomes ~90 hi-res px; 128 vertices keep the chord error below 0.05 hi-res px (area error < 0.05%).
CURVE_VERTICES = 128

# PIL's polygon fill covers every hi-res pixel the outline touches, which grows a shape by about a third of
# a hi-res pixel on every edge (measured: +1.6% area for a 7 px square at 8x, independent of shape and
# rotation). Moving every edge inward by this much makes the rendered area match the analytic area to
# ~0.1% on average, so `scale` means what its doc says.
PIL_EDGE_GROWTH_HIRES = 1.0 / 3.0

# Split ids for the (seed, stream, split, index) random streams: train and test never share a draw.
SPLIT_IDS = {"train": 0, "test": 1}


def supersample_factor(image_size: int) -> int:
    """Hi-res factor for anti-aliasing: 8x up to 32 px (64 coverage levels), at least 4x above."""
    return max(4, min(8, 256 // image_size))


# -- deterministic per-image draws ------------------------------------------------------------------------


def unit_draws(seed: int, stream: int, split: str, n: int, k: int) -> np.ndarray:
    """Uniform [0, 1) draws float64 (n, k); row i comes from default_rng([seed, stream, split_id, i]).

    One generator per image is what makes image i identical whatever n is (and whatever the holdout:
    a held-out factor is mapped from the same draw, see `sample_factor`). ~15 us per image.
    """
    split_id = SPLIT_IDS[split]
    out = np.empty((n, k), np.float64)
    for i in range(n):
        out[i] = np.random.default_rng([seed, stream, split_id, i]).random(k)
    return out


def sample_factor(u: np.ndarray, low, high, band: tuple[float, float] | None = None) -> np.ndarray:
    """Map uniform draws u (N,) to float32 values uniform on [low, high) minus the closed `band`.

    `low`/`high` may be arrays (N,) (e.g. a per-shape rotation period). Values are drawn from the allowed
    part directly (inverse CDF over the two remaining intervals), so no rejection loop and no change to
    the other factors of the image. The caller guarantees that some of [low, high) remains.
    """
    low = np.broadcast_to(np.asarray(low, np.float64), u.shape)
    high = np.broadcast_to(np.asarray(high, np.float64), u.shape)
    if band is None:
        v = low + u * (high - low)
        v32 = v.astype(np.float32)
    else:
        a = np.clip(band[0], low, high)
        b = np.clip(band[1], low, high)
        left, right = a - low, high - b  # lengths of [low, a) and (b, high)
        t = u * (left + right)
        in_left = t < left
        v = np.where(in_left, low + t, b + (t - left))
        v32 = v.astype(np.float32)
        # float32 rounding can land a value exactly on a band edge: push it one ulp outside.
        lo32, hi32 = np.float32(band[0]), np.float32(band[1])
        inside = (v32 >= lo32) & (v32 <= hi32)
        if inside.any():
            v32 = np.where(inside & in_left, np.nextafter(lo32, np.float32(-np.inf)), v32)
            v32 = np.where(inside & ~in_left, np.nextafter(hi32, np.float32(np.inf)), v32)
    # and never round up onto `high` (for rotation, high == 0 under the shape's symmetry)
    high32 = np.nextafter(high.astype(np.float32), np.float32(-np.inf))
    return np.minimum(v32, high32).astype(np.float32)


def normalize_holdout(holdout, factors: list[Factor]) -> dict[str, list[float]] | None:
    """Validate a holdout spec {factor: (lo, hi)} against `factors`; JSON-able {factor: [lo, hi]} or None.

    The band must be a finite lo < hi, overlap the factor's range by a positive length and leave some of
    it, otherwise training could not hold anything out, or could not produce the factor at all.
    """
    if holdout is None or (isinstance(holdout, dict) and not holdout):
        return None  # {} means "nothing held out", e.g. from a CLI with no --holdout
    if not isinstance(holdout, dict) or not holdout:
        raise ValidationError(
            f"holdout must be a dict {{factor: [low, high]}} with factor in {[f.name for f in factors]}, "
            f"got {holdout!r}"
        )
    by_name = {f.name: f for f in factors}
    out: dict[str, list[float]] = {}
    for name, band in holdout.items():
        if name not in by_name:
            raise ValidationError(
                f"holdout factor {name!r} is not a factor of this dataset; choose one of {', '.join(by_name)}"
            )
        f = by_name[name]
        try:
            lo, hi = (float(v) for v in band)
        except (TypeError, ValueError):
            raise ValidationError(f"holdout band for {name!r} must be two numbers [low, high], got {band!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValidationError(f"holdout band for {name!r} must be finite with low < high, got {band!r}")
        if min(hi, f.high) - max(lo, f.low) <= 0:
            raise ValidationError(
                f"holdout band [{lo}, {hi}] for {name!r} does not overlap its range [{f.low}, {f.high}] ({f.unit})"
            )
        if lo <= f.low and hi >= f.high:
            raise ValidationError(
                f"holdout band [{lo}, {hi}] for {name!r} covers its whole range [{f.low}, {f.high}]; "
                "training would have no images"
            )
        out[name] = [lo, hi]
    return out


# -- geometry and rasterisation ---------------------------------------------------------------------------


def rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate (V, 2) points (x right, y down) counter-clockwise *as seen on screen* by `degrees`."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    x, y = points[:, 0], points[:, 1]
    # y points down, so a screen-CCW rotation is a clockwise one in (x, y) maths coordinates
    return np.stack([c * x + s * y, -s * x + c * y], axis=1)


def regular_polygon(n: int, circumradius: float, start_degrees: float, inset: float = 0.0) -> np.ndarray:
    """(n, 2) vertices of a regular n-gon centred at 0, first vertex at `start_degrees` (screen CCW from +x).

    `inset` moves every edge inward by that many pixels (compensates the rasteriser's edge growth).
    """
    apothem = circumradius * math.cos(math.pi / n)
    r = circumradius * max(apothem - inset, 0.0) / apothem
    ang = np.radians(start_degrees) + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(ang), -r * np.sin(ang)], axis=1)


def ellipse_polygon(a: float, b: float, inset: float = 0.0, n: int = CURVE_VERTICES) -> np.ndarray:
    """(n, 2) vertices of an axis-aligned ellipse with semi-axes a (x) and b (y), centred at 0."""
    return _unit_circle(n) * np.array([max(a - inset, 0.0), max(b - inset, 0.0)])


@functools.lru_cache(maxsize=8)
def _unit_circle(n: int) -> np.ndarray:
    """(n, 2) points (cos, sin) of n equally spaced angles; cached because every curved shape needs it."""
    ang = np.arange(n) * 2 * np.pi / n
    pts = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    pts.flags.writeable = False
    return pts


class MaskRenderer:
    """Anti-aliased coverage masks uint8 (H, W) of filled polygons, for one image size."""

    def __init__(self, image_size: int) -> None:
        self.size = image_size
        self.ss = supersample_factor(image_size)
        # edge growth of the rasteriser, in output pixels: subtract it from the geometry (see constant)
        self.inset = PIL_EDGE_GROWTH_HIRES / self.ss

    def polygon(self, vertices: np.ndarray) -> np.ndarray:
        """vertices (V, 2) in output pixel units -> coverage uint8 (size, size), 255 = fully covered."""
        hi = self.size * self.ss
        canvas = Image.new("L", (hi, hi), 0)
        # PIL's pixel k is centred on coordinate k, but its fill rule is biased by +1/2 pixel, so the plain
        # scaled coordinates give an unbiased centroid (measured: mean offset < 0.002 output px).
        ImageDraw.Draw(canvas).polygon((vertices * self.ss).ravel().tolist(), fill=255)  # flat [x0, y0, x1, ...]
        # reduce() is an integer-factor box filter: same result as resize(BOX) (+-1 level), 3.5x faster
        return np.asarray(canvas.reduce(self.ss), dtype=np.uint8)


# -- colour -----------------------------------------------------------------------------------------------


def hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """HSV hue (N,) in [0, 1) with saturation = value = 1 -> RGB float64 (N, 3) in [0, 1]."""
    h6 = np.asarray(hue, np.float64)[:, None] * 6.0
    # standard piecewise-linear HSV ramps for R, G, B (same as colorsys.hsv_to_rgb with s = v = 1)
    r = np.clip(np.abs(h6 - 3.0) - 1.0, 0.0, 1.0)
    g = np.clip(2.0 - np.abs(h6 - 2.0), 0.0, 1.0)
    b = np.clip(2.0 - np.abs(h6 - 4.0), 0.0, 1.0)
    return np.concatenate([r, g, b], axis=1)


def colourise(masks: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Coverage uint8 (N, H, W) x colour (N, 3) in [0, 1] over black -> images uint8 (N, H, W, 3)."""
    out = np.empty(masks.shape + (3,), np.uint8)
    chunk = 1024  # bounds the float32 temporary (12 MB at 32 px)
    for start in range(0, len(masks), chunk):
        m = masks[start : start + chunk, :, :, None]  # (n, H, W, 1) uint8 coverage 0..255
        c = rgb[start : start + chunk, None, None, :].astype(np.float32)  # (n, 1, 1, 3)
        tmp = np.empty(m.shape[:3] + (3,), np.float32)
        np.multiply(m, c, out=tmp)
        np.rint(tmp, out=tmp)
        out[start : start + chunk] = tmp
    return out


def contact_sheet(images: np.ndarray, ncol: int = 8, upscale: int = 4, pad: int = 2) -> Image.Image:
    """uint8 (N, H, W, 3) -> one PIL RGB image: a grid with `ncol` columns, each image nearest-upscaled."""
    n, h, w, _ = images.shape
    nrow = max(1, math.ceil(n / ncol))
    ch, cw = h * upscale + pad, w * upscale + pad
    sheet = np.full((nrow * ch + pad, ncol * cw + pad, 3), 64, np.uint8)  # grey gutters show the frame
    for k in range(n):
        r, c = divmod(k, ncol)
        big = images[k].repeat(upscale, axis=0).repeat(upscale, axis=1)
        sheet[pad + r * ch : pad + r * ch + h * upscale, pad + c * cw : pad + c * cw + w * upscale] = big
    return Image.fromarray(sheet)
