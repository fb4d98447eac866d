"""The correlated shapes variant (`--data-arg correlate='{"hue": "scale"}'`): training factors correlated >= 0.8,
as labelled and as the geometric judge measures them on the images; the test split stays independent."""
from __future__ import annotations

import numpy as np
import pytest

from latentserve.errors import ValidationError
from latentserve.models.data import load_dataset


def _corr(f: np.ndarray, a: int, b: int) -> float:
    ok = ~np.isnan(f[:, a]) & ~np.isnan(f[:, b])
    return float(np.corrcoef(f[ok, a], f[ok, b])[0, 1])


def test_hue_rises_with_scale_in_training_only():
    from latentserve.models.judges.geometric import judge_shapes

    d = load_dataset("shapes", image_size=32, n_train=600, n_test=600, seed=0, correlate={"hue": "scale"})
    names = [f.name for f in d.factors]
    s, h = names.index("scale"), names.index("hue")
    assert _corr(d.train.factors, s, h) >= 0.8
    assert abs(_corr(d.test.factors, s, h)) < 0.15
    judged = judge_shapes(d.train.images).factors  # measured classically on the rendered images
    assert _corr(judged, s, h) >= 0.8
    lo, hi = d.factors[h].low, d.factors[h].high
    assert d.train.factors[:, h].min() >= lo and d.train.factors[:, h].max() <= hi  # still the factor's range
    assert d.config["correlate"] == {"hue": "scale"} and d.config["correlate_mix"] == 0.3
    plain = load_dataset("shapes", image_size=16, n_train=30, n_test=30, seed=0)
    assert "correlate" not in plain.config  # unchanged configs (and manifests) for the plain set


@pytest.mark.parametrize("kw, word", [({"correlate": {"hue": "size"}}, "size"), ({"correlate": {"hue": "hue"}}, "hue"),
                                      ({"correlate": {"hue": "scale"}, "correlate_mix": 1.0}, "correlate_mix"),
                                      ({"correlate": "hue"}, "correlate")])
def test_bad_correlate_names_the_problem(kw, word):
    with pytest.raises(ValidationError, match=word):
        load_dataset("shapes", image_size=16, n_train=10, n_test=0, **kw)
