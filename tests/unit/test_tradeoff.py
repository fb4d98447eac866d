"""Unit tests of the trade-off table's pure logic: variant recipes, settings checks, the judged figures of
real and junk images, the per-seed summary and its text / markdown table (no training)."""
from __future__ import annotations

import numpy as np
import pytest

from latentserve.errors import ValidationError
from latentserve.models.data import load_dataset
from latentserve.models.tradeoff import TradeoffSettings, family_args, format_table, judged_figures, summarise


def test_variants_differ_only_in_what_they_name():
    s = TradeoffSettings(steps=900)
    assert family_args("gan", s) == ("gan", {"mode_reg": 0.0})
    assert family_args("gan_mixed", s) == ("gan", {"mode_reg": 0.0, "d_kind": "mixed"})
    assert family_args("vae_ar", s) == ("vae", {"decoder": "pixelcnn"})
    assert family_args("gan_mr", s) == ("gan", {}) and family_args("gan_mr_mixed", s) == ("gan", {"d_kind": "mixed"})
    assert "gan_mr" not in s.variants and len(s.variants) == 6
    assert family_args("flow_hybrid", s) == ("flow", {"adv_weight": 0.1, "adv_start": 300, "adv_ramp": 150})
    quick = TradeoffSettings(quick=True)
    assert "mix_set_size" not in family_args("gan", quick)[1] and "ar_width" not in family_args("vae", quick)[1]
    for bad in (dict(variants=("gan", "wgan")), dict(data=("mnist",)), dict(seeds=()), dict(n_samples=3),
                dict(extra={"wgan": {"z_dim": 8}})):
        with pytest.raises(ValidationError):
            TradeoffSettings(**bad)


def test_judged_figures_of_real_and_junk_images():
    data = load_dataset("modes", n_train=1, n_test=300)
    real = load_dataset("modes", n_train=1, n_test=600, seed=1).test.images
    labels = np.zeros(600, np.int64)
    good = judged_figures(data, real, labels)
    assert good["class_fidelity"] == 1.0 and good["precision"] > 0.9 and good["recall"] > 0.9
    assert good["modes"]["recovered"] >= 90  # 6 per mode on average: a few real modes get fewer than 2 by chance
    collapsed = np.repeat(real[:1], 600, axis=0)  # one mode only
    bad = judged_figures(data, collapsed, labels)
    assert bad["modes"]["recovered"] == 1 and bad["recall"] < 0.1 and bad["coverage"] < 0.1
    junk = judged_figures(data, np.zeros_like(real), labels)
    assert junk["class_fidelity"] == 0.0 and junk["precision"] == 0.0 and junk["modes"]["recovered"] == 0


def test_summary_and_tables():
    rows = [{"data": "modes", "variant": "gan", "seed": s, "bits_per_dim": None, "precision": p, "recall": 0.5,
             "coverage": 0.4, "density": 1.0, "class_fidelity": 0.9,
             "modes": {"recovered": r, "modes": 100, "precision": 0.9, "kl_uniform": 0.2}}
            for s, p, r in ((0, 0.8, 60), (1, 0.6, 70))]
    summary = summarise(rows)
    assert len(summary) == 1 and summary[0]["seeds"] == 2
    assert summary[0]["mean"]["precision"] == pytest.approx(0.7) and summary[0]["mean"]["recovered"] == 65
    assert "bits_per_dim" not in summary[0]["mean"]
    md = format_table(summary, markdown=True).splitlines()
    assert md[0].startswith("| data | model | seeds | bits/dim") and "| modes | gan | 2 | n/a | 0.700 ± 0.100 |" in md[2]
    assert "65/100 ± 5" in md[2]
    assert "65/100" in format_table(summary)


def test_gmm_choice_is_checked():
    assert TradeoffSettings(gmm="anchors").gmm == "anchors"
    with pytest.raises(ValidationError, match="gmm"):
        TradeoffSettings(gmm="kde")
