"""Mode counting on the `modes` data set, classically (no network): which mode each image shows, and how a set
of samples covers the modes.

An image is on mode (gx, gy, colour) when it shows one blob (models/judges/measure.py) of about the disc's area,
whose coverage centroid lies within `POSITION_TOL` grid spacings of that grid point and whose hue lies within
`HUE_TOL` of that colour; anything else (empty, smeared, two discs, between positions, an in-between colour) is
off-mode (-1). Real test images are all on their own mode (tests/unit/test_modes.py).

`mode_figures` summarises samples: modes recovered (at least `min_count` samples each; by default a quarter of
the count a uniform spread would give), precision (the share of samples on some mode), KL(sample mode histogram
|| uniform) over the on-mode samples (0 = every mode equally often; log M when all samples sit on one mode).
"""
from __future__ import annotations

import math

import numpy as np

from latentserve.models.data import modes
from latentserve.models.judges.measure import coverage_of, find_blobs, hue_of

POSITION_TOL = 0.3  # max centroid distance from a grid point, in grid spacings (neighbours are 1 apart)
HUE_TOL = 0.06  # max circular hue distance from a mode's hue (neighbouring colours are >= 1/6 apart)
AREA_RANGE = (0.5, 1.8)  # accepted blob area as a multiple of the disc's


def mode_of(images: np.ndarray, grid: int = 5, colours: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, S, S, 3) -> (mode ids int64 (N,), -1 = off-mode; measured factors float32 (N, 3) x, y, hue)."""
    images = np.asarray(images)
    n, size = len(images), images.shape[1]
    blobs = find_blobs(coverage_of(images))
    hue = hue_of(images, blobs)
    x, y = blobs.cx / size, blobs.cy / size
    factors = np.stack([x, y, hue], axis=1).astype(np.float32)
    pos, hues = modes.grid_positions(grid), modes.colour_hues(colours)
    spacing = (pos[1] - pos[0]) if grid > 1 else 1.0
    disc = math.pi * (modes.RADIUS * size) ** 2
    with np.errstate(invalid="ignore"):
        gx = np.abs(np.nan_to_num(x, nan=-9.0)[:, None] - pos[None, :]).argmin(1)
        gy = np.abs(np.nan_to_num(y, nan=-9.0)[:, None] - pos[None, :]).argmin(1)
        d = np.hypot(x - pos[gx], y - pos[gy]) / spacing
        dh = np.abs(((np.nan_to_num(hue, nan=9.0)[:, None] - hues[None, :]) + 0.5) % 1.0 - 0.5)  # circular
        colour = dh.argmin(1)
        ok = (blobs.single & (d <= POSITION_TOL) & (dh.min(1) <= HUE_TOL)
              & (blobs.area >= AREA_RANGE[0] * disc) & (blobs.area <= AREA_RANGE[1] * disc))
    ids = np.where(ok, (gy * grid + gx) * colours + colour, -1).astype(np.int64)
    return ids, factors


def mode_figures(ids: np.ndarray, n_modes: int, min_count: int | None = None) -> dict:
    """Coverage of `n_modes` modes by samples with these mode ids (N,) (-1 = off-mode)."""
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    if min_count is None:
        min_count = max(1, int(math.ceil(0.25 * n / n_modes)))
    counts = np.bincount(ids[ids >= 0], minlength=n_modes)[:n_modes]
    on = int(counts.sum())
    p = counts[counts > 0] / max(on, 1)
    kl = float(np.sum(p * np.log(p * n_modes))) if on else None
    return {"n": n, "modes": n_modes, "min_count": int(min_count), "recovered": int((counts >= min_count).sum()),
            "precision": on / n if n else None, "kl_uniform": kl}

