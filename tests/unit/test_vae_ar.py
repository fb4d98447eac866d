"""Unit tests of the VAE with an autoregressive (PixelCNN) decoder: masked convolutions never see future pixels
(explicit receptive field by gradients), the one-patch step equals the whole-image network, the discretised
likelihoods are normalised, sampling rows are independent of their batch, and the family trains and exports."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.families.vae import VAEFamily
from latentserve.models.nets import pixelcnn as pcnn
from latentserve.models.nets.vae import VAEConfig
from latentserve.models.pixel_ar import ar_decode, ar_settings

META = {"image_size": 16, "class_names": ["a", "b"]}
TINY = dict(z_dim=4, widths=(8, 8), hidden=16, embed_dim=4, decoder="pixelcnn", ar_width=8, ar_layers=2,
            kl_warmup_steps=0)


def _net(layers: int = 2) -> pcnn.PixelCNN:
    torch.manual_seed(0)
    net = pcnn.PixelCNN(pcnn.CONTEXT_CHANNELS, 8, layers).double()
    for p in net.parameters():  # no zero weights anywhere, so a zero gradient means "not connected"
        p.data = torch.randn_like(p) * 0.3
    return net


def test_causal_masks():
    a, b = pcnn.causal_mask(5, "A"), pcnn.causal_mask(3, "B")
    assert a[:2].all() and a[2, :2].all() and not a[2, 2:].any() and not a[3:].any()
    assert b[0].all() and b[1, :2].all() and b[1, 2] == 0 and not b[2].any()


@pytest.mark.parametrize("pixel", [(0, 0), (3, 5), (7, 7), (4, 0), (0, 7)])
def test_masked_convolutions_never_see_future_pixels(pixel):
    """d output(r, c) / d x is zero at (r, c) itself and at every later raster position, in all channels, and
    nonzero for the nearest earlier pixels (the network does look at its past)."""
    net = _net()
    h = w = 8
    m = net.margin
    x = torch.randn(1, 3, h, w, dtype=torch.float64, requires_grad=True)
    ctx = pcnn.make_context(torch.randn(1, 3, h, w, dtype=torch.float64), m)
    mean, log_scale = net(torch.nn.functional.pad(x, (m,) * 4), ctx)
    r, c = pixel
    for out in (mean, log_scale):
        for ch in range(3):
            (g,) = torch.autograd.grad(out[0, ch, r, c], x, retain_graph=True)
            seen = g.abs().sum(1)[0] > 0  # (H,W): input pixels this output depends on
            order = torch.arange(h * w).reshape(h, w)
            assert not seen[order >= r * w + c].any(), f"output {ch} at {pixel} sees pixels at or after itself"
            if out is mean and c > 0:  # (log_scale is clamped, so its gradient may vanish)
                assert seen[r, c - 1]
            if out is mean and r > 0:
                assert seen[r - 1, c]


def test_one_patch_step_equals_the_whole_image_network():
    net = _net(3).float().eval()
    m, p = net.margin, 2 * net.margin + 1
    x = torch.rand(2, 3, 9, 9) * 2 - 1
    ctx = pcnn.make_context(torch.rand(2, 3, 9, 9) * 2 - 1, m)
    xp = torch.nn.functional.pad(x, (m,) * 4)
    with torch.no_grad():
        mean, log_scale = net(xp, ctx)
        step = pcnn.StepGraph(net)
        for r, c in [(0, 0), (4, 6), (8, 8), (8, 0)]:
            sm, sl = step(xp[:, :, r:r + p, c:c + p], ctx[:, :, r:r + p, c:c + p])
            assert torch.allclose(sm, mean[:, :, r, c], atol=1e-5) and torch.allclose(sl, log_scale[:, :, r, c], atol=1e-5)


def test_discretised_likelihoods_are_normalised():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    for mean, s in [(0.0, 0.1), (0.9, 0.02), (-1.2, 0.3), (0.3, 1e-3)]:
        m = torch.full_like(levels, mean)
        p = torch.exp(-pcnn.discretized_logistic_nll(levels, m, torch.full_like(levels, math.log(s)))).sum()
        q = torch.exp(-pcnn.discretized_gaussian_nll(levels, m, s)).sum()
        assert float(p) == pytest.approx(1.0, abs=1e-3) and float(q) == pytest.approx(1.0, abs=1e-3)


def _family(**kw) -> VAEFamily:
    torch.manual_seed(0)
    return VAEFamily(VAEConfig(**{**TINY, **kw}), META, torch.device("cpu"))


def test_family_trains_reports_bits_per_dim_and_exports_ar_graphs():
    fam = _family()
    gen = torch.Generator().manual_seed(0)
    x = torch.round((torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1) * 127.5) / 127.5
    y = torch.arange(8) % 2
    out = [fam.train_step(x, y, torch.zeros(8, 0), s) for s in range(3)]
    assert all(math.isfinite(v) for o in out for v in o.values()) and "bits_per_dim" in out[-1]
    ev = fam.evaluate(x, y, torch.zeros(8, 0))
    assert 0 < ev["bits_per_dim"] < 16
    assert 0 < _family(decoder="feedforward").evaluate(x, y, torch.zeros(8, 0))["bits_per_dim"] < 64  # narrow, untrained
    graphs = fam.graphs()
    assert set(graphs) == {"encoder", "decoder", "ar_context", "ar_step"}
    assert ar_settings({"autoregressive": fam.manifest_extra()["autoregressive"]})["margin"] == fam.pixelcnn.margin
    grid = fam.sample_grid(2, seed=1)
    assert grid.shape == (4, 3, 16, 16) and float(grid.abs().max()) <= 1.0
    levels = (grid.numpy() + 1) * 127.5
    assert np.allclose(levels, np.rint(levels), atol=1e-3)  # on the 8-bit grid


def test_rows_decode_the_same_alone_or_batched():
    fam = _family()
    z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y = np.array([0, 1, 1])
    both = fam.ar_sample(z, y)
    alone = np.concatenate([fam.ar_sample(z[i:i + 1], y[i:i + 1]) for i in range(3)])
    assert np.allclose(both, alone, atol=1e-6) and not np.allclose(both[1], both[2])


@pytest.mark.parametrize("bad", [dict(decoder="wavenet"), dict(ar_layers=0), dict(ar_width=4),
                                 dict(ar_temperature=0.0), dict(aux_weight=-1.0)])
def test_config_bounds(bad):
    with pytest.raises(ValidationError, match=next(iter(bad))):
        VAEConfig(**{**TINY, **bad})
    with pytest.raises(ValidationError, match="margin"):
        ar_settings({"autoregressive": {"margin": 0, "temperature": 1.0}})
