"""Unit tests for the probe family: network outputs in natural units, masked loss, augmentation, evaluation,
export graph, config validation and a short training run on a tiny synthetic dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.data.base import DataSplit, Dataset, Factor, to_model
from latentserve.models.families.probe import ProbeFamily, augment, masked_mse
from latentserve.models.nets.probe import Probe, ProbeConfig, factor_stats

SMALL = {"width": 8, "depth": 2, "head_channels": 8, "feature_dim": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; one thread also makes the runs deterministic
    yield
    torch.set_num_threads(threads)


def tiny_dataset(n_train: int = 96, n_test: int = 48, size: int = 16, seed: int = 0) -> Dataset:
    """Squares (class 0) and crosses (class 1) with factors scale and x; `extra` is NaN for crosses."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> DataSplit:
        labels = np.arange(n) % 2
        scale, x, y = rng.uniform(0.3, 0.5, n), rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n)
        c = (np.arange(size) + 0.5) / size
        du = np.abs(c[None, None, :] - x[:, None, None])  # (N,1,S) horizontal distance
        dv = np.abs(c[None, :, None] - y[:, None, None])  # (N,S,1)
        half = scale[:, None, None] / 2
        square = (du < half) & (dv < half)
        cross = ((du < half) & (dv < half / 3)) | ((du < half / 3) & (dv < half))
        mask = np.where(labels[:, None, None] == 0, square, cross)
        colour = np.array([255, 180, 40], np.uint8)
        images = (mask[..., None] * colour).astype(np.uint8)  # (N,S,S,3)
        extra = np.where(labels == 0, x + y, np.nan)
        return DataSplit(images, labels.astype(np.int64), np.stack([scale, x, extra], 1).astype(np.float32))

    return Dataset(name="tiny", image_size=size, class_names=["square", "cross"],
                   factors=[Factor("scale", 0.3, 0.5), Factor("x", 0.3, 0.7), Factor("extra", 0.6, 1.4)],
                   train=split(n_train), test=split(n_test), config={"seed": seed})


def test_probe_outputs_and_natural_units():
    factors = [{"name": "a", "low": 10.0, "high": 20.0}, {"name": "b", "low": -1.0, "high": 1.0}]
    net = Probe(ProbeConfig(**SMALL), image_size=20, n_classes=3, factors=factors).eval()
    logits, f, feats = net(torch.zeros(4, 3, 20, 20))
    assert logits.shape == (4, 3) and f.shape == (4, 2) and feats.shape == (4, 16)
    _, z, _ = net.forward_standardized(torch.zeros(4, 3, 20, 20))
    mean, std = factor_stats(factors)
    np.testing.assert_allclose(f.detach(), (z * std + mean).detach(), rtol=1e-6)
    np.testing.assert_allclose(mean, [15.0, 0.0])
    assert "factor_mean" in net.state_dict() and "coords" not in net.state_dict()
    # No factors at all (e.g. a folder dataset): an empty (B, 0) output.
    net0 = Probe(ProbeConfig(**SMALL, coord_channels=False), image_size=16, n_classes=2, factors=[]).eval()
    assert net0(torch.zeros(2, 3, 16, 16))[1].shape == (2, 0)


def test_parameter_budget_of_defaults():
    meta_factors = [{"name": n, "low": 0, "high": 1} for n in "abcde"]
    n = sum(p.numel() for p in Probe(ProbeConfig(), 32, 3, meta_factors).parameters())
    assert 100_000 <= n <= 300_000


def test_masked_mse_ignores_nan():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, float("nan")], [3.0, float("nan")]])
    loss = masked_mse(pred, target)
    assert loss.item() == pytest.approx(0.5)  # (1^2 + 0^2) / 2 known entries
    loss.backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad[0, 1]) == 0.0
    assert masked_mse(pred, torch.full((2, 2), float("nan"))).item() == 0.0


def test_augment_keeps_shape_range_and_content_position():
    torch.manual_seed(0)
    x = -torch.ones(8, 3, 16, 16)
    x[:, :, 4:8, 10:14] = 1.0
    noisy = augment(x, ProbeConfig(**SMALL, aug_noise=0.05, aug_blur_prob=1.0, aug_blur_sigma=1.0))
    assert noisy.shape == x.shape and noisy.min() >= -1 and noisy.max() <= 1 and not torch.equal(noisy, x)
    # The blurred blob keeps its centroid (the factors x/y stay valid).
    out = augment(x, ProbeConfig(**SMALL, aug_noise=0.0, aug_blur_prob=1.0, aug_blur_sigma=1.0, aug_levels=0.0))
    w = out[:, 0] + 1
    cols = (w.sum(1) * torch.arange(16.0)).sum(1) / w.sum((1, 2))
    np.testing.assert_allclose(cols, 11.5, atol=1e-4)
    off = ProbeConfig(**SMALL, aug_noise=0.0, aug_blur_prob=0.0, aug_levels=0.0)
    assert torch.equal(augment(x, off), x)
    # Intensity levels: one affine map per image, equal on all channels (hue unchanged), inside [-1, 1].
    lv = augment(x, ProbeConfig(**SMALL, aug_noise=0.0, aug_blur_prob=0.0, aug_levels=0.5))
    lo, hi = lv.amin(dim=(1, 2, 3)), lv.amax(dim=(1, 2, 3))
    assert (lo >= -1).all() and (hi <= 1).all() and ((hi - lo) >= 1.0 - 1e-6).all()
    assert torch.equal(lv[:, 0], lv[:, 1]) and torch.equal(lv[:, 1], lv[:, 2])


def test_config_validation_and_schedule():
    with pytest.raises(ValidationError, match="width"):
        ProbeConfig(width=2)
    with pytest.raises(ValidationError):
        ProbeConfig(lr=0)
    with pytest.raises(ValidationError, match="unknown ProbeConfig"):
        ProbeConfig.from_dict({"widht": 8})
    cfg = ProbeConfig(lr=0.01, warmup_steps=10, lr_schedule_steps=110, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.001) and cfg.lr_at(10) == pytest.approx(0.01)
    assert cfg.lr_at(60) == pytest.approx(0.0055) and cfg.lr_at(110) == pytest.approx(0.001)
    assert cfg.lr_at(10_000) == pytest.approx(0.001)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_family_trains_evaluates_and_exports():
    torch.manual_seed(0)
    ds = tiny_dataset()
    cfg = ProbeConfig(**SMALL, lr=1e-2, warmup_steps=5, lr_schedule_steps=120, aug_noise=0.02)
    fam = ProbeFamily(cfg, ds.meta(), "cpu")
    x = torch.from_numpy(to_model(ds.train.images))
    y, f = torch.from_numpy(ds.train.labels), torch.from_numpy(ds.train.factors)
    first = fam.train_step(x[:32], y[:32], f[:32], 0)
    assert set(first) >= {"loss", "ce", "mse", "acc"} and np.isfinite(first["loss"])
    rng = np.random.default_rng(0)
    for step in range(1, 120):
        idx = torch.from_numpy(rng.choice(len(x), 32, replace=False))
        last = fam.train_step(x[idx], y[idx], f[idx], step)
    assert last["loss"] < first["loss"]
    xt = torch.from_numpy(to_model(ds.test.images))
    figures = fam.evaluate(xt, torch.from_numpy(ds.test.labels), torch.from_numpy(ds.test.factors))
    assert set(figures) == {"acc", "r2_scale", "mae_scale", "r2_x", "mae_x", "r2_extra", "mae_extra"}
    assert figures["acc"] > 0.9 and figures["r2_x"] > 0.5  # learnt something in 120 tiny steps
    graphs = fam.graphs()
    g = graphs["probe"]
    assert list(graphs) == ["probe"] and g.input_names == ["image"]
    assert g.output_names == ["logits", "factors", "features"]
    assert not g.module.training and fam.net.training  # export copy in eval mode, training state untouched
    logits, factors, feats = g.module(*g.example_inputs)
    assert logits.shape == (2, 2) and factors.shape == (2, 3) and feats.shape == (2, 16)
    traced = torch.jit.trace(g.module, g.example_inputs)
    np.testing.assert_allclose(traced(xt[:5])[1], g.module(xt[:5])[1], atol=1e-5)  # batch size is dynamic


def test_family_rejects_bad_meta_and_config():
    with pytest.raises(ValidationError):
        ProbeFamily(ProbeConfig(**SMALL), {"class_names": ["a"]}, "cpu")
    with pytest.raises(ValidationError):
        ProbeFamily({"nope": 1}, {"image_size": 16, "class_names": ["a"]}, "cpu")
