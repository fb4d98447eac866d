"""Unit tests for models/latent.py: interpolation, knob moves, fitting, GMM sampling, persistence."""
from __future__ import annotations

import numpy as np
import pytest

from latentserve.errors import ValidationError
from latentserve.models.latent import MANIFOLD_TOLERANCE, Knob, LatentSpace, fit_latent_space, lerp, slerp


def _planted(n=600, d=16, seed=0):
    """Latents with two classes, a factor that is an exact linear function of z, and one with NaNs."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    z = rng.standard_normal((n, d)).astype(np.float32) + labels[:, None] * 2.0
    w_true = rng.standard_normal(d)
    scale = z @ w_true + 0.5  # exactly linear
    noisy = 0.3 * z[:, 0] + 0.01 * rng.standard_normal(n)
    noisy[: n // 3] = np.nan  # unknown for a third of the rows
    factors = np.stack([scale, noisy], 1).astype(np.float32)
    specs = [{"name": "scale", "low": -10, "high": 10, "unit": "u"},
             {"name": "x", "low": -1, "high": 1, "unit": "px"}]
    return z, labels, factors, specs, w_true


@pytest.fixture(scope="module")
def fitted():
    z, labels, factors, specs, w_true = _planted()
    space = fit_latent_space(z, labels, factors, specs, n_classes=2, prior_type="standard_normal",
                             n_pca=4, gmm_components=2, seed=0)
    return space, z, labels, factors, w_true


def test_lerp_and_slerp_ends_equal_inputs():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    for fn in (lerp, slerp):
        path = fn(a, b, 7)
        assert path.shape == (7, 8) and path.dtype == np.float32
        np.testing.assert_allclose(path[0], a, atol=1e-6)
        np.testing.assert_allclose(path[-1], b, atol=1e-6)
    np.testing.assert_allclose(lerp(a, b, 3)[1], (a + b) / 2, atol=1e-6)


def test_slerp_keeps_norm_between_equal_norm_ends():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(32), rng.standard_normal(32)
    b = b / np.linalg.norm(b) * np.linalg.norm(a)
    norms = np.linalg.norm(slerp(a, b, 11), axis=1)
    np.testing.assert_allclose(norms, np.linalg.norm(a), rtol=1e-5)
    # Unequal norms: the norm goes linearly from |a| to |b|.
    norms = np.linalg.norm(slerp(a, 3 * b, 5), axis=1)
    np.testing.assert_allclose(norms, np.linspace(np.linalg.norm(a), 3 * np.linalg.norm(b), 5), rtol=1e-5)


def test_slerp_falls_back_to_lerp_for_parallel_and_tiny():
    a = np.ones(4, np.float32)
    for b in (-a, 2 * a, np.zeros(4, np.float32)):
        np.testing.assert_allclose(slerp(a, b, 5), lerp(a, b, 5), atol=1e-6)
    with pytest.raises(ValidationError):
        lerp(a, a, 1)
    with pytest.raises(ValidationError):
        slerp(a, np.ones(3), 4)


def test_knob_fit_recovers_planted_direction(fitted):
    space, z, labels, factors, w_true = fitted
    knob = space.knobs["scale"]
    assert knob.r2 > 0.999
    cos = knob.weight @ w_true / (np.linalg.norm(knob.weight) * np.linalg.norm(w_true))
    assert cos > 0.999
    np.testing.assert_allclose(space.predict_factor(z, "scale"), factors[:, 0], atol=0.05 * factors[:, 0].std())
    assert space.knobs["x"].r2 > 0.95  # NaN rows were skipped, not propagated
    assert space.knob_names() == ["scale", "x", "pca_0", "pca_1", "pca_2", "pca_3"]


def test_move_and_set_factor_hit_linear_targets_exactly(fitted):
    space, z, *_ = fitted
    zz = z[:5]
    before = space.predict_factor(zz, "scale")
    moved = space.move(zz, "scale", 1.5)
    np.testing.assert_allclose(space.predict_factor(moved, "scale") - before, 1.5, atol=1e-3)
    deltas = np.array([-2, -1, 0, 1, 2], np.float32)
    moved = space.move(zz, "x", deltas)
    np.testing.assert_allclose(space.predict_factor(moved, "x") - space.predict_factor(zz, "x"), deltas, atol=1e-4)
    targets = np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32)
    np.testing.assert_allclose(space.predict_factor(space.set_factor(zz, "x", targets), "x"), targets, atol=1e-4)
    single = space.set_factor(zz[0], "scale", 3.0)  # a single (D,) vector in, (D,) out
    assert single.shape == zz[0].shape
    assert abs(float(space.predict_factor(single, "scale")) - 3.0) < 1e-3
    # The move is the minimum-norm change: along w only.
    diff = space.move(zz, "x", 1.0) - zz
    w = space.knobs["x"].weight
    np.testing.assert_allclose(diff, np.outer(np.ones(5), w / (w @ w)), atol=1e-5)


def test_move_pca_in_std_units(fitted):
    space, z, *_ = fitted
    assert space.pca_explained[0] >= space.pca_explained[1] > 0
    np.testing.assert_allclose(space.pca_components @ space.pca_components.T, np.eye(4), atol=1e-5)
    moved = space.move_pca(z[:3], 0, 2.0)
    np.testing.assert_allclose(space.predict_factor(moved, "pca_0") - space.predict_factor(z[:3], "pca_0"), 2.0, atol=1e-4)
    np.testing.assert_allclose(space.move(z[:3], "pca_0", 2.0), moved, atol=1e-6)
    # The projected training latents have unit std along each component by construction.
    assert abs(float(np.std(space.predict_factor(z, "pca_1"), ddof=1)) - 1.0) < 1e-3
    with pytest.raises(ValidationError):
        space.move_pca(z[:3], 4, 1.0)


def test_unknown_knob_lists_known_ones(fitted):
    space, z, *_ = fitted
    with pytest.raises(ValidationError, match="known knobs: scale, x, pca_0"):
        space.move(z[:2], "hue", 1.0)
    with pytest.raises(ValidationError):
        space.move(z[:2], "x", np.ones(3))  # wrong delta length


def test_gmm_sampling_matches_fitted_moments(fitted):
    space, z, labels, *_ = fitted
    rng = np.random.default_rng(0)
    for c in (0, 1):
        draws = space.sample_gmm(np.full(6000, c), rng)
        real = z[labels == c]
        np.testing.assert_allclose(draws.mean(0), real.mean(0), atol=0.15)
        np.testing.assert_allclose(draws.std(0), real.std(0), rtol=0.15)
    cold = space.sample_gmm(np.zeros(2000, int), rng, temperature=0.0)
    assert np.isin(cold.round(4), space.gmm_means[0].round(4)).all()  # T=0 -> component means only
    with pytest.raises(ValidationError):
        space.sample_gmm([2], rng)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gmm_covariance_kinds(covariance):
    """Full covariances reproduce correlations between latent dims; diagonal ones cannot."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3000, 1))
    z = np.concatenate([base, base + 0.1 * rng.standard_normal((3000, 1)), rng.standard_normal((3000, 2))], 1)
    space = fit_latent_space(z, np.zeros(3000, int), np.zeros((3000, 0)), [], n_classes=1,
                             prior_type="standard_normal", n_pca=0, gmm_components=1, gmm_covariance=covariance)
    assert (space.gmm_chol is not None) == (covariance == "full")
    assert space.meta()["gmm"]["covariance"] == covariance
    draws = space.sample_gmm(np.zeros(8000, int), np.random.default_rng(0))
    corr = np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]
    assert corr > 0.98 if covariance == "full" else abs(corr) < 0.05
    np.testing.assert_allclose(draws.std(0), z.std(0), rtol=0.05)  # the diagonal is right either way
    with pytest.raises(ValidationError, match="gmm_covariance"):
        fit_latent_space(z, np.zeros(3000, int), np.zeros((3000, 0)), [], n_classes=1,
                         prior_type="standard_normal", gmm_covariance="spherical")


def test_sample_prior_standard_and_class_gaussian():
    rng = np.random.default_rng(0)
    std = LatentSpace("standard_normal", latent_dim=4, n_classes=3)
    z = std.sample_prior(np.zeros(5000, int), rng, temperature=0.5)
    assert z.shape == (5000, 4) and z.dtype == np.float32
    np.testing.assert_allclose(z.std(0), 0.5, rtol=0.05)
    mean = np.arange(6, dtype=np.float32).reshape(2, 3)
    logstd = np.log(np.array([[1, 2, 3], [0.1, 0.2, 0.3]], np.float32))
    cg = LatentSpace("class_gaussian", latent_dim=3, n_classes=2, prior_mean=mean, prior_logstd=logstd)
    z = cg.sample_prior(np.ones(8000, int), rng)
    np.testing.assert_allclose(z.mean(0), mean[1], atol=0.02)
    np.testing.assert_allclose(z.std(0), np.exp(logstd[1]), rtol=0.05)
    with pytest.raises(ValidationError):
        LatentSpace("class_gaussian", latent_dim=3, n_classes=2)


def test_save_load_round_trip(fitted, tmp_path):
    space, z, *_ = fitted
    path = space.save(tmp_path / "latent_space.npz")
    assert path.name == "latent_space.npz"
    with np.load(path, allow_pickle=False) as data:
        assert "knob_scale" in data.files and data["gmm_means"].shape == (2, 2, 16)
    back = LatentSpace.load(path)
    assert back.knob_names() == space.knob_names() and back.prior_type == "standard_normal"
    for name in ("pca_components", "pca_mean", "pca_std", "pca_explained", "gmm_weights", "gmm_means", "gmm_vars",
                 "gmm_chol"):
        np.testing.assert_array_equal(getattr(back, name), getattr(space, name))
    np.testing.assert_allclose(back.move(z[:4], "scale", 1.0), space.move(z[:4], "scale", 1.0))
    meta = back.meta()
    assert meta["prior"] == {"type": "standard_normal"} and meta["gmm"] == {"components": 2, "covariance": "full", "kind": "em"}
    kinds = {k["name"]: k["kind"] for k in meta["knobs"]}
    assert kinds["scale"] == "factor" and kinds["pca_0"] == "pca"
    assert meta["knobs"][0]["unit"] == "u" and meta["knobs"][0]["r2_fit"] > 0.999


def test_high_dimensional_fit_is_stable():
    """D larger than N per class (flow-like): GMM and PCA must not blow up."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((120, 300)).astype(np.float32) * 0.01
    z[:, :5] *= 100  # a few informative dims, many nearly constant ones
    labels = np.repeat([0, 1, 2], 40)
    labels[-1] = 0  # class 2 keeps 39 rows
    f = np.full((120, 1), np.nan, np.float32)
    space = fit_latent_space(z, labels, f, [{"name": "hue", "low": 0, "high": 1}], n_classes=4,
                             prior_type="standard_normal", n_pca=3, gmm_components=3)
    assert space.knobs == {}  # no known values -> no knob
    assert np.all(np.isfinite(space.gmm_vars)) and np.all(space.gmm_vars > 0)
    draws = space.sample_gmm(np.array([0, 1, 2, 3]), np.random.default_rng(0))
    assert np.all(np.isfinite(draws))
    np.testing.assert_allclose(space.gmm_weights.sum(1), 1.0, atol=1e-6)


def test_knob_validation():
    with pytest.raises(ValidationError):
        Knob("x", np.zeros(3), 0.0, 1.0, 0, 1)
    with pytest.raises(ValidationError):
        LatentSpace("standard_normal", 3, 1, knobs={"x": Knob("x", np.ones(4), 0.0, 1.0, 0, 1)})


def test_latents_under_labels_picks_each_rows_class_map():
    from latentserve.models.latent import latents_under_labels

    z = np.arange(4 * 5, dtype=np.float32).reshape(4, 5)
    np.testing.assert_array_equal(latents_under_labels({"latent": z}, [0, 1, 2, 0]), z)  # one map: as encoded
    per_class = np.stack([z, z + 100, z + 200], axis=1)  # (N, C, D): a class-conditional flow's class_latents
    out = latents_under_labels({"latent": z, "class_latents": per_class}, np.array([2, 0, 1, 2]))
    np.testing.assert_array_equal(out, z + np.array([200, 0, 100, 200], dtype=np.float32)[:, None])


def test_anchor_mixture_stays_on_a_ring_that_em_fills():
    """Codes on a circle (a rotation factor): EM components cover the disc inside it, anchors stay on it."""
    rng = np.random.default_rng(0)
    n = 2000
    ang = rng.uniform(0, 2 * np.pi, n)
    x = np.stack([np.cos(ang), np.sin(ang)], 1) * 3.0 + rng.normal(0, 0.02, (n, 2))  # radius 3
    labels = np.zeros(n, np.int64)
    radius = {}
    for kind, k in (("full", 3), ("anchors", 400)):
        space = fit_latent_space(x, labels, np.zeros((n, 0)), [], 1, "standard_normal", n_pca=0,
                                 gmm_components=k, gmm_covariance=kind, anchor_bandwidth=0.5)
        z = space.sample_gmm(np.zeros(4000, np.int64), np.random.default_rng(1))
        radius[kind] = np.abs(np.linalg.norm(z, axis=1) - 3.0)
    assert np.mean(radius["anchors"] < 0.3) > 0.97
    assert np.mean(radius["full"] < 0.3) < 0.8  # the reason anchors exist
    assert space.gmm_kind == "anchors" and space.meta()["gmm"]["kind"] == "anchors"


def test_anchor_mixture_round_trips_and_validates(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    labels = np.arange(300) % 3
    space = fit_latent_space(x, labels, np.zeros((300, 0)), [], 3, "standard_normal", n_pca=0, gmm_components=50,
                             gmm_covariance="anchors")
    assert space.gmm_means.shape == (3, 50, 4)
    assert np.allclose(space.gmm_weights.sum(1), 1.0)
    # every anchor is a real code of its class
    for c in range(3):
        rows = x[labels == c]
        assert all(np.any(np.all(np.isclose(rows, m), axis=1)) for m in space.gmm_means[c])
    back = LatentSpace.load(space.save(tmp_path / "s.npz"))
    # stored in half precision: the same codes to ~1e-3 relative (far below their spacing)
    assert back.gmm_kind == "anchors" and back.gmm_means.dtype == np.float32
    np.testing.assert_allclose(back.gmm_means, space.gmm_means, rtol=2e-3, atol=1e-4)
    assert np.all(back.gmm_vars > 0)
    with pytest.raises(ValidationError, match="bandwidth"):
        fit_latent_space(x, labels, np.zeros((300, 0)), [], 3, "standard_normal", n_pca=0, gmm_components=5,
                         gmm_covariance="anchors", anchor_bandwidth=0.0)


def test_knob_on_an_anchor_mixture_lands_on_a_curved_set():
    """Codes on a curved 2-D sheet in 6-D: each projection onto the nearest anchors gives back part of a straight
    move, and repeated rounds still land the read-out on the target, on the sheet."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n = 3000
    u, v = rng.uniform(0, 1, n), rng.uniform(0, 1, n)  # u is the factor, v a nuisance
    z = np.stack([u, v, np.sin(3 * u), np.cos(3 * u), 0.5 * np.sin(2 * v), u * v], 1).astype(np.float32)
    labels = np.zeros(n, np.int64)
    space = fit_latent_space(z, labels, u[:, None], [{"name": "u", "low": 0.0, "high": 1.0}], 1, "standard_normal",
                             n_pca=0, gmm_components=600, gmm_covariance="anchors", knob_readouts=True, seed=0)
    start = space.sample_gmm(np.zeros(200, np.int64), np.random.default_rng(1))
    target = np.random.default_rng(2).uniform(0.1, 0.9, 200).astype(np.float32)
    moved = space.set_factor(start, "u", target, np.zeros(200, np.int64))
    # the rounds run until the read-out is within MANIFOLD_TOLERANCE of the range (six plain rounds left 12% short)
    read = space.knobs["u"].readout.predict(moved, np.zeros(200, np.int64))
    assert np.mean(np.abs(read - target) <= MANIFOLD_TOLERANCE + 1e-6) > 0.99
    # the code's own first coordinate is the true factor: most rows land within 5% of the range
    assert np.mean(np.abs(moved[:, 0] - target) < 0.05) > 0.75
    # and stay on the sheet: its curved coordinates agree with the factor it carries
    assert np.median(np.abs(moved[:, 2] - np.sin(3 * moved[:, 0]))) < 0.05


def test_local_knob_moves_follow_a_factor_no_global_direction_follows():
    """knob_moves "local": the factor runs most of the way round a circle in code space, so the knob's global ridge
    direction points along the circle at one end and across it at the other; moving along the read-out's gradient
    inside the local anchor span lands more rows near their target than moving along the ridge direction. The
    setting survives save/load."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n = 3000
    u, v = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    th = 1.8 * np.pi * u
    z = np.stack([np.cos(th), np.sin(th), v, 0.3 * np.sin(2 * np.pi * v)], 1).astype(np.float32)
    space = fit_latent_space(z, np.zeros(n, np.int64), u[:, None], [{"name": "u", "low": 0.0, "high": 1.0}], 1,
                             "standard_normal", n_pca=0, gmm_components=600, gmm_covariance="anchors",
                             knob_readouts=True, seed=0)
    start = space.sample_gmm(np.zeros(200, np.int64), np.random.default_rng(1))
    target = np.random.default_rng(2).uniform(0.1, 0.9, 200).astype(np.float32)
    landed = {}
    for moves in ("ridge", "local"):
        space.knob_moves = moves
        moved = space.set_factor(start, "u", target, np.zeros(200, np.int64))
        true = (np.arctan2(moved[:, 1], moved[:, 0]) % (2 * np.pi)) / (1.8 * np.pi)
        landed[moves] = float(np.mean(np.abs(true - target) < 0.05))
    assert landed["local"] >= landed["ridge"] + 0.1, landed
    with pytest.raises(ValidationError, match="knob_moves"):
        LatentSpace(prior_type="standard_normal", latent_dim=2, n_classes=1, knob_moves="diagonal")


def test_knob_moves_round_trips_through_the_file(tmp_path):
    space = LatentSpace(prior_type="standard_normal", latent_dim=2, n_classes=1, knob_moves="local")
    assert LatentSpace.load(space.save(tmp_path / "s.npz")).knob_moves == "local"
    assert LatentSpace.load(LatentSpace(prior_type="standard_normal", latent_dim=2, n_classes=1)
                            .save(tmp_path / "r.npz")).knob_moves == "ridge"
