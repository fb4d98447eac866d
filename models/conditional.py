"""Conditional knob directions: move one factor while holding named others fixed (issue #22, part 3a).

A factor knob's linear read-out is f_k(z) = w_k . z + b_k (models/latent.Knob). When factors were correlated in
training, w_t and w_h are far from orthogonal and the naive step along w_t moves the held factor h too. As in
InterFaceGAN's conditional manipulation (Shen et al. 2020), the conditional direction is w_t with its component
in span{w_h : h held} removed: d = w_t - W_h (W_h^T W_h)^-1 W_h^T w_t. Moving by a * d / (w_t . d) changes f_t by
exactly a and every held f_h by 0 (to the linear read-outs; the decoder and the judge decide what that buys).
Operates on a LatentSpace; numpy only.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from latentserve.errors import ValidationError

MIN_KEPT = 1e-3  # d must keep this share of ||w_t||^2: else the target is (nearly) a mix of the held factors


def _factor_knob(space: Any, name: str, what: str):
    knob = space.knobs.get(name)
    if knob is None:
        raise ValidationError(f"{what}: unknown factor {name!r}; factor knobs: {', '.join(space.knobs) or 'none'}")
    return knob


def conditional_step(space: Any, name: str, hold: Iterable[str] = ()) -> np.ndarray:
    """(D,) float32: one unit of factor `name` with the linear read-outs of every factor in `hold` unchanged.
    With `hold` empty this is the naive step w / ||w||^2. ValidationError naming `hold` for an unknown factor,
    the target itself, or a target whose direction lies (nearly) in the span of the held ones."""
    knob = _factor_knob(space, name, "knob")
    w = knob.weight.astype(np.float64)
    held = list(dict.fromkeys(hold))
    if name in held:
        raise ValidationError(f"hold: {name!r} is the factor being moved; it cannot also be held")
    if not held:
        return knob.unit_step()
    wh = np.stack([_factor_knob(space, h, "hold").weight.astype(np.float64) for h in held], 1)  # (D, H)
    coef, *_ = np.linalg.lstsq(wh, w, rcond=None)
    d = w - wh @ coef
    kept = float(w @ d)
    if kept <= MIN_KEPT * float(w @ w):
        raise ValidationError(f"hold: {name!r} cannot move with {', '.join(map(repr, held))} fixed: its direction "
                              f"lies in theirs")
    return (d / kept).astype(np.float32)


def move_holding(space: Any, z: Any, name: str, delta: Any, hold: Iterable[str] = ()) -> np.ndarray:
    """z (N, D) or (D,) moved by `delta` (scalar or (N,)) units of `name` along the conditional step."""
    z = np.asarray(z, np.float32)
    step = conditional_step(space, name, hold)
    d = np.asarray(delta, np.float32)
    return (z + (d[..., None] if z.ndim == 2 and d.ndim == 1 else d) * step).astype(np.float32)


def set_factor_holding(space: Any, z: Any, name: str, target: Any, hold: Iterable[str] = (),
                       labels: Any = None) -> np.ndarray:
    """z moved along the conditional step so factor `name` reads `target` (LatentSpace.solve_move: the knob's
    nonlinear read-out when it has one and `labels` are given, else its linear read-out)."""
    z2 = np.atleast_2d(np.asarray(z, np.float32))
    t = np.broadcast_to(np.asarray(target, np.float64), (len(z2),))
    step = conditional_step(space, name, hold)
    y = None if labels is None else np.broadcast_to(np.asarray(labels, np.int64), (len(z2),))
    out = space.solve_move(z2, name, t, y, step)
    return out if np.ndim(z) == 2 else out[0]
