"""End to end on real families: train a few steps -> export (ONNX + TorchScript, parity) -> verified load -> eval.

Tiny shapes data (32x32, 256 train / 64 test images) and tiny family configs, so every family runs in a few
seconds; the figures are meaningless, the plumbing is what is tested: the graph contract of each real
family exports with parity, the manifest validates, the repository verifies checksums, the latent space
loads, evaluation runs on the exported ONNX files and writes metrics, the CLI commands work, and the torch
modules can be rebuilt from a version directory alone.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentserve.models.families import FAMILIES  # noqa: E402

DATA_ARGS = {"image_size": 16, "n_train": 256, "n_test": 64, "seed": 0}
# Smallest sensible nets: the point is the pipeline, not the samples.
TINY = {
    "probe": {"width": 4, "depth": 2, "head_channels": 2, "feature_dim": 8},
    "gan": {"z_dim": 8, "g_width": 4, "d_width": 4, "e_width": 4, "e_hidden": 16, "e_batch": 8},
    "vae": {"z_dim": 8, "widths": [4, 8], "res_blocks": 0, "hidden": 16, "embed_dim": 4},
    "flow": {"levels": 1, "steps": [2], "hidden": [8]},
    "ae": {"z_dim": 8, "widths": [4, 8], "res_blocks": 0, "hidden": 16, "embed_dim": 4, "reg": "contractive"},
}
STEPS = 3
pytestmark = pytest.mark.slow  # trains, exports (ONNX + TorchScript, parity) and evaluates every family


def _available(family: str) -> bool:
    module = FAMILIES[family].partition(":")[0]
    return importlib.util.find_spec(module) is not None


def _family_args(family: str) -> dict:
    """TINY restricted to the fields the family's config really has (configs may evolve)."""
    import dataclasses

    from latentserve.models.families import get_family

    known = {f.name for f in dataclasses.fields(get_family(family).config_cls)}
    return {k: v for k, v in TINY[family].items() if k in known}


@pytest.fixture(scope="module")
def dataset():
    from latentserve.models.data import load_dataset

    return load_dataset("shapes", **DATA_ARGS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset):
    """{family: run_dir} for every family that exists in this tree, each trained STEPS steps."""
    from latentserve.models.train import TrainConfig, train

    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("runs")
    out = {}
    for fam in ("probe", "gan", "vae", "flow", "ae"):
        if not _available(fam):
            continue
        cfg = TrainConfig(family=fam, data="shapes", data_args=dict(DATA_ARGS), steps=STEPS, batch_size=16,
                          out=str(runs / fam), ckpt_every=STEPS, eval_every=STEPS, grid_every=10**6, threads=1,
                          device="cpu", family_args=_family_args(fam), eval_size=32)
        out[fam] = train(cfg, progress=False, dataset=dataset)
    assert "probe" in out, "the probe family is needed to evaluate the others"
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory, trained, dataset):
    """The trained runs exported into a fresh repository (probe first)."""
    from latentserve.models.export import export_run

    root = tmp_path_factory.mktemp("repo")
    for fam, run in trained.items():
        # the GAN as bundled: an anchor mixture of its codes (and so its default sample source)
        extra = {"gmm_covariance": "anchors", "gmm_components": 20} if fam == "gan" else {}
        export_run(run, f"shapes-{fam}", repo_root=root, probe="shapes-probe", max_latent_fit=200, data=dataset,
                   **extra)
    return root


@pytest.fixture(scope="module", autouse=True)
def _short_gan_train():
    """GAN-train's classifier trains a few steps: the point is the pipeline, not the figure."""
    from latentserve.models.judges import classifier

    saved, classifier.GAN_TRAIN_STEPS = classifier.GAN_TRAIN_STEPS, 30
    yield
    classifier.GAN_TRAIN_STEPS = saved


def test_every_family_exports_with_parity(repo, trained):
    from latentserve.models.repository import Repository

    r = Repository(repo)
    assert r.names() == sorted(f"shapes-{f}" for f in trained)
    for fam in trained:
        rec = r.load(f"shapes-{fam}")  # verifies every sha256
        m = rec.manifest
        assert rec.version == 1 and rec.family == fam
        assert m["training"]["steps"] == STEPS and m["training"]["data"]["n_train"] == DATA_ARGS["n_train"]
        for g, p in m["parity"].items():
            for out, q in p["outputs"].items():
                # 1e-4 absolute, except a flow's log-det / class log-likelihoods: sums over 3*32*32 terms in
                # the thousands, where float32 rounding alone is ~1e-3 (export checks atol + 1e-5*|eager|)
                tol = 0.05 if (fam, out) in (("flow", "logdet"), ("flow", "logits")) else 1e-4
                assert q["onnx_max_abs"] <= tol and q["torchscript_max_abs"] <= tol, (fam, g, out, q)
        if fam == "probe":
            assert sorted(m["graphs"]) == ["probe"]
            continue
        space = r.latent_space(rec)
        assert space.latent_dim == rec.latent_dim == m["latent_shape"][0]
        # full covariances for small latents (VAE), diagonal ones for a flow's D = 3*H*W and for the GAN's
        # anchor mixture (its codes themselves, each a small diagonal component)
        assert m["probe"] == "shapes-probe" and m["gmm"]["covariance"] == ("full" if fam in ("vae", "ae") else "diag")
        assert m["gmm"]["kind"] == ("anchors" if fam == "gan" else "em")
        assert (space.gmm_chol is None) == (fam not in ("vae", "ae"))
        assert {k["name"] for k in m["knobs"] if k["kind"] == "factor"} <= {f["name"] for f in m["factors"]}
        if fam == "ae":  # its prior: a Gaussian of each class's codes, tracked in training
            assert m["prior"]["type"] == "class_gaussian" and set(m["graphs"]["encoder"]["outputs"]) == {"latent", "logits"}
            assert space.prior_mean.shape == (len(rec.class_names), rec.latent_dim)
        if fam == "flow":
            assert m["prior"]["type"] == "class_gaussian" and 0 < m["prior"]["sample_temperature"] <= 2
            assert space.prior_mean.shape == (len(rec.class_names), rec.latent_dim)
            assert m["graphs"]["encoder"]["outputs"]["logdet"] == ["float32", ["batch"]]
        if fam == "vae":
            assert "logvar" in m["graphs"]["encoder"]["outputs"]


def test_evaluate_every_generative_model(repo, trained, dataset):
    from latentserve.models.evaluate import evaluate_record
    from latentserve.models.repository import Repository

    r = Repository(repo)
    probe = evaluate_record(r, "shapes-probe", data=dataset, verbose=False)
    assert 0 <= probe["test_accuracy"] <= 1 and "scale" in probe["factors"]
    for fam in ("gan", "vae", "flow", "ae"):
        if fam not in trained:
            continue
        m = evaluate_record(r, f"shapes-{fam}", n_per_class=8, data=dataset, verbose=False)
        assert set(m["gan_test"]) == {"prior", "latent_gmm"}
        assert 0 <= m["gan_test"]["prior"]["mean"] <= 1
        assert all(0 <= m["coverage"]["prior"][k] <= 1 for k in ("precision", "recall", "coverage"))
        assert m["probe"]["test_accuracy"] == pytest.approx(probe["test_accuracy"])
        if fam == "flow":
            # an exact bijection: decode(encode(x)) == x up to float32 rounding (decoder clamps to [-1,1])
            assert m["flow"]["roundtrip_max_abs"] < 1e-3
            assert 0 < m["flow"]["bits_per_dim"] < 16
        else:
            assert m["reconstruction"]["psnr_db"] > 0
        assert r.load(f"shapes-{fam}").manifest["metrics"]["n_per_class"] == 8  # written, checksums intact
        # the primary figures: the geometric judge, per source, GAN-train, and the gates computed from them
        judged = m["judged"]
        assert judged["judge"] == "geometric" and set(judged["sources"]) == {"prior", "latent_gmm"}
        assert judged["real"]["class_accuracy"]["mean"] >= 0.95  # the judge itself, on real 16 px images
        assert judged["default_source"] == ("latent_gmm" if fam in ("gan", "vae", "ae") else "prior")
        for src in judged["sources"].values():
            assert set(src["class_accuracy"]["per_class"]) == {"square", "ellipse", "triangle"}
            assert set(src["knob_r2"]) <= {"scale", "rotation", "x", "y", "hue"}
        assert 0 <= judged["gan_train"]["accuracy"] <= 1
        names = {t["name"] for t in m["gates"]["targets"]}
        assert {"class_fidelity.square", "gan_train"} <= names and m["gates"]["judge"] == "geometric"
        if fam == "flow":
            assert "flow.round_trip_max_abs" in names


def test_flow_bits_per_dim_matches_the_family(repo, trained, dataset):
    """evaluate's ONNX-side bits/dim agrees with the flow family's own torch evaluation (same formula)."""
    if "flow" not in trained:
        pytest.skip("flow family not in this tree")
    from latentserve.models.data.base import to_model
    from latentserve.models.evaluate import OnnxGraph, flow_bits_per_dim
    from latentserve.models.repository import Repository
    from latentserve.models.train import load_checkpoint

    r = Repository(repo)
    rec = r.load("shapes-flow")
    space = r.latent_space(rec)
    test = dataset.test
    x = to_model(test.images)
    u = np.random.default_rng(0).random(x.shape, dtype=np.float32)
    x_deq = ((test.images.transpose(0, 3, 1, 2).astype(np.float32) + u - 0.5) / 127.5 - 1.0).astype(np.float32)
    e = OnnxGraph(rec, "encoder")(image=x_deq)
    ours, _ = flow_bits_per_dim(e["latent"], e["logdet"], test.labels, space.prior_mean, space.prior_logstd)
    family, _ = load_checkpoint(trained["flow"])
    from latentserve.models.nets.flow import bits_per_dim

    with torch.no_grad():
        nll = family.flow.nll(torch.from_numpy(x_deq), torch.from_numpy(test.labels))
    theirs = float(bits_per_dim(nll, family.flow.dim).mean())
    assert ours == pytest.approx(theirs, abs=1e-3)
    assert float(np.max(np.abs(x_deq - x))) <= 0.5 / 127.5 + 1e-6  # centred dequantization


def test_rebuild_torch_modules_from_the_version_dir(repo, trained, dataset):
    """Manifest + TorchScript files alone rebuild eager modules that match the served ONNX graphs."""
    from latentserve.models.data.base import to_model
    from latentserve.models.evaluate import OnnxGraph
    from latentserve.models.export import rebuild_graph_modules
    from latentserve.models.repository import Repository

    r = Repository(repo)
    x = to_model(dataset.test.images[:5])
    for fam in trained:
        rec = r.load(f"shapes-{fam}")
        modules = rebuild_graph_modules(rec)
        g = "probe" if fam == "probe" else "encoder"
        with torch.no_grad():
            eager = modules[g](torch.from_numpy(x))
        eager = eager if isinstance(eager, tuple) else (eager,)
        graph = OnnxGraph(rec, g)
        served = graph(image=x)
        assert len(eager) == len(graph.output_names)
        for name, e in zip(graph.output_names, eager):  # session order = export order
            np.testing.assert_allclose(e.numpy(), served[name], atol=1e-4, rtol=1e-5, err_msg=f"{fam} {g}.{name}")


def test_cli_export_and_eval(tmp_path, trained, repo, capsys):
    """`latentserve export` into a new repo (version 1, then 2) and `latentserve eval` on it."""
    import shutil

    from latentserve.cli import main
    from latentserve.models.repository import Repository

    root = tmp_path / "repo"
    shutil.copytree(repo / "shapes-probe", root / "shapes-probe")
    fam = "vae" if "vae" in trained else next(f for f in trained if f != "probe")
    args = ["export", "--run", str(trained[fam]), "--name", "cli-model", "--repo", str(root), "--max-latent-fit", "200"]
    assert main(args) == 0
    assert main(args + ["--probe", "shapes-probe"]) == 0
    out = capsys.readouterr().out
    assert "exported cli-model v1" in out and "exported cli-model v2" in out and "parity max abs" in out
    assert Repository(root).versions("cli-model") == [1, 2]
    assert main(["eval", "--model", "cli-model", "--repo", str(root), "--version", "1", "--n-per-class", "4"]) == 0
    out = capsys.readouterr().out
    assert "GAN-test accuracy by the probe (prior)" in out and "metrics written to" in out
    assert "metrics" in Repository(root).load("cli-model", 1).manifest
    assert "metrics" not in Repository(root).load("cli-model", 2).manifest
    # errors are one line, exit code 2
    assert main(["eval", "--model", "nope", "--repo", str(root)]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    assert main(args + ["--parity-atol", "0.5"]) == 2  # the tolerance is range-checked before any work
    err = capsys.readouterr().err
    assert "parity_atol=0.5: must be in (0, 1e-2]" in err and "Traceback" not in err
    assert Repository(root).versions("cli-model") == [1, 2]


def test_latent_report_on_exported_families(repo, trained, tmp_path, capsys):
    """`latentserve latent-report` end to end on the exported gan/vae (3 training steps: figures are
    meaningless, the pipeline and the invariants are not)."""
    import json

    from latentserve.cli import main

    names = [f"shapes-{f}" for f in ("gan", "vae") if f in trained]
    out_json = tmp_path / "report.json"
    args = ["latent-report", *names, "--repo", str(repo), "--pairs", "2", "--steps", "5", "--iterations", "5",
            "--n-per-class", "2", "--n-factor", "3", "--refine-images", "4", "--refine-steps", "5",
            "--json", str(out_json), "--markdown", str(tmp_path / "md"), "--strip-pairs", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "geodesic vs lerp" in out and "probe class accuracy" in out and "refinement of 4 test images" in out
    md = (tmp_path / "md" / "report.md").read_text()  # every model's tables and one lerp/slerp/geodesic strip
    for name in names:
        assert f"## {name} v1" in md and f"(strips/{name}-0.png)" in md
        assert (tmp_path / "md" / "strips" / f"{name}-0.png").is_file()
    reports = json.loads(out_json.read_text())
    assert [r["model"] for r in reports] == names
    for r in reports:
        assert set(r["geodesic"]) == {"pixel", "probe"} and r["geodesic"]["pixel"]["pairs"] == 2
        assert r["refine"]["mse_after"] <= r["refine"]["mse_before"]  # the best latent is kept per image
        assert 0 <= r["guided_class"]["accuracy_guided"] <= 1
    assert main(["latent-report", "shapes-probe", "--repo", str(repo)]) == 2  # one-line error
    assert "needs a generative model" in capsys.readouterr().err
