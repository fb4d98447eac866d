"""Training-time decorrelation of the AE (models/nets/ae_factors.py, AEConfig.decorrelate): block mixing moves
blocks and targets together, the swap term trains the decoder only, bounds and unknown factors name the field."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from latentserve.errors import ValidationError  # noqa: E402
from latentserve.models.families.ae import AEFamily  # noqa: E402
from latentserve.models.nets.ae import AEConfig  # noqa: E402
from latentserve.models.nets.ae_factors import FactorBlocks, mix_blocks  # noqa: E402

FACTORS = [{"name": "scale", "low": 0.3, "high": 0.6}, {"name": "x", "low": 0.0, "high": 1.0},
           {"name": "hue", "low": 0.0, "high": 0.8}]
META = {"image_size": 8, "class_names": ["a", "b"], "factors": FACTORS}
TINY = dict(z_dim=6, widths=(4, 8), hidden=8, embed_dim=2)


def test_mix_blocks_moves_each_block_with_its_target():
    z = torch.arange(4 * 6, dtype=torch.float32).reshape(4, 6)  # blocks of 2: [0:2] scale, [2:4] hue, rest free
    t = torch.tensor([[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0]])
    perm = torch.tensor([2, 3, 0, 1])
    take = torch.tensor([[True, False], [False, True], [True, True], [False, False]])
    zm, tm = mix_blocks(z, t, perm, take, dims=2)
    assert torch.equal(zm[0], torch.cat([z[2, 0:2], z[0, 2:]]))  # scale block from row 2, the rest its own
    assert torch.equal(zm[1], torch.cat([z[1, 0:2], z[3, 2:4], z[1, 4:]]))
    assert torch.equal(zm[2], torch.cat([z[0, 0:4], z[2, 4:]]))
    assert torch.equal(zm[3], z[3])
    assert tm.tolist() == [[2.0, 10.0], [1.0, 13.0], [0.0, 10.0], [3.0, 13.0]]


def test_targets_scaled_by_range_and_unknown_skipped():
    blocks = FactorBlocks(["hue", "scale"], FACTORS, dims=2)
    f = torch.tensor([[0.45, 0.5, 0.4], [float("nan"), 0.1, 0.8]])  # (B, K) in the data's column order
    t = blocks.targets(f)
    assert t[0].tolist() == pytest.approx([0.5, 0.5]) and t[1, 0] == pytest.approx(1.0) and torch.isnan(t[1, 1])
    loss = blocks.loss(torch.zeros(2, 6), t)
    assert torch.isfinite(loss)


def test_swap_term_trains_the_decoder_only():
    """The encoder's and heads' gradients are those of the main loss alone; the decoder's include the swap term."""
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    y = torch.tensor([0, 1] * 4)
    f = torch.stack([torch.rand(8) * 0.3 + 0.3, torch.rand(8), torch.rand(8) * 0.8], 1)
    grads = {}
    for swap in (0.0, 5.0):
        torch.manual_seed(0)
        fam = AEFamily(AEConfig(**TINY, decorrelate=("scale", "hue"), swap_weight=swap, lr=1e-12, grad_clip=0),
                       META, torch.device("cpu"))
        torch.manual_seed(1)
        out = fam.train_step(x, y, f, 0)
        grads[swap] = {name: [p.grad.clone() for p in m.parameters()] for name, m in fam.modules().items()
                       if name != "stats"}
        assert ("swap" in out) == (swap > 0) and out["factor"] > 0
    for name in ("encoder", "blocks"):
        assert all(torch.allclose(a, b) for a, b in zip(grads[0.0][name], grads[5.0][name])), name
    assert not all(torch.allclose(a, b) for a, b in zip(grads[0.0]["decoder"], grads[5.0]["decoder"]))


@pytest.mark.parametrize("bad", [{"factor_dims": 0}, {"factor_dims": 17}, {"factor_weight": -1.0},
                                 {"swap_weight": 101.0}])
def test_config_bounds_name_the_field(bad):
    with pytest.raises(ValidationError, match=f"AEConfig: {next(iter(bad))}"):
        AEConfig(**TINY, decorrelate=("scale",), **bad)


def test_blocks_must_fit_and_factors_must_exist():
    with pytest.raises(ValidationError, match="AEConfig: decorrelate: 2 factors x factor_dims 4 do not fit in z_dim 6"):
        AEConfig(**TINY, decorrelate=("scale", "hue"), factor_dims=4)
    with pytest.raises(ValidationError, match="AEConfig: decorrelate names a factor twice"):
        AEConfig(**TINY, decorrelate=("hue", "hue"))
    with pytest.raises(ValidationError, match="AEConfig: decorrelate: unknown factor 'size'; the data's factors: "
                                              "scale, x, hue"):
        AEFamily(AEConfig(**TINY, decorrelate="scale,size"), META, torch.device("cpu"))
    assert AEConfig(**TINY, decorrelate="scale, hue").decorrelate == ("scale", "hue")
    assert AEConfig(**TINY, decorrelate=["hue"]).to_dict()["decorrelate"] == ["hue"]


def test_decorrelated_family_exports_the_plain_contract():
    fam = AEFamily(AEConfig(**TINY, decorrelate=("scale", "hue")), META, torch.device("cpu"))
    assert set(fam.modules()) == {"encoder", "decoder", "stats", "blocks"}
    g = fam.graphs()
    assert g["encoder"].output_names == ["latent", "logits"] and g["decoder"].input_names == ["latent", "label"]
    assert set(AEFamily(AEConfig(**TINY), META, torch.device("cpu")).modules()) == {"encoder", "decoder", "stats"}
