"""Evaluation metrics (closed forms and known cases) and evaluate_record on exported toy models."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from latentserve.errors import ValidationError
from latentserve.models import class_check as cc
from latentserve.models.evaluate import (
    evaluate_record,
    flow_bits_per_dim,
    format_table,
    prdc,
    psnr01,
    r2_score,
)
from latentserve.models.latent import default_sample_source
from latentserve.models.manifest import read_manifest
from latentserve.models.repository import Repository


def _toys():
    """test_export.py's toy families (loaded by path: test files are not a package)."""
    name = "_latentserve_test_export_toys"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_export.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses need the module registered while it executes
        spec.loader.exec_module(mod)
    return sys.modules[name]


# ----------------------------------------------------------------------------------------------- metric functions
def test_r2_and_psnr_known_values():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    assert r2_score(y, y) == 1.0
    assert r2_score(y, np.full(4, y.mean())) == 0.0
    assert math.isnan(r2_score(np.ones(4), y))
    x = np.zeros((2, 3, 4, 4), np.float32)
    # [-1,1] -> [0,1]: an offset of 0.2 is 0.1 in [0,1] -> MSE 0.01 -> 20 dB
    assert psnr01(x, x + 0.2) == pytest.approx(20.0, abs=1e-6)
    assert psnr01(x, x) == pytest.approx(100.0)  # MSE floor


def test_prdc_identical_disjoint_and_collapsed():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((200, 4))
    same = prdc(real, real.copy(), k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert same["density"] >= 1.0  # each fake lies in its own ball plus its >= k neighbours' balls
    far = prdc(real, real + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # Mode collapse: fakes all near one real point -> high precision, low recall and coverage.
    collapsed = real[:1] + 0.01 * rng.standard_normal((200, 4))
    c = prdc(real, collapsed, k=5)
    assert c["precision"] == 1.0 and c["recall"] < 0.1 and c["coverage"] < 0.1
    with pytest.raises(ValidationError):
        prdc(real[:5], real[:5], k=5)


def test_inside_manifold_is_the_per_sample_precision_test():
    from latentserve.models.evaluate import inside_manifold

    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    fake = np.concatenate([rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 25.0])  # half far off
    inside = inside_manifold(real, fake, k=5)
    assert inside.shape == (100,) and inside[:50].mean() > 0.8 and not inside[50:].any()
    assert inside.mean() == prdc(real, fake, k=5)["precision"]


def test_flow_bits_per_dim_closed_form():
    # z ~ standard normal prior, logdet 0: bpd = (0.5|z|^2/D + 0.5 ln 2pi + ln 127.5) / ln 2
    d = 3
    z = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    mean, logstd = np.zeros((2, d)), np.zeros((2, d))
    cond, marg = flow_bits_per_dim(z, np.zeros(2), np.array([0, 1]), mean, logstd)
    expect = np.mean([(0.5 * (z[i] ** 2).sum() / d + 0.5 * math.log(2 * math.pi) + math.log(127.5)) / math.log(2)
                      for i in range(2)])
    assert cond == pytest.approx(expect) and marg == pytest.approx(expect)  # identical classes
    # A logdet of +D*ln 2 (the map doubles every dim) removes exactly one bit per dim.
    cond2, _ = flow_bits_per_dim(z, np.full(2, d * math.log(2)), np.array([0, 1]), mean, logstd)
    assert cond2 == pytest.approx(expect - 1.0)
    # Marginal over two well-separated classes costs log2(2)/D bits vs the right class.
    mean2 = np.stack([np.zeros(d), np.full(d, 50.0)])
    c, m = flow_bits_per_dim(z[:1], np.zeros(1), np.array([0]), mean2, logstd)
    assert m - c == pytest.approx(1.0 / d)


# ----------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module", autouse=True)
def _short_classifiers():
    """The toy data has no geometric judge: its judge and GAN-train classifiers train a few steps only."""
    from latentserve.models.judges import classifier

    saved, classifier.GAN_TRAIN_STEPS = classifier.GAN_TRAIN_STEPS, 30
    yield
    classifier.GAN_TRAIN_STEPS = saved


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory):
    toys = _toys()
    root = tmp_path_factory.mktemp("repo")
    data = toys.toy_dataset()
    toys.export_toys(root, data)
    return root, data


def test_evaluate_probe_record(toy_repo):
    root, data = toy_repo
    m = evaluate_record(Repository(root), "toy-probe", data=data, verbose=False)
    assert 0 <= m["test_accuracy"] <= 1 and m["n_test"] == len(data.test)
    assert set(m["factors"]) == {"scale"} and "r2" in m["factors"]["scale"]
    assert read_manifest(root / "toy-probe" / "1")["metrics"]["test_accuracy"] == m["test_accuracy"]


@pytest.mark.parametrize("name", ["toy-gan", "toy-flow"])
def test_evaluate_generative_writes_metrics_and_keeps_checksums(toy_repo, name, capsys):
    root, data = toy_repo
    repo = Repository(root)
    m = evaluate_record(repo, name, n_per_class=8, data=data)
    assert set(m["gan_test"]) == {"prior", "latent_gmm"}
    for src in ("prior", "latent_gmm"):
        g = m["gan_test"][src]
        assert 0 <= g["mean"] <= 1 and set(g["per_class"]) == {"red", "green"}
        rec = g["recognisable"]
        assert set(rec["per_class"]) == {"red", "green"}
        assert all(0 <= rec["per_class"][c] <= g["per_class"][c] for c in ("red", "green"))  # stricter by definition
        cov = m["coverage"][src]
        assert cov["n"] == 16 and cov["k"] == 5
        assert all(0 <= cov[k] <= 1 for k in ("precision", "recall", "coverage")) and cov["density"] >= 0
        # the same figures with the label check Sample applies (models/class_check.py)
        checked = g["class_check"]
        assert checked["threshold"] == cc.DEFAULT_THRESHOLD and 0 < checked["accepted"] <= 1 and 0 <= checked["passed"] <= 1
        assert 0 <= checked["mean"] <= 1 and set(checked["per_class"]) == {"red", "green"}
        assert all(0 <= cov["class_check"][k] <= 1 for k in ("precision", "recall", "coverage"))
    # recorded for serving, per source (models/class_check.recommend_per_source), and for the default source
    assert set(m["class_check_defaults"]) == {"prior", "latent_gmm"}
    assert all(t in (0.0, cc.DEFAULT_THRESHOLD) for t in m["class_check_defaults"].values())
    assert m["class_check_default"] == m["class_check_defaults"][default_sample_source(name.split("-")[1], True)]
    assert "scale" in m["knobs"] and m["knobs"]["scale"]["n"] == 16
    knob = m["knobs"]["scale"]
    assert set(knob["by_source"]) == {"prior", "latent_gmm"}  # knobs are scored on samples of every source
    assert knob["r2"] == knob["by_source"]["prior"]["r2"] and knob["mae"] == knob["by_source"]["prior"]["mae"]
    assert 0 <= m["probe"]["test_accuracy"] <= 1 and m["probe"]["name"] == "toy-probe"
    # the primary figures: no geometry for the toy data, so a classifier trained on its real images judges
    judged = m["judged"]
    assert judged["judge"] == "real_classifier" and set(judged["sources"]) == {"prior", "latent_gmm"}
    for src in judged["sources"].values():
        assert set(src["class_accuracy"]["per_class"]) == {"red", "green"}
        assert 0 <= src["class_accuracy"]["mean"] <= 1 and 0 <= src["class_accuracy_checked"]["mean"] <= 1
    assert 0 <= judged["gan_train"]["accuracy"] <= 1 and judged["gan_train"]["source"] == judged["default_source"]
    assert any(t["name"] == "gan_train" for t in m["gates"]["targets"])
    if name == "toy-flow":
        assert m["gan_test"]["prior"]["temperature"] == 0.8
        assert m["flow"]["roundtrip_max_abs"] < 1e-3  # exact linear bijection, float32 inverse
        assert np.isfinite(m["flow"]["bits_per_dim"]) and m["flow"]["bits_per_dim_marginal"] >= m["flow"]["bits_per_dim"] - 1
    else:
        assert 0 < m["reconstruction"]["psnr_db"] <= 100
    # metrics land in the manifest; the files (and their checksums) are untouched, so a verified load passes
    rec = repo.load(name)
    assert rec.manifest["metrics"]["gan_test"]["prior"]["mean"] == m["gan_test"]["prior"]["mean"]
    out = capsys.readouterr().out
    assert "GAN-test accuracy by the probe (prior)" in out and "class fidelity by the" in out and name in out
    assert format_table(rec, m).splitlines()[0].startswith(f"{name} v1")


def test_evaluate_is_deterministic_and_checks_arguments(toy_repo):
    root, data = toy_repo
    repo = Repository(root)
    a = evaluate_record(repo, "toy-gan", n_per_class=4, data=data, write=False, verbose=False)
    b = evaluate_record(repo, "toy-gan", n_per_class=4, data=data, write=False, verbose=False)
    a.pop("evaluated"), b.pop("evaluated"), a.pop("seconds"), b.pop("seconds")
    assert a == b
    with pytest.raises(ValidationError, match="n_per_class"):
        evaluate_record(repo, "toy-gan", n_per_class=1, data=data, verbose=False)
    with pytest.raises(ValidationError, match="not a probe"):
        evaluate_record(repo, "toy-gan", probe="toy-flow", data=data, verbose=False)
