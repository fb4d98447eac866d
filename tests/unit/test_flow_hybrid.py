"""Unit tests of the flow + adversarial hybrid (`FlowConfig.adv_weight` > 0): config checks, the pure-ML step
unchanged, a few hybrid steps on a tiny flow (the discriminator learns, the flow stays exactly invertible),
and checkpoint / resume through the training loop with the discriminator in it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentserve.errors import ValidationError
from latentserve.models.data.base import DataSplit, Dataset, Factor
from latentserve.models.families.flow import FlowFamily
from latentserve.models.nets.flow import FlowConfig, bits_per_dim
from latentserve.models.nets.gan import Discriminator
from latentserve.models.train import TrainConfig, load_checkpoint, train

CLASSES = ["square", "ellipse", "triangle"]
META16 = {"image_size": 16, "class_names": CLASSES, "factors": []}
TINY = dict(levels=2, steps=(1, 1), hidden=(8, 8))
HYBRID = dict(adv_weight=1.0, adv_start=1, adv_ramp=2, adv_batch=4, d_width=4)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() / 127.5 - 1.0


def _family(**kw) -> FlowFamily:
    torch.manual_seed(0)
    return FlowFamily(FlowConfig(**{**TINY, "lr": 5e-3, "warmup_steps": 0, **kw}), META16, torch.device("cpu"))


def _run(fam: FlowFamily, steps: int, seed: int = 1) -> list[dict]:
    torch.manual_seed(seed)
    x, y = _images(8), torch.arange(8) % 3
    return [fam.train_step(x, y, torch.zeros(8, 5), s) for s in range(steps)]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- config ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"adv_weight": -0.1}, {"adv_weight": 11.0}, {"adv_weight": float("nan")}, {"adv_weight": "1"},
    {"adv_start": -1}, {"adv_start": 1.5}, {"adv_ramp": -1}, {"adv_batch": 0}, {"adv_batch": 2048},
    {"adv_temperature": 0.0}, {"adv_temperature": 2.5}, {"adv_loss": "wgan"}, {"d_width": 2},
    {"d_conditional": "yes"}, {"lr_d": 0.0}, {"lr_d": 0.1},
])
def test_hybrid_config_range_checks(bad):
    with pytest.raises(ValidationError, match="FlowConfig"):
        FlowConfig(**{**TINY, **bad})


def test_hybrid_config_defaults_and_round_trip():
    c = FlowConfig()
    assert c.adv_weight == 0.0 and c.adv_temperature is None and c.adv_sample_temperature == c.temperature
    assert FlowConfig(temperature=0.9, adv_temperature=0.5).adv_sample_temperature == 0.5
    d = FlowConfig(**HYBRID, adv_temperature=0.6, adv_loss="hinge").to_dict()
    assert {"adv_weight", "adv_start", "adv_ramp", "adv_batch", "adv_temperature", "adv_loss", "d_width",
            "d_conditional", "lr_d"} <= set(d)
    assert FlowConfig(**d) == FlowConfig(**HYBRID, adv_temperature=0.6, adv_loss="hinge")


def test_hybrid_needs_an_image_size_the_discriminator_supports():
    with pytest.raises(ValidationError, match="discriminator"):
        FlowFamily(FlowConfig(**TINY, adv_weight=1.0), {**META16, "image_size": 8}, torch.device("cpu"))


def test_adversarial_weight_schedule():
    fam = _family(adv_weight=2.0, adv_start=10, adv_ramp=4, adv_batch=2, d_width=4)
    assert [fam.adv_weight_at(s) for s in (0, 9, 10, 11, 13, 100)] == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
    assert _family(adv_weight=2.0, adv_start=3, adv_ramp=0, d_width=4).adv_weight_at(3) == 2.0


# -- adv_weight 0 is today's step -----------------------------------------------------------------------------
def _reference_step(fam: FlowFamily, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
    """The pure maximum-likelihood step as it was before the hybrid (unconditional map, class_weight 0)."""
    c = fam.config
    fam.flow.train()
    xd = fam.dequantize(x)
    if not bool(fam.flow.initialized):
        fam.flow.initialize(xd, y)
    for group in fam.opt.param_groups:
        group["lr"] = fam.lr_at(step)
    z, logdet = fam.flow(xd, y)
    class_lp = fam.flow.class_log_probs(z) + logdet[:, None]
    nll = -class_lp.gather(1, y[:, None])[:, 0].mean()
    ce = F.cross_entropy(class_lp, y)
    loss = nll / fam.flow.dim + c.class_weight * ce
    fam.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(fam.flow.parameters(), c.grad_clip))
    fam.opt.step()
    acc = (class_lp.argmax(1) == y).float().mean().item()
    return {"loss": loss.item(), "bpd": bits_per_dim(nll.detach(), fam.flow.dim).item(), "ce": ce.item(),
            "acc": acc, "grad_norm": grad_norm}


def test_adv_weight_zero_is_the_pure_ml_step():
    fam, ref = _family(), _family()
    assert fam.d is None and set(fam.modules()) == {"flow"} and set(fam.optimizers()) == {"opt"}
    x, y = _images(8), torch.arange(8) % 3
    for s in range(3):
        torch.manual_seed(10 + s)
        got = fam.train_step(x, y, torch.zeros(8, 5), s)
        torch.manual_seed(10 + s)
        want = _reference_step(ref, x, y, s)
        assert got == want
    for k, v in _state(ref.flow).items():
        assert torch.equal(fam.flow.state_dict()[k], v), k


def test_hybrid_before_adv_start_trains_exactly_like_pure_ml():
    """The discriminator is built under a forked RNG and idle before adv_start: same draws, same flow."""
    pure, hybrid = _family(), _family(**{**HYBRID, "adv_start": 50})
    assert isinstance(hybrid.d, Discriminator)
    outs_p, outs_h = _run(pure, 3), _run(hybrid, 3)
    assert [o["bpd"] for o in outs_p] == [o["bpd"] for o in outs_h]
    assert all(o["adv_w"] == 0.0 and "d_loss" not in o for o in outs_h)
    for k, v in _state(pure.flow).items():
        assert torch.equal(hybrid.flow.state_dict()[k], v), k


# -- the hybrid step ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"adv_loss": "hinge", "d_conditional": False, "adv_temperature": 0.5}])
def test_hybrid_steps_train_the_discriminator_and_keep_the_flow_invertible(kw):
    fam = _family(**HYBRID, **kw)
    assert set(fam.modules()) == {"flow", "discriminator"}
    assert set(fam.optimizers()) == {"opt", "discriminator", "flow_adv"}
    d_before = _state(fam.d)
    outs = _run(fam, 4)
    assert all(math.isfinite(v) for o in outs for v in o.values())
    assert [o["adv_w"] for o in outs] == [0.0, 0.5, 1.0, 1.0]
    assert "d_loss" not in outs[0] and {"d_loss", "g_adv", "d_real", "d_fake"} <= set(outs[-1])
    assert not any(o["skipped"] for o in outs)
    assert any(not torch.equal(v, fam.d.state_dict()[k]) for k, v in d_before.items() if k.endswith("original"))
    # the adversarial term moved the flow: it differs from a pure-ML run on the same draws
    pure = _family()
    _run(pure, 4)
    assert any(not torch.equal(v, fam.flow.state_dict()[k]) for k, v in _state(pure.flow).items())
    x = _images(5, seed=3)
    with torch.no_grad():
        z, _ = fam.flow(x)
        assert (fam.flow.inverse(z) - x).abs().max() < 1e-4
    # export is the flow's alone: no discriminator inside the graphs
    graphs = fam.graphs()
    assert set(graphs) == {"encoder", "decoder"}
    assert not any(isinstance(m, Discriminator) for g in graphs.values() for m in g.module.modules())


def test_hybrid_skips_a_flow_step_with_a_non_finite_gradient(monkeypatch):
    # a non-finite adversarial gradient (as from an exploding inverse): the adversarial Adam does not step
    fam = _family(**{**HYBRID, "adv_start": 0, "adv_ramp": 0})
    _run(fam, 1)
    adv_steps = [s["step"].item() for s in fam.opt_adv.state_dict()["state"].values()]
    monkeypatch.setattr(fam, "_adversarial", lambda x, y: (fam.flow.prior_mean.sum() * float("nan"), {}))
    out = _run(fam, 1)[0]
    assert out["adv_skipped"] == 1.0 and out["skipped"] == 0.0
    assert [s["step"].item() for s in fam.opt_adv.state_dict()["state"].values()] == adv_steps
    assert all(torch.isfinite(p).all() for p in fam.flow.parameters())
    # a non-finite NLL gradient: the NLL step is skipped, the flow stays as it was
    fam = _family(**{**HYBRID, "adv_start": 100})
    _run(fam, 1)
    before = _state(fam.flow)
    log_probs = fam.flow.class_log_probs
    monkeypatch.setattr(fam.flow, "class_log_probs", lambda z: log_probs(z) * float("nan"))
    assert _run(fam, 1)[0]["skipped"] == 1.0
    for k, v in before.items():
        assert torch.equal(fam.flow.state_dict()[k], v), k


# -- checkpoint / resume through the loop ---------------------------------------------------------------------
def _dataset(n_train: int = 24, n_test: int = 6) -> Dataset:
    rng = np.random.default_rng(0)

    def split(n: int) -> DataSplit:
        return DataSplit(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 3,
                         np.zeros((n, 1), np.float32))

    return Dataset(name="tiny16", image_size=16, class_names=CLASSES, factors=[Factor("f", 0.0, 1.0)],
                   train=split(n_train), test=split(n_test), config={})


def _cfg(out, steps: int) -> TrainConfig:
    return TrainConfig(family="flow", data="tiny16", steps=steps, batch_size=8, seed=2, out=str(out), ckpt_every=3,
                       threads=1, device="cpu", log_every=1, eval_size=6,
                       family_args={**TINY, **HYBRID, "adv_start": 2, "warmup_steps": 0})


def test_checkpoint_and_resume_include_the_discriminator(tmp_path):
    ds = _dataset()
    ref = train(_cfg(tmp_path / "ref", 6), progress=False, dataset=ds)
    half = train(_cfg(tmp_path / "half", 4), progress=False, dataset=ds)  # stops after an adversarial step
    ckpt = torch.load(half / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 4 and set(ckpt["modules"]) == {"flow", "discriminator"}
    assert set(ckpt["optimizers"]) == {"opt", "discriminator", "flow_adv"}
    assert ckpt["optimizers"]["discriminator"]["state"] and ckpt["optimizers"]["flow_adv"]["state"]
    assert ckpt["family_config"]["adv_weight"] == 1.0  # the manifest's training.family_config comes from here
    train(_cfg(tmp_path / "half", 6), progress=False, dataset=ds)
    a = torch.load(ref / "checkpoint.pt", weights_only=True)["modules"]
    b = torch.load(half / "checkpoint.pt", weights_only=True)["modules"]
    for name in ("flow", "discriminator"):
        for k, v in a[name].items():
            torch.testing.assert_close(b[name][k], v, atol=1e-6, rtol=0, msg=f"{name}.{k}")
    fam, _ = load_checkpoint(half)
    assert isinstance(fam.d, Discriminator)
    x = torch.from_numpy(ds.test.images[:4].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    with torch.no_grad():
        z, _ = fam.flow(x)
        assert (fam.flow.inverse(z) - x).abs().max() < 1e-4
