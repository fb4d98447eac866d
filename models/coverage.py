"""Precision / recall / density / coverage and the k-NN manifold test, in any feature space (the probe's
features, the judge's measured factors). numpy only."""
from __future__ import annotations

import numpy as np

from latentserve.errors import ValidationError

PRDC_K = 5


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (Na, Nb), float64, via the Gram trick (clipped at 0 against rounding)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def prdc(real: np.ndarray, fake: np.ndarray, k: int = PRDC_K) -> dict[str, float]:
    """Precision/recall (Kynkäänniemi 2019) and density/coverage (Naeem 2020) of `fake` vs `real` features.

    real (N, F), fake (M, F). Radii are the distance to the k-th nearest neighbour within the same set
    (excluding the point itself). precision = share of fakes inside some real ball; recall = share of reals
    inside some fake ball; density = mean over fakes of (# real balls containing it) / k; coverage = share of
    real balls that contain at least one fake.
    """
    real, fake = np.asarray(real), np.asarray(fake)
    if len(real) <= k or len(fake) <= k:
        raise ValidationError(f"PRDC with k={k} needs more than {k} real and fake samples, got {len(real)}, {len(fake)}")
    r_real = np.sort(pairwise_distances(real, real), axis=1)[:, k]  # (N,) column 0 is the point itself
    r_fake = np.sort(pairwise_distances(fake, fake), axis=1)[:, k]  # (M,)
    d = pairwise_distances(real, fake)  # (N, M)
    inside_real = d <= r_real[:, None]  # fake j inside real ball i
    return {
        "precision": float(inside_real.any(0).mean()),
        "recall": float((d <= r_fake[None, :]).any(1).mean()),
        "density": float(inside_real.sum(0).mean() / k),
        "coverage": float((d.min(1) <= r_real).mean()),
    }


def inside_manifold(real: np.ndarray, fake: np.ndarray, k: int = PRDC_K) -> np.ndarray:
    """(M,) bool: fake j lies inside some real k-NN ball (the per-sample test behind `prdc`'s precision)."""
    real, fake = np.asarray(real), np.asarray(fake)
    if len(real) <= k:
        raise ValidationError(f"the manifold test with k={k} needs more than {k} real samples, got {len(real)}")
    r_real = np.sort(pairwise_distances(real, real), axis=1)[:, k]  # (N,)
    return (pairwise_distances(real, fake) <= r_real[:, None]).any(0)
