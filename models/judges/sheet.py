"""A picture of what a model serves: per class, a row of samples from its default source above a row of real
test images of that class, each sample framed by the judge's verdict (green: judged the requested class, red:
not), so a reader checks the figures against the images (`latentserve eval --sheet PNG`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from latentserve.models.data.render import contact_sheet

OK_RGB = (40, 200, 60)
BAD_RGB = (230, 40, 40)


def _framed(images: np.ndarray, ok: np.ndarray | None) -> np.ndarray:
    """uint8 (N,H,W,3) -> (N,H+2,W+2,3) with a 1-px frame: verdict colour, or dark grey for real images."""
    n, h, w, _ = images.shape
    out = np.full((n, h + 2, w + 2, 3), 40, np.uint8)
    if ok is not None:
        out[:] = np.where(ok[:, None, None, None], np.array(OK_RGB, np.uint8), np.array(BAD_RGB, np.uint8))
    out[:, 1:-1, 1:-1] = images
    return out


def write_sheet(path: str | Path, samples: np.ndarray, sample_labels: np.ndarray, judged: np.ndarray | None,
                real: np.ndarray, real_labels: np.ndarray, per_row: int = 12, upscale: int = 3) -> Path:
    """Samples uint8 (N,H,W,3) requested as `sample_labels` (N,), judged labels (N,) or None, beside real test
    images (M,H,W,3) with their labels: one sample row and one real row per class -> PNG at `path`."""
    rows = []
    for c in np.unique(sample_labels):
        s = np.flatnonzero(sample_labels == c)[:per_row]
        r = np.flatnonzero(real_labels == c)[:per_row]
        ok = None if judged is None else judged[s] == c
        rows += [_framed(samples[s], ok), _framed(real[r], None)]
    width = max(len(x) for x in rows)
    blank = lambda k, like: np.zeros((k,) + like.shape[1:], np.uint8)  # noqa: E731
    grid = np.concatenate([np.concatenate([x, blank(width - len(x), x)]) for x in rows])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(grid, ncol=width, upscale=upscale).save(path)
    return path


def model_sheet(path: str | Path, draw: Callable[[np.ndarray, np.random.Generator], np.ndarray],
                decode: Callable[[np.ndarray, np.ndarray], np.ndarray], judge, data, seed: int = 0,
                per_row: int = 12) -> Path:
    """`write_sheet` for a model: `draw` latents of its default source, `decode` to network images in [-1,1],
    `judge` (scoring.Judge) for the frames; real images from the data set's test split."""
    from latentserve.models.judges.scoring import to_u8

    c = len(data.class_names)
    labels = np.repeat(np.arange(c, dtype=np.int64), per_row)
    images = to_u8(decode(draw(labels, np.random.default_rng([seed, 21])), labels))
    judged, _ = judge(images)
    return write_sheet(path, images, labels, judged, data.test.images, data.test.labels, per_row)
