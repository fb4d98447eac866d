"""Protobuf <-> plain numpy / dict conversion for latentserve.v1: the only module besides the ingress that
touches the generated pb2 code.

Conventions (docs/architecture.md): the networks see float32 (N, 3, H, W) in [-1, 1]; the wire carries one
`Image` per picture (PNG / JPEG bytes, raw uint8 (H, W, 3) or raw float32 (3, H, W)) and latents as a flat
float vector plus a class label. Decoded images reach this module as float32 (N, 3, H, W), or as uint8
(N, H, W, 3) when the model server already converted them (`float_images_to_uint8`, once per batch). Every
check raises latentserve.errors.ValidationError naming the item ("images[3]", "latents[0]") and what is
allowed, which the ingress maps to INVALID_ARGUMENT. The hot path avoids copies: raw tensors are read with
np.frombuffer, a batch of raw uint8 images is serialised with one tobytes (sliced per image), latents are
checked once per batch; PNG is only produced when asked for.
"""
from __future__ import annotations

import io
import math
from typing import Any, Iterable, Sequence

import numpy as np

from latentserve.errors import ValidationError
from latentserve.v1 import latent_pb2 as pb

# Image formats by name (the ingress passes these strings around; pb enums stay here).
PNG, JPEG, RAW_UINT8, RAW_FLOAT32 = "png", "jpeg", "raw_uint8", "raw_float32"
_FORMATS = {
    pb.IMAGE_FORMAT_UNSPECIFIED: PNG,
    pb.IMAGE_FORMAT_PNG: PNG,
    pb.IMAGE_FORMAT_JPEG: JPEG,
    pb.IMAGE_FORMAT_RAW_UINT8: RAW_UINT8,
    pb.IMAGE_FORMAT_RAW_FLOAT32: RAW_FLOAT32,
}
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 1  # small images: level 1 is ~3x faster than the default 6 for a few % more bytes
FLOAT_RANGE_SLACK = 1e-3  # raw float32 images may exceed [-1, 1] by float rounding, not more

DECODE_OUTPUTS = ("float32", "uint8")  # what the model server can return for decoded images

SAMPLE_SOURCES = {
    pb.SAMPLE_SOURCE_UNSPECIFIED: "",  # the model's default (ModelInfo.default_sample_source)
    pb.SAMPLE_SOURCE_PRIOR: "prior",
    pb.SAMPLE_SOURCE_LATENT_GMM: "latent_gmm",
    pb.SAMPLE_SOURCE_GUIDED: "guided",
}
_SAMPLE_SOURCE_ENUM = {"prior": pb.SAMPLE_SOURCE_PRIOR, "latent_gmm": pb.SAMPLE_SOURCE_LATENT_GMM,
                       "guided": pb.SAMPLE_SOURCE_GUIDED}
INTERPOLATION_METHODS = {
    pb.INTERPOLATION_METHOD_UNSPECIFIED: "lerp",
    pb.INTERPOLATION_METHOD_LERP: "lerp",
    pb.INTERPOLATION_METHOD_SLERP: "slerp",
    pb.INTERPOLATION_METHOD_GEODESIC: "geodesic",
}
_INTERPOLATION_ENUM = {"lerp": pb.INTERPOLATION_METHOD_LERP, "slerp": pb.INTERPOLATION_METHOD_SLERP,
                       "geodesic": pb.INTERPOLATION_METHOD_GEODESIC}


# ------------------------------------------------------------------------------------------------ enums
def image_format(value: int) -> str:
    """pb ImageFormat -> 'png' | 'jpeg' | 'raw_uint8' | 'raw_float32' (unspecified = png)."""
    try:
        return _FORMATS[value]
    except KeyError:
        raise ValidationError(
            f"format: unknown image format {value}; allowed: PNG, JPEG, RAW_UINT8, RAW_FLOAT32"
        ) from None


def sample_source(value: int) -> str:
    try:
        return SAMPLE_SOURCES[value]
    except KeyError:
        raise ValidationError(f"source: unknown sample source {value}; allowed: PRIOR, LATENT_GMM, GUIDED") from None


def interpolation_method(value: int) -> str:
    try:
        return INTERPOLATION_METHODS[value]
    except KeyError:
        raise ValidationError(f"method: unknown interpolation method {value}; allowed: LERP, SLERP, GEODESIC") from None


# ------------------------------------------------------------------------------------------------ tensors
_DTYPES = {pb.DTYPE_UINT8: np.dtype("u1"), pb.DTYPE_FLOAT32: np.dtype("<f4")}
_DTYPE_ENUM = {np.dtype("u1"): pb.DTYPE_UINT8, np.dtype("<f4"): pb.DTYPE_FLOAT32}


def tensor_to_array(t: "pb.Tensor", where: str = "tensor") -> np.ndarray:
    """pb.Tensor -> read-only numpy view of its bytes (no copy), shape and size checked."""
    if t.dtype not in _DTYPES:
        name = pb.DType.Name(t.dtype) if t.dtype in pb.DType.values() else str(t.dtype)
        raise ValidationError(f"{where}: dtype must be DTYPE_UINT8 or DTYPE_FLOAT32, got {name}")
    dtype = _DTYPES[t.dtype]
    shape = tuple(int(s) for s in t.shape)
    if not shape or any(s < 0 for s in shape):
        raise ValidationError(f"{where}: shape must be a non-empty list of non-negative sizes, got {list(shape)}")
    n = math.prod(shape)
    if len(t.data) != n * dtype.itemsize:
        raise ValidationError(
            f"{where}: {len(t.data)} data bytes do not match shape {list(shape)} of {dtype.name} "
            f"({n * dtype.itemsize} bytes expected)"
        )
    return np.frombuffer(t.data, dtype=dtype).reshape(shape)


def array_to_tensor(a: np.ndarray) -> "pb.Tensor":
    """uint8 or float32 array -> pb.Tensor (little-endian C order; one copy, by tobytes)."""
    a = np.asarray(a)
    dt = np.dtype("<f4") if a.dtype.kind == "f" else np.dtype(a.dtype)
    if dt not in _DTYPE_ENUM:
        raise ValidationError(f"tensor dtype {a.dtype} is not supported; use uint8 or float32")
    return pb.Tensor(shape=a.shape, dtype=_DTYPE_ENUM[dt], data=np.ascontiguousarray(a, dtype=dt).tobytes())


# ------------------------------------------------------------------------------------------------ images in
def _decode_encoded(data: bytes, hw: tuple[int, int], where: str, max_bytes: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3). Size is checked from the header before pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValidationError(f"{where}: empty image bytes; send a PNG or JPEG, or a raw tensor")
    if len(data) > max_bytes:
        raise ValidationError(f"{where}: {len(data)} bytes is over the limit of {max_bytes} bytes per encoded image")
    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValidationError(f"{where}: not a decodable PNG or JPEG image ({exc})") from None
    if im.format not in ("PNG", "JPEG"):
        raise ValidationError(f"{where}: image format {im.format} is not accepted; send PNG or JPEG")
    w, h = im.size
    if (h, w) != hw:
        raise ValidationError(f"{where}: image is {w}x{h} (WxH), the model expects {hw[1]}x{hw[0]}")
    try:
        if im.mode != "RGB":
            # Grey, palette and alpha images are accepted; alpha is dropped (composited on nothing).
            im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # truncated / corrupt pixel data
        raise ValidationError(f"{where}: image data is corrupt or truncated ({exc})") from None
    return arr


def images_from_pb(images: Sequence["pb.Image"], image_shape: Sequence[int], max_bytes: int = 4 << 20,
                   field: str = "images") -> np.ndarray:
    """pb Images -> float32 (N, 3, H, W) in [-1, 1] for the model with `image_shape` (3, H, W)."""
    _, h, w = (int(s) for s in image_shape)
    out = np.empty((len(images), 3, h, w), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = image_from_pb(img, (3, h, w), max_bytes, f"{field}[{i}]")
    return out


def image_from_pb(img: "pb.Image", image_shape: Sequence[int], max_bytes: int = 4 << 20,
                  where: str = "image") -> np.ndarray:
    """One pb Image -> float32 (3, H, W) in [-1, 1]."""
    _, h, w = (int(s) for s in image_shape)
    kind = img.WhichOneof("data")
    if kind == "encoded":
        u8 = _decode_encoded(img.encoded, (h, w), where, max_bytes)  # (H, W, 3)
        return (u8.transpose(2, 0, 1).astype(np.float32) / 127.5) - 1.0
    if kind == "tensor":
        t = img.tensor
        if t.dtype == pb.DTYPE_UINT8:
            a = tensor_to_array(t, f"{where}.tensor")
            if a.shape != (h, w, 3):
                raise ValidationError(f"{where}.tensor: uint8 image must have shape [{h}, {w}, 3] (H, W, RGB), got {list(a.shape)}")
            return (a.transpose(2, 0, 1).astype(np.float32) / 127.5) - 1.0
        if t.dtype == pb.DTYPE_FLOAT32:
            a = tensor_to_array(t, f"{where}.tensor")
            if a.shape != (3, h, w):
                raise ValidationError(f"{where}.tensor: float32 image must have shape [3, {h}, {w}] (C, H, W), got {list(a.shape)}")
            if not np.isfinite(a).all():
                raise ValidationError(f"{where}.tensor: float32 image contains NaN or infinity")
            lo, hi = float(a.min()), float(a.max())
            if lo < -1.0 - FLOAT_RANGE_SLACK or hi > 1.0 + FLOAT_RANGE_SLACK:
                raise ValidationError(f"{where}.tensor: float32 image values must be in [-1, 1], got [{lo:.4g}, {hi:.4g}]")
            return a
        tensor_to_array(t, f"{where}.tensor")  # raises the dtype message
    raise ValidationError(f"{where}: empty Image; set `encoded` (PNG/JPEG bytes) or `tensor`")


# ------------------------------------------------------------------------------------------------ images out
def float_images_to_uint8(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """float32 (N, 3, H, W) in [-1, 1] -> C-contiguous uint8 (N, H, W, 3), clipped and rounded exactly like
    `models.data.base.to_uint8`. `inplace=True` reuses `x` (a float32 array the caller owns) as scratch, so
    the conversion allocates only the output."""
    y = x if (inplace and x.dtype == np.float32 and x.flags.writeable) else np.array(x, dtype=np.float32)
    np.clip(y, -1.0, 1.0, out=y)
    y += 1.0
    y *= 127.5
    np.rint(y, out=y)
    out = np.empty((y.shape[0], y.shape[2], y.shape[3], y.shape[1]), dtype=np.uint8)  # (N, H, W, 3)
    np.copyto(out, y.transpose(0, 2, 3, 1), casting="unsafe")  # transpose + cast in one pass
    return out


def images_to_pb(images: np.ndarray, fmt: str) -> list["pb.Image"]:
    """Decoded images -> pb Images in `fmt` ('png' | 'jpeg' | 'raw_uint8' | 'raw_float32').

    `images`: float32 (N, 3, H, W) in [-1, 1], or uint8 (N, H, W, 3) already converted by the model server
    (not accepted for raw_float32: the 8-bit rounding cannot be undone)."""
    if images.dtype == np.uint8:
        if fmt == RAW_FLOAT32:
            raise ValidationError("raw_float32 output needs float images; the model server returned uint8")
        u8 = np.ascontiguousarray(images)  # (N, H, W, 3)
    elif fmt == RAW_FLOAT32:
        x = np.ascontiguousarray(images, dtype="<f4")
        shape = list(x.shape[1:])
        return [pb.Image(tensor=pb.Tensor(shape=shape, dtype=pb.DTYPE_FLOAT32, data=x[i].tobytes()))
                for i in range(len(x))]
    else:
        u8 = float_images_to_uint8(images)  # (N, H, W, 3)
    if fmt == RAW_UINT8:
        # one bytes object for the batch, sliced per image (a slice of bytes is one memcpy, no numpy per image)
        shape, data, step = list(u8.shape[1:]), u8.tobytes(), math.prod(u8.shape[1:])
        tensor, image, dt = pb.Tensor, pb.Image, pb.DTYPE_UINT8
        return [image(tensor=tensor(shape=shape, dtype=dt, data=data[i * step:(i + 1) * step])) for i in range(len(u8))]
    return [pb.Image(encoded=b) for b in encode_uint8(u8, fmt)]


def encode_uint8(u8: np.ndarray, fmt: str) -> list[bytes]:
    """uint8 (N, H, W, 3) -> PNG or JPEG bytes per image."""
    from PIL import Image

    if fmt not in (PNG, JPEG):
        raise ValidationError(f"cannot encode images as {fmt!r}; allowed: png, jpeg")
    out = []
    for img in u8:
        buf = io.BytesIO()
        if fmt == PNG:
            Image.fromarray(img, "RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        else:
            Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


# ------------------------------------------------------------------------------------------------ latents
def latents_from_pb(latents: Sequence["pb.Latent"], dim: int, n_classes: int,
                    field: str = "latents") -> tuple[np.ndarray, np.ndarray]:
    """pb Latents -> (z float32 (N, D), labels int64 (N,)); length, finiteness and label range checked."""
    n = len(latents)
    z = np.empty((n, dim), dtype=np.float32)
    labels = np.empty((n,), dtype=np.int64)
    for i, lat in enumerate(latents):
        if len(lat.values) != dim:
            raise ValidationError(f"{field}[{i}]: latent has {len(lat.values)} values, the model's latent size is {dim}")
        label = lat.label
        if not 0 <= label < n_classes:
            check_label(label, n_classes, f"{field}[{i}].label")
        z[i] = lat.values
        labels[i] = label
    # finiteness once for the whole batch: one float64 sum on the hot path (float32 values cannot overflow
    # it, so a non-finite sum means a NaN/inf value), the per-row check only to name the offending row
    if not math.isfinite(float(z.sum(dtype=np.float64))):
        finite = np.isfinite(z).all(axis=1)
        if not finite.all():
            raise ValidationError(f"{field}[{int(np.argmin(finite))}]: latent contains NaN or infinity")
    return z, labels


def latent_values(lat: "pb.Latent", dim: int, where: str = "latent") -> np.ndarray:
    """One pb Latent's values -> float32 (D,), checked."""
    if len(lat.values) != dim:
        raise ValidationError(f"{where}: latent has {len(lat.values)} values, the model's latent size is {dim}")
    v = np.array(lat.values, dtype=np.float32)
    if not np.isfinite(v).all():
        raise ValidationError(f"{where}: latent contains NaN or infinity")
    return v


def check_label(label: int, n_classes: int, where: str = "label") -> int:
    if not 0 <= int(label) < n_classes:
        raise ValidationError(f"{where}: class label {label} is out of range; the model has classes 0..{n_classes - 1}")
    return int(label)


def latents_to_pb(z: np.ndarray, labels: Iterable[int]) -> list["pb.Latent"]:
    """float32 (N, D) + labels (N,) -> pb Latents."""
    return [pb.Latent(values=row, label=int(lab)) for row, lab in zip(np.asarray(z, dtype=np.float32).tolist(), labels)]


def latent_to_pb(z: np.ndarray, label: int) -> "pb.Latent":
    return pb.Latent(values=np.asarray(z, dtype=np.float32).tolist(), label=int(label))


# ------------------------------------------------------------------------------------------------ model info
def model_info_to_pb(info: dict[str, Any]) -> "pb.ModelInfo":
    """Plain dict (built by the ingress from a manifest) -> pb.ModelInfo. Keys mirror the proto fields;
    sample_sources / interpolation_methods are names ('prior', 'lerp', ...); `gates` is models/gates.py's
    compute_gates result; None figures (knob r2_fit / r2_judged, gate value / threshold) -> NaN."""
    gates = info.get("gates") or {}
    return pb.ModelInfo(
        name=info["name"],
        version=int(info["version"]),
        versions=[int(v) for v in info["versions"]],
        family=info["family"],
        image_shape=[int(s) for s in info["image_shape"]],
        latent_shape=[int(s) for s in info["latent_shape"]],
        class_names=list(info["class_names"]),
        factors=[pb.Factor(name=f["name"], low=float(f["low"]), high=float(f["high"]), unit=f.get("unit", ""),
                           doc=f.get("doc", "")) for f in info["factors"]],
        knobs=[pb.Knob(name=k["name"], kind=k["kind"], unit=k.get("unit", ""), low=float(k["low"]),
                       high=float(k["high"]), r2_fit=_nan_if_none(k.get("r2_fit")),
                       r2_judged=_nan_if_none(k.get("r2_judged")), usable=bool(k.get("usable", True)))
               for k in info["knobs"]],
        sample_sources=[_SAMPLE_SOURCE_ENUM[s] for s in info["sample_sources"]],
        interpolation_methods=[_INTERPOLATION_ENUM[m] for m in info["interpolation_methods"]],
        metrics={k: float(v) for k, v in info["metrics"].items()},
        backend=info["backend"],
        prior=info["prior"],
        default_sample_source=_SAMPLE_SOURCE_ENUM[info["default_sample_source"]],
        default_class_check=float(info.get("default_class_check", 0.0)),
        default_class_checks={k: float(v) for k, v in info.get("default_class_checks", {}).items()},
        limits=pb.Limits(max_images_per_request=int(info["limits"]["max_images_per_request"]),
                         max_interpolation_steps=int(info["limits"]["max_interpolation_steps"]),
                         max_geodesic_iterations=int(info["limits"].get("max_geodesic_iterations", 0)),
                         max_guidance_steps=int(info["limits"].get("max_guidance_steps", 0)),
                         max_refine_steps=int(info["limits"].get("max_refine_steps", 0))),
        gates=[pb.Gate(name=t["name"], value=_nan_if_none(t["value"]), threshold=_nan_if_none(t["threshold"]),
                       op=t["op"], passed=bool(t["passed"]), judge=t["judge"] or "", detail=t["detail"])
               for t in gates.get("targets", [])],
        gates_passed=bool(gates.get("passed", False)),
        judge=gates.get("judge") or "",
    )


def _nan_if_none(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ------------------------------------------------------------------------------------------------ augment
# Augment specs name formats like the client does (uint8/float32 for the raw tensors).
AUGMENT_FORMATS = {PNG: PNG, JPEG: JPEG, RAW_UINT8: "uint8", RAW_FLOAT32: "float32"}
AUGMENT_WIRE_FORMATS = {v: k for k, v in AUGMENT_FORMATS.items()}


def augment_spec_from_pb(msg: "pb.AugmentSpec") -> Any:
    """AugmentSpec proto -> the checked plain spec (services/augment/spec.py parses it: one set of checks
    and messages for YAML specs and the wire)."""
    from latentserve.services.augment.spec import parse_spec

    factors: dict[str, Any] = {}
    for i, f in enumerate(msg.factors):
        kind = f.WhichOneof("values")
        if kind is None:
            raise ValidationError(f"spec.factors.{f.name or i}: set value, range, grid or list")
        if f.name in factors:
            raise ValidationError(f"spec.factors.{f.name}: given twice")
        if kind == "value":
            factors[f.name] = f.value
        elif kind == "range":
            factors[f.name] = {"range": [f.range.low, f.range.high]}
        elif kind == "grid":
            factors[f.name] = {"grid": [f.grid.low, f.grid.high, f.grid.steps]}
        else:
            factors[f.name] = {"values": list(f.list.values)}
    return parse_spec({
        "model": msg.model, "version": msg.version, "count": msg.count,
        "class_counts": dict(msg.class_counts) or None, "class_weights": dict(msg.class_weights) or None,
        "factors": factors, "source": sample_source(msg.source), "seed": msg.seed,
        "temperature": float(msg.temperature), "format": AUGMENT_FORMATS[image_format(msg.format)],
        "shard_size": msg.shard_size, "handles": bool(msg.return_handles), "class_check": round(float(msg.class_check), 6),  # float32 on the wire
    })
