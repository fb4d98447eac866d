"""What a texture model (family "sgan", models/families/sgan.py) is asked for, and the noise it draws with: the
size rules and the local noise grid, numpy only (serving-safe).

A texture model's decoder takes (latent, label, noise): the latent is the global code and the phases / 2 pi of
its plane waves (the `texture` prior: N(0, I) x U[0, 1)), the noise a (local_dim, size/cell, size/cell) grid of
standard normal local codes whose spatial size sets the output size. The manifest's `texture` block
(`texture_spec`) says which sizes it draws: multiples of its cell between min_output_px and max_output_px.
A size that is not a multiple is refused (never rounded), so an answer always has the size asked for.

The grid is part of the texture (where its random details fall) but not of the latent a caller holds, so the
server builds it from a 64-bit seed per row: by default the digest of the row's latent (`row_seeds`), so one
latent decodes to the same texture in any batch, from a handle, from the result cache and in the same size
again, and under another class (Edit) keeps where its details fall; Interpolate gives every frame its first
end's seed (one shared grid, the frames differ only by their latents). `noise_grid` draws a row's grid of any
size from its seed (the grids of two sizes are independent draws, not crops of one plane).
"""
from __future__ import annotations

import hashlib
from typing import Mapping

import numpy as np

from latentserve.errors import ValidationError

FAMILY = "sgan"
SIZE_RANGE = (32, 512)  # px served: below 32 a texture is a few periods; 512^2 is ~0.8 MB of uint8 per image


def texture_spec(cell: int, global_dim: int, periodic: int, local_dim: int) -> dict:
    """The manifest's `texture` block for a generator of `cell` px per grid cell: the sizes served (SIZE_RANGE
    rounded inwards to whole cells) and the latent / noise layout."""
    lo = -(-SIZE_RANGE[0] // cell) * cell
    hi = SIZE_RANGE[1] // cell * cell
    return {"cell_px": int(cell), "min_output_px": int(lo), "max_output_px": int(hi), "global_dim": int(global_dim),
            "periodic": int(periodic), "local_dim": int(local_dim)}


def check_size(spec: Mapping, size: int, model: str) -> int:
    """`size` px if the texture model described by `spec` draws it, else INVALID_ARGUMENT naming output_size
    (with the nearest sizes it does draw)."""
    cell, lo, hi = int(spec["cell_px"]), int(spec["min_output_px"]), int(spec["max_output_px"])
    if not lo <= size <= hi:
        raise ValidationError(f"output_size: {size} is outside [{lo}, {hi}] px for texture model {model} "
                              f"(multiples of {cell} px; 0 = the model's native size)")
    if size % cell:
        below, above = size // cell * cell, -(-size // cell) * cell
        near = " or ".join(str(s) for s in (below, above) if lo <= s <= hi)
        raise ValidationError(f"output_size: {size} is not a multiple of {cell} px, the size of one latent cell of "
                              f"texture model {model}; use {near}")
    return size


def row_seeds(latents: np.ndarray) -> np.ndarray:
    """uint64 (N,): each row's noise seed, the first 8 bytes of blake2b of its latent's float32 bytes. Not of its
    label: the same latent under another class (Edit) keeps its noise grid, so only the class changes."""
    z = np.ascontiguousarray(latents, dtype=np.float32)
    return np.array([int.from_bytes(hashlib.blake2b(z[i].tobytes(), digest_size=8).digest(), "little")
                     for i in range(len(z))], dtype=np.uint64)


def noise_grid(seeds: np.ndarray, local_dim: int, cells: int) -> np.ndarray:
    """float32 (N, local_dim, cells, cells): each row's standard normal local codes drawn from its seed."""
    out = np.empty((len(seeds), local_dim, cells, cells), dtype=np.float32)
    for i, s in enumerate(np.asarray(seeds, dtype=np.uint64)):
        out[i] = np.random.default_rng(int(s)).standard_normal((local_dim, cells, cells), dtype=np.float32)
    return out


def blend(a: np.ndarray, b: np.ndarray, steps: int, periodic: int) -> np.ndarray:
    """(steps, D) latents from a to b (D,): the global codes linearly, the last `periodic` coordinates (phases /
    2 pi, periodic with period 1) along the shorter way round the circle, wrapped into [0, 1)."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = b64 - a64
    if periodic:
        d[-periodic:] = (d[-periodic:] + 0.5) % 1.0 - 0.5
    out = (a64 + t * d).astype(np.float32)
    if periodic:  # wrapped after the cast: a phase just below 1 in float64 may round up to 1.0 in float32
        out[:, -periodic:] %= np.float32(1.0)
    return out
