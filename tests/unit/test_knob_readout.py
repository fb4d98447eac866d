"""Unit tests of the knobs' nonlinear read-outs (models/knob_readout.py) and how LatentSpace uses them."""
from __future__ import annotations

import numpy as np
import pytest

from latentserve.errors import IntegrityError, ValidationError
from latentserve.models.knob_readout import SOLVE_GRID, Readout, fit_readout
from latentserve.models.latent import LatentSpace, fit_knobs

D, C = 6, 3
SPEC = {"name": "size", "low": -2.0, "high": 2.0, "unit": "u", "doc": ""}


def _data(n: int = 3000, seed: int = 0):
    """A factor that is a nonlinear function of the latent and the class (a linear fit reads it poorly)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, D)).astype(np.float32)
    y = rng.integers(0, C, n)
    value = np.tanh(1.5 * z[:, 0]) + 0.4 * z[:, 1] ** 2 - 0.3 * (y == 2) + 0.2 * z[:, 0] * z[:, 2]
    return z, y, value.astype(np.float64)


def _r2(t: np.ndarray, p: np.ndarray) -> float:
    return float(1.0 - np.mean((t - p) ** 2) / np.var(t))


@pytest.fixture(scope="module")
def fitted():
    z, y, v = _data()
    return fit_readout(z, y, v, C, seed=0), z, y, v


def test_readout_reads_a_nonlinear_factor_better_than_the_linear_knob(fitted):
    readout, z, y, v = fitted
    zt, yt, vt = _data(800, seed=1)
    knob = fit_knobs(z, v[:, None], [SPEC], seed=0)["size"]
    linear = _r2(vt, zt @ knob.weight + knob.bias)
    nonlinear = _r2(vt, readout.predict(zt, yt))
    assert nonlinear > 0.9 and nonlinear > linear + 0.2, (linear, nonlinear)
    assert 0.85 < readout.r2 <= 1.0  # its own held-out figure agrees
    assert readout.predict(zt[:5], yt[:5]).shape == (5,)


def test_solve_lands_on_reachable_targets_and_falls_back_on_unreachable_ones(fitted):
    readout, z, y, v = fitted
    knob = fit_knobs(z, v[:, None], [SPEC], seed=0)["size"]
    step = (knob.weight / (knob.weight @ knob.weight)).astype(np.float32)
    zt, yt, _ = _data(50, seed=2)
    target = np.linspace(-0.5, 1.0, 50)
    a = readout.solve(zt, yt, step, target, bracket=16.0)
    got = readout.predict(zt + a[:, None].astype(np.float32) * step, yt)
    # rows whose target the read-out crosses on the solver's grid land on it exactly, with the smallest move
    # that does it (no grid crossing nearer to a = 0) ...
    grid = np.linspace(-16, 16, SOLVE_GRID)
    scan = np.stack([readout.predict(zt + np.float32(g) * step, yt) for g in grid])  # (G, N)
    flips = (scan[:-1] >= target) != (scan[1:] >= target)  # (G-1, N)
    found = flips.any(0)
    assert found.sum() >= 40
    assert np.max(np.abs(got - target)[found]) < 1e-4
    for i in np.flatnonzero(found):
        nearest = min(abs(0.5 * (grid[j] + grid[j + 1])) for j in np.flatnonzero(flips[:, i]))
        assert abs(a[i]) <= nearest + (grid[1] - grid[0])
    # ... the others get the one-step amount target - f(z)
    np.testing.assert_allclose(a[~found], (target - readout.predict(zt, yt))[~found])
    # far beyond what the read-out ever reaches inside the bracket: the one-step amount, not the bracket's end
    far = np.full(50, 1e6)
    a_far = readout.solve(zt, yt, step, far, bracket=16.0)
    np.testing.assert_allclose(a_far, far - readout.predict(zt, yt))


def test_latent_space_set_factor_uses_the_readout_with_labels_and_round_trips(fitted, tmp_path):
    readout, z, y, v = fitted
    knobs = fit_knobs(z, v[:, None], [SPEC], seed=0, labels=y, n_classes=C)
    assert knobs["size"].readout is not None and knobs["size"].readout.r2 > 0.85
    space = LatentSpace(prior_type="standard_normal", latent_dim=D, n_classes=C, knobs=knobs)
    zt, yt, _ = _data(40, seed=3)
    target = np.linspace(-0.5, 1.0, 40)
    moved = space.set_factor(zt, "size", target, yt)
    landed = np.abs(knobs["size"].readout.predict(moved, yt) - target) < 1e-4
    assert landed.sum() >= 30  # the rest: targets this read-out never crosses along the knob (see above)
    # the move stays along the knob's direction
    delta = moved - zt
    w = knobs["size"].weight / np.linalg.norm(knobs["size"].weight)
    np.testing.assert_allclose(np.abs(delta @ w), np.linalg.norm(delta, axis=1), rtol=1e-4, atol=1e-5)
    # without labels: the linear estimate, as before
    lin = space.set_factor(zt, "size", target)
    np.testing.assert_allclose(space.predict_factor(lin, "size"), target, atol=1e-4)
    # persisted with the latent space; the manifest summary names its R²
    back = LatentSpace.load(space.save(tmp_path / "space.npz"))
    np.testing.assert_allclose(back.set_factor(zt, "size", target, yt), moved, atol=1e-6)
    meta = {k["name"]: k for k in back.meta()["knobs"]}
    assert meta["size"]["readout_r2"] == pytest.approx(knobs["size"].readout.r2, abs=1e-6)


def test_readout_shapes_are_checked(fitted, tmp_path):
    readout = fitted[0]
    with pytest.raises(ValidationError, match="read-out"):
        Readout(w0=readout.w0, b0=readout.b0[:-1], w1=readout.w1, b1=readout.b1, w2=readout.w2, b2=0.0,
                y_mean=0.0, y_std=1.0, r2=0.5)
    knobs = fit_knobs(*_data()[:1], _data()[2][:, None], [SPEC], seed=0)
    knobs["size"].readout = readout
    with pytest.raises(ValidationError, match="inputs"):  # a read-out for another latent size
        LatentSpace(prior_type="standard_normal", latent_dim=D, n_classes=C + 1, knobs=knobs)
    space = LatentSpace(prior_type="standard_normal", latent_dim=D, n_classes=C, knobs=knobs)
    path = space.save(tmp_path / "space.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "readout_size_w1"}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(IntegrityError):
        LatentSpace.load(path)
