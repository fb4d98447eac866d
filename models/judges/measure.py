"""Pixel measurements for the geometric judge: soft coverage, the main blob, its area, centroid and colour, and
the R² of measured against true factors.

Every procedural image is one shape of full saturation and value on black, so max(R, G, B) / 255 is the
fraction of a pixel the shape covers. Areas and centroids are coverage sums in pixel units of the image
(pixel (i, j) covers [j, j+1) x [i, i+1), centre j + 0.5), the convention of models/data/render.py.
numpy only; scipy.ndimage labels the blobs when it is installed (a numpy propagation otherwise).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

FOREGROUND = 0.5  # a pixel at least half covered is shape: an anti-aliased edge crosses 0.5 on the outline
MIN_BLOB_PX = 4  # a blob of fewer foreground pixels is a speck, not a shape
MAX_OTHER_SHARE = 0.05  # foreground outside the main blob beyond this share of its area: several shapes or noise
NEIGHBOURHOOD_PX = 2  # an anti-aliased (or slightly soft) edge lies within this many pixels of the blob
CORE = 0.9  # pixels this covered show the shape's colour barely mixed with the black background
MIN_CORE_PX = 3  # fewer core pixels: take the better-covered half of the blob for the colour
MIN_VALUE = 0.6  # a shape this bright (HSV value) or brighter is the data's full-value colour, a little dimmed


@dataclass
class Blobs:
    """The main blob of each image (the largest 8-connected foreground component)."""

    coverage: np.ndarray  # float32 (N, H, W): coverage inside the blob's neighbourhood, 0 elsewhere
    blob: np.ndarray  # bool (N, H, W): the blob's foreground pixels
    present: np.ndarray  # bool (N,): the image has a blob
    single: np.ndarray  # bool (N,): a blob of MIN_BLOB_PX or more and little foreground elsewhere
    area: np.ndarray  # float64 (N,): coverage sum of the neighbourhood, px
    cx: np.ndarray  # float64 (N,): coverage centroid, px from the left edge (NaN without a blob)
    cy: np.ndarray  # float64 (N,): px from the top edge


def coverage_of(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, H, W) in [0, 1]: brightest channel / the shape's own brightness.

    The shape's brightness is the 90th percentile of its well-lit pixels (>= half the image's peak): 255 for
    real images (even tiny ones have some fully covered pixels), a little less for a generated one whose colour is slightly dim, so its outline is judged as an
    outline. Below MIN_VALUE the image is not brightened (a near-black image is not a shape)."""
    v = images.max(axis=-1).astype(np.float32) / np.float32(255.0)  # (N, H, W)
    peak = v.reshape(len(v), -1).max(axis=1) if len(v) else np.zeros(0, np.float32)  # (N,)
    lit = v >= (0.5 * peak)[:, None, None]
    with np.errstate(invalid="ignore"):
        ref = np.array([np.percentile(v[i][lit[i]], 90) if lit[i].any() else 1.0 for i in range(len(v))], np.float32)
    ref = np.where(ref >= MIN_VALUE, ref, np.float32(1.0))
    return np.clip(v / ref[:, None, None], 0.0, 1.0)


def _max3x3(a: np.ndarray) -> np.ndarray:
    """Maximum over each pixel's 3x3 neighbourhood of (N, H, W) arrays (borders see only the inside)."""
    out = a.copy()
    out[:, 1:] = np.maximum(out[:, 1:], a[:, :-1])
    out[:, :-1] = np.maximum(out[:, :-1], a[:, 1:])
    rows = out.copy()
    out[:, :, 1:] = np.maximum(out[:, :, 1:], rows[:, :, :-1])
    out[:, :, :-1] = np.maximum(out[:, :, :-1], rows[:, :, 1:])
    return out


def label_components(fg: np.ndarray) -> np.ndarray:
    """bool (N, H, W) -> int64 (N, H, W): 8-connected components, ids unique across the batch, 0 = background."""
    try:
        from scipy import ndimage
    except ImportError:
        return label_components_numpy(fg)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connected within an image, never across images
    return ndimage.label(fg, structure=structure)[0].astype(np.int64)


def label_components_numpy(fg: np.ndarray) -> np.ndarray:
    """Same components as `label_components` without scipy: each pixel takes its neighbours' largest id until
    nothing changes (ids differ from scipy's, components do not)."""
    ids = np.where(fg, np.arange(1, fg.size + 1, dtype=np.int64).reshape(fg.shape), 0)
    while True:
        grown = np.where(fg, _max3x3(ids), 0)
        if np.array_equal(grown, ids):
            return ids
        ids = grown


def find_blobs(cov: np.ndarray) -> Blobs:
    """Coverage float32 (N, H, W) -> the main blob of each image and its soft measurements."""
    n, pixels = len(cov), cov.shape[1] * cov.shape[2]
    fg = cov >= FOREGROUND
    labels = label_components(fg)
    flat = labels.reshape(n, pixels)
    ids, inverse = np.unique(flat, return_inverse=True)  # compact ids: a numpy labelling may be sparse
    inverse = inverse.reshape(flat.shape)
    sizes = np.bincount(inverse.ravel(), minlength=len(ids))  # (n_ids,) pixels per component
    owner = np.zeros(len(ids), np.int64)
    owner[inverse.ravel()] = np.repeat(np.arange(n), flat.shape[1])
    order = np.lexsort((sizes, owner))  # by image, then size: the last of each image is its largest
    order = order[ids[order] != 0]  # background is never a blob
    last = np.append(owner[order][1:] != owner[order][:-1], True) if len(order) else np.zeros(0, bool)
    best = np.full(n, -1, np.int64)  # compact id of each image's largest component
    best[owner[order[last]]] = order[last]
    present = best >= 0
    blob = (inverse == np.where(present, best, -2)[:, None]).reshape(cov.shape)
    near = blob
    for _ in range(NEIGHBOURHOOD_PX):
        near = _max3x3(near)
    soft = np.where(near, cov, np.float32(0.0))
    area = soft.reshape(n, pixels).sum(axis=1, dtype=np.float64)
    blob_area = np.where(blob, cov, 0).reshape(n, pixels).sum(axis=1, dtype=np.float64)
    other = np.where(fg & ~blob, cov, 0).reshape(n, pixels).sum(axis=1, dtype=np.float64)
    single = present & (blob.reshape(n, pixels).sum(axis=1) >= MIN_BLOB_PX) & (other <= MAX_OTHER_SHARE * blob_area)
    h, w = cov.shape[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (soft.sum(axis=1, dtype=np.float64) @ (np.arange(w) + 0.5)) / area
        cy = (soft.sum(axis=2, dtype=np.float64) @ (np.arange(h) + 0.5)) / area
    cx[~present] = np.nan
    cy[~present] = np.nan
    return Blobs(soft, blob, present, single, area, cx, cy)


def hue_of(images: np.ndarray, blobs: Blobs) -> np.ndarray:
    """HSV hue (N,) in [-0.1, 0.9) of each blob's colour (NaN without a blob or for grey).

    The colour is the coverage-weighted mean RGB of the core pixels, divided by their coverage, i.e. the
    shape's own colour at full value. Hues above 0.9 are taken as just below red (h - 1): the data's hues are
    in [0, 0.8], so a red edge rounded past 0 must not read as 1."""
    n, pixels = len(images), images.shape[1] * images.shape[2]
    cov = blobs.coverage
    core = blobs.blob & (cov >= CORE)
    few = core.reshape(n, pixels).sum(axis=1) < MIN_CORE_PX
    if few.any():  # small or soft blobs: the better-covered half of the blob
        vals = np.where(blobs.blob[few], cov[few], np.nan).reshape(few.sum(), -1)
        with warnings.catch_warnings():  # a row without a blob has no median: no core, NaN hue
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(vals, axis=1) if vals.size else np.zeros(0)
        core[few] = blobs.blob[few] & (cov[few] >= np.nan_to_num(med, nan=np.inf)[:, None, None])
    rgb = (images.astype(np.float64) * core[..., None]).reshape(n, pixels, 3).sum(axis=1)  # (N, 3)
    weight = np.where(core, cov, 0).reshape(n, pixels).sum(axis=1, dtype=np.float64) * 255.0
    with np.errstate(invalid="ignore", divide="ignore"):
        rgb = rgb / weight[:, None]
        return _rgb_to_hue(rgb)


def _rgb_to_hue(rgb: np.ndarray) -> np.ndarray:
    """RGB float (N, 3) -> HSV hue (N,) (colorsys's formula), hue > 0.9 mapped to h - 1, NaN for grey."""
    r, g, b = rgb.T
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    delta = mx - mn
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where(mx == r, (g - b) / delta, np.where(mx == g, 2.0 + (b - r) / delta, 4.0 + (r - g) / delta))
        h = (h / 6.0) % 1.0
        h = np.where(h > 0.9, h - 1.0, h)
        return np.where(delta > 0.1 * mx, h, np.nan)  # saturation below 0.1: grey, no hue


def factor_r2(name: str, measured: np.ndarray, truth: np.ndarray, labels: np.ndarray,
              class_names: list[str], periods: dict[str, float] | None = None) -> float:
    """R² = 1 - SS_res / SS_tot of a measured factor (N,) against the truth (N,), over rows where both are
    finite. Rotation is compared circularly in fractions of the period of each row's class (`labels` (N,),
    normally the true ones; `periods` {class name: degrees}, default the shapes data set's; rows of a class
    without a period are left out): residuals wrapped to [-1/2, 1/2), spread about each class's circular mean.
    NaN with fewer than 2 rows or no spread."""
    measured = np.asarray(measured, np.float64)
    truth = np.asarray(truth, np.float64)
    ok = np.isfinite(measured) & np.isfinite(truth)
    if periods is None:
        from latentserve.models.data.shapes import CLASS_NAMES, ROTATION_PERIOD

        periods = dict(zip(CLASS_NAMES, ROTATION_PERIOD.tolist()))
    if name == "rotation":
        labels = np.asarray(labels)
        period = np.full(len(truth), np.nan)
        for k, cname in enumerate(class_names):
            if cname in periods:
                period[labels == k] = periods[cname]
        ok &= np.isfinite(period)
        wrap = lambda v: (v + 0.5) % 1.0 - 0.5  # noqa: E731  fraction of a period -> [-1/2, 1/2)
        res = wrap((measured[ok] - truth[ok]) / period[ok])
        t = truth[ok] / period[ok]
        dev = np.empty_like(t)
        for k in np.unique(labels[ok]):
            sel = labels[ok] == k
            mean = np.angle(np.exp(2j * np.pi * t[sel]).mean()) / (2 * np.pi)
            dev[sel] = wrap(t[sel] - mean)
    else:
        res = measured[ok] - truth[ok]
        dev = truth[ok] - truth[ok].mean() if ok.any() else truth[ok]
    ss_tot = float(np.sum(dev**2))
    if ok.sum() < 2 or ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum(res**2)) / ss_tot
