"""The `digits` dataset: scikit-learn's bundled handwritten digits as RGB images.

sklearn.datasets.load_digits (no download): 1797 greyscale 8x8 images with 17 grey levels (0..16), 10
classes "0".."9". Each is scaled to 0..255, upsampled smoothly (bicubic) to image_size and copied to the
three channels (R = G = B). There are no continuous factors (factors have shape (N, 0)). The split is
fixed by `seed`: per class, round(test_fraction * n) images go to test (see base.stratified_split).
Needs scikit-learn (the `train` extra); imported only when this dataset is built.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from latentserve.errors import UnrecoverableError

from .base import DataSplit, Dataset, check_build_args, stratified_split

NAME = "digits"
CLASS_NAMES = [str(d) for d in range(10)]
SOURCE_LEVELS = 16.0  # load_digits pixel values are integers 0..16
N_IMAGES = 1797


@functools.lru_cache(maxsize=1)
def load_source() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits: images float64 (1797, 8, 8) in 0..16, labels int64 (1797,), read-only.

    Cached: the data never changes. Reads the CSV that ships inside scikit-learn directly when it is where
    load_digits reads it from (importing sklearn.datasets costs 1-3 s, the file 0.05 s); otherwise, or if
    the file does not look right, falls back to sklearn.datasets.load_digits.
    """
    data = _read_bundled_csv()
    if data is not None:
        images, labels = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise UnrecoverableError(
                "the digits dataset needs scikit-learn: pip install 'latentserve[train]'"
            ) from exc
        bunch = load_digits()
        images, labels = np.asarray(bunch.images, np.float64), np.asarray(bunch.target, np.int64)
    images.flags.writeable = False  # shared by every build through the cache
    labels.flags.writeable = False
    return images, labels


def _read_bundled_csv() -> np.ndarray | None:
    """float64 (1797, 65) rows of 64 pixels + label from sklearn/datasets/data/digits.csv.gz, or None."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as fh:
            data = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    except (OSError, ValueError):
        return None
    ok = (
        data.shape == (N_IMAGES, 65)
        and data[:, :-1].min() >= 0 and data[:, :-1].max() <= SOURCE_LEVELS
        and set(np.unique(data[:, -1]).tolist()) == set(range(10))
    )
    return data if ok else None


def upsample(images8: np.ndarray, image_size: int) -> np.ndarray:
    """Grey float (N, h, w) in 0..16 -> uint8 RGB (N, image_size, image_size, 3), bicubic."""
    out = np.empty((len(images8), image_size, image_size), np.uint8)
    for i, img in enumerate(images8):
        # float mode keeps bicubic's precision; its small overshoot is clipped, not wrapped
        big = Image.fromarray((img * (255.0 / SOURCE_LEVELS)).astype(np.float32)).resize(  # mode "F"
            (image_size, image_size), Image.BICUBIC
        )
        out[i] = np.rint(np.clip(np.asarray(big), 0.0, 255.0))
    return np.repeat(out[..., None], 3, axis=3)


def build(image_size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The digits dataset. image_size in [8, 256]; test_fraction in [0, 0.9]; seed in [0, 2**32 - 1]."""
    image_size, test_fraction, seed = check_build_args(
        (8, 256), image_size=image_size, test_fraction=test_fraction, seed=seed)

    images8, labels = load_source()
    images = upsample(images8, image_size)  # (1797, S, S, 3)
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)

    def split(idx: np.ndarray) -> DataSplit:
        return DataSplit(images[idx], labels[idx], np.zeros((len(idx), 0), np.float32))

    return Dataset(
        name=NAME,
        image_size=image_size,
        class_names=list(CLASS_NAMES),
        factors=[],
        train=split(train_idx),
        test=split(test_idx),
        config={"image_size": image_size, "test_fraction": test_fraction, "seed": seed},
    )
