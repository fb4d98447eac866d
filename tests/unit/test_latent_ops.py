"""Unit tests of the gradient-based latent operations (models/latent_ops.py) on tiny deterministic torch models."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentserve.models import latent_ops as lo  # noqa: E402
from latentserve.models.latent import lerp  # noqa: E402

D, C, P = 6, 3, 3 * 4 * 4


class Decoder(torch.nn.Module):
    """A small nonlinear generator: x = tanh(W2 softplus(W1 z) + T[label]), images (N, 3, 4, 4)."""

    def __init__(self, seed: int = 0, label_strength: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(16, D, generator=g)
        self.w2 = torch.randn(P, 16, generator=g) / 4
        self.t = torch.randn(C, P, generator=g) * label_strength

    def forward(self, latent, label):
        h = torch.nn.functional.softplus(2.0 * latent @ self.w1.T)
        return torch.tanh(h @ self.w2.T + self.t[label]).reshape(-1, 3, 4, 4)


class Probe(torch.nn.Module):
    """Linear classifier + 'brightness' regressor (mean pixel) + features."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(C, P, generator=g)

    def forward(self, image):
        x = image.reshape(image.shape[0], -1)
        return 3.0 * x @ self.w.T, x.mean(1, keepdim=True), torch.tanh(x @ self.w.T)


def graphs(label_strength: float = 0.0) -> lo.Graphs:
    dec, probe = Decoder(label_strength=label_strength).eval(), Probe().eval()
    return lo.Graphs(dec, probe, factor_names=["brightness"])


def _pairs(n: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 2, D)).astype(np.float32)


@pytest.mark.parametrize("space", ["pixel", "probe"])
def test_geodesic_is_shorter_and_more_even_than_lerp(space):
    g = graphs()
    steps = 8
    labels = np.zeros(steps, np.int64)
    wins = 0
    for a, b in _pairs(5):
        init = lerp(a, b, steps)
        _, _, d_lerp = lo.path_result(g, init, labels, space)
        state = lo.init_path(g, init, labels, space, lr=0.05, iterations=150)
        lo.run_to_end(lo.geodesic_step, g, [state])
        z, x, d = lo.path_result(g, state)
        np.testing.assert_allclose(z[[0, -1]], init[[0, -1]])  # the ends never move
        assert x.shape == (steps, 3, 4, 4) and d.shape == (steps - 1,)
        (len_g, cv_g), (len_l, cv_l) = lo.path_figures(d), lo.path_figures(d_lerp)
        assert (d ** 2).sum() < (d_lerp ** 2).sum()  # the energy it minimises went down
        wins += (len_g < len_l) and (cv_g < cv_l)
    assert wins >= 4, wins


def test_geodesic_batched_states_match_separate_runs():
    g = graphs()
    labels = np.array([0, 0, 1, 1, 1], np.int64)
    (a1, b1), (a2, b2) = _pairs(2, seed=7)
    paths = [lerp(a1, b1, 5), lerp(a2, b2, 5)]
    together = [lo.init_path(g, p, labels, "pixel", 0.05, 20) for p in paths]
    lo.run_to_end(lo.geodesic_step, g, together)
    for p, s in zip(paths, together):
        alone = lo.init_path(g, p, labels, "pixel", 0.05, 20)
        lo.run_to_end(lo.geodesic_step, g, [alone])
        np.testing.assert_allclose(s.inner.numpy(), alone.inner.numpy(), atol=1e-4)


def test_states_join_and_leave_between_iterations():
    g = graphs()
    labels = np.zeros(6, np.int64)
    (a1, b1), (a2, b2) = _pairs(2, seed=9)
    short = lo.init_path(g, lerp(a1, b1, 6), labels, "pixel", 0.05, 3)
    long = lo.init_path(g, lerp(a2, b2, 6), labels, "pixel", 0.05, 10)
    for _ in range(10):
        lo.geodesic_step(g, [short, long])
    assert (short.t, long.t) == (3, 10) and short.done and long.done


def _accuracy(g: lo.Graphs, z: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        logits = g.probe_outputs(g.decode(torch.tensor(z), torch.tensor(y)))[0]
    return float((logits.argmax(1).numpy() == y).mean())


def test_guided_sampling_raises_probe_accuracy_and_is_seeded():
    g = graphs()
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(C), 20).astype(np.int64)
    z0 = rng.standard_normal((len(y), D)).astype(np.float32)
    state = lo.init_chains(g, z0, y, steps=40, step_size=0.05, class_weight=4.0, noise=1.0, seed=11)
    lo.run_to_end(lo.guided_step, g, [state])
    prior_acc, guided_acc = _accuracy(g, z0, y), _accuracy(g, state.z.numpy(), y)
    assert guided_acc > prior_acc + 0.2, (prior_acc, guided_acc)
    again = lo.init_chains(g, z0, y, steps=40, step_size=0.05, class_weight=4.0, noise=1.0, seed=11)
    other = lo.init_chains(g, z0[:5], y[:5], steps=40, step_size=0.05, class_weight=0.0, noise=1.0, seed=2)
    lo.run_to_end(lo.guided_step, g, [again, other])  # batched with another request: same chains
    np.testing.assert_allclose(again.z.numpy(), state.z.numpy(), atol=1e-4)


def test_guided_factor_target_is_reached():
    g = graphs()
    y = np.zeros(16, np.int64)
    z0 = np.random.default_rng(1).standard_normal((16, D)).astype(np.float32)
    target = 0.3
    state = lo.init_chains(g, z0, y, steps=60, step_size=0.02, class_weight=0.0, noise=0.0,
                           factor_targets={"brightness": target}, factor_ranges={"brightness": 1.0},
                           factor_weight=200.0)
    lo.run_to_end(lo.guided_step, g, [state])
    with torch.no_grad():
        before = g.probe_outputs(g.decode(torch.tensor(z0), torch.tensor(y)))[1][:, 0].numpy()
        after = g.probe_outputs(g.decode(state.z, torch.tensor(y)))[1][:, 0].numpy()
    assert np.abs(after - target).mean() < 0.25 * np.abs(before - target).mean()


def test_refinement_lowers_reconstruction_error_and_never_raises_it():
    g = graphs()
    rng = np.random.default_rng(2)
    z_true = rng.standard_normal((10, D)).astype(np.float32)
    y = np.zeros(10, np.int64)
    with torch.no_grad():
        x = g.decode(torch.tensor(z_true), torch.tensor(y)).numpy()
    z_enc = z_true + 0.5 * rng.standard_normal(z_true.shape).astype(np.float32)  # an imperfect encoder
    for fw in (0.0, 0.5):
        state = lo.init_refine(g, z_enc, y, x, steps=60, lr=0.05, feature_weight=fw)
        lo.run_to_end(lo.refine_step, g, [state])
        before, after = state.mse_before.numpy(), state.best_mse.numpy()
        assert after.mean() < 0.3 * before.mean(), (before.mean(), after.mean())
        if fw == 0:
            assert np.all(after <= before + 1e-7)


def test_prior_energy_class_gaussian():
    mean = np.zeros((C, D), np.float32)
    mean[1] = 1.0
    g = lo.Graphs(Decoder(), prior_mean=torch.tensor(mean), prior_std=torch.full((C, D), 2.0))
    z = torch.ones(2, D)
    e = g.prior_energy(z, torch.tensor([0, 1]))
    np.testing.assert_allclose(e.numpy(), [0.5 * D / 4, 0.0])
