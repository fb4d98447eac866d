"""What a Sample / Decode / Edit answers with: the output size and format, checked against the model.

`output_size` (px, width = height) 0 means the model's native size. A raster model (gan, vae, flow, ae) draws
only that size: anything else is INVALID_ARGUMENT naming `output_size` (no resampling is done on its behalf,
so a caller never mistakes an upsampled raster for a sharper model). A vector model (family "vector",
models/vector.py) draws its layers at any size in VECTOR_SIZE_RANGE, and can answer with the layers themselves
as SVG. A texture model (family "sgan", models/texture_grid.py) draws any multiple of its cell between the
manifest's min_output_px and max_output_px with its own decoder (one graph for every size); a size off the
cell grid is refused, not rounded. The pixels of one request together are capped by
`Limits.max_output_pixels` (RESOURCE_EXHAUSTED).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latentserve.errors import OverloadedError, ValidationError
from latentserve.models import texture_grid
from latentserve.models import vector as vec
from latentserve.services.core import images as imgs

VECTOR_FAMILY = "vector"
VECTOR_SIZE_RANGE = (16, 1024)  # px; below 16 a shape's edges are most of it, above it one image is ~3 MB


@dataclass(frozen=True)
class Output:
    """A request's output: format, size in px, and whether the model's own decoder graph draws it (`native`)."""

    fmt: str
    size: int
    native: bool

    @property
    def cache_format(self) -> str:
        """The result cache's format key: the size is part of it when it is not the native one."""
        return self.fmt if self.native else f"{self.fmt}@{self.size}"


def is_vector(sv: Any) -> bool:
    return sv.family == VECTOR_FAMILY


def is_texture(sv: Any) -> bool:
    return sv.family == texture_grid.FAMILY


def sizes(family: str, native: int, manifest: dict) -> dict:
    """ModelInfo.output_sizes: the sizes a model draws, {min_px, max_px, multiple_of_px} (native only: min = max)."""
    if family == VECTOR_FAMILY:
        return {"min_px": VECTOR_SIZE_RANGE[0], "max_px": VECTOR_SIZE_RANGE[1], "multiple_of_px": 1}
    if family == texture_grid.FAMILY:
        t = manifest["texture"]
        return {"min_px": int(t["min_output_px"]), "max_px": int(t["max_output_px"]), "multiple_of_px": int(t["cell_px"])}
    return {"min_px": native, "max_px": native, "multiple_of_px": native}


def resolve(sv: Any, fmt: str, output_size: int, n: int, max_pixels: int) -> Output:
    """The checked output of a request for `n` images of served version `sv` in format `fmt` (already checked
    by images.check_format) at `output_size` (0 = native)."""
    native = int(sv.image_shape[-1])
    size = int(output_size)
    vector = is_vector(sv)
    if fmt == imgs.SVG and not vector:
        raise ValidationError(f"format: SVG needs a vector model; {sv.name} is a {sv.family} model (raster)")
    if size == 0:
        size = native
    elif is_texture(sv):
        texture_grid.check_size(sv.record.manifest["texture"], size, sv.name)
    elif vector:
        lo, hi = VECTOR_SIZE_RANGE
        if not lo <= size <= hi:
            raise ValidationError(f"output_size: {size} is outside [{lo}, {hi}] px (0 = the model's {native} px)")
    elif size != native:
        raise ValidationError(f"output_size: {sv.name} is a {sv.family} model (raster) and draws only {native} px "
                              f"images; use 0 or {native}")
    if n * size * size > max_pixels:
        raise OverloadedError(f"output_size: {n} images of {size}x{size} px is {n * size * size} pixels, over this "
                              f"server's {max_pixels} per request (Limits.max_output_pixels); ask for fewer or "
                              f"smaller images")
    return Output(fmt=fmt, size=size, native=size == native and fmt != imgs.SVG)


def draw(sv: Any, flat: np.ndarray, out: Output) -> list[imgs.Image]:
    """A vector model's decoder rows `flat` (N, 3 + 10 L: background, then layers; the model runner's
    out="vector") -> images at `out.size` in `out.fmt`, or SVG documents. CPU-bound: run it off the event loop."""
    spec = sv.record.manifest["vector"]
    kinds = spec["layers"]
    background = flat[:, :3]
    layers = flat[:, 3:].reshape(len(flat), len(kinds), vec.N_PARAMS)
    if out.fmt == imgs.SVG:
        return [imgs.Image(encoded=vec.to_svg(layers[i], background[i], kinds, out.size)) for i in range(len(flat))]
    x = vec.render(layers, background, kinds, out.size, float(spec["edge_px"]))
    return imgs.encode_images(x, out.fmt)
