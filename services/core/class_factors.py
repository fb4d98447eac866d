"""Classes that are combinations of class factors (e.g. a `textured` model: shape x texture), addressed by factor.

A manifest's `class_factors` ({factor: class names}, in order) says that label = the mixed-radix index of the
factors' classes, the first factor most significant (textured: shape * 4 + texture), and class_names are those
combinations. SampleRequest.factor_classes picks some factors' classes (the others drawn uniformly per image);
EditRequest.factor_classes replaces those factors' classes in each input's label and keeps its latent.
numpy only; every bad request is a ValidationError naming `factor_classes`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from latentserve.errors import ValidationError

FIELD = "factor_classes"


def of_manifest(manifest: Mapping) -> dict[str, list[str]]:
    """The model's {factor: class names} ({} when its classes are not combinations)."""
    factors = manifest.get("class_factors") or {}
    return {str(k): [str(c) for c in v] for k, v in factors.items()}


def _indices(factors: dict[str, list[str]], requested: Mapping[str, str], model: str) -> dict[str, int]:
    """{factor: class index} of the requested classes, checked."""
    if not factors:
        raise ValidationError(f"{FIELD}: model {model} has no class factors (its classes are not combinations); "
                              "use label or class_name")
    out = {}
    for name, cls in requested.items():
        if name not in factors:
            raise ValidationError(f"{FIELD}: unknown class factor {name!r}; factors: {', '.join(factors)}")
        if cls not in factors[name]:
            raise ValidationError(f"{FIELD}[{name!r}]: unknown class {cls!r}; classes: {', '.join(factors[name])}")
        out[name] = factors[name].index(cls)
    return out


def _combine(factors: dict[str, list[str]], parts: dict[str, np.ndarray]) -> np.ndarray:
    label = np.zeros_like(next(iter(parts.values())))
    for name, classes in factors.items():
        label = label * len(classes) + parts[name]
    return label.astype(np.int64)


def split(factors: dict[str, list[str]], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Combined labels (N,) -> {factor: class index (N,)}."""
    rest, parts = np.asarray(labels, np.int64), {}
    for name in reversed(list(factors)):
        rest, parts[name] = np.divmod(rest, len(factors[name]))
    return {name: parts[name] for name in factors}


def sample_labels(factors: dict[str, list[str]], requested: Mapping[str, str], n: int, rng: np.random.Generator,
                  model: str) -> np.ndarray:
    """Labels (n,) with the requested factors' classes and the others uniform (drawn in factor order)."""
    fixed = _indices(factors, requested, model)
    parts = {name: (np.full((n,), fixed[name], np.int64) if name in fixed
                    else rng.integers(0, len(classes), size=n).astype(np.int64))
             for name, classes in factors.items()}
    return _combine(factors, parts)


def relabel(factors: dict[str, list[str]], labels: np.ndarray, requested: Mapping[str, str], model: str
            ) -> np.ndarray:
    """Labels (N,) with the requested factors' classes replaced, the other factors' kept."""
    fixed = _indices(factors, requested, model)
    parts = split(factors, labels)
    for name, index in fixed.items():
        parts[name] = np.full_like(parts[name], index)
    return _combine(factors, parts)
