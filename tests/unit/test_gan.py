"""Unit tests of the conditional GAN family: net shapes, config checks, determinism, train steps, graph
contract, ONNX (dynamic batch, onnxruntime parity) and TorchScript export. Tiny nets, CPU, a few seconds."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.families import get_family
from latentserve.models.families.base import ExportGraph
from latentserve.models.families.gan import GANFamily
from latentserve.models.nets.gan import Discriminator, Encoder, GANConfig, Generator, count_params

META = {"image_size": 32, "class_names": ["square", "ellipse", "triangle"]}
TINY = dict(z_dim=8, g_width=8, d_width=8, e_width=8, e_hidden=16, e_batch=4)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _family(seed: int = 0, **overrides) -> GANFamily:
    torch.manual_seed(seed)
    return GANFamily(GANConfig(**{**TINY, **overrides}), META, torch.device("cpu"))


def _batch(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=gen) * 2 - 1  # (n,3,32,32) in [-1,1]
    y = torch.arange(n) % 3  # (n,)
    f = torch.rand(n, 5, generator=gen)  # (n,5)
    return x, y, f


@pytest.mark.parametrize("size", [16, 32, 64])
def test_net_shapes(size):
    torch.manual_seed(0)
    g, d, e = Generator(8, 3, size, 8), Discriminator(3, size, 8), Encoder(8, 3, size, 8, 16)
    z, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        img = g(z, y)
        scores = d(img, y)
        latent, logits = e(img)
    assert img.shape == (5, 3, size, size) and img.dtype == torch.float32
    assert float(img.abs().max()) <= 1.0
    assert scores.shape == (5,)
    assert latent.shape == (5, 8) and logits.shape == (5, 3)


def test_default_sizes_fit_budget():
    """The recommended recipe stays within the size budget (G <= ~1M, E <= ~0.5M parameters)."""
    c = GANConfig()
    assert count_params(Generator(c.z_dim, 3, 32, c.g_width)) <= 1_000_000
    assert count_params(Encoder(c.z_dim, 3, 32, c.e_width, c.e_hidden)) <= 500_000


@pytest.mark.parametrize("bad", [
    {"z_dim": 1}, {"z_dim": 64.0}, {"g_width": 0}, {"loss": "wgan"}, {"lr_g": 0.0}, {"beta2": 1.0},
    {"n_dis": 0}, {"ema_decay": -0.1}, {"encoder_start": -1}, {"w_recon": -1.0}, {"e_batch": True},
    {"mode_reg_final": -0.5}, {"mode_reg_anneal_steps": 0}, {"w_adv_recon": -1.0}, {"recon_noise": 11.0},
    {"lr_decay_steps": -1}, {"lr_final_frac": 0.0}, {"recon_code_noise": -0.1}, {"g_out": "relu"},
    {"g_out": "clamp"},  # needs the "decoder" generator
])
def test_config_range_checks(bad):
    with pytest.raises(ValidationError):
        GANConfig(**bad)


def test_bad_sizes_and_meta():
    with pytest.raises(ValidationError):
        Generator(8, 3, 48, 8)
    with pytest.raises(ValidationError):
        GANFamily(GANConfig(**TINY), {"class_names": ["a"]})
    with pytest.raises(ValidationError):
        GANConfig.from_dict({"z_dim": 8, "nope": 1})


def test_registry_and_config_roundtrip():
    assert get_family("gan") is GANFamily
    c = GANConfig(**TINY)
    assert GANConfig.from_dict(c.to_dict()) == c
    assert GANFamily.default_steps >= 1


def test_train_steps_finite_and_deterministic():
    """The recommended joint (mode-regularised) step: finite losses, same seed -> same run."""
    x, y, f = _batch()
    runs = []
    for _ in range(2):
        fam = _family(seed=3)
        logs = [fam.train_step(x, y, f, step) for step in range(3)]
        runs.append((logs, fam.sample_grid(2, seed=7)))
    logs, grid = runs[0]
    assert {"d_loss", "g_loss", "e_recon", "e_latent", "e_class"} <= set(logs[0])
    for rec in logs:
        assert all(math.isfinite(v) for v in rec.values()), rec
    assert logs == runs[1][0]
    assert grid.shape == (6, 3, 32, 32)
    torch.testing.assert_close(grid, runs[1][1])


def test_pure_gan_with_posthoc_encoder():
    """mode_reg=0: plain GAN steps, the encoder joins at encoder_start and inverts the frozen EMA generator."""
    fam = _family(mode_reg=0.0, encoder_start=1, loss="hinge")
    x, y, f = _batch()
    logs = [fam.train_step(x, y, f, step) for step in range(2)]
    assert "e_latent" not in logs[0]
    assert {"e_latent", "e_class", "e_recon"} <= set(logs[1])
    for rec in logs:
        assert all(math.isfinite(v) for v in rec.values()), rec


def test_hinge_and_n_dis():
    fam = _family(loss="hinge", n_dis=2)
    x, y, f = _batch()
    out = fam.train_step(x, y, f, 0)
    assert all(math.isfinite(v) for v in out.values())


def test_sampling_is_seeded_and_side_effect_free():
    fam = _family()
    x, y, f = _batch()
    fam.train_step(x, y, f, 0)
    before = {k: v.clone() for k, v in fam.g_ema.state_dict().items()}
    a, b, c = fam.sample_grid(3, seed=1), fam.sample_grid(3, seed=1), fam.sample_grid(3, seed=2)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (9, 3, 32, 32)
    for k, v in fam.g_ema.state_dict().items():
        torch.testing.assert_close(v, before[k])  # standing stats live in a copy, not in g_ema
    figures = fam.evaluate(x, y, f)
    assert set(figures) >= {"recon_mse", "recon_psnr", "enc_class_acc"}
    assert all(math.isfinite(v) for v in figures.values())


def test_ema_tracks_generator():
    fam = _family(ema_decay=0.5)
    x, y, f = _batch()
    for step in range(2):
        fam.train_step(x, y, f, step)
    diff = [float((pe - p.detach()).abs().max()) for pe, p in zip(fam.g_ema.parameters(), fam.g.parameters())]
    assert max(diff) > 0  # averaged, not a copy
    assert all(not p.requires_grad for p in fam.g_ema.parameters())


def test_graphs_contract():
    fam = _family()
    graphs = fam.graphs()
    assert set(graphs) == {"encoder", "decoder"}
    enc, dec = graphs["encoder"], graphs["decoder"]
    assert isinstance(enc, ExportGraph)
    assert enc.input_names == ["image"] and enc.output_names == ["latent", "logits"]
    assert dec.input_names == ["latent", "label"] and dec.output_names == ["image"]
    assert not enc.module.training and not dec.module.training
    latent, logits = enc.module(*enc.example_inputs)
    b = enc.example_inputs[0].shape[0]
    assert latent.shape == (b, 8) and logits.shape == (b, 3)
    lat_in, lab_in = dec.example_inputs
    assert lat_in.dtype == torch.float32 and lab_in.dtype == torch.int64
    image = dec.module(*dec.example_inputs)
    assert image.shape == (lat_in.shape[0], 3, 32, 32)
    assert fam.manifest_extra()["prior"] == {"type": "standard_normal"}


@pytest.mark.parametrize("arch", ["dcgan", "decoder", "decoder-clamp"])
def test_onnx_and_torchscript_export_dynamic_batch(tmp_path, arch):
    ort = pytest.importorskip("onnxruntime")
    fam = _family(g_arch="decoder", g_out="clamp") if arch == "decoder-clamp" else _family(g_arch=arch)
    x, y, f = _batch()
    fam.train_step(x, y, f, 0)  # non-trivial EMA weights / BN statistics
    gen = torch.Generator().manual_seed(5)
    feeds = {
        1: {"image": torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1,
            "latent": torch.randn(1, 8, generator=gen), "label": torch.tensor([2])},
        5: {"image": torch.rand(5, 3, 32, 32, generator=gen) * 2 - 1,
            "latent": torch.randn(5, 8, generator=gen), "label": torch.tensor([0, 1, 2, 1, 0])},
    }
    for name, graph in fam.graphs().items():
        path = tmp_path / f"{name}.onnx"
        axes = {n: {0: "batch"} for n in graph.input_names + graph.output_names}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # deprecation notices of the TorchScript-based exporter
            torch.onnx.export(graph.module, graph.example_inputs, str(path), input_names=graph.input_names,
                              output_names=graph.output_names, dynamic_axes=axes, opset_version=17, dynamo=False)
            traced = torch.jit.trace(graph.module, graph.example_inputs, check_trace=False)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == graph.input_names
        assert [o.name for o in sess.get_outputs()] == graph.output_names
        for b, feed in feeds.items():
            inputs = [feed[n] for n in graph.input_names]
            with torch.no_grad():
                eager = graph.module(*inputs)
                scripted = traced(*inputs)
            eager = eager if isinstance(eager, tuple) else (eager,)
            scripted = scripted if isinstance(scripted, tuple) else (scripted,)
            got = sess.run(None, {n: t.numpy() for n, t in zip(graph.input_names, inputs)})
            for e_out, o_out, s_out in zip(eager, got, scripted):
                assert o_out.shape[0] == b
                assert np.max(np.abs(o_out - e_out.numpy())) <= 1e-4
                assert float((s_out - e_out).abs().max()) <= 1e-4


def test_mode_reg_anneals_linearly_then_holds():
    fam = _family(mode_reg=10.0, mode_reg_final=2.0, mode_reg_anneal_steps=100)
    assert [fam.mode_reg_at(s) for s in (0, 50, 100, 5000)] == pytest.approx([10.0, 6.0, 2.0, 2.0])
    assert _family(mode_reg=10.0, mode_reg_final=-1.0).mode_reg_at(5000) == 10.0  # -1: constant


def test_decoder_generator_draws_each_class_from_its_embedding():
    """g_arch "decoder": the label enters through an embedding beside z (no batch statistics), so one row's
    image does not depend on the rest of the batch, and the class changes the image."""
    fam = _family(g_arch="decoder")
    x, y, f = _batch()
    fam.train_step(x, y, f, 0)
    g = fam.g.eval()
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        both = g(z, torch.tensor([0, 1, 2, 0]))
        alone = g(z[:1], torch.tensor([0]))
    assert both.shape == (4, 3, 32, 32) and float(both.abs().max()) <= 1.0
    assert torch.allclose(both[:1], alone, atol=1e-6)  # no batch statistics
    assert float((both[0] - g(z[:1], torch.tensor([1]))[0]).abs().max()) > 0  # the label matters
    with pytest.raises(ValidationError, match="g_arch"):
        GANConfig(g_arch="nope")


def test_lr_decays_by_cosine_to_final_fraction():
    fam = _family(lr_decay_steps=100, lr_final_frac=0.1)
    assert [fam.lr_scale_at(s) for s in (0, 50, 100, 5000)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    x, y, f = _batch()
    fam.train_step(x, y, f, 100)
    assert fam.opt_g.param_groups[0]["lr"] == pytest.approx(0.1 * fam.config.lr_g)
    assert fam.opt_e.param_groups[0]["lr"] == pytest.approx(0.1 * fam.config.lr_e)
    assert _family().lr_scale_at(10_000) == 1.0  # 0 steps: constant


def test_adversarial_term_near_encoded_images_trains_d_and_g():
    """w_adv_recon > 0: D also learns G(E(x) + noise) as fake, and G's loss grows by that term."""
    x, y, f = _batch()
    plain, near = _family(seed=5), _family(seed=5, w_adv_recon=1.0, recon_noise=0.1)
    a, b = plain.train_step(x, y, f, 0), near.train_step(x, y, f, 0)
    assert all(math.isfinite(v) for v in b.values()), b
    assert b["d_loss"] > a["d_loss"] and b["g_loss"] > a["g_loss"]


def test_clamped_output_is_linear_in_training_and_clamped_when_exported():
    """g_out "clamp": the losses see the raw image (gradient outside [-1, 1]); eval mode, hence samples and the
    exported graph, clamps it (ONNX parity: test_onnx_and_torchscript_export_dynamic_batch)."""
    fam = _family(g_arch="decoder", g_out="clamp")
    g = fam.g
    with torch.no_grad():
        for p in g.net[-1].parameters():
            p.mul_(50.0)  # push the raw image well outside [-1, 1]
    z, y = torch.randn(3, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2])
    with torch.no_grad():
        raw = g.train()(z, y)
        out = g.eval()(z, y)
    assert float(raw.abs().max()) > 1.5
    assert torch.equal(out, raw.clamp(-1, 1))
    graph = fam.graphs()["decoder"]
    assert graph.module.generator.out == "clamp" and not graph.module.training


def test_reconstruction_from_noisy_codes_changes_the_step():
    """recon_code_noise > 0: the reconstruction term decodes E(x) + noise, so its loss differs from the
    noiseless one on the same weights and batch."""
    x, y, f = _batch()
    a = _family(seed=3).train_step(x, y, f, 0)
    b = _family(seed=3, recon_code_noise=1.0).train_step(x, y, f, 0)
    assert math.isfinite(b["e_recon"]) and b["e_recon"] != pytest.approx(a["e_recon"])


def test_autoencoder_phase_before_adv_start_leaves_the_discriminator_alone():
    """adv_start: earlier steps train G and E on reconstruction (no discriminator step, no adversarial figures);
    from adv_start on, the joint step trains D too."""
    fam = _family(seed=4, adv_start=2)
    x, y, f = _batch()
    d0 = [p.detach().clone() for p in fam.d.parameters()]
    g0 = [p.detach().clone() for p in fam.g.parameters()]
    out = fam.train_step(x, y, f, 1)
    assert "d_loss" not in out and math.isfinite(out["e_recon"])
    assert all(torch.equal(a, b) for a, b in zip(d0, fam.d.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, fam.g.parameters()))
    out = fam.train_step(x, y, f, 2)
    assert "d_loss" in out
    assert any(not torch.equal(a, b) for a, b in zip(d0, fam.d.parameters()))
    with pytest.raises(ValidationError, match="adv_start"):
        GANConfig(adv_start=5, mode_reg=0.0)
