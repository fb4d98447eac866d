"""Unit tests of the VAE family: config checks, shape contracts, training steps, graphs, ONNX/TorchScript parity."""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.families.vae import VAEFamily
from latentserve.models.nets.vae import VAEConfig, VAEDecoder, VAEEncoder

META = {"image_size": 16, "class_names": ["square", "ellipse", "triangle"], "factors": []}
TINY = dict(z_dim=8, widths=(8, 16), res_blocks=1, hidden=32, embed_dim=4, kl_warmup_steps=2)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _family(**kw) -> VAEFamily:
    torch.manual_seed(0)
    return VAEFamily(VAEConfig(**{**TINY, **kw}), META, torch.device("cpu"))


def _batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    y = torch.arange(n) % 3
    f = torch.full((n, 5), float("nan"))
    return x, y, f


@pytest.mark.parametrize("bad", [
    {"z_dim": 1}, {"beta": -1.0}, {"likelihood": "poisson"}, {"recon_scale": 0.0}, {"widths": ()},
    {"free_bits": 3.0}, {"lr": 0.0}, {"kl_warmup_steps": -1}, {"res_blocks": 4},
])
def test_config_range_checks(bad):
    with pytest.raises(ValidationError, match="VAEConfig"):
        VAEConfig(**{**TINY, **bad})


def test_config_rejects_image_size_that_does_not_fit():
    with pytest.raises(ValidationError, match="image_size"):
        VAEEncoder(VAEConfig(widths=(8, 8, 8, 8)), 16, 3)


def test_defaults_are_valid_and_json_able():
    d = VAEConfig().to_dict()
    assert isinstance(d["widths"], list)
    assert VAEConfig(**d) == VAEConfig()  # lists (from JSON) round-trip to the same config


def test_encoder_decoder_shapes():
    cfg = VAEConfig(**TINY)
    enc, dec = VAEEncoder(cfg, 16, 3), VAEDecoder(cfg, 16, 3)
    x, y, _ = _batch(5)
    mean, logvar, logits = enc(x)
    assert mean.shape == (5, 8) and logvar.shape == (5, 8) and logits.shape == (5, 3)
    img = dec(mean, y)
    assert img.shape == (5, 3, 16, 16)
    assert img.min() >= -1 and img.max() <= 1


def test_train_steps_are_finite_and_reduce_the_loss():
    fam = _family()
    x, y, f = _batch(8)
    first = fam.train_step(x, y, f, 0)
    for step in range(1, 15):
        out = fam.train_step(x, y, f, step)
    assert all(math.isfinite(v) for v in out.values())
    assert {"loss", "recon_nats", "kl_nats", "ce", "psnr"} <= set(out)
    assert out["recon_nats"] < first["recon_nats"]
    assert fam.kl_weight_at(0) == 0.0 and fam.kl_weight_at(10) == fam.config.beta


def test_free_bits_and_laplace_and_learned_scale_train():
    fam = _family(likelihood="laplace", free_bits=0.5, learn_scale=True)
    x, y, f = _batch(4)
    before = fam.log_scale.item()
    for step in range(3):
        out = fam.train_step(x, y, f, step)
    assert all(math.isfinite(v) for v in out.values())
    assert fam.log_scale.item() != before  # learned scale moves
    assert "scale" in fam.modules() and "log_scale" in dict(fam.modules()["scale"].named_parameters())


def test_lr_schedule_is_a_function_of_step():
    fam = _family(lr=1e-3, lr_decay_steps=100, lr_final_frac=0.1)
    assert fam.lr_at(0) == pytest.approx(1e-3)
    assert fam.lr_at(100) == pytest.approx(1e-4)
    assert fam.lr_at(10_000) == pytest.approx(1e-4)


def test_sample_grid_evaluate_and_modes_restored():
    fam = _family()
    grid = fam.sample_grid(2, seed=3)
    assert grid.shape == (6, 3, 16, 16) and grid.abs().max() <= 1
    assert torch.equal(grid, fam.sample_grid(2, seed=3))  # seeded
    x, y, f = _batch(7)
    fam.encoder.train()
    figures = fam.evaluate(x, y, f, batch_size=3)
    assert fam.encoder.training  # evaluate restores the mode it found
    assert {"psnr", "kl_nats", "class_acc", "mse"} <= set(figures)
    assert figures["psnr"] == pytest.approx(10 * math.log10(1 / figures["mse"]))
    assert 0 <= figures["class_acc"] <= 1


def test_graphs_contract_and_manifest_extra():
    fam = _family()
    graphs = fam.graphs()
    assert set(graphs) == {"encoder", "decoder"}
    enc, dec = graphs["encoder"], graphs["decoder"]
    assert enc.input_names == ["image"] and enc.output_names == ["latent", "logits", "logvar"]
    assert dec.input_names == ["latent", "label"] and dec.output_names == ["image"]
    latent, logits, logvar = enc.module(*enc.example_inputs)
    assert latent.shape == (2, 8) and logits.shape == (2, 3) and logvar.shape == (2, 8)
    assert dec.example_inputs[1].dtype == torch.int64
    assert dec.module(*dec.example_inputs).shape == (2, 3, 16, 16)
    assert fam.encoder.training  # graphs() uses frozen copies
    assert fam.manifest_extra()["prior"] == {"type": "standard_normal"}


def _export_onnx(graph) -> bytes:
    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in graph.input_names + graph.output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.module, graph.example_inputs, buf, input_names=graph.input_names,
                          output_names=graph.output_names, dynamic_axes=axes, opset_version=17, dynamo=False)
    return buf.getvalue()


def test_onnx_and_torchscript_parity():
    ort = pytest.importorskip("onnxruntime")
    fam = _family()
    x, y, f = _batch(8)
    for step in range(3):  # non-trivial weights
        fam.train_step(x, y, f, step)
    graphs = fam.graphs()
    g = torch.Generator().manual_seed(1)
    for name, graph in graphs.items():
        sess = ort.InferenceSession(_export_onnx(graph), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == graph.input_names
        assert [o.name for o in sess.get_outputs()] == graph.output_names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(graph.module, graph.example_inputs)
        for batch in (1, 5):
            if name == "encoder":
                inputs = (torch.rand(batch, 3, 16, 16, generator=g) * 2 - 1,)
            else:
                inputs = (torch.randn(batch, 8, generator=g), torch.arange(batch, dtype=torch.int64) % 3)
            with torch.no_grad():
                eager = graph.module(*inputs)
                eager = eager if isinstance(eager, tuple) else (eager,)
                ts = traced(*inputs)
                ts = ts if isinstance(ts, tuple) else (ts,)
            got = sess.run(None, {n: t.numpy() for n, t in zip(graph.input_names, inputs)})
            for e, o, t in zip(eager, got, ts):
                assert o.shape == tuple(e.shape)
                np.testing.assert_allclose(o, e.numpy(), atol=1e-4, rtol=0)
                np.testing.assert_allclose(t.numpy(), e.numpy(), atol=1e-5, rtol=0)
