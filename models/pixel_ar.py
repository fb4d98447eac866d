"""Sequential sampling of an autoregressive decoder from its exported graphs (numpy; serving-safe, no torch).

A VAE trained with `decoder="pixelcnn"` (models/nets/pixelcnn.py) exports beside the contract's graphs:
- `ar_context`: (latent, label) -> context (B,4,H+2M,W+2M), once per decode;
- `ar_step`: (pixels (B,3,P,P), context (B,4,P,P)), P = 2M+1 -> (mean (B,3), log_scale (B,3)) of the patch's
  centre pixel, once per pixel in raster order.
`ar_decode` runs the H*W steps for all rows of a batch at once (rows of one request and, through the model
server's batcher, of concurrent requests). Each sub-pixel is a logistic draw at the manifest's temperature,
rounded to the 256 levels. The noise of a row is seeded by its (latent, label) bytes, so a row decodes to the
same image whatever batch it shares (the result cache and Sample's seeds stay meaningful).
The manifest records the decoder as `autoregressive: {kind: "pixelcnn", margin: M, temperature: T}`; the
contract's `decoder` graph of such a model is the feed-forward auxiliary head (what gradient latent ops use).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from latentserve.errors import ValidationError

AR_GRAPHS = ("ar_context", "ar_step")
Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # a session's run(feeds) -> outputs


def ar_settings(manifest: dict) -> dict | None:
    """The manifest's autoregressive decoder settings {kind, margin, temperature}, or None (a plain decoder)."""
    ar = manifest.get("autoregressive")
    if not ar:
        return None
    if int(ar.get("margin", 0)) < 1 or not 0.0 < float(ar.get("temperature", 0.0)) <= 2.0:
        raise ValidationError(f"manifest autoregressive settings {ar!r} need margin >= 1 and temperature in (0, 2]")
    return {"kind": str(ar.get("kind", "pixelcnn")), "margin": int(ar["margin"]), "temperature": float(ar["temperature"])}


def row_noise(latents: np.ndarray, labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Logistic noise (N, *shape) float32, row i seeded by the bytes of (latents[i], labels[i])."""
    out = np.empty((len(latents), *shape), np.float32)
    for i, (z, y) in enumerate(zip(np.ascontiguousarray(latents, np.float32), np.asarray(labels, np.int64))):
        seed = int.from_bytes(hashlib.blake2b(z.tobytes() + y.tobytes(), digest_size=8).digest(), "little")
        u = np.random.default_rng(seed).random(shape, dtype=np.float64)
        u = np.clip(u, 1e-6, 1.0 - 1e-6)
        out[i] = np.log(u) - np.log1p(-u)
    return out


def ar_decode(run_context: Run, run_step: Run, latents: np.ndarray, labels: np.ndarray, margin: int,
              temperature: float) -> np.ndarray:
    """latents (N,D) f32, labels (N,) i64 -> images (N,3,H,W) f32 on the 256 levels of [-1,1]."""
    latents = np.ascontiguousarray(latents, np.float32)
    labels = np.ascontiguousarray(labels, np.int64)
    context = run_context({"latent": latents, "label": labels})["context"]  # (N,4,H+2M,W+2M)
    n, _, hp, wp = context.shape
    m, p = margin, 2 * margin + 1
    h, w = hp - 2 * m, wp - 2 * m
    if n == 0:
        return np.zeros((0, 3, h, w), np.float32)
    noise = row_noise(latents, labels, (h, w, 3)) * np.float32(temperature)  # (N,H,W,3)
    canvas = np.zeros((n, 3, hp, wp), np.float32)
    for r in range(h):
        rows_px, rows_ctx = canvas[:, :, r:r + p], context[:, :, r:r + p]
        for c in range(w):
            out = run_step({"pixels": np.ascontiguousarray(rows_px[:, :, :, c:c + p]),
                            "context": np.ascontiguousarray(rows_ctx[:, :, :, c:c + p])})
            v = out["mean"] + np.exp(out["log_scale"]) * noise[:, r, c]  # (N,3)
            v = np.rint((np.clip(v, -1.0, 1.0) + 1.0) * 127.5) / np.float32(127.5) - 1.0
            canvas[:, :, r + m, c + m] = v
    return canvas[:, :, m:m + h, m:m + w].copy()
