"""The label check (models/class_check.py): which rows are redrawn, what is kept, and both drivers agree."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from latentserve.models import class_check as cc

N_CLASSES = 3


def _model():
    """A toy model: the image of latent z is z itself (as a (3, 1, 1) image); its class head is confident in
    the label exactly when z[0] > 0 (logit 4 for the label, 0 otherwise), else it is unsure (all logits 0)."""
    calls = {"decode": 0, "classify": 0}

    def decode(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        calls["decode"] += len(z)
        x = np.zeros((len(z), 3, 1, 1), dtype=np.float32)
        x[:, 0, 0, 0] = z[:, 0]
        x[:, 1, 0, 0] = y
        return x

    def classify(x: np.ndarray) -> np.ndarray:
        calls["classify"] += len(x)
        logits = np.zeros((len(x), N_CLASSES))
        sure = x[:, 0, 0, 0] > 0
        logits[np.flatnonzero(sure), x[sure, 1, 0, 0].astype(int)] = 4.0
        return logits

    return decode, classify, calls


def _draws(seed: int):
    rng = np.random.default_rng(seed)
    log: list[tuple[list[int], int]] = []

    def draw(rows: np.ndarray, r: int) -> np.ndarray:
        log.append((rows.tolist(), r))
        return rng.normal(size=(len(rows), 2))

    return draw, log


P_SURE = np.exp(4.0) / (np.exp(4.0) + 2.0)  # the toy head's p(label) when sure; 1/3 when unsure


def test_rows_below_the_threshold_are_redrawn_until_they_pass():
    decode, classify, calls = _model()
    draw, log = _draws(0)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1], dtype=np.int64)
    out = cc.run_sync(cc.check_loop(draw, labels, threshold=0.9, rounds=20), decode, classify)
    assert log[0] == (list(range(8)), 0)  # round 0 draws every row
    assert all(r == i for i, (_, r) in enumerate(log))  # rounds are numbered in order
    assert all(set(rows) <= set(prev) for (rows, _), (prev, _) in zip(log[1:], log))  # only failing rows again
    assert out.passed == 8 and np.all(out.latents[:, 0] > 0)
    np.testing.assert_allclose(out.confidence, P_SURE, rtol=1e-6)
    assert out.draws == sum(len(rows) for rows, _ in log) == calls["decode"] == calls["classify"]
    # the kept images are the kept latents' images
    np.testing.assert_array_equal(out.images[:, 0, 0, 0], out.latents[:, 0])
    np.testing.assert_array_equal(out.images[:, 1, 0, 0], labels)


def test_a_row_that_never_passes_keeps_its_most_confident_draw():
    decode, classify, _ = _model()
    labels = np.array([1, 2], dtype=np.int64)

    def draw(rows: np.ndarray, r: int) -> np.ndarray:  # row 0 passes in round 1; row 1 never does
        z = np.full((len(rows), 2), -1.0 - r)
        z[(rows == 0) & (r == 1), 0] = 5.0
        return z

    out = cc.run_sync(cc.check_loop(draw, labels, threshold=0.99, rounds=3), decode, classify)
    assert out.passed == 0  # P_SURE < 0.99: nobody passes, both rows keep their best draw
    assert out.latents[0, 0] == 5.0  # the sure draw of round 1 beats the unsure ones
    assert out.latents[1, 0] == -1.0  # ties keep the first draw
    assert out.draws == 6
    np.testing.assert_allclose(out.confidence, [P_SURE, 1 / 3], rtol=1e-6)


def test_one_round_is_no_redraw_and_every_row_is_scored():
    decode, classify, _ = _model()
    draw, log = _draws(1)
    labels = np.zeros(5, dtype=np.int64)
    out = cc.run_sync(cc.check_loop(draw, labels, threshold=0.5, rounds=1), decode, classify)
    assert len(log) == 1 and out.draws == 5
    assert out.passed == int((out.latents[:, 0] > 0).sum())


@pytest.mark.parametrize("offload", [False, True])
def test_the_async_driver_gives_what_the_sync_driver_gives(offload):
    decode, classify, _ = _model()
    labels = np.arange(12, dtype=np.int64) % N_CLASSES
    sync = cc.run_sync(cc.check_loop(_draws(7)[0], labels, 0.9), decode, classify)

    async def adecode(z, y):
        await asyncio.sleep(0)
        return decode(z, y)

    async def aclassify(x):
        return classify(x)

    got = asyncio.run(cc.run_async(cc.check_loop(_draws(7)[0], labels, 0.9), adecode, aclassify, offload))
    np.testing.assert_array_equal(got.latents, sync.latents)
    np.testing.assert_array_equal(got.confidence, sync.confidence)
    assert got.draws == sync.draws


@pytest.mark.parametrize("threshold, rounds", [(0.0, 8), (1.0, 8), (-0.5, 8), (0.5, 0)])
def test_bad_settings_are_refused(threshold, rounds):
    with pytest.raises(ValueError):
        next(cc.check_loop(_draws(0)[0], np.zeros(2, dtype=np.int64), threshold, rounds))


def test_label_probability_is_a_stable_softmax():
    logits = np.array([[1000.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(cc.label_probability(logits, np.array([0, 2])), [1.0, 1 / 3], rtol=1e-6)


def _metrics(accuracy, plain, checked, source="prior"):
    return {"encoder_accuracy": accuracy, "gan_test": {source: {"mean": plain, "class_check": {"mean": checked}}}}


def test_evaluation_turns_the_check_on_only_where_a_reliable_head_raises_class_accuracy():
    assert cc.recommend(_metrics(1.0, 0.79, 0.95), "prior") == cc.DEFAULT_THRESHOLD  # the bundled VAE's case
    assert cc.recommend(_metrics(1.0, 0.973, 0.970), "prior") == 0.0  # the bundled GAN's: no gain, no cost
    assert cc.recommend(_metrics(cc.MIN_HEAD_ACCURACY - 0.01, 0.4, 0.6), "prior") == 0.0  # no judge
    assert cc.recommend(_metrics(1.0, 0.79, 0.95, source="latent_gmm"), "prior") == 0.0  # another source's figures
    assert cc.recommend({"encoder_accuracy": 1.0}, "prior") == 0.0  # check not measured


def test_evaluation_recommends_one_threshold_per_source():
    # the bundled GAN: no gain on its prior, 78% -> 96% on its latent GMM
    metrics = {"encoder_accuracy": 1.0, "gan_test": {
        "prior": {"mean": 0.973, "class_check": {"mean": 0.973}},
        "latent_gmm": {"mean": 0.783, "class_check": {"mean": 0.963}},
        "guided": {"mean": 0.99}}}  # a source scored without the check gets no entry
    assert cc.recommend_per_source(metrics) == {"latent_gmm": cc.DEFAULT_THRESHOLD, "prior": 0.0}
    assert cc.recommend_per_source({"encoder_accuracy": 1.0}) == {}


def test_serving_reads_back_what_evaluation_recorded():
    per_source = {"metrics": {"class_check_defaults": {"prior": 0.0, "latent_gmm": 0.99}, "class_check_default": 0.0}}
    assert cc.default_thresholds(per_source, "prior") == {"prior": 0.0, "latent_gmm": 0.99}
    # manifests evaluated before there was one threshold per source: theirs was chosen on the default source
    old = {"metrics": {"class_check_default": 0.99}}
    assert cc.default_thresholds(old, "latent_gmm") == {"latent_gmm": 0.99}
    assert cc.default_thresholds({"metrics": {"class_check_default": 1.5}}, "prior") == {"prior": 0.0}  # not a probability
    assert cc.default_thresholds({"metrics": {}}, "prior") == {}  # not evaluated: no evidence the head is a judge
    assert cc.default_thresholds({}, "prior") == {}
