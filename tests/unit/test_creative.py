"""The CAN style-ambiguity loss (models/nets/creative.py) at uniform and one-hot posteriors, and the GAN option."""
import math

import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.families.gan import GANFamily
from latentserve.models.nets.creative import style_ambiguity
from latentserve.models.nets.gan import GANConfig


@pytest.mark.parametrize("k", [2, 3, 5])
def test_uniform_posterior_gives_the_minimum(k):
    uniform = torch.zeros(4, k)  # any equal logits
    assert float(style_ambiguity(uniform, "multiclass")) == pytest.approx(math.log(k), abs=1e-6)
    h = -(1 / k) * math.log(1 / k) - (1 - 1 / k) * math.log(1 - 1 / k)  # binary entropy H(1/K)
    assert float(style_ambiguity(uniform + 7.0, "binary")) == pytest.approx(h, abs=1e-6)
    assert float(style_ambiguity(torch.zeros(1, 3), "binary")) == pytest.approx(0.636514168, abs=1e-6)


def test_one_hot_posterior_values():
    s = 30.0
    logits = torch.tensor([[s, 0.0, 0.0]], dtype=torch.float64)  # posterior (1, e^-30, e^-30) / Z: one-hot in float32
    lse = math.log(math.exp(s) + 2)
    assert float(style_ambiguity(logits, "multiclass")) == pytest.approx(lse - s / 3, rel=1e-12)  # 20.0000...
    log_p = [s - lse, -lse, -lse]
    log_1mp = [math.log(2) - lse, math.log(math.exp(s) + 1) - lse, math.log(math.exp(s) + 1) - lse]
    binary = -sum(lp / 3 + (2 / 3) * l1 for lp, l1 in zip(log_p, log_1mp)) / 3
    assert float(style_ambiguity(logits, "binary")) == pytest.approx(binary, rel=1e-12)
    assert float(style_ambiguity(logits, "binary")) == pytest.approx((2 * s / 3 + (2 / 3) * (s - math.log(2))) / 3, rel=1e-9)
    # exactly one-hot in float32 (softmax underflows to 0): still finite, and the gradient points to uniform
    hard = torch.tensor([[200.0, 0.0, 0.0]], requires_grad=True)
    for form in ("multiclass", "binary"):
        loss = style_ambiguity(hard, form)
        assert math.isfinite(float(loss.detach()))
        (g,) = torch.autograd.grad(loss, hard)
        assert g[0, 0] > 0 and g[0, 1] < 0 and g[0, 2] < 0


def test_bad_input():
    with pytest.raises(ValueError, match="form"):
        style_ambiguity(torch.zeros(2, 3), "ternary")
    with pytest.raises(ValueError, match="K >= 2"):
        style_ambiguity(torch.zeros(2, 1))


def test_config_checks():
    with pytest.raises(ValidationError, match="can_form"):
        GANConfig(can_form="wild")
    with pytest.raises(ValidationError, match="can_weight"):
        GANConfig(can_weight=1.0)
    with pytest.raises(ValidationError, match="d_kind"):
        GANConfig(can_form="binary", d_kind="mixed")


@pytest.mark.parametrize("form", ["multiclass", "binary"])
def test_can_step_trains_the_class_head(form):
    torch.manual_seed(0)
    meta = {"image_size": 16, "class_names": ["a", "b", "c"]}
    fam = GANFamily(GANConfig(z_dim=8, g_width=8, d_width=8, e_width=8, e_hidden=16, can_form=form,
                              can_weight=1.0), meta)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    out = fam.train_step(x, torch.arange(8) % 3, torch.zeros(8, 0), 0)
    assert "d_class_acc" in out and all(math.isfinite(v) for v in out.values())
    assert fam.d.classes is not None
    assert GANFamily(GANConfig(z_dim=8, g_width=8, d_width=8, e_width=8, e_hidden=16), meta).d.classes is None


def test_can_start_gates_the_push():
    """Before can_start G's adversarial loss has no style-ambiguity term (D's class head is still learning);
    from can_start it is the same loss plus can_weight times that term."""
    torch.manual_seed(0)
    meta = {"image_size": 16, "class_names": ["a", "b", "c"]}
    fam = GANFamily(GANConfig(z_dim=8, g_width=8, d_width=8, e_width=8, e_hidden=16, can_form="multiclass",
                              can_weight=2.0, can_start=100), meta)
    fake, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0])
    fam.d.eval()  # spectral norm's power iteration would move D between the calls
    with torch.no_grad():
        score, logits = fam.d.score_and_class(fake, y)
        plain, push = fam._g_loss(score), style_ambiguity(logits, "multiclass")
        assert float(fam._g_adv(fake, y, 99)) == pytest.approx(float(plain), rel=1e-6)
        assert float(fam._g_adv(fake, y, 100)) == pytest.approx(float(plain + 2.0 * push), rel=1e-6)
    with pytest.raises(ValidationError, match="can_start"):
        GANConfig(can_start=-1)
