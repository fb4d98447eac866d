"""Vector layers: the parameters a vector model's decoder outputs, drawn at any size (numpy) or written as SVG.

Serving-safe (numpy + the standard library): Sample / Decode of a vector model at an `output_size` other than
its native one, or as SVG, run the ONNX decoder for its `layers` and `background` outputs and draw them here.
Why numpy and not an ONNX graph parameterised by size: the same parameters must draw at every size from 16 to
1024 px, and a size-dependent graph would need the pixel grid as an input or a graph per size; the drawing is a
few array operations per layer (the cost is the size squared times the layers, far below the PNG encoding of
the same pixels), it is exact to float rounding against the differentiable rasteriser the model was trained
with (models/nets/vector.py implements the same formulas in torch; the unit tests compare them), and it keeps
torch out of serving.

A layer is an affine image of a canonical shape: `ellipse` (the unit circle) or `polygonK` (the regular K-gon
with circumradius 1, K in 3..12), placed by its centre c and a 2x2 matrix A (image-fraction units, x to the
right and y down, the image spanning [0, 1]^2): point u of the canonical shape lands at c + A u. One row of
`layers` (L, 10) is [cx, cy, a11, a12, a21, a22, r, g, b, opacity] with colours in [0, 1]. Layers are
composed in order over the background colour: out = out * (1 - o m) + colour * o m, m the layer's coverage.

Coverage = sigmoid(-d / edge_px), d the signed distance of the pixel centre to the outline in output pixels
(exact for a polygon's edges; first order for an ellipse), so an edge is equally sharp in pixels at every
size: the same parameters draw crisply at 16 px and at 1024 px. edge_px = 0.25 gives the slope of an
area-sampled (box-filtered) edge, what the procedural data sets render.
"""
from __future__ import annotations

import math
from xml.sax.saxutils import quoteattr

import numpy as np

from latentserve.errors import ValidationError

PARAMS = ("cx", "cy", "a11", "a12", "a21", "a22", "r", "g", "b", "opacity")
N_PARAMS = len(PARAMS)
POLYGON_SIDES = (3, 12)
DEFAULT_EDGE_PX = 0.25
WINDOW_EDGES = 40.0  # a layer is drawn within this many edge widths of its bounding box (see _window)


def check_kinds(kinds) -> tuple[str, ...]:
    """Layer kinds ('ellipse' | 'polygon3' .. 'polygon12'), checked; at least one."""
    kinds = tuple(kinds)
    if not kinds:
        raise ValidationError("vector layers: at least one layer kind needed")
    for k in kinds:
        if k == "ellipse":
            continue
        sides = k[len("polygon"):] if k.startswith("polygon") else ""
        if not (sides.isdigit() and POLYGON_SIDES[0] <= int(sides) <= POLYGON_SIDES[1]):
            raise ValidationError(f"vector layer kind {k!r}; use 'ellipse' or 'polygonK' with K in "
                                  f"{POLYGON_SIDES[0]}..{POLYGON_SIDES[1]}")
    return kinds


def polygon_normals(sides: int) -> np.ndarray:
    """Outward unit normals (K, 2) of the canonical regular K-gon's edges; every edge is at the apothem
    cos(pi/K) from the centre. Vertices at angles -90 + 360 k / K degrees (y down: the first one on top)."""
    ang = np.deg2rad(-90.0 + 360.0 * (np.arange(sides) + 0.5) / sides)  # between consecutive vertices
    return np.stack([np.cos(ang), np.sin(ang)], axis=1)


def polygon_vertices(sides: int) -> np.ndarray:
    """Vertices (K, 2) of the canonical regular K-gon (circumradius 1)."""
    ang = np.deg2rad(-90.0 + 360.0 * np.arange(sides) / sides)
    return np.stack([np.cos(ang), np.sin(ang)], axis=1)


def _signed_distance(kind: str, x: np.ndarray, y: np.ndarray, layer: np.ndarray, size: int) -> np.ndarray:
    """Signed distance in output pixels (> 0 outside) of the points (x, y) (image fractions; arrays that
    broadcast to the image) to one layer. Written per coordinate: (..., 2) @ (2, 2) products are slow in numpy."""
    cx, cy, a11, a12, a21, a22 = (float(v) for v in layer[:6])
    det = a11 * a22 - a12 * a21
    if abs(det) < 1e-12:
        return np.full(np.broadcast_shapes(x.shape, y.shape), np.inf, np.float32)
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det  # A^-1
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    qx, qy = np.float32(i11) * dx + np.float32(i12) * dy, np.float32(i21) * dx + np.float32(i22) * dy
    if kind == "ellipse":
        rad = np.sqrt(qx * qx + qy * qy + np.float32(1e-12))
        gx, gy = (i11 * qx + i21 * qy) / rad, (i12 * qx + i22 * qy) / rad  # A^-T q/|q|
        return (rad - 1.0) / np.sqrt(gx * gx + gy * gy + np.float32(1e-12)) * np.float32(size)
    sides = int(kind[len("polygon"):])
    apothem = math.cos(math.pi / sides)
    out = None
    for nx, ny in polygon_normals(sides):
        sx, sy = i11 * nx + i21 * ny, i12 * nx + i22 * ny  # A^-T n
        inv_len = size / math.hypot(sx, sy)
        d = (np.float32(nx * inv_len) * qx + np.float32(ny * inv_len) * qy) - np.float32(apothem * inv_len)
        out = d if out is None else np.maximum(out, d, out=out)
    return out


def _window(layer: np.ndarray, size: int, edge_px: float) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 of the pixels one layer can change: its bounding box (the canonical shape
    lies in the unit disc, whose image under A has half-extents |row of A|) widened by WINDOW_EDGES edge
    widths, beyond which its coverage, sigmoid(-WINDOW_EDGES), is below float32 resolution. Drawing only
    there gives the same pixels as drawing everywhere, at the cost of the layer's area instead of the image's."""
    cx, cy, a11, a12, a21, a22 = (float(v) for v in layer[:6])
    margin = (WINDOW_EDGES * edge_px + 1.0) / size
    ex, ey = math.hypot(a11, a12) + margin, math.hypot(a21, a22) + margin
    if not all(math.isfinite(v) for v in (cx, cy, ex, ey)):
        return 0, size, 0, size
    def px(v: float, up: bool) -> int:  # a fraction -> a pixel index in [0, size]
        return int(min(max(math.ceil(v * size) if up else math.floor(v * size), 0), size))
    return px(cy - ey, False), px(cy + ey, True), px(cx - ex, False), px(cx + ex, True)


def render(layers: np.ndarray, background: np.ndarray, kinds, size: int,
           edge_px: float = DEFAULT_EDGE_PX) -> np.ndarray:
    """layers (N, L, 10), background (N, 3) -> float32 (N, 3, size, size) in [-1, 1] (the networks' range)."""
    kinds = check_kinds(kinds)
    layers = np.asarray(layers, np.float64)
    background = np.asarray(background, np.float64)
    if layers.ndim != 3 or layers.shape[1:] != (len(kinds), N_PARAMS) or background.shape != (len(layers), 3):
        raise ValidationError(f"vector layers must be (N, {len(kinds)}, {N_PARAMS}) with background (N, 3); got "
                              f"{layers.shape} and {background.shape}")
    t = ((np.arange(size) + 0.5) / size).astype(np.float32)
    x, y = t[None, :], t[:, None]  # columns, rows
    out = np.empty((len(layers), 3, size, size), np.float32)
    for i in range(len(layers)):
        img = np.empty((3, size, size), np.float32)
        img[:] = background[i].astype(np.float32)[:, None, None]
        for kind, layer in zip(kinds, layers[i]):
            r0, r1, c0, c1 = _window(layer, size, edge_px)
            if r0 >= r1 or c0 >= c1:
                continue
            d = _signed_distance(kind, x[:, c0:c1], y[r0:r1], layer, size)
            # o * sigmoid(-d / edge_px), via tanh (no overflow warnings far from the edge)
            m = np.tanh(d * np.float32(-0.5 / edge_px))
            m *= np.float32(0.5 * layer[9])
            m += np.float32(0.5 * layer[9])
            win = img[:, r0:r1, c0:c1]
            win *= 1.0 - m
            win += layer[6:9].astype(np.float32)[:, None, None] * m
        out[i] = img * 2.0 - 1.0
    return out


def _hex(rgb: np.ndarray) -> str:
    r, g, b = (int(round(float(np.clip(v, 0.0, 1.0)) * 255)) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def _num(v: float) -> str:
    return f"{float(v):.5g}"


def to_svg(layers: np.ndarray, background: np.ndarray, kinds, size: int) -> bytes:
    """One image's layers (L, 10) and background (3,) -> an SVG document `size` px wide (UTF-8 bytes).

    The viewBox is the unit square (image fractions), so the document scales to any size without loss; each
    layer is its canonical shape under `transform="matrix(a11 a21 a12 a22 cx cy)"` (SVG's column order) with
    its colour and fill-opacity. Renderers anti-alias the edges their own way (the raster path's edge is
    edge_px wide)."""
    kinds = check_kinds(kinds)
    layers = np.asarray(layers, np.float64)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{int(size)}" height="{int(size)}" '
             f'viewBox="0 0 1 1" shape-rendering="geometricPrecision">',
             f'<rect x="0" y="0" width="1" height="1" fill="{_hex(np.asarray(background))}"/>']
    for kind, layer in zip(kinds, layers):
        cx, cy, a11, a12, a21, a22 = layer[:6]
        transform = quoteattr(f"matrix({' '.join(_num(v) for v in (a11, a21, a12, a22, cx, cy))})")
        style = f'fill="{_hex(layer[6:9])}" fill-opacity="{_num(np.clip(layer[9], 0.0, 1.0))}"'
        if kind == "ellipse":
            shape = f'<circle cx="0" cy="0" r="1" {style} transform={transform}/>'
        else:
            pts = " ".join(f"{_num(x)},{_num(y)}" for x, y in polygon_vertices(int(kind[len('polygon'):])))
            shape = f'<polygon points="{pts}" {style} transform={transform}/>'
        parts.append(f'<g data-layer="{kind}">{shape}</g>')
    parts.append("</svg>")
    return "\n".join(parts).encode()
