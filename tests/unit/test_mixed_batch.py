"""Unit tests of the mixed-batch discriminator (Lucas et al. 2018): the ratio target of mixed sets, exact
permutation invariance of the set score, config bounds, and GAN training steps with it. Tiny nets, CPU."""
from __future__ import annotations

import math

import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.families.gan import GANFamily
from latentserve.models.nets import mixed_batch as mb
from latentserve.models.nets.gan import Discriminator, GANConfig

META = {"image_size": 16, "class_names": ["a", "b", "c"]}
TINY = dict(z_dim=8, g_width=8, d_width=8, e_width=8, e_hidden=16, e_batch=4)


def _disc(set_size: int = 4) -> mb.MixedBatchDiscriminator:
    torch.manual_seed(0)
    base = Discriminator(3, 16, 8)
    return mb.MixedBatchDiscriminator(base.body, base.top, base.psi.in_features, 3, set_size)


def test_mix_sets_target_is_the_share_of_real_images_drawn():
    # real images are all +1, fakes all -1: each set's target must equal its share of +1 images
    real, fake = torch.ones(64, 3, 16, 16), -torch.ones(64, 3, 16, 16)
    y_real, y_fake = torch.zeros(64, dtype=torch.long), torch.ones(64, dtype=torch.long)
    images, labels, target = mb.mix_sets(real, fake, y_real, y_fake, 8, torch.Generator().manual_seed(1))
    assert images.shape == (64, 3, 16, 16) and labels.shape == (64,) and target.shape == (8,)
    share = (images[:, 0, 0, 0] > 0).float().reshape(8, 8).mean(1)
    assert torch.equal(share, target)
    assert torch.equal(labels == 0, images[:, 0, 0, 0] > 0)  # a real image keeps its own label
    # p ~ U(0,1) per set: over many sets the targets spread over [0, 1], mean near 1/2
    _, _, many = mb.mix_sets(torch.ones(4000, 3, 1, 1), -torch.ones(4000, 3, 1, 1), y_real.new_zeros(4000),
                             y_real.new_zeros(4000), 8, torch.Generator().manual_seed(2))
    assert abs(float(many.mean()) - 0.5) < 0.05 and float(many.min()) == 0.0 and float(many.max()) == 1.0
    with pytest.raises(ValidationError, match="at least 8"):
        mb.mix_sets(real[:5], fake[:5], y_real[:5], y_fake[:5], 8)


def test_set_score_is_exactly_permutation_invariant():
    d = _disc(6).double().eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(12, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 3, (12,), generator=gen)
    with torch.no_grad():
        out = d(x, y)
        perm = torch.cat([torch.randperm(6, generator=gen), 6 + torch.randperm(6, generator=gen)])
        out_perm = d(x[perm], y[perm])
        swapped = d(torch.cat([x[6:], x[:6]]), torch.cat([y[6:], y[:6]]))  # sets are independent of each other
    assert out.shape == (2,)
    assert torch.allclose(out, out_perm, rtol=0, atol=1e-12)
    assert torch.allclose(swapped, out.flip(0), rtol=0, atol=1e-12)
    # and it is a function of the set, not of one element: changing one image changes its set's score only
    x2 = x.clone()
    x2[0] = -x2[0]
    with torch.no_grad():
        changed = d(x2, y)
    assert changed[0] != out[0] and changed[1] == out[1]


def test_discriminator_learns_the_ratio():
    """A few steps on an easy pair (bright real vs dark fake images) lower the ratio error."""
    d = _disc(4)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    real, fake = torch.full((32, 3, 16, 16), 0.8), torch.full((32, 3, 16, 16), -0.8)
    y = torch.zeros(32, dtype=torch.long)
    torch.manual_seed(4)
    first = None
    for _ in range(60):
        loss, figs = mb.d_loss(d, real, fake, y, y)
        first = figs["d_ratio_mae"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert figs["d_ratio_mae"] < first and figs["d_ratio_mae"] < 0.15


@pytest.mark.parametrize("bad", [dict(d_kind="set"), dict(mix_set_size=1), dict(mix_set_size=300),
                                 dict(d_kind="mixed", d_norm="bn")])
def test_config_bounds(bad):
    with pytest.raises(ValidationError, match="GANConfig"):
        GANConfig(**{**TINY, **bad})


@pytest.mark.parametrize("mode_reg", [10.0, 0.0])
def test_gan_steps_with_the_mixed_discriminator(mode_reg):
    torch.manual_seed(0)
    fam = GANFamily(GANConfig(**TINY, d_kind="mixed", mix_set_size=4, mode_reg=mode_reg, w_adv_recon=0.5,
                              recon_noise=0.1), META, "cpu")
    assert isinstance(fam.d, mb.MixedBatchDiscriminator)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1, torch.arange(8) % 3
    for step in range(2):
        out = fam.train_step(x, y, torch.zeros(8, 5), step)
    assert "d_ratio_mae" in out and all(math.isfinite(v) for v in out.values())
    assert set(fam.graphs()) == {"encoder", "decoder"}  # the discriminator is training-only
