"""Conditional knob directions (models/conditional.py): the moved factor's read-out changes by the amount asked,
the held ones by nothing, the naive step leaks; bad `hold` lists are refused naming the field."""
from __future__ import annotations

import numpy as np
import pytest

from latentserve.errors import ValidationError
from latentserve.models.conditional import conditional_step, move_holding, set_factor_holding
from latentserve.models.latent import Knob, LatentSpace


def _space() -> LatentSpace:
    rng = np.random.default_rng(0)
    w_scale = rng.standard_normal(6)
    w_hue = 0.9 * w_scale + 0.3 * rng.standard_normal(6)  # correlated factors: nearly parallel directions
    w_x = rng.standard_normal(6)
    knobs = {n: Knob(n, w, 0.1, 0.9, 0.0, 1.0) for n, w in (("scale", w_scale), ("hue", w_hue), ("x", w_x))}
    return LatentSpace("standard_normal", 6, 1, knobs=knobs)


def _read(space, z, name):
    k = space.knobs[name]
    return z @ k.weight.astype(np.float64) + k.bias


def test_conditional_move_holds_the_named_factors():
    space = _space()
    z = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    naive = move_holding(space, z, "scale", 0.2)
    leak = np.abs(_read(space, naive, "hue") - _read(space, z, "hue")).mean() / 0.2
    assert leak > 0.5  # the correlated factor follows the naive knob
    held = move_holding(space, z, "scale", 0.2, hold=["hue", "x"])
    np.testing.assert_allclose(_read(space, held, "scale") - _read(space, z, "scale"), 0.2, atol=1e-4)
    np.testing.assert_allclose(_read(space, held, "hue"), _read(space, z, "hue"), atol=1e-4)
    np.testing.assert_allclose(_read(space, held, "x"), _read(space, z, "x"), atol=1e-4)
    np.testing.assert_allclose(conditional_step(space, "scale"), space.knobs["scale"].unit_step(), rtol=1e-5)
    out = set_factor_holding(space, z, "scale", 0.7, hold=["hue"])
    np.testing.assert_allclose(_read(space, out, "scale"), 0.7, atol=1e-4)
    np.testing.assert_allclose(_read(space, out, "hue"), _read(space, z, "hue"), atol=1e-4)


@pytest.mark.parametrize("hold, word", [(["size"], "size"), (["scale"], "scale")])
def test_bad_hold_is_refused_naming_the_field(hold, word):
    with pytest.raises(ValidationError, match=f"hold: .*{word}"):
        conditional_step(_space(), "scale", hold)


def test_a_direction_inside_the_held_span_is_refused():
    space = _space()
    w = space.knobs["scale"].weight + space.knobs["x"].weight
    space.knobs["mix"] = Knob("mix", w, 0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValidationError, match="hold: 'mix' cannot move"):
        conditional_step(space, "mix", ["scale", "x"])
