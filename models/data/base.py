"""Dataset types shared by every generator/loader: images, class labels and factors in natural units.

Storage convention: images are uint8 (N, H, W, 3); networks see float32 (N, 3, H, W) in [-1, 1]
(`to_model` / `to_uint8`). Factors are float32 (N, K) in the units of `Factor`, NaN where a factor does
not apply to an image (e.g. a dataset without that factor).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from latentserve.errors import ValidationError


@dataclass(frozen=True)
class Factor:
    """A continuous factor of variation, in natural units."""

    name: str
    low: float  # smallest value the dataset produces
    high: float  # largest value the dataset produces
    unit: str = ""  # e.g. "fraction of image width", "degrees"
    doc: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DataSplit:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    factors: np.ndarray  # float32 (N, K), NaN where not applicable

    def __post_init__(self) -> None:
        n = len(self.images)
        assert self.images.dtype == np.uint8 and self.images.ndim == 4 and self.images.shape[3] == 3, self.images.shape
        assert self.labels.shape == (n,) and self.factors.shape[0] == n, (self.labels.shape, self.factors.shape)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Dataset:
    name: str  # registry name: shapes | disks | digits | folder
    image_size: int
    class_names: list[str]
    factors: list[Factor]
    train: DataSplit
    test: DataSplit
    config: dict = field(default_factory=dict)  # JSON-able kwargs that rebuild exactly this dataset
    # JSON-able facts about this build that are not kwargs (e.g. folder: skipped_files, files_per_class)
    info: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def meta(self) -> dict:
        """What a model needs to know about its data (goes into checkpoints and manifests)."""
        return {
            "name": self.name,
            "image_size": self.image_size,
            "class_names": list(self.class_names),
            "factors": [f.to_dict() for f in self.factors],
            "config": dict(self.config),
            "n_train": len(self.train),
            "n_test": len(self.test),
            "info": dict(self.info),
        }


def to_model(images_u8: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    return (images_u8.astype(np.float32).transpose(0, 3, 1, 2) / 127.5) - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), clipped and rounded."""
    x = (np.clip(images, -1.0, 1.0) + 1.0) * 127.5
    return np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1)


# -- small helpers shared by the dataset builders ---------------------------------------------------------


def check_int(name: str, value, low: int, high: int) -> int:
    """`value` as an int in [low, high], else ValidationError naming the allowed range (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValidationError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if not low <= int(value) <= high:
        raise ValidationError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def check_float(name: str, value, low: float, high: float) -> float:
    """`value` as a finite float in [low, high], else ValidationError naming the allowed range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValidationError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not low <= v <= high:
        raise ValidationError(f"{name} must be in [{low}, {high}], got {value}")
    return v


MAX_ITEMS = 1_000_000  # images per split a generated data set builds
MAX_SEED = 2**32 - 1


def check_build_args(sizes: tuple[int, int], **args) -> tuple:
    """The arguments every data set's build() shares, checked in the order given and returned in that order:
    image_size (px, in `sizes`, the data set's own range), n_train in [1, MAX_ITEMS], n_test in [0, MAX_ITEMS],
    test_fraction in [0, 0.9] (data sets split from a fixed source), seed in [0, MAX_SEED]. ValidationError
    naming the first bad one (check_int / check_float's messages)."""
    checks = {"image_size": lambda v: check_int("image_size", v, *sizes),
              "n_train": lambda v: check_int("n_train", v, 1, MAX_ITEMS),
              "n_test": lambda v: check_int("n_test", v, 0, MAX_ITEMS),
              "test_fraction": lambda v: check_float("test_fraction", v, 0.0, 0.9),
              "seed": lambda v: check_int("seed", v, 0, MAX_SEED)}
    unknown = set(args) - set(checks)
    if unknown:
        raise TypeError(f"check_build_args: no check for {', '.join(sorted(unknown))}")
    return tuple(checks[name](value) for name, value in args.items())


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split of indices into (train, test), both sorted.

    Each class with >= 2 items gives round(test_fraction * n) of them (at least 1, at most n - 1 when
    test_fraction > 0) to test, chosen by a permutation seeded with (seed, class), so the split of one
    class does not depend on the other classes.
    """
    labels = np.asarray(labels)
    train, test = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(test_fraction * len(idx)))
        if test_fraction > 0 and len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        perm = np.random.default_rng([seed, int(c)]).permutation(len(idx))
        test.append(idx[perm[:n_test]])
        train.append(idx[perm[n_test:]])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
