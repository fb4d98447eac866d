"""Geometric judge of the procedural data sets (shapes, disks): class and factors of an image by classical shape
fitting, no learned weights, so a generative model is judged by a referee that took no part in its training.

Contract: `judge_shapes(images)` and `judge_disks(images, vary_position)` take uint8 (N, S, S, 3) images (any
size) of one shape on black and return a `Judgement`. For each class the ideal shape is posed at the image's
coverage centroid, sized from its coverage area, turned to its best rotation (a polygon's edges may each move a
tenth of a pixel); `fit` is the soft IoU of that pose with the image's coverage. The label is the best-fitting
class when its fit is within a tolerance for the shape's size, beats the runner-up by a margin and (polygons)
its corners are sharp, else -1 (empty, noise, several blobs, none of the classes). Factors come in the data
set's units and order: scale and rotation need the class (NaN for -1); position, hue and a disk's radius are
measured whenever the image has a blob (NaN otherwise; hue NaN for grey).
`judge_for` picks the judge of a data set (None for digits / folder: no ideal shapes); `validate` measures the
judge on real test images. numpy only (scipy.ndimage for blob labelling when installed).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from latentserve.errors import ValidationError
from latentserve.models.data import disks, shapes
from latentserve.models.data import modes as modes_data

from . import modes as modes_judge

from .measure import Blobs, coverage_of, factor_r2, find_blobs, hue_of

# Acceptance: 1 - fit <= FIT_TOLERANCE + SMALL_SHAPE_PX2 / circumradius_px**2. Calibrated between what a person
# still calls the shape and what they do not: real images lose under 0.02 to the rasteriser's edge placement,
# a generated square with slightly soft or uneven edges up to ~0.06; discs (as squares) and squares blurred by
# sigma >= 1 px lose 0.14 or more. Rounded corners are the corner check's job (an outline rounded by half its
# apothem still fits 0.94).
FIT_TOLERANCE = 0.07
SMALL_SHAPE_PX2 = 0.3  # anti-aliasing costs a tiny shape more of its area (a 2.4 px circumradius: up to 0.06)
PERIOD = dict(zip(shapes.CLASS_NAMES, shapes.ROTATION_PERIOD.tolist()))  # degrees of symmetry per class
MARGIN = 0.05  # the winning class must fit this much better than the next: an image between classes is neither
# Rotation search around the moment estimate: 7 candidates over +-SEARCH_PX / circumradius degrees (the
# estimate's error grows as the shape shrinks; clipped to [1.5, 12] deg), then 5 at a quarter of that step,
# then a parabola through the best three.
SEARCH_PX = 20.0
# Each polygon edge may sit this far (px) from the ideal pose: the data's rasteriser places an edge only to
# within a fraction of a hi-res pixel, and the shift differs from edge to edge.
EDGE_TOLERANCE = np.float32(0.1)
# Corners: the ideal polygon's coverage within max(1.2 px, 0.35 apothem) of its vertices, of which an image may
# lack at most this share: about midway (on a log scale) between corners rounded by a quarter of the apothem
# (under a pixel at 32 px, still a visible corner; lack <= ~0.07) and by half of it (a rounded blob; >= 0.25).
CORNER_REACH = (np.float32(1.2), np.float32(0.35))
MAX_CORNER_DEFICIT = {"square": 0.13, "triangle": 0.13}
FINAL_SUB = 3  # sub-pixels per side when scoring the chosen pose (corners and tight curves need them)
CHUNK_ELEMENTS = 1 << 21  # images x candidates x window pixels per step: bounds the float32 temporaries
SEARCH_CANDIDATES = 7  # the most rotations evaluated at once
# circumradius / sqrt(area) of the widest shape for its area (the triangle): sizes the fitting window
WIDEST = 1.0 / math.sqrt(3.0 * math.sqrt(3.0) / 4.0)


@dataclass
class Judgement:
    labels: np.ndarray  # int64 (N,): judged class, -1 = no class
    fit: np.ndarray  # float32 (N, C): best-pose soft IoU of the image's coverage with each class's ideal shape
    factors: np.ndarray  # float32 (N, F): measured factors in the data set's order, NaN where unmeasurable
    factor_names: list[str]
    class_names: list[str]


# Each class's ideal shape: (kind, sides or aspect, angle of its first edge normal or 0, symmetry k of its moment,
# phase of that moment at rotation 0). Polygon vertices sit on the circumcircle as in shapes.shape_vertices.
_SQUARE = ("polygon", 4, 0.0, 4, math.pi)  # edges face 0, 90, ...; z^4 moment points at the corners (45 deg)
_ELLIPSE = ("ellipse", shapes.ELLIPSE_ASPECT, 0.0, 2, 0.0)  # major axis along x
_TRIANGLE = ("polygon", 3, math.radians(30.0), 3, -math.pi / 2)  # apex up: edges face 30, 150, 270 deg
_DISK = ("ellipse", 1.0, 0.0, 0, 0.0)
_SHAPES = dict(zip(shapes.CLASS_NAMES, (_SQUARE, _ELLIPSE, _TRIANGLE)))


def _edge_cover(t: np.ndarray, nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    """Fraction of a unit pixel inside a straight edge whose unit normal is (nx, ny), t = distance of the pixel
    centre inside the edge: the CDF of the sum of two uniforms of widths |nx| and |ny| (exact for a box pixel)."""
    hi = np.maximum(np.abs(nx), np.abs(ny))
    lo = np.maximum(np.minimum(np.abs(nx), np.abs(ny)), np.float32(0.01))  # keeps 1 / lo finite, edge barely blurred
    hi = np.maximum(hi, lo)  # a zero normal (the ellipse's centre) is then a sharp edge far away
    u = np.abs(t)
    # the uncovered share at distance u outside: linear in the middle, quadratic tails (symmetric about 1/2)
    out = np.where(u <= (hi - lo) / 2, 0.5 - u / hi, np.square(np.maximum((hi + lo) / 2 - u, 0)) / (2 * hi * lo))
    return np.where(t > 0, 1 - out, out)


def _ideal(shape: tuple, X: np.ndarray, Y: np.ndarray, radius: np.ndarray, theta: np.ndarray, sub: int = 1,
           shift: np.ndarray | None = None) -> np.ndarray:
    """Soft coverage (B, K, P) of the ideal shape with circumradius (B, 1, 1) px at rotations theta (B, K, 1)
    radians (counter-clockwise), at pixel centres X, Y (B, 1, P) px from its centre (Y up); sub x sub sub-pixels.
    shift (B, 1, n): a polygon's edges moved outward by that many px each."""
    kind, param, normal0 = shape[:3]
    out = 0.0
    for oy in range(sub):
        for ox in range(sub):
            x = (X + np.float32((ox + 0.5) / sub - 0.5)) * np.float32(sub)  # sub-pixel centre, in sub-pixel units
            y = (Y - np.float32((oy + 0.5) / sub - 0.5)) * np.float32(sub)
            r = radius * np.float32(sub)
            if kind == "polygon":
                apothem = r * np.float32(math.cos(math.pi / param))
                cover = 1.0
                for k in range(param):
                    alpha = theta + np.float32(normal0 + 2 * math.pi * k / param)
                    c, s = np.cos(alpha), np.sin(alpha)
                    edge = apothem if shift is None else apothem + shift[:, :, k:k + 1] * np.float32(sub)
                    cover = cover * _edge_cover(edge - (x * c + y * s), c, s)  # corners: product of edges
            else:
                c, s = np.cos(theta), np.sin(theta)
                u, v = x * c + y * s, y * c - x * s  # along the major / minor axis
                a2, b2 = r * r, (r * np.float32(param)) ** 2
                gu, gv = u / a2, v / b2  # gradient of (u/a)^2 + (v/b)^2, over 2
                k0 = np.sqrt(u * gu + v * gv)
                k1 = np.maximum(np.sqrt(gu * gu + gv * gv), np.float32(1e-9))
                dist = np.where(k0 < 0.5, -r, k0 * (k0 - 1) / k1)  # first-order distance to the outline
                cover = _edge_cover(-dist, (gu * c - gv * s) / k1, (gu * s + gv * c) / k1)
            out = out + cover
    return out / np.float32(sub * sub)


def _soft_iou(cov: np.ndarray, total: np.ndarray, ideal: np.ndarray) -> np.ndarray:
    """cov (B, 1, P), its sum (B, 1), ideal (B, K, P) -> soft IoU (B, K) = sum(min) / sum(max)."""
    inter = np.minimum(cov, ideal).sum(axis=-1)
    return inter / np.maximum(total + ideal.sum(axis=-1) - inter, np.float32(1e-6))


def _moment_angle(cov: np.ndarray, X: np.ndarray, Y: np.ndarray, shape: tuple) -> np.ndarray:
    """Rotation (B,) radians of a k-fold shape from the phase of its complex moment sum(c * (X + iY)^k)."""
    k, phase0 = shape[3], shape[4]
    if k == 0:
        return np.zeros(len(cov))
    z = (X[:, 0].astype(np.float64) + 1j * Y[:, 0]) ** k  # (B, P)
    return (np.angle((cov[:, 0] * z).sum(axis=1)) - phase0) / k


def _edge_shifts(shape: tuple, cov: np.ndarray, X: np.ndarray, Y: np.ndarray, radius: np.ndarray,
                 theta: np.ndarray) -> np.ndarray:
    """Outward shift (B, 1, n) px of each polygon edge that best matches the image, within +-EDGE_TOLERANCE: the
    coverage surplus in the band of pixels nearest to an edge, over the edge's length (two Newton steps)."""
    n = shape[1]
    alpha = theta + np.float32(shape[2]) + np.float32(2 * np.pi / n) * np.arange(n, dtype=np.float32)[:, None]
    inside = radius * np.float32(math.cos(math.pi / n)) - (X * np.cos(alpha) + Y * np.sin(alpha))  # (B, n, P)
    nearest = inside.argmin(axis=1)[:, None, :] == np.arange(n)[:, None]  # (B, n, P): the edge a pixel lies by
    band = nearest & (np.abs(inside) < 2)  # within two pixels of that edge (its anti-aliased rim and more)
    length = 2 * radius * np.float32(math.sin(math.pi / n))  # (B, 1, 1) side length
    shift = np.zeros((len(cov), 1, n), np.float32)
    for _ in range(2):
        surplus = cov - _ideal(shape, X, Y, radius, theta, 1, shift)  # (B, 1, P)
        step = np.where(band, surplus, np.float32(0.0)).sum(axis=-1)[:, None, :] / length
        shift = np.clip(shift + step, -EDGE_TOLERANCE, EDGE_TOLERANCE)
    return shift


def _corner_deficit(shape: tuple, cov: np.ndarray, ideal: np.ndarray, X: np.ndarray, Y: np.ndarray,
                    radius: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Share (B,) of the ideal polygon's coverage near its vertices that the image lacks (rounded corners)."""
    n = shape[1]
    angle = theta + np.float32(shape[2] + math.pi / n) + np.float32(2 * np.pi / n) * np.arange(n, dtype=np.float32)
    reach = np.maximum(CORNER_REACH[0], CORNER_REACH[1] * radius * np.float32(math.cos(math.pi / n)))  # (B, 1, 1)
    zone = np.zeros(X.shape, bool)  # (B, 1, P)
    for k in range(n):
        vx, vy = radius * np.cos(angle[:, :, k:k + 1]), radius * np.sin(angle[:, :, k:k + 1])
        zone |= (X - vx) ** 2 + (Y - vy) ** 2 < reach**2
    expected = np.where(zone, ideal, 0).sum(axis=-1)[:, 0]
    return np.where(zone, ideal - cov, 0).sum(axis=-1)[:, 0] / np.maximum(expected, 1e-6)


def _fit(shape: tuple, cov: np.ndarray, X: np.ndarray, Y: np.ndarray, radius: np.ndarray, total: np.ndarray,
         theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best rotation (B,) radians, its fit (B,) and corner deficit (B,) (0 without corners) of one class, over
    windows cov, X, Y (B, 1, P) holding the ideal shape, circumradii (B, 1, 1), the image's total coverage (B, 1)
    and a first rotation estimate theta (B,)."""
    if shape[3] > 1:  # a rotation to search (the disk has none)
        rows = np.arange(len(cov))
        step = np.radians(np.clip(SEARCH_PX / radius[:, 0, 0], 1.5, 12.0) / 3)  # (B,)
        for grid in (np.arange(SEARCH_CANDIDATES) - SEARCH_CANDIDATES // 2, np.arange(-2, 3) / 4):
            cands = (theta[:, None] + grid * step[:, None]).astype(np.float32)  # (B, K)
            iou = _soft_iou(cov, total, _ideal(shape, X, Y, radius, cands[:, :, None]))
            best = np.clip(iou.argmax(axis=1), 1, len(grid) - 2)  # (B,) centre of a three-point parabola
            step = step * (grid[1] - grid[0])
            lo, mid, hi = (iou[rows, best + d].astype(np.float64) for d in (-1, 0, 1))
        curve = lo - 2 * mid + hi
        with np.errstate(invalid="ignore", divide="ignore"):
            vertex = np.where(curve < 0, 0.5 * (lo - hi) / curve, 0.0)
        theta = cands[rows, best] + np.clip(vertex, -1, 1) * step
    th = theta[:, None, None].astype(np.float32)
    if shape[0] != "polygon":
        return theta, _soft_iou(cov, total, _ideal(shape, X, Y, radius, th, FINAL_SUB))[:, 0], np.zeros(len(cov))
    ideal = _ideal(shape, X, Y, radius, th, FINAL_SUB, _edge_shifts(shape, cov, X, Y, radius, th))
    return theta, _soft_iou(cov, total, ideal)[:, 0], _corner_deficit(shape, cov, ideal, X, Y, radius, th)


def _fit_all(blobs: Blobs, class_shapes: list[tuple], coefs: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit (N, C), best rotation (N, C) radians and corner deficit (N, C) of every class, for the images with a
    blob (0, NaN, 0 for the others)."""
    n, size = len(blobs.area), blobs.coverage.shape[1]
    fit = np.zeros((n, len(class_shapes)), np.float32)
    theta = np.full((n, len(class_shapes)), np.nan)
    corner = np.zeros((n, len(class_shapes)))
    idx = np.flatnonzero(blobs.present)
    if not len(idx):
        return fit, theta, corner
    cov, cx, cy, area = blobs.coverage[idx], blobs.cx[idx], blobs.cy[idx], blobs.area[idx]
    # window half width: the neighbourhood's reach from the centroid, and the widest ideal shape plus its soft edge
    rows_any, cols_any = cov.any(axis=2), cov.any(axis=1)  # (B, H), (B, W)
    pix = np.arange(size) + 0.5
    reach = np.maximum(
        np.where(cols_any, np.abs(pix - cx[:, None]), 0).max(axis=1),
        np.where(rows_any, np.abs(pix - cy[:, None]), 0).max(axis=1),
    )
    half = np.ceil(np.maximum(reach + 0.5, WIDEST * np.sqrt(area) + 1.5)).astype(np.int64)  # (B,)
    pad = int(half.max()) + 2
    padded = np.pad(cov, ((0, 0), (pad, pad), (pad, pad)))
    per_image = SEARCH_CANDIDATES * (2 * int(half.max()) + 1) ** 2
    for group in np.array_split(np.argsort(half), max(1, math.ceil(len(idx) * per_image / CHUNK_ELEMENTS))):
        b, h = len(group), int(half[group].max())
        side = 2 * h + 1  # window side L, centred on the pixel holding the centroid
        r0 = np.floor(cy[group]).astype(np.int64) - h  # (B,) window top row, image coordinates
        c0 = np.floor(cx[group]).astype(np.int64) - h
        span = np.arange(side)
        rows, cols = r0[:, None] + span + pad, c0[:, None] + span + pad  # (B, L) in the padded image
        win = padded[group[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, L, L)
        xs = c0[:, None] + span + 0.5 - cx[group, None]  # (B, L) px right of the centroid, per column
        ys = cy[group, None] - (r0[:, None] + span + 0.5)  # (B, L) px above it, per row
        X = np.broadcast_to(xs[:, None, :], (b, side, side)).reshape(b, 1, -1).astype(np.float32)  # (B, 1, P)
        Y = np.broadcast_to(ys[:, :, None], (b, side, side)).reshape(b, 1, -1).astype(np.float32)
        win = win.reshape(b, 1, -1)
        total = area[group, None].astype(np.float32)  # (B, 1): all of the blob's coverage
        for j, (shape, coef) in enumerate(zip(class_shapes, coefs)):
            radius = (np.sqrt(area[group] / coef) / 2).astype(np.float32)[:, None, None]  # circumradius px
            theta0 = _moment_angle(win, X, Y, shape)
            # the ideal shape lies within its circumradius (+ soft edge) of the centroid: fit over that crop only
            k = min(h, int(np.ceil(radius.max() + 1.5)))

            def crop(a: np.ndarray) -> np.ndarray:  # (B, 1, L*L) -> (B, 1, (2k+1)^2)
                return a.reshape(b, side, side)[:, h - k:h + k + 1, h - k:h + k + 1].reshape(b, 1, -1)

            theta[idx[group], j], fit[idx[group], j], corner[idx[group], j] = _fit(
                shape, crop(win), crop(X), crop(Y), radius, total, theta0)
    return fit, theta, corner


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
        raise ValidationError(f"images must be uint8 (N, S, S, 3), got {images.dtype} {images.shape}")
    return images


def _decide(fit: np.ndarray, corner: np.ndarray, blobs: Blobs, coefs: np.ndarray, class_names: list[str]
            ) -> np.ndarray:
    """Labels (N,): the best-fitting class if the image is a single blob, the fit is within tolerance for the
    shape's size, beats the runner-up by MARGIN and the class's corners are sharp enough; else -1."""
    best = fit.argmax(axis=1)
    top = fit.max(axis=1)
    second = np.sort(fit, axis=1)[:, -2] if fit.shape[1] > 1 else np.zeros(len(fit))
    radius_sq = blobs.area / coefs[best] / 4  # (N,) circumradius**2 px of the best class's ideal shape
    with np.errstate(divide="ignore", invalid="ignore"):
        accept = 1.0 - FIT_TOLERANCE - SMALL_SHAPE_PX2 / radius_sq
    ok_fit = top >= np.nan_to_num(accept, nan=np.inf)
    sharp = corner[np.arange(len(fit)), best] <= np.array([MAX_CORNER_DEFICIT.get(c, 1.0) for c in class_names])[best]
    ok = blobs.single & ok_fit & (top - second >= MARGIN) & sharp
    return np.where(ok, best, -1).astype(np.int64)


def judge_shapes(images: np.ndarray) -> Judgement:
    """Judge uint8 (N, S, S, 3) images of the shapes data set: labels, fits and [scale, rotation, x, y, hue]."""
    images = _check_images(images)
    size = images.shape[1]
    blobs = find_blobs(coverage_of(images))
    names = list(shapes.CLASS_NAMES)
    fit, theta, corner = _fit_all(blobs, [_SHAPES[c] for c in names], shapes.AREA_COEF)
    labels = _decide(fit, corner, blobs, shapes.AREA_COEF, names)
    judged = labels >= 0
    factors = np.full((len(images), len(shapes.FACTOR_NAMES)), np.nan)
    lab = labels[judged]
    factors[judged, 0] = np.sqrt(blobs.area[judged] / shapes.AREA_COEF[lab]) / size
    period = shapes.ROTATION_PERIOD[lab]
    rotation = (np.degrees(theta[judged, lab]) % period).astype(np.float32)
    factors[judged, 1] = np.where(rotation < period, rotation, 0.0)  # float32 rounding up to the period is 0
    factors[:, 2], factors[:, 3] = blobs.cx / size, blobs.cy / size
    factors[:, 4] = hue_of(images, blobs)
    return Judgement(labels, fit, factors.astype(np.float32), list(shapes.FACTOR_NAMES), names)


def shape_at_all(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Is each uint8 (N, S, S, 3) image "a shape at all": one blob that some class of the shapes data set fits
    within the judge's tolerance for its size -> (bool (N,), best fit over the classes float32 (N,), 0 without a
    blob). Neither the margin over the runner-up nor the corner check applies: a shape between two classes (CAN's
    aim) fits both alike and may have soft corners."""
    images = _check_images(images)
    blobs = find_blobs(coverage_of(images))
    fit, _, _ = _fit_all(blobs, [_SHAPES[c] for c in shapes.CLASS_NAMES], shapes.AREA_COEF)
    with np.errstate(divide="ignore", invalid="ignore"):  # tolerance of each class's own size, as _decide
        accept = 1.0 - FIT_TOLERANCE - SMALL_SHAPE_PX2 / (blobs.area[:, None] / shapes.AREA_COEF[None, :] / 4)
    return blobs.single & np.any(fit >= np.nan_to_num(accept, nan=np.inf), axis=1), fit.max(axis=1)


def judge_disks(images: np.ndarray, vary_position: bool = False) -> Judgement:
    """Judge uint8 (N, S, S, 3) images of the disks data set: label 0 (disk) or -1, [radius] or [radius, x, y]."""
    images = _check_images(images)
    size = images.shape[1]
    blobs = find_blobs(coverage_of(images))
    coefs = np.array([math.pi / 4])  # disc area = pi/4 * diameter^2
    fit, _, corner = _fit_all(blobs, [_DISK], coefs)
    labels = _decide(fit, corner, blobs, coefs, list(disks.CLASS_NAMES))
    names = [f.name for f in disks.factors_for(vary_position)]
    factors = np.stack([np.sqrt(blobs.area / math.pi) / size, blobs.cx / size, blobs.cy / size], axis=1)
    factors[~blobs.present] = np.nan
    return Judgement(labels, fit, factors[:, : len(names)].astype(np.float32), names, list(disks.CLASS_NAMES))


def judge_modes(images: np.ndarray, grid: int = 5, colours: int = 4) -> Judgement:
    """Judge uint8 (N, S, S, 3) images of the modes data set (models/judges/modes.py): class 0 ("dot") when the
    image shows one of its modes, else -1; factors x, y, hue as measured."""
    ids, factors = modes_judge.mode_of(_check_images(images), grid, colours)
    on = ids >= 0
    return Judgement(np.where(on, 0, -1).astype(np.int64), on.astype(np.float32)[:, None], factors,
                     ["x", "y", "hue"], list(modes_data.CLASS_NAMES))


def judge_for(dataset_name: str, data_config: dict | None = None) -> Callable[[np.ndarray], Judgement] | None:
    """The judge of a data set, called on uint8 (N, S, S, 3) images; None for any other data set (digits, a
    folder, a caller's own): it has no ideal shapes, and scoring then trains a classifier on its real images."""
    if dataset_name == "shapes":
        return judge_shapes
    if dataset_name == "disks":
        return functools.partial(judge_disks, vary_position=bool((data_config or {}).get("vary_position", False)))
    if dataset_name == "modes":
        cfg = data_config or {}
        return functools.partial(judge_modes, grid=int(cfg.get("grid", 5)), colours=int(cfg.get("colours", 4)))
    return None


def validate(dataset_name: str, n_per_class: int = 1000, **data_config) -> dict:
    """Judge n_per_class real test images per class of a data set (built with data_config, e.g. image_size):
    per-class accuracy, rejected share, and per-class per-factor R² over the correctly judged images."""
    from latentserve.models.data import load_dataset

    judge = judge_for(dataset_name, data_config)
    if judge is None:
        raise ValidationError(f"dataset {dataset_name!r} has no geometric judge")
    probe = load_dataset(dataset_name, n_train=1, n_test=0, **data_config)
    n_classes = len(probe.class_names)
    data = load_dataset(dataset_name, n_train=1, n_test=n_per_class * n_classes, **data_config)
    start = time.perf_counter()
    j = judge(data.test.images)
    seconds = time.perf_counter() - start
    out = {"n": len(data.test), "seconds": seconds, "accuracy": {}, "rejected": {}, "r2": {}}
    for k, name in enumerate(data.class_names):
        rows = data.test.labels == k
        right = rows & (j.labels == k)
        out["accuracy"][name] = float(right.sum() / max(rows.sum(), 1))
        out["rejected"][name] = float((rows & (j.labels == -1)).sum() / max(rows.sum(), 1))
        out["r2"][name] = {
            f: factor_r2(f, j.factors[right, i], data.test.factors[right, i], data.test.labels[right],
                         data.class_names)
            for i, f in enumerate(j.factor_names)
        }
    return out
