"""Nonlinear read-out of a knob's factor from the latent: a small MLP f(z, class) -> factor value.

A knob is a linear direction w (models/latent.py `Knob`). Setting a factor to a target moves z along w by
(target - current value); with the linear estimate z @ w + b of the current value, that estimate's error
becomes the error of the result, and for factors the latent encodes nonlinearly (scale) that error is large.
An MLP reads the factor far better, and solving f(z + a * step, y) = target for the amount a along the same
direction carries that accuracy into the edit. The direction stays linear (edits stay smooth and
predictable); only the read-out of where a latent is now, and how far to go, is nonlinear.

`Readout` holds the MLP's arrays (numpy only: serving never needs torch); `fit_readout` trains one (torch,
at export time). Read-outs are fitted for latents up to `READOUT_MAX_DIM` values (a flow's 3072-value latent
would make them megabytes each).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentserve.errors import ValidationError

READOUT_MAX_DIM = 256  # latent sizes up to this get read-outs (same threshold as full-covariance GMMs)
READOUT_HIDDEN = 64  # MLP width: ~35 KB per knob for a 64-value latent
SOLVE_GRID = 17  # odd: the middle point is a = 0 (no move)
SOLVE_ITERATIONS = 12  # Illinois steps inside the grid cell: far below 1e-6 factor units on a smooth read-out
SOLVE_TOLERANCE = 1e-6  # factor units: the steps stop early once every row is this close
_ARRAY_NAMES = ("w0", "b0", "w1", "b1", "w2")


def _silu(x: np.ndarray) -> np.ndarray:
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))  # x * sigmoid(x), without exp overflow for large |x|


def _dsilu(x: np.ndarray) -> np.ndarray:
    s = 0.5 + 0.5 * np.tanh(0.5 * x)  # sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


@dataclass
class Readout:
    """f(z, y) = y_mean + y_std * (silu(silu([z, onehot(y)] @ w0 + b0) @ w1 + b1) @ w2 + b2)."""

    w0: np.ndarray  # float32 (D + C, H)
    b0: np.ndarray  # float32 (H,)
    w1: np.ndarray  # float32 (H, H)
    b1: np.ndarray  # float32 (H,)
    w2: np.ndarray  # float32 (H,)
    b2: float
    y_mean: float  # factor units
    y_std: float
    r2: float  # held-out R² of the read-out on the samples it was fitted on (NaN if unmeasured)

    def __post_init__(self) -> None:
        for name in _ARRAY_NAMES:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32))
        h = self.b0.shape[0]
        if (self.w0.ndim != 2 or self.w0.shape[1] != h or self.w1.shape != (h, h) or self.b1.shape != (h,)
                or self.w2.shape != (h,)):
            raise ValidationError(f"knob read-out: inconsistent MLP shapes {[getattr(self, n).shape for n in _ARRAY_NAMES]}")
        if not all(np.all(np.isfinite(getattr(self, n))) for n in _ARRAY_NAMES):
            raise ValidationError("knob read-out: non-finite weights")
        self.b2, self.y_mean, self.y_std, self.r2 = float(self.b2), float(self.y_mean), float(self.y_std), float(self.r2)

    def n_inputs(self) -> int:
        return int(self.w0.shape[0])

    def predict(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """z (N, D), labels (N,) int -> the factor value (N,) float64."""
        z = np.asarray(z, dtype=np.float32)
        n_classes = self.n_inputs() - z.shape[1]
        if n_classes < 1:
            raise ValidationError(f"knob read-out takes latents of size {self.n_inputs() - 1} or less, got {z.shape[1]}")
        onehot = np.eye(n_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]  # (N, C)
        h = _silu(np.concatenate([z, onehot], axis=1) @ self.w0 + self.b0)  # (N, H)
        h = _silu(h @ self.w1 + self.b1)
        return self.y_mean + self.y_std * (h @ self.w2 + self.b2).astype(np.float64)

    def gradient(self, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """d f(z, y) / dz (N, D) float64: the direction in which the read-out value rises fastest at each row."""
        z = np.asarray(z, dtype=np.float32)
        d = z.shape[1]
        onehot = np.eye(self.n_inputs() - d, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]  # (N, C)
        u0 = np.concatenate([z, onehot], axis=1) @ self.w0 + self.b0  # (N, H)
        u1 = _silu(u0) @ self.w1 + self.b1  # (N, H)
        g1 = _dsilu(u1) * self.w2  # (N, H): d out / d u1
        g0 = (g1 @ self.w1.T) * _dsilu(u0)  # (N, H): d out / d u0
        return self.y_std * (g0 @ self.w0[:d].T).astype(np.float64)  # (N, D)

    def solve(self, z: np.ndarray, labels: np.ndarray, step: np.ndarray, target: np.ndarray,
              bracket: float) -> np.ndarray:
        """Amounts a (N,) with f(z + a * step) = target, |a| <= bracket (step (D,), or (N, D) one per row): the
        crossing nearest to a = 0 (the smallest edit) on a grid of SOLVE_GRID points (one batched read-out call),
        then the Illinois variant of regula falsi inside that grid cell (keeps the bracket, converges superlinearly
        on a smooth read-out).

        Rows whose target the read-out does not cross inside the bracket (an unreachable value) get the one-step
        amount target - f(z) instead of being pushed to the bracket's end."""
        z = np.asarray(z, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        target = np.asarray(target, dtype=np.float64)
        n, rows = len(z), np.arange(len(z))
        grid = np.linspace(-bracket, bracket, SOLVE_GRID)  # (G,)
        moved = z[None] + grid.astype(np.float32)[:, None, None] * step  # (G, N, D)
        vals = self.predict(moved.reshape(-1, z.shape[1]), np.tile(labels, SOLVE_GRID)).reshape(SOLVE_GRID, n)
        g = vals - target  # (G, N): the residual along the grid
        cross = (g[:-1] >= 0) != (g[1:] >= 0)  # (G-1, N): the target lies inside cell i
        dist = np.abs(0.5 * (grid[:-1] + grid[1:]))[:, None] + np.where(cross, 0.0, np.inf)  # (G-1, N)
        cell = dist.argmin(0)  # (N,)
        found = np.isfinite(dist[cell, rows])
        a0, a1 = grid[cell], grid[cell + 1]
        g0, g1 = g[cell, rows], g[cell + 1, rows]
        a = a0
        for _ in range(SOLVE_ITERATIONS):
            denom = g1 - g0
            a = np.where(denom != 0, a1 - g1 * (a1 - a0) / np.where(denom != 0, denom, 1.0), 0.5 * (a0 + a1))
            ga = self.predict(z + a[:, None].astype(np.float32) * step, labels) - target
            same = (ga >= 0) == (g1 >= 0)  # a replaces a1; else it replaces a0
            # Illinois: halve the residual of the end that stays twice in a row, so both ends keep moving
            g0 = np.where(same, g0 * 0.5, g1)
            a0 = np.where(same, a0, a1)
            a1, g1 = a, ga
            if np.all(np.abs(ga) <= SOLVE_TOLERANCE):
                break
        return np.where(found, a, target - vals[SOLVE_GRID // 2])

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}{n}": getattr(self, n) for n in _ARRAY_NAMES}

    def meta(self) -> dict:
        return {"b2": self.b2, "y_mean": self.y_mean, "y_std": self.y_std, "r2": self.r2}

    @classmethod
    def from_arrays(cls, prefix: str, arrays: dict, meta: dict) -> "Readout":
        return cls(**{n: arrays[f"{prefix}{n}"] for n in _ARRAY_NAMES}, b2=meta["b2"], y_mean=meta["y_mean"],
                   y_std=meta["y_std"], r2=meta["r2"])


def fit_readout(z: np.ndarray, labels: np.ndarray, values: np.ndarray, n_classes: int, seed: int = 0,
                hidden: int = READOUT_HIDDEN, epochs: int = 40, holdout: float = 0.15) -> Readout:
    """Fit f(z, y) -> value on rows with a finite value (z (N, D), labels (N,), values (N,)) with torch.

    Adam on the mean squared error of the standardised value, weight decay 1e-4, batches of 256, fitted on
    all rows but a held-out `holdout` share, on which its R² is measured."""
    import torch

    ok = np.isfinite(values)
    z, labels, values = np.asarray(z, np.float32)[ok], np.asarray(labels, np.int64)[ok], np.asarray(values, np.float64)[ok]
    if len(z) < 20:
        raise ValidationError(f"knob read-out needs at least 20 measured rows, got {len(z)}")
    y_mean, y_std = float(values.mean()), float(values.std()) or 1.0
    x = np.concatenate([z, np.eye(n_classes, dtype=np.float32)[labels]], axis=1)  # (N, D + C)
    t = ((values - y_mean) / y_std).astype(np.float32)
    n_hold = int(len(x) * holdout)

    def train(rows: np.ndarray) -> "torch.nn.Sequential":
        gen = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.SiLU(),
                                  torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1))
        opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        xs, ts = torch.from_numpy(x[rows]), torch.from_numpy(t[rows])
        for epoch in range(epochs):
            for g in opt.param_groups:  # cosine decay: a settled fit at the end
                g["lr"] = 2e-3 * 0.5 * (1.0 + np.cos(np.pi * epoch / epochs))
            for idx in torch.randperm(len(xs), generator=gen).split(256):
                loss = (net(xs[idx])[:, 0] - ts[idx]).square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return net

    def to_readout(net, r2: float) -> Readout:
        l0, l1, l2 = net[0], net[2], net[4]
        return Readout(w0=l0.weight.detach().numpy().T, b0=l0.bias.detach().numpy(), w1=l1.weight.detach().numpy().T,
                       b1=l1.bias.detach().numpy(), w2=l2.weight.detach().numpy()[0], b2=float(l2.bias.item()),
                       y_mean=y_mean, y_std=y_std, r2=r2)

    order = np.random.default_rng(seed).permutation(len(x))
    if n_hold < 10:  # too few rows to hold any out: fit on all of them, R² unmeasured
        return to_readout(train(order), float("nan"))
    held, fit_rows = order[:n_hold], order[n_hold:]
    readout = to_readout(train(fit_rows), float("nan"))
    pred = readout.predict(z[held], labels[held])
    readout.r2 = float(1.0 - np.mean((pred - values[held]) ** 2) / max(np.var(values[held]), 1e-12))
    return readout
