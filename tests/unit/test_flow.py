"""Unit tests of the flow family: exact invertibility, log-determinant vs a brute-force Jacobian, training
steps, bits/dim units, graphs, and ONNX/TorchScript parity."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.families.flow import FlowFamily
from latentserve.models.nets.flow import Flow, FlowConfig, InvConv1x1, _unit_triangular_inverse, bits_per_dim, squeeze, unsqueeze

META = {"image_size": 8, "class_names": ["square", "ellipse", "triangle"], "factors": []}
TINY = dict(levels=2, steps=(2, 2), hidden=(16, 16))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Images on the 8-bit grid in [-1, 1], (n,3,size,size)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 127.5 - 1.0


def _family(**kw) -> FlowFamily:
    torch.manual_seed(0)
    return FlowFamily(FlowConfig(**{**TINY, **kw}), META, torch.device("cpu"))


def _trained_family(steps: int = 4, **kw) -> FlowFamily:
    fam = _family(lr=5e-3, warmup_steps=0, **kw)
    x, y = _images(16), torch.arange(16) % 3
    for step in range(steps):
        fam.train_step(x, y, torch.zeros(16, 5), step)
    return fam


@pytest.mark.parametrize("bad", [
    {"levels": 0}, {"steps": (2,)}, {"hidden": (4, 16)}, {"temperature": 0.0}, {"scale_clamp": 0.0}, {"lr": 1.0},
])
def test_config_range_checks(bad):
    with pytest.raises(ValidationError, match="FlowConfig"):
        FlowConfig(**{**TINY, **bad})


def test_config_image_size_and_json_round_trip():
    with pytest.raises(ValidationError, match="image_size"):
        Flow(FlowConfig(**TINY), 6, 3)
    d = FlowConfig().to_dict()
    assert FlowConfig(**d) == FlowConfig()


def test_default_flow_is_under_one_million_parameters():
    flow = Flow(FlowConfig(), 32, 3)
    assert sum(p.numel() for p in flow.parameters()) <= 1_000_000
    assert flow.dim == 3 * 32 * 32 and sum(flow.z_sizes) == flow.dim


def test_squeeze_round_trip_and_triangular_inverse():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(unsqueeze(squeeze(x, 3, 8, 8), 3, 8, 8), x)
    n = torch.tril(torch.randn(12, 12, dtype=torch.float64), -1)
    eye = torch.eye(12, dtype=torch.float64)
    torch.testing.assert_close(_unit_triangular_inverse(n, 12) @ (eye + n), eye)
    conv = InvConv1x1(12, 4, seed=3)
    with torch.no_grad():
        conv.lower.add_(0.1 * torch.randn(12, 12))
        conv.upper.add_(0.1 * torch.randn(12, 12))
        conv.log_s.add_(0.1 * torch.randn(12))
    torch.testing.assert_close(conv.weight() @ conv.inverse_weight(), torch.eye(12), atol=1e-5, rtol=0)


def test_exact_invertibility_at_init_and_after_training():
    fam = _family()
    x = _images(5)
    with torch.no_grad():
        fam.flow.initialize(x)
        z, logdet = fam.flow(x)
        assert z.shape == (5, 3 * 8 * 8) and logdet.shape == (5,)
        assert (fam.flow.inverse(z) - x).abs().max() <= 1e-4
    fam = _trained_family()
    with torch.no_grad():
        z, _ = fam.flow(x)
        assert (fam.flow.inverse(z) - x).abs().max() <= 1e-4


@pytest.mark.parametrize("conditional", [False, True])
def test_logdet_matches_brute_force_jacobian(conditional):
    torch.manual_seed(1)
    flow = Flow(FlowConfig(**TINY, conditional=conditional), 4, 3).double()
    x, y = _images(2, size=4).double(), torch.tensor([2, 1])
    flow.initialize(x, y)
    with torch.no_grad():  # move every parameter away from its (identity-like) init
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    _, logdet = flow(x, y)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v.reshape(1, 3, 4, 4), y[i:i + 1])[0].reshape(-1),
                                                 x[i].reshape(-1))  # (48, 48)
        assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(logdet[i].item(), abs=1e-8)


def test_prior_and_class_logits_are_consistent():
    fam = _trained_family()
    x, y = _images(4), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        z, _ = fam.flow(x)
        per_class = fam.flow.class_log_probs(z)  # (B, C)
        assert per_class.shape == (4, 3)
        torch.testing.assert_close(per_class[torch.arange(4), y], fam.flow.prior_log_prob(z, y))


def test_train_steps_finite_and_bits_per_dim_units():
    fam = _family(lr=5e-3, warmup_steps=2)
    x, y = _images(16), torch.arange(16) % 3
    outs = [fam.train_step(x, y, torch.zeros(16, 5), s) for s in range(6)]
    assert all(math.isfinite(v) for o in outs for v in o.values())
    assert bool(fam.flow.initialized)
    assert {"loss", "bpd", "ce", "acc", "grad_norm"} <= set(outs[-1])
    assert outs[-1]["bpd"] < outs[0]["bpd"]
    # a standard normal density of zero-NLL offset: bpd = nll/(D ln2) + log2(127.5)
    assert bits_per_dim(torch.tensor(0.0), 10).item() == pytest.approx(math.log2(127.5))
    # uniform noise images: the data bound is 8 bits/dim, so a fresh flow cannot beat it by much
    assert outs[0]["bpd"] > 7.0


def test_sample_grid_evaluate_and_manifest_extra():
    fam = _trained_family()
    grid = fam.sample_grid(2, seed=0)
    assert grid.shape == (6, 3, 8, 8) and grid.abs().max() <= 1
    assert torch.equal(grid, fam.sample_grid(2, seed=0))
    x, y = _images(7), torch.arange(7) % 3
    figures = fam.evaluate(x, y, torch.zeros(7, 5), batch_size=3)
    assert {"bpd", "roundtrip_max_abs", "class_acc"} <= set(figures)
    assert figures["roundtrip_max_abs"] <= 1e-4
    extra = fam.manifest_extra()
    assert extra["prior"] == {"type": "class_gaussian"}
    assert extra["prior_mean"].shape == (3, 192) and extra["prior_logstd"].shape == (3, 192)
    assert extra["prior_mean"].dtype == np.float32 and extra["sample_temperature"] == fam.config.temperature


def _export_onnx(graph) -> bytes:
    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in graph.input_names + graph.output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.module, graph.example_inputs, buf, input_names=graph.input_names,
                          output_names=graph.output_names, dynamic_axes=axes, opset_version=17, dynamo=False)
    return buf.getvalue()


def test_graphs_onnx_and_torchscript_parity_and_round_trip():
    ort = pytest.importorskip("onnxruntime")
    fam = _trained_family()
    graphs = fam.graphs()
    assert set(graphs) == {"encoder", "decoder"}
    enc, dec = graphs["encoder"], graphs["decoder"]
    assert enc.output_names == ["latent", "logits", "logdet"] and dec.input_names == ["latent", "label"]
    sessions = {}
    for name, graph in graphs.items():
        sess = ort.InferenceSession(_export_onnx(graph), providers=["CPUExecutionProvider"])
        # the label input must survive export even though the map does not use it
        assert [i.name for i in sess.get_inputs()] == graph.input_names
        assert [o.name for o in sess.get_outputs()] == graph.output_names
        sessions[name] = sess
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = {n: torch.jit.trace(g.module, g.example_inputs) for n, g in graphs.items()}
    for batch in (1, 5):
        x = _images(batch, seed=batch)
        label = torch.arange(batch, dtype=torch.int64) % 3
        with torch.no_grad():
            z, logits, logdet = enc.module(x)
            back = dec.module(z, label)
            ts_enc = traced["encoder"](x)
            ts_back = traced["decoder"](z, label)
        assert z.shape == (batch, 192) and logits.shape == (batch, 3) and logdet.shape == (batch,)
        assert (back - x).abs().max() <= 1e-4  # exact inverse
        o_z, o_logits, o_logdet = sessions["encoder"].run(None, {"image": x.numpy()})
        np.testing.assert_allclose(o_z, z.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(o_logdet, logdet.numpy(), atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(o_logits, logits.numpy(), atol=1e-4, rtol=1e-5)
        (o_back,) = sessions["decoder"].run(None, {"latent": o_z, "label": label.numpy()})
        np.testing.assert_allclose(o_back, x.numpy(), atol=1e-4, rtol=0)  # ONNX round trip
        for e, t in zip((z, logits, logdet), ts_enc):
            np.testing.assert_allclose(t.numpy(), e.numpy(), atol=1e-4, rtol=1e-5)
        np.testing.assert_allclose(ts_back.numpy(), back.numpy(), atol=1e-5, rtol=0)


# -- the class-conditional map (FlowConfig.conditional) -------------------------------------------------------
def test_conditional_map_is_exact_per_class_and_depends_on_the_label():
    fam = _trained_family(conditional=True)
    x = _images(5)
    with torch.no_grad():
        z_all, logp, logdets = fam.flow.per_class(x)  # (B,C,D), (B,C), (B,C)
        assert z_all.shape == (5, 3, 192) and logp.shape == (5, 3) and logdets.shape == (5, 3)
        for c in range(3):
            y = torch.full((5,), c)
            z, logdet = fam.flow(x, y)
            torch.testing.assert_close(z, z_all[:, c])
            torch.testing.assert_close(logdet, logdets[:, c])
            torch.testing.assert_close(-fam.flow.nll(x, y), logp[:, c])
            assert (fam.flow.inverse(z, y) - x).abs().max() <= 1e-4
        # training moved the class embeddings: each class has its own map
        assert (z_all[:, 0] - z_all[:, 1]).abs().max() > 1e-4
    with pytest.raises(ValidationError, match="labels"):
        fam.flow(x)


def test_conditional_train_step_evaluate_and_samples():
    fam = _family(conditional=True, lr=5e-3, warmup_steps=0)
    x, y = _images(16), torch.arange(16) % 3
    outs = [fam.train_step(x, y, torch.zeros(16, 5), s) for s in range(5)]
    assert all(math.isfinite(v) for o in outs for v in o.values()) and outs[-1]["bpd"] < outs[0]["bpd"]
    fam_ce = _family(conditional=True, class_weight=1.0, lr=5e-3, warmup_steps=0)  # the per-class passes
    assert math.isfinite(fam_ce.train_step(x, y, torch.zeros(16, 5), 0)["ce"])
    figures = fam.evaluate(_images(7), torch.arange(7) % 3, torch.zeros(7, 5), batch_size=3)
    assert figures["roundtrip_max_abs"] <= 1e-4 and 0.0 <= figures["class_acc"] <= 1.0
    grid = fam.sample_grid(2, seed=0)
    assert grid.shape == (6, 3, 8, 8) and torch.equal(grid, fam.sample_grid(2, seed=0))


def test_conditional_graphs_onnx_parity_and_class_latents():
    ort = pytest.importorskip("onnxruntime")
    fam = _trained_family(conditional=True)
    graphs = fam.graphs()
    enc, dec = graphs["encoder"], graphs["decoder"]
    assert enc.output_names == ["latent", "logits", "logdet", "class_latents"]
    sessions = {n: ort.InferenceSession(_export_onnx(g), providers=["CPUExecutionProvider"]) for n, g in graphs.items()}
    for batch in (1, 5):
        x = _images(batch, seed=batch)
        with torch.no_grad():
            z, logits, logdet, z_all = enc.module(x)
            _, logp, _ = fam.flow.per_class(x)
        assert z_all.shape == (batch, 3, 192)
        torch.testing.assert_close(logits + logdet[:, None], logp)  # logits_c + logdet = log p(x | c)
        best = logp.argmax(1)
        torch.testing.assert_close(z, z_all[torch.arange(batch), best])
        outs = sessions["encoder"].run(None, {"image": x.numpy()})
        for o, e in zip(outs, (z, logits, logdet, z_all)):
            np.testing.assert_allclose(o, e.numpy(), atol=1e-3, rtol=1e-5)
        for c in range(3):  # every class's row decodes back to x under that class's label
            label = np.full(batch, c, dtype=np.int64)
            (back,) = sessions["decoder"].run(None, {"latent": outs[3][:, c], "label": label})
            np.testing.assert_allclose(back, x.numpy(), atol=1e-4, rtol=0)
