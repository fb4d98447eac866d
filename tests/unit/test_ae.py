"""The AE family (models/nets/ae.py, models/families/ae.py): each Jacobian penalty against a finite-difference
reference on a tiny net, the config's bounds, a few training steps and the export graphs' contract."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from latentserve.errors import ValidationError  # noqa: E402
from latentserve.models.families.ae import AEFamily  # noqa: E402
from latentserve.models.nets.ae import AEConfig, contractive_penalty, smoothness_penalty  # noqa: E402

META = {"image_size": 8, "class_names": ["a", "b"], "factors": []}
TINY = dict(z_dim=3, widths=(4, 8), hidden=8, embed_dim=2)


def _tiny_net(n_in: int, n_out: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 5), torch.nn.Tanh(), torch.nn.Linear(5, n_out)).double()


def _fd_jacobian(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite differences of a single row's map: (n_out, n_in)."""
    cols = []
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = h
        cols.append((f(x + e) - f(x - e)) / (2 * h))
    return torch.stack(cols, 1)


def _fd_frobenius(net, xs: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.stack([_fd_jacobian(lambda v: net(v[None])[0], x).square().sum() for x in xs]).mean())


def test_contractive_exact_matches_finite_differences():
    net = _tiny_net(6, 3, 0)
    x = torch.randn(4, 6, dtype=torch.float64)
    got = contractive_penalty(net, x, projections=0)
    assert got.requires_grad  # differentiable: it trains the encoder
    assert float(got.detach()) == pytest.approx(_fd_frobenius(net, x), rel=1e-6)


def test_contractive_hutchinson_is_unbiased():
    net = _tiny_net(6, 3, 1)
    x = torch.randn(4, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    est = [float(contractive_penalty(net, x, projections=8, generator=gen).detach()) for _ in range(300)]
    ref = _fd_frobenius(net, x)
    mean, sem = sum(est) / len(est), torch.tensor(est).std().item() / len(est) ** 0.5
    assert abs(mean - ref) < 4 * sem + 1e-9 and sem < 0.05 * ref


def test_smoothness_matches_decoder_jacobian():
    """D * ||D(z + eps u) - D(z)||^2 / eps^2 -> D * ||J u||^2 (eps -> 0), whose mean over u is ||J||_F^2."""
    dec = _tiny_net(3, 7, 2)
    z = torch.randn(5, 3, dtype=torch.float64)
    jac = [_fd_jacobian(lambda v: dec(v[None])[0], zi) for zi in z]
    gen = torch.Generator().manual_seed(0)
    one = smoothness_penalty(dec, z, eps=1e-5, generator=gen)
    u = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).to(z)
    u = u / u.norm(dim=1, keepdim=True)  # the same directions the penalty drew
    ref_one = float(torch.stack([3 * (j @ ui).square().sum() for j, ui in zip(jac, u)]).mean())
    assert float(one) == pytest.approx(ref_one, rel=1e-3)
    est = [float(smoothness_penalty(dec, z, eps=1e-4, generator=gen)) for _ in range(500)]
    ref = float(torch.stack([j.square().sum() for j in jac]).mean())
    assert sum(est) / len(est) == pytest.approx(ref, rel=0.05)


@pytest.mark.parametrize("bad", [{"reg": "jacobian"}, {"reg_weight": -1.0}, {"jacobian_projections": 65},
                                 {"smooth_eps": 0.0}, {"z_dim": 1}, {"stats_momentum": 0.0}])
def test_config_bounds_name_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValidationError, match=f"AEConfig: {field}"):
        AEConfig(**bad)


@pytest.mark.parametrize("reg", ["none", "contractive", "smooth"])
def test_train_steps_finite_and_graphs_follow_the_contract(reg):
    torch.manual_seed(0)
    fam = AEFamily(AEConfig(**TINY, reg=reg, reg_weight=1.0), META, torch.device("cpu"))
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    y = torch.tensor([0, 1] * 4)
    for step in range(3):
        out = fam.train_step(x, y, torch.zeros(8, 0), step)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert (out["penalty"] > 0) == (reg != "none")
    g = fam.graphs()
    assert g["encoder"].output_names == ["latent", "logits"]
    z, logits = g["encoder"].module(x)
    assert z.shape == (8, 3) and logits.shape == (8, 2)
    img = g["decoder"].module(z, y)
    assert img.shape == (8, 3, 8, 8) and img.abs().max() <= 1.0
    extra = fam.manifest_extra()
    assert extra["prior"]["type"] == "class_gaussian" and extra["prior_mean"].shape == (2, 3)
    assert fam.sample_grid(2, seed=0).shape == (4, 3, 8, 8)
