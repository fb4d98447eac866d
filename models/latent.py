"""Latent-space math shared by training (fitting) and serving (sampling, interpolation, knob edits).

Owns the prior, the factor knobs (ridge directions), the PCA directions and the per-class diagonal GMM of
one generative model, stored as `latent_space.npz`. numpy only at import; sklearn is imported lazily inside
`fit_latent_space`, so the serving side can use this module without torch or sklearn.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from latentserve.errors import IntegrityError, ValidationError
from latentserve.models.knob_readout import READOUT_MAX_DIM, Readout, fit_readout

PRIOR_TYPES = ("standard_normal", "class_gaussian", "texture")
FORMAT_VERSION = 1
PCA_KNOB_PREFIX = "pca_"  # PCA directions are also addressable as knobs "pca_0", "pca_1", ...
PCA_KNOB_RANGE = 3.0  # PCA knob range advertised in the manifest, in std units: [-3, 3]


@dataclass
class Knob:
    """A linear predictor of one continuous factor from the latent: factor ~= z @ weight + bias."""

    name: str
    weight: np.ndarray  # float32 (D,)
    bias: float
    r2: float  # R^2 of the predictor on held-out latents (NaN if it could not be measured)
    low: float  # factor range in natural units (from the dataset's Factor)
    high: float
    unit: str = ""
    doc: str = ""
    # optional nonlinear read-out of the current value (models/knob_readout.py): set_factor then solves for the
    # amount along `weight` with it instead of the linear estimate
    readout: Readout | None = None

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(self.weight)):
            raise ValidationError(f"knob {self.name!r}: weight has non-finite values")
        if float(self.weight @ self.weight) <= 0.0:
            raise ValidationError(f"knob {self.name!r}: weight is zero, the knob cannot move a latent")
        self.bias = float(self.bias)
        self.r2 = float(self.r2)
        self.low, self.high = float(self.low), float(self.high)

    def unit_step(self) -> np.ndarray:
        """(D,) float32 w / ||w||^2: one factor unit along the minimum-norm direction of the linear estimate."""
        w = self.weight.astype(np.float64)
        return (w / (w @ w)).astype(np.float32)


def restrict_knobs(knobs: dict[str, Knob], branches: dict[str, dict]) -> dict[str, Knob]:
    """Knobs of a generator whose latent splits into branches ({branch: {"latent": [start, stop], "factors":
    [...]}}, models/nets/decoupled.py): each listed factor's weight keeps only its branch's coordinates, so its
    moves cannot reach the other branch (the fit's bias and R² stay as fitted). Unlisted knobs are unchanged; a
    knob with nothing left in its branch is dropped."""
    out = dict(knobs)
    for spec in branches.values():
        start, stop = (int(v) for v in spec["latent"])
        for name in spec["factors"]:
            if name in out:
                w = np.zeros_like(out[name].weight)
                w[start:stop] = out[name].weight[start:stop]
                if np.any(w):
                    out[name] = dataclasses.replace(out[name], weight=w)
                else:
                    del out[name]
    return out


# the optional arrays of a LatentSpace, as stored in latent_space.npz
_ARRAYS = ("prior_mean", "prior_logstd", "pca_components", "pca_mean", "pca_std", "pca_explained",
           "gmm_weights", "gmm_means", "gmm_vars", "gmm_chol")
GMM_COVARIANCES = ("auto", "diag", "full", "anchors")
ANCHOR_NEIGHBOURS = 10  # an anchor's spread is measured over this many nearest anchors of its class
MAX_ANCHORS = 4096  # anchors per class (a component each)
# Knob moves on an anchor mixture: up to MANIFOLD_STEPS rounds of (move, project onto the span of the
# PROJECT_NEIGHBOURS nearest anchors, keeping LOCAL_DIMS directions), chosen by the judged knob R² and the share
# of moved samples still judged in their class; with a read-out the rounds stop once every row reads within
# MANIFOLD_TOLERANCE of the knob's range of its target (each projection gives back part of the move, so a
# code far from the target's anchors needs many rounds, one near them few). Aiming past the target to need
# fewer rounds landed as well but broke more shapes. `knob_moves` "local" moves along the read-out's gradient
# inside that local span (the factor's own direction where the code is) instead of the knob's one global ridge
# direction: a model whose codes follow a factor nonlinearly (a sharp decoder trained with a strong
# reconstruction term) leaves the global direction pointing elsewhere, and its knobs would not land; where the
# global direction is right, it stays closer to the set of codes.
KNOB_MOVES = ("ridge", "local")
MANIFOLD_STEPS = 20
MANIFOLD_TOLERANCE = 0.01
PROJECT_NEIGHBOURS = 6
LOCAL_DIMS = 4
FULL_COVARIANCE_MAX_DIM = 256  # "auto" fits full covariances up to this latent size (a flow's D=3072 stays diagonal)


@dataclass
class LatentSpace:
    """Prior, knobs, PCA and per-class GMM of one model's latent space (shapes: D latent, C classes)."""

    prior_type: str  # "standard_normal" (gan, vae) | "class_gaussian" (flow) | "texture" (sgan)
    latent_dim: int  # D
    n_classes: int  # C
    prior_mean: np.ndarray | None = None  # float32 (C, D), class_gaussian only
    prior_logstd: np.ndarray | None = None  # float32 (C, D), class_gaussian only
    knobs: dict[str, Knob] = field(default_factory=dict)  # factor name -> Knob (insertion = manifest order)
    pca_components: np.ndarray | None = None  # float32 (P, D), orthonormal rows
    pca_mean: np.ndarray | None = None  # float32 (D,)
    pca_std: np.ndarray | None = None  # float32 (P,), std of the latents along each component
    pca_explained: np.ndarray | None = None  # float32 (P,), explained-variance ratio of each component
    gmm_weights: np.ndarray | None = None  # float32 (C, K), rows sum to 1
    gmm_means: np.ndarray | None = None  # float32 (C, K, D)
    gmm_vars: np.ndarray | None = None  # float32 (C, K, D), diagonal variances > 0 (the diagonal of a full one)
    # float32 (C, K, D, D) lower Cholesky factors of full covariances; None = diagonal GMM (gmm_vars only)
    gmm_chol: np.ndarray | None = None
    gmm_kind: str = "em"  # how the GMM was fitted: "em" (expectation-maximisation) | "anchors" (anchor_mixture)
    # how a knob with a read-out moves a code on an anchor mixture (each move is then projected onto the local
    # anchor span): "ridge" along the knob's global direction; "local" along the read-out's gradient inside the
    # local span (for codes that follow a factor nonlinearly, where the global direction points elsewhere)
    knob_moves: str = "ridge"
    # "texture" prior: the last `periodic` coordinates are phases / 2 pi ~ U[0, 1), the others N(0, I)
    periodic: int = 0

    def __post_init__(self) -> None:
        if self.knob_moves not in KNOB_MOVES:
            raise ValidationError(f"knob_moves {self.knob_moves!r} is not one of {', '.join(KNOB_MOVES)}")
        if self.prior_type not in PRIOR_TYPES:
            raise ValidationError(f"prior_type {self.prior_type!r} is not one of {', '.join(PRIOR_TYPES)}")
        self.latent_dim, self.n_classes = int(self.latent_dim), int(self.n_classes)
        if self.latent_dim < 1 or self.n_classes < 1:
            raise ValidationError(f"latent_dim ({self.latent_dim}) and n_classes ({self.n_classes}) must be >= 1")
        d, c = self.latent_dim, self.n_classes

        def arr(value, shape, what):
            if value is None:
                return None
            value = np.asarray(value, dtype=np.float32)
            if value.shape != shape:
                raise ValidationError(f"{what} has shape {value.shape}, expected {shape}")
            return value

        self.periodic = int(self.periodic)
        if not 0 <= self.periodic < d or (self.periodic and self.prior_type != "texture"):
            raise ValidationError(f"periodic ({self.periodic}) must be in [0, {d}) and only with the texture prior")
        if self.prior_type == "class_gaussian":
            if self.prior_mean is None or self.prior_logstd is None:
                raise ValidationError("prior_type 'class_gaussian' needs prior_mean and prior_logstd (C, D)")
        self.prior_mean = arr(self.prior_mean, (c, d), "prior_mean")
        self.prior_logstd = arr(self.prior_logstd, (c, d), "prior_logstd")
        for name, knob in self.knobs.items():
            if knob.name != name or knob.weight.shape != (d,):
                raise ValidationError(f"knob {name!r}: name mismatch or weight shape {knob.weight.shape} != ({d},)")
            if name.startswith(PCA_KNOB_PREFIX):
                raise ValidationError(f"knob name {name!r} clashes with the PCA knob prefix {PCA_KNOB_PREFIX!r}")
            if knob.readout is not None and knob.readout.n_inputs() != d + c:
                raise ValidationError(f"knob {name!r}: read-out takes {knob.readout.n_inputs()} inputs, expected {d + c}")
        if self.pca_components is not None:
            p = np.asarray(self.pca_components).shape[0]
            self.pca_components = arr(self.pca_components, (p, d), "pca_components")
            self.pca_mean = arr(self.pca_mean, (d,), "pca_mean")
            self.pca_std = arr(self.pca_std, (p,), "pca_std")
            self.pca_explained = arr(self.pca_explained, (p,), "pca_explained")
            if self.pca_mean is None or self.pca_std is None or self.pca_explained is None:
                raise ValidationError("pca_components needs pca_mean, pca_std and pca_explained")
        if self.gmm_weights is not None:
            k = np.asarray(self.gmm_weights).shape[-1]
            self.gmm_weights = arr(self.gmm_weights, (c, k), "gmm_weights")
            self.gmm_means = arr(self.gmm_means, (c, k, d), "gmm_means")
            self.gmm_vars = arr(self.gmm_vars, (c, k, d), "gmm_vars")
            if self.gmm_means is None or self.gmm_vars is None:
                raise ValidationError("gmm_weights needs gmm_means and gmm_vars")
            if np.any(self.gmm_vars <= 0) or np.any(self.gmm_weights < 0):
                raise ValidationError("gmm_vars must be > 0 and gmm_weights >= 0")
            if not np.allclose(self.gmm_weights.sum(1), 1.0, atol=1e-4):
                raise ValidationError("each row of gmm_weights must sum to 1")
            self.gmm_chol = arr(self.gmm_chol, (c, k, d, d), "gmm_chol")
            if self.gmm_chol is not None and not np.all(np.isfinite(self.gmm_chol)):
                raise ValidationError("gmm_chol must be finite")
        elif self.gmm_chol is not None:
            raise ValidationError("gmm_chol needs gmm_weights, gmm_means and gmm_vars")

    # -- names --------------------------------------------------------------------------------------------
    @property
    def n_pca(self) -> int:
        return 0 if self.pca_components is None else int(self.pca_components.shape[0])

    @property
    def gmm_components(self) -> int:
        return 0 if self.gmm_weights is None else int(self.gmm_weights.shape[1])

    def knob_names(self) -> list[str]:
        """Factor knobs first (in fit order), then PCA knobs 'pca_0'.. (amounts in std units)."""
        return list(self.knobs) + [f"{PCA_KNOB_PREFIX}{i}" for i in range(self.n_pca)]

    def _pca_index(self, name: str) -> int | None:
        if name.startswith(PCA_KNOB_PREFIX) and name[len(PCA_KNOB_PREFIX):].isdigit():
            i = int(name[len(PCA_KNOB_PREFIX):])
            if i < self.n_pca:
                return i
        return None

    def _knob(self, name: str) -> Knob:
        try:
            return self.knobs[name]
        except KeyError:
            known = ", ".join(self.knob_names()) or "(none)"
            raise ValidationError(f"unknown knob {name!r}; known knobs: {known}") from None

    # -- input checks -------------------------------------------------------------------------------------
    def _latents(self, z: Any) -> tuple[np.ndarray, bool]:
        """z (N, D) or (D,) -> float32 (N, D) and whether the input was a single vector."""
        z = np.asarray(z, dtype=np.float32)
        single = z.ndim == 1
        z2 = z[None] if single else z
        if z2.ndim != 2 or z2.shape[1] != self.latent_dim:
            raise ValidationError(f"latents must have shape (N, {self.latent_dim}) or ({self.latent_dim},), got {z.shape}")
        if not np.all(np.isfinite(z2)):
            raise ValidationError("latents contain NaN or infinity")
        return z2, single

    def _labels(self, labels: Any) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValidationError(f"labels must be a 1-D array, got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            if not np.all(np.equal(np.mod(labels, 1), 0)):
                raise ValidationError("labels must be integers")
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValidationError(f"labels must be in [0, {self.n_classes}), got range [{labels.min()}, {labels.max()}]")
        return labels

    @staticmethod
    def _temperature(temperature: float) -> float:
        t = float(temperature)
        if not np.isfinite(t) or t < 0:
            raise ValidationError(f"temperature must be a finite number >= 0, got {temperature}")
        return t

    def _per_row(self, value: Any, n: int, what: str) -> np.ndarray:
        """Scalar or (N,) -> float32 (N, 1) for broadcasting against (N, D)."""
        v = np.asarray(value, dtype=np.float32)
        if v.ndim == 0:
            v = np.full((n,), float(v), dtype=np.float32)
        if v.shape != (n,):
            raise ValidationError(f"{what} must be a scalar or have shape ({n},), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValidationError(f"{what} contains NaN or infinity")
        return v[:, None]

    # -- sampling -----------------------------------------------------------------------------------------
    def sample_prior(self, labels: Any, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """z = mean + T * std * eps for each label -> float32 (N, D); the texture prior's phases ~ U[0, 1)
        whatever T (the temperature scales the global code only)."""
        labels, t = self._labels(labels), self._temperature(temperature)
        eps = rng.standard_normal((len(labels), self.latent_dim), dtype=np.float32)  # (N, D)
        if self.prior_type in ("standard_normal", "texture"):
            z = (t * eps).astype(np.float32)
            if self.periodic:  # texture only (checked in __post_init__)
                z[:, -self.periodic:] = rng.random((len(labels), self.periodic), dtype=np.float32)
            return z
        mean, std = self.prior_mean[labels], np.exp(self.prior_logstd[labels])  # (N, D) each
        return (mean + t * std * eps).astype(np.float32)

    def sample_gmm(self, labels: Any, rng: np.random.Generator, temperature: float = 1.0) -> np.ndarray:
        """Draw from the per-class GMM (full or diagonal) fitted on encoded training images -> float32 (N, D).

        Temperature scales each component's std (the component choice is not tempered)."""
        if self.gmm_weights is None:
            raise ValidationError("this latent space has no GMM; sample the prior instead")
        labels, t = self._labels(labels), self._temperature(temperature)
        n = len(labels)
        # Vectorised categorical draw: first component whose cumulative weight exceeds u.
        cum = np.cumsum(self.gmm_weights[labels], axis=1)  # (N, K)
        u = rng.random(n)[:, None] * cum[:, -1:]  # (N, 1); scaled in case rows sum to 1 - 1e-7
        comp = np.minimum((u >= cum).sum(1), self.gmm_components - 1)  # (N,)
        mean = self.gmm_means[labels, comp]  # (N, D)
        eps = rng.standard_normal((n, self.latent_dim), dtype=np.float32)
        if self.gmm_chol is not None:
            return (mean + t * np.einsum("nij,nj->ni", self.gmm_chol[labels, comp], eps)).astype(np.float32)
        std = np.sqrt(self.gmm_vars[labels, comp])  # (N, D)
        return (mean + t * std * eps).astype(np.float32)

    # -- knobs --------------------------------------------------------------------------------------------
    def predict_factor(self, z: Any, name: str) -> np.ndarray:
        """The linear prediction of factor `name` (z @ w + b) -> float32 (N,) (scalar array for a (D,) z).

        For a PCA knob 'pca_i' this is the coordinate along component i in std units."""
        i = self._pca_index(name)
        z2, single = self._latents(z)
        if i is not None:
            out = (z2 - self.pca_mean) @ self.pca_components[i] / self.pca_std[i]
        else:
            knob = self._knob(name)
            out = z2 @ knob.weight + np.float32(knob.bias)
        out = out.astype(np.float32)
        return out[0] if single else out

    def move(self, z: Any, name: str, delta: Any) -> np.ndarray:
        """Shift z so the factor prediction changes by `delta` factor units: z + delta / ||w||^2 * w.

        `delta` is a scalar or (N,). A PCA knob name 'pca_i' moves along component i by `delta` std units."""
        i = self._pca_index(name)
        if i is not None:
            return self.move_pca(z, i, delta)
        z2, single = self._latents(z)
        d = self._per_row(delta, len(z2), "delta")  # (N, 1)
        out = (z2 + d * self._knob(name).unit_step()).astype(np.float32)
        return out[0] if single else out

    def set_factor(self, z: Any, name: str, target: Any, labels: Any = None) -> np.ndarray:
        """Move z along the knob so that its factor reads `target` (scalar or (N,)).

        With the knob's nonlinear read-out and the rows' class `labels` (N,): the amount along the knob solves
        readout(z + a * step, label) = target (models/knob_readout.py); otherwise the linear estimate is
        moved to the target: predict_factor(z', name) == target."""
        z2, single = self._latents(z)
        t = self._per_row(target, len(z2), "target")[:, 0]  # (N,)
        knob = self.knobs.get(name) if self._pca_index(name) is None else None
        if knob is not None and labels is not None and self.gmm_kind == "anchors":
            # A straight move leaves the thin set the codes lie on (the decoder then draws broken shapes):
            # alternate the move with a projection onto the local span of the nearest anchors of the class.
            y = self._labels(labels)
            tolerance = MANIFOLD_TOLERANCE * (knob.high - knob.low)
            local = knob.readout is not None and self.knob_moves == "local"
            for _ in range(MANIFOLD_STEPS):
                step = self._local_step(z2, y, knob) if local else None
                z2 = self._project_to_anchors(self.solve_move(z2, name, t, y, step), y)
                if knob.readout is not None and np.all(np.abs(knob.readout.predict(z2, y) - t) <= tolerance):
                    break
            return z2[0] if single else z2
        if knob is not None and labels is not None:
            out = self.solve_move(z2, name, t, self._labels(labels))
            return out[0] if single else out
        current = np.atleast_1d(self.predict_factor(z2, name)).astype(np.float64)
        out = self.move(z2, name, (t - current).astype(np.float32))
        return out[0] if single else out

    def solve_move(self, z2: np.ndarray, name: str, t: np.ndarray, y: np.ndarray | None = None,
                   step: np.ndarray | None = None) -> np.ndarray:
        """One move of z2 (N, D) along `step` (D,) (default the knob's unit step) to targets t (N,): the amount is
        solved with the knob's read-out where it has one and labels y (N,) are given, else with its linear one."""
        knob = self._knob(name)
        step = knob.unit_step() if step is None else step
        if knob.readout is not None and y is not None:
            amount = knob.readout.solve(z2, y, step, t, bracket=4.0 * (knob.high - knob.low))
        else:
            amount = np.asarray(t, np.float64) - np.atleast_1d(self.predict_factor(z2, name)).astype(np.float64)
        return (z2 + amount[:, None].astype(np.float32) * step).astype(np.float32)

    def _local_step(self, z2: np.ndarray, y: np.ndarray, knob: Knob) -> np.ndarray:
        """Per row (N, D): the read-out's gradient restricted to the local anchor span, scaled so that a move of
        `a` along it changes the read-out by about `a` factor units (as the knob's unit_step does for its linear
        estimate); the knob's unit_step where that gradient vanishes."""
        _, basis = self._local_spans(z2, y)
        coords = np.einsum("nd,nrd->nr", knob.readout.gradient(z2, y), basis)  # (N, r)
        g = np.einsum("nr,nrd->nd", coords, basis)  # (N, D)
        norm2 = (g ** 2).sum(1, keepdims=True)  # (N, 1)
        fallback = np.broadcast_to(knob.unit_step().astype(np.float64), g.shape)
        return np.where(norm2 > 1e-12, g / np.maximum(norm2, 1e-12), fallback).astype(np.float32)

    def _project_to_anchors(self, z2: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z2 (N, D) projected onto the affine span of the PROJECT_NEIGHBOURS nearest anchors of each row's
        class, keeping its top LOCAL_DIMS directions (the set of codes is locally that thin)."""
        mu, basis = self._local_spans(z2, y)
        off = (z2 - mu)[:, None, :]  # (N, 1, D)
        return (mu + np.einsum("nir,nrd->nd", off @ basis.transpose(0, 2, 1), basis)).astype(np.float32)

    def _local_spans(self, z2: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of z2 (N, D): the mean (N, D) of the PROJECT_NEIGHBOURS nearest anchors of its class and an
        orthonormal basis (N, r, D) of their top r <= LOCAL_DIMS directions."""
        k = min(PROJECT_NEIGHBOURS, self.gmm_components)
        r = min(LOCAL_DIMS, k)
        mus = np.empty_like(z2)
        bases = np.zeros((len(z2), r, z2.shape[1]), np.float32)
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            live = self.gmm_weights[c] > 0
            a = self.gmm_means[c][live]  # (M, D)
            kk = min(k, len(a))
            d2 = (z2[rows] ** 2).sum(1)[:, None] - 2.0 * z2[rows] @ a.T + (a ** 2).sum(1)[None, :]  # (n, M)
            nn = np.argpartition(d2, kk - 1, axis=1)[:, :kk] if kk < len(a) else np.tile(np.arange(len(a)), (len(rows), 1))
            p = a[nn]  # (n, k, D)
            mu = p.mean(1, keepdims=True)  # (n, 1, D)
            basis = np.linalg.svd(p - mu, full_matrices=False)[2][:, :r]  # (n, <=r, D)
            mus[rows] = mu[:, 0]
            bases[rows, :basis.shape[1]] = basis
        return mus, bases

    def move_pca(self, z: Any, index: int, amount: Any) -> np.ndarray:
        """Move z along PCA component `index` by `amount` (scalar or (N,)) std units of that component."""
        if self.pca_components is None:
            raise ValidationError("this latent space has no PCA directions")
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < self.n_pca:
            raise ValidationError(f"PCA index must be an integer in [0, {self.n_pca}), got {index!r}")
        z2, single = self._latents(z)
        a = self._per_row(amount, len(z2), "amount")  # (N, 1)
        step = self.pca_components[int(index)] * self.pca_std[int(index)]  # (D,)
        out = (z2 + a * step).astype(np.float32)
        return out[0] if single else out

    # -- persistence --------------------------------------------------------------------------------------
    def meta(self) -> dict:
        """JSON-able summary for the manifest: prior, knobs (factor + PCA) with units/ranges/R², GMM size."""
        knobs = [
            {"name": k.name, "kind": "factor", "unit": k.unit, "low": k.low, "high": k.high,
             "r2_fit": None if not np.isfinite(k.r2) else round(k.r2, 6), "doc": k.doc,
             **({"readout_r2": None if not np.isfinite(k.readout.r2) else round(k.readout.r2, 6)} if k.readout else {})}
            for k in self.knobs.values()
        ]
        for i in range(self.n_pca):
            knobs.append({
                "name": f"{PCA_KNOB_PREFIX}{i}", "kind": "pca", "unit": "std", "low": -PCA_KNOB_RANGE,
                "high": PCA_KNOB_RANGE, "r2_fit": None,
                "doc": f"principal direction {i} of encoded training latents "
                       f"({float(self.pca_explained[i]):.1%} of variance)",
            })
        return {
            "prior": {"type": self.prior_type, **({"periodic": self.periodic} if self.prior_type == "texture" else {})},
            "latent_shape": [self.latent_dim],
            "n_classes": self.n_classes,
            "knobs": knobs,
            "pca": {"components": self.n_pca,
                    "explained_variance": [] if self.pca_explained is None
                    else [round(float(v), 6) for v in self.pca_explained]},
            "gmm": {"components": self.gmm_components, "covariance": "diag" if self.gmm_chol is None else "full",
                    "kind": self.gmm_kind},
            "knob_moves": self.knob_moves,
        }

    def save(self, path: str | Path) -> Path:
        """Write all arrays (+ a JSON header as a string array, no pickle) to one .npz file."""
        path = Path(path)
        header = {
            "format": FORMAT_VERSION, "prior_type": self.prior_type, "latent_dim": self.latent_dim,
            "n_classes": self.n_classes, "gmm_kind": self.gmm_kind, "knob_moves": self.knob_moves,
            "periodic": self.periodic,
            "knobs": [{"name": k.name, "bias": k.bias, "r2": k.r2, "low": k.low, "high": k.high,
                       "unit": k.unit, "doc": k.doc, **({"readout": k.readout.meta()} if k.readout else {})}
                      for k in self.knobs.values()],
        }
        arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header))}
        for name in _ARRAYS:
            value = getattr(self, name)
            if value is not None:
                # an anchor mixture's components are codes of real images: half precision (~1e-3 relative) is
                # far below their spacing and halves the largest arrays of a bundled model
                half = self.gmm_kind == "anchors" and name in ("gmm_means", "gmm_vars")
                if half:  # variances stay above float16's smallest normal number, so none rounds to 0
                    value = np.maximum(value, np.float32(6.2e-5)) if name == "gmm_vars" else value
                    value = value.astype(np.float16)
                arrays[name] = value
        for k in self.knobs.values():
            arrays[f"knob_{k.name}"] = k.weight
            if k.readout is not None:
                arrays.update(k.readout.arrays(f"readout_{k.name}_"))
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:  # a file object keeps numpy from appending ".npz" to the name
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LatentSpace":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latent space file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            header = json.loads(str(arrays.pop("header")))
        except (ValueError, KeyError, OSError) as exc:
            raise IntegrityError(f"{path.name}: not a readable latent space file ({exc})") from exc
        if header.get("format") != FORMAT_VERSION:
            raise IntegrityError(f"{path.name}: unsupported latent space format {header.get('format')!r}")
        try:
            knobs = {
                k["name"]: Knob(name=k["name"], weight=arrays[f"knob_{k['name']}"], bias=k["bias"], r2=k["r2"],
                                low=k["low"], high=k["high"], unit=k.get("unit", ""), doc=k.get("doc", ""),
                                readout=(Readout.from_arrays(f"readout_{k['name']}_", arrays, k["readout"])
                                         if k.get("readout") else None))
                for k in header["knobs"]
            }
            return cls(
                prior_type=header["prior_type"], latent_dim=header["latent_dim"], n_classes=header["n_classes"],
                knobs=knobs, gmm_kind=header.get("gmm_kind", "em"), knob_moves=header.get("knob_moves", "ridge"),
                periodic=header.get("periodic", 0),
                **{name: arrays.get(name) for name in _ARRAYS},
            )
        except (KeyError, ValidationError) as exc:
            raise IntegrityError(f"{path.name}: inconsistent latent space file ({exc})") from exc


# -- interpolation -------------------------------------------------------------------------------------------
def latents_under_labels(encoded: dict, labels: Any) -> np.ndarray:
    """Each row's latent under its label's map, (N, D): `class_latents[i, labels[i]]` for encoders that map
    every class separately (a conditional flow: its `latent` is the most likely class's), else `latent`."""
    if "class_latents" not in encoded:
        return np.asarray(encoded["latent"])
    per_class = np.asarray(encoded["class_latents"])  # (N, C, D)
    labels = np.asarray(labels, dtype=np.int64)
    return per_class[np.arange(len(labels)), labels]


def default_sample_source(family: str, has_gmm: bool, gmm_kind: str = "em") -> str:
    """What SAMPLE_SOURCE_UNSPECIFIED means for a model: its latent mixture for a VAE or an AE (whose prior is only
    a Gaussian fitted to its codes) that has one, or for any model whose mixture is an anchor mixture (fitted to
    stay on its codes, `anchor_mixture`), else the prior.

    A VAE's N(0, I) prior samples fall in the "prior hole" (its encoded codes spread 2-3x wider), so they are
    mostly off the data. An anchor mixture is exported because the prior's samples fall off the data. Otherwise
    a GAN's prior is what it was trained on, and a flow's prior is its exact density."""
    if has_gmm and (family in ("vae", "ae") or gmm_kind == "anchors"):
        return "latent_gmm"
    return "prior"


def _pair(a: Any, b: Any, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValidationError(f"interpolation ends must be two (D,) vectors of equal shape, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValidationError("interpolation ends contain NaN or infinity")
    if not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValidationError(f"steps must be an integer >= 2 (both ends are included), got {steps!r}")
    t = np.linspace(0.0, 1.0, int(steps), dtype=np.float64)[:, None]  # (S, 1)
    return a.astype(np.float64), b.astype(np.float64), t


def lerp(a: Any, b: Any, steps: int) -> np.ndarray:
    """Straight line from a to b: float32 (steps, D), row 0 == a, row -1 == b."""
    a64, b64, t = _pair(a, b, steps)
    out = ((1.0 - t) * a64 + t * b64).astype(np.float32)
    out[0], out[-1] = np.asarray(a, np.float32), np.asarray(b, np.float32)  # exact ends despite rounding
    return out


def slerp(a: Any, b: Any, steps: int, eps: float = 1e-6) -> np.ndarray:
    """Spherical interpolation: the direction moves along the great circle from a to b while the norm goes
    linearly from |a| to |b| (so equal-norm ends keep a constant norm). float32 (steps, D) including both ends.

    Falls back to `lerp` when either end is tiny or the ends are (anti)parallel, where the great circle is
    undefined (antiparallel) or numerically unstable (parallel)."""
    a64, b64, t = _pair(a, b, steps)
    na, nb = float(np.linalg.norm(a64)), float(np.linalg.norm(b64))
    if na < eps or nb < eps:
        return lerp(a, b, steps)
    ua, ub = a64 / na, b64 / nb
    cos = float(np.clip(ua @ ub, -1.0, 1.0))
    omega = float(np.arccos(cos))
    sin = np.sin(omega)
    if sin < 1e-4:  # parallel or antiparallel
        return lerp(a, b, steps)
    direction = (np.sin((1.0 - t) * omega) * ua + np.sin(t * omega) * ub) / sin  # (S, D), unit norm
    norm = (1.0 - t) * na + t * nb  # (S, 1)
    out = (direction * norm).astype(np.float32)
    out[0], out[-1] = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return out


# -- fitting --------------------------------------------------------------------------------------------------
def _spec(spec: Any) -> dict:
    """A Factor or a dict with name/low/high[/unit/doc] -> plain dict."""
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValidationError(f"factor spec must be a Factor or a dict with 'name', 'low', 'high'; got {spec!r}")
    return {"name": str(spec["name"]), "low": float(spec.get("low", np.nan)), "high": float(spec.get("high", np.nan)),
            "unit": str(spec.get("unit", "")), "doc": str(spec.get("doc", ""))}


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


class _Ridge:
    """Ridge regression with intercept on fixed rows: one eigendecomposition of the centred Gram matrix,
    shared by every factor with the same known rows and every penalty tried."""

    def __init__(self, x_fit: np.ndarray) -> None:
        self.mu_x = x_fit.mean(0)  # (D,)
        self.xc = x_fit - self.mu_x  # (N, D)
        evals, self.evecs = np.linalg.eigh(self.xc.T @ self.xc)  # (D,), (D, D)
        self.evals = np.maximum(evals, 0.0)
        self.scale = max(float(self.evals.mean()), 1e-12)  # penalties are relative to it: scale-free

    def fit(self, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
            alphas: Iterable[float]) -> tuple[np.ndarray, float]:
        """The (w (D,), b) whose penalty gives the best R² on (x_val, y_val)."""
        mu_y = y_fit.mean()
        proj = self.evecs.T @ (self.xc.T @ (y_fit - mu_y))  # (D,)
        best = (None, 0.0, -np.inf)
        for alpha in alphas:
            w = self.evecs @ (proj / (self.evals + alpha * self.scale))
            b = mu_y - self.mu_x @ w
            score = _r2(y_val, x_val @ w + b) if len(y_val) > 1 else -float(alpha)  # tiny: smallest penalty
            if best[0] is None or score > best[2]:
                best = (w, b, score)
        return best[0], float(best[1])


def fit_knobs(latents: Any, factors: Any, factor_specs: list, seed: int = 0, labels: Any = None,
              n_classes: int = 0) -> dict[str, Knob]:
    """Knobs only: ridge regression of each continuous factor on the latents.

    With `labels` (N,) and `n_classes`, knobs of latents up to READOUT_MAX_DIM values also get a nonlinear
    read-out of the factor (models/knob_readout.py, fitted with torch), which set_factor solves with.

    latents (N, D); factors (N, K) in natural units, NaN = unknown; factor_specs K Factors or dicts. Per factor:
    fit on 70% of the rows with a known value, penalty picked on 15%, R² reported on the last 15% (never seen
    by the fit). A factor with fewer than 20 known values or no spread gets no knob. Used on encoded training
    latents (`fit_latent_space`) and on prior samples labelled by a probe (InterFaceGAN's recipe, see
    `models/export.py`)."""
    x = np.asarray(latents, dtype=np.float64)
    specs = [_spec(s) for s in factor_specs]
    n = x.shape[0]
    f = np.asarray(factors, dtype=np.float64).reshape(n, -1) if len(specs) else np.zeros((n, 0))
    if f.shape != (n, len(specs)):
        raise ValidationError(f"factors must have shape ({n}, {len(specs)}) to match factor_specs, got {f.shape}")
    rng = np.random.default_rng(seed)
    alphas = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    knobs: dict[str, Knob] = {}
    order = rng.permutation(n)  # one shuffle for all factors, so factors known on the same rows share a fit
    solvers: dict[bytes, _Ridge] = {}
    for k, spec in enumerate(specs):
        rows = order[np.isfinite(f[order, k])]
        if len(rows) < 20 or np.ptp(f[rows, k]) <= 0:
            continue  # nothing to learn from
        n_fit, n_val = int(0.7 * len(rows)), int(0.15 * len(rows))
        fit, val, test = rows[:n_fit], rows[n_fit:n_fit + n_val], rows[n_fit + n_val:]
        key = fit.tobytes()
        if key not in solvers:
            solvers[key] = _Ridge(x[fit])
        w, b = solvers[key].fit(f[fit, k], x[val], f[val, k], alphas)
        r2 = _r2(f[test, k], x[test] @ w + b) if len(test) > 1 else float("nan")
        if not np.any(w):
            continue
        readout = None
        if labels is not None and n_classes > 0 and x.shape[1] <= READOUT_MAX_DIM:
            readout = fit_readout(x, np.asarray(labels), f[:, k], n_classes, seed)
        knobs[spec["name"]] = Knob(name=spec["name"], weight=w.astype(np.float32), bias=b, r2=r2,
                                   low=spec["low"], high=spec["high"], unit=spec["unit"], doc=spec["doc"],
                                   readout=readout)
    return knobs


def fit_latent_space(
    latents: np.ndarray,
    labels: np.ndarray,
    factors: np.ndarray,
    factor_specs: list,
    n_classes: int,
    prior_type: str,
    prior_mean: np.ndarray | None = None,
    prior_logstd: np.ndarray | None = None,
    n_pca: int = 8,
    gmm_components: int = 4,
    seed: int = 0,
    gmm_covariance: str = "auto",
    knob_readouts: bool = False,
    anchor_bandwidth: float = 0.5,
) -> LatentSpace:
    """Fit knobs, PCA and per-class GMM on encoded training latents.

    latents float (N, D); labels int (N,); factors float (N, K) in natural units, NaN = unknown; factor_specs
    K Factors or dicts. Knobs: ridge regression per factor on 70% of the rows with a known value, penalty
    picked on 15%, R² reported on the last 15% (never seen by the fit). A factor with fewer than 20 known
    values or no spread gets no knob. PCA: top `n_pca` right singular vectors of the centred latents.
    GMM: per class, sklearn GaussianMixture with full covariances (gmm_covariance "full", or "auto" for
    D <= FULL_COVARIANCE_MAX_DIM) or diagonal ones ("diag", "auto" above that), reg_covar relative to the data
    scale so it stays stable for D=3072 flow latents; classes with too few rows fall back to fewer components
    (zero weight padding) or, with none, to the prior. Full covariances matter for GAN/VAE latents: the codes
    of one class lie on a curved, correlated low-dimensional set, and a diagonal mixture samples far off it.
    `knob_readouts`: also fit each knob's nonlinear read-out (see `fit_knobs`). gmm_covariance "anchors": the
    mixture is `anchor_mixture` (gmm_components anchors per class, `anchor_bandwidth`) instead of EM."""
    from sklearn.mixture import GaussianMixture  # lazily: serving never fits
    from sklearn.utils.extmath import randomized_svd

    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValidationError(f"latents must have shape (N >= 2, D), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValidationError("latents contain NaN or infinity")
    n, d = x.shape
    space_labels = np.asarray(labels)
    if space_labels.shape != (n,):
        raise ValidationError(f"labels must have shape ({n},), got {space_labels.shape}")
    space_labels = space_labels.astype(np.int64)
    if space_labels.min() < 0 or space_labels.max() >= n_classes:
        raise ValidationError(f"labels must be in [0, {n_classes})")
    specs = [_spec(s) for s in factor_specs]
    f = np.asarray(factors, dtype=np.float64).reshape(n, -1) if len(specs) else np.zeros((n, 0))
    if f.shape != (n, len(specs)):
        raise ValidationError(f"factors must have shape ({n}, {len(specs)}) to match factor_specs, got {f.shape}")
    if prior_type not in PRIOR_TYPES:
        raise ValidationError(f"prior_type {prior_type!r} is not one of {', '.join(PRIOR_TYPES)}")
    if n_pca < 0 or gmm_components < 1:
        raise ValidationError(f"n_pca must be >= 0 and gmm_components >= 1 (got {n_pca}, {gmm_components})")
    if gmm_covariance not in GMM_COVARIANCES:
        raise ValidationError(f"gmm_covariance {gmm_covariance!r} is not one of {', '.join(GMM_COVARIANCES)}")
    knobs = fit_knobs(x, f, specs, seed, labels=space_labels if knob_readouts else None, n_classes=n_classes)

    # PCA -----------------------------------------------------------------------------------------------------
    pca = {}
    p = min(n_pca, d, n - 1)
    if p > 0:
        mean = x.mean(0)
        xc = x - mean  # (N, D)
        total_var = float(np.sum(xc ** 2)) / (n - 1)
        if min(n, d) > 512:  # the full SVD of (10k, 3072) is slow; the top few directions are all we need
            _, s, vt = randomized_svd(xc, n_components=p, n_iter=7, random_state=seed)
        else:
            _, s, vt = np.linalg.svd(xc, full_matrices=False)
            s, vt = s[:p], vt[:p]
        # Deterministic signs: the largest-magnitude coordinate of each component is positive.
        signs = np.sign(vt[np.arange(p), np.argmax(np.abs(vt), axis=1)])
        vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
        var = s ** 2 / (n - 1)
        pca = {"pca_components": vt, "pca_mean": mean, "pca_std": np.sqrt(np.maximum(var, 1e-12)),
               "pca_explained": var / total_var if total_var > 0 else np.zeros_like(var)}

    # GMM per class -------------------------------------------------------------------------------------------
    if gmm_covariance == "anchors":
        weights, means, variances = anchor_mixture(x, space_labels, n_classes, int(gmm_components), anchor_bandwidth,
                                                   seed)
        return LatentSpace(
            prior_type=prior_type, latent_dim=d, n_classes=n_classes, prior_mean=prior_mean,
            prior_logstd=prior_logstd, knobs=knobs, gmm_weights=weights, gmm_means=means, gmm_vars=variances,
            gmm_kind="anchors", **pca,
        )
    kk = int(gmm_components)
    full = gmm_covariance == "full" or (gmm_covariance == "auto" and d <= FULL_COVARIANCE_MAX_DIM)
    weights = np.zeros((n_classes, kk))
    means = np.zeros((n_classes, kk, d))
    variances = np.ones((n_classes, kk, d))
    chol = np.tile(np.eye(d), (n_classes, kk, 1, 1)) if full else None  # (C, K, D, D)
    global_var = float(np.mean(x.var(0))) if n > 1 else 1.0
    reg = 1e-3 * max(global_var, 1e-8)  # relative floor: well-conditioned even for nearly constant dims

    def put(c: int, k: int, mean: np.ndarray, cov: np.ndarray) -> None:
        """Component k of class c from a mean (D,) and a covariance: (D,) diagonal or (D, D) full."""
        means[c, k] = mean
        if cov.ndim == 1:
            variances[c, k] = cov
            if chol is not None:
                chol[c, k] = np.diag(np.sqrt(cov))
        else:
            variances[c, k] = np.diag(cov)
            chol[c, k] = np.linalg.cholesky(cov)

    for c in range(n_classes):
        xc_rows = x[space_labels == c]
        if len(xc_rows) == 0:
            # No data for this class: use the prior so sampling still works.
            weights[c, 0] = 1.0
            if prior_type == "class_gaussian" and prior_mean is not None and prior_logstd is not None:
                put(c, 0, np.asarray(prior_mean)[c], np.exp(2.0 * np.asarray(prior_logstd)[c]))
            continue
        m = max(1, min(kk, len(xc_rows) // 2))
        if m == 1:
            weights[c, 0] = 1.0
            cov = (np.cov(xc_rows, rowvar=False).reshape(d, d) + reg * np.eye(d)) if full and len(xc_rows) > 1 \
                else xc_rows.var(0) + reg
            put(c, 0, xc_rows.mean(0), cov)
            continue
        gmm = GaussianMixture(n_components=m, covariance_type="full" if full else "diag", reg_covar=reg,
                              max_iter=200, n_init=1, random_state=seed + c, init_params="k-means++")
        gmm.fit(xc_rows)
        order = np.argsort(-gmm.weights_)  # biggest component first: stable, readable arrays
        weights[c, :m] = gmm.weights_[order]
        for k in range(kk):  # components past m: zero-weight copies of the biggest one, never drawn
            j = order[k] if k < m else order[0]
            put(c, k, gmm.means_[j], gmm.covariances_[j])
    weights /= weights.sum(1, keepdims=True)

    return LatentSpace(
        prior_type=prior_type, latent_dim=d, n_classes=n_classes,
        prior_mean=prior_mean, prior_logstd=prior_logstd, knobs=knobs,
        gmm_weights=weights, gmm_means=means, gmm_vars=variances, gmm_chol=chol, **pca,
    )


def anchor_mixture(x: np.ndarray, labels: np.ndarray, n_classes: int, anchors: int, bandwidth: float,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A per-class mixture centred on encoded training images -> weights (C, M), means (C, M, D), variances
    (C, M, D), diagonal, M = `anchors`.

    Each class keeps M of its codes (a seeded subset) as equally weighted components; a component's variance
    per dimension is bandwidth^2 times the mean squared offset to its ANCHOR_NEIGHBOURS nearest anchors. Codes
    of one class lie on a thin, curved set (rotation is a ring); EM components are wide enough to cover it
    and so put mass inside the ring, where a decoder draws averages of shapes (discs for squares). Components
    sized by the local spacing of real codes stay on the set and still fill the gaps between its points
    (the ex-post density idea of Ghosh et al. 2020, at the resolution of the data)."""
    if not (1 <= anchors <= MAX_ANCHORS):
        raise ValidationError(f"anchors per class must be in 1..{MAX_ANCHORS}, got {anchors}")
    if not (0.0 < bandwidth <= 10.0):
        raise ValidationError(f"anchor bandwidth must be in (0, 10], got {bandwidth}")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_classes, anchors))
    means = np.zeros((n_classes, anchors, d))
    variances = np.ones((n_classes, anchors, d))
    floor = 1e-6 * max(float(np.mean(x.var(0))), 1e-8)
    for c in range(n_classes):
        rows = x[labels == c]
        if len(rows) == 0:
            weights[c, 0] = 1.0  # no data: one standard normal component, as the EM path's prior fallback
            continue
        m = min(anchors, len(rows))
        a = rows[np.sort(rng.choice(len(rows), size=m, replace=False))]  # (m, D)
        k = min(ANCHOR_NEIGHBOURS, m - 1)
        if k > 0:
            sq = (a * a).sum(1)
            d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * a @ a.T, 0.0)  # (m, m)
            np.fill_diagonal(d2, np.inf)
            nn = np.argpartition(d2, k - 1, axis=1)[:, :k]  # (m, k)
            local = ((a[nn] - a[:, None, :]) ** 2).mean(1)  # (m, D)
        else:
            local = np.full((m, d), float(np.mean(x.var(0))))
        weights[c, :m] = 1.0 / m
        means[c, :m] = a
        variances[c, :m] = np.maximum(bandwidth ** 2 * local, floor)
        means[c, m:] = a[0]  # unused rows (a class with fewer codes than anchors): zero weight, never drawn
    return weights, means, variances
