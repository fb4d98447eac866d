"""Images and latents at the edge of the core: `Image` (one picture as sent or answered: PNG/JPEG bytes or a
raw uint8 / float32 tensor), the checks and conversions between it and the arrays the networks see, and the
checks of latents given by a caller. Plain Python + numpy (PIL for PNG/JPEG); no transport.

Conventions (docs/architecture.md): networks see float32 (N, 3, H, W) in [-1, 1]; an 8-bit picture is uint8
(H, W, 3) RGB; a raw float32 picture is (3, H, W) in [-1, 1]. Every check raises ValidationError naming the
item ("images[3]", "latents[0]") and what is allowed. Raw tensors are read without a copy (np.frombuffer); a
batch of raw uint8 outputs is serialised with one tobytes, sliced per image; PNG is made only when asked for.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from latentserve.errors import PayloadTooLargeError, ValidationError

PNG, JPEG, RAW_UINT8, RAW_FLOAT32, SVG = "png", "jpeg", "raw_uint8", "raw_float32", "svg"
IMAGE_FORMATS = (PNG, JPEG, RAW_UINT8, RAW_FLOAT32, SVG)  # SVG: vector models only (services/core/output.py)
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 1  # small images: level 1 is faster than the default 6 for a few % more bytes
FLOAT_RANGE_SLACK = 1e-3  # raw float32 images may exceed [-1, 1] by float rounding, not more
# Latent values a caller may send: |value| <= this. Prior draws lie within a few units; the bound leaves room
# for edits and extrapolation while keeping every network's activations far from float32 overflow.
LATENT_ABS_LIMIT = 1000.0
DECODE_OUTPUTS = ("float32", "uint8")  # what a model runner can return for decoded images
TENSOR_DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}


@dataclass(frozen=True)
class Image:
    """One picture: `encoded` PNG/JPEG bytes, or a raw tensor (`dtype` "uint8" (H, W, 3) | "float32"
    (3, H, W), `shape`, little-endian C-order `data`). Neither set = an empty image (refused where one is
    needed). A frontend names an unknown tensor dtype by its wire name in `dtype` (it is refused by name)."""

    encoded: bytes | None = None
    shape: tuple[int, ...] = ()
    dtype: str = ""
    data: bytes = b""

    @property
    def kind(self) -> str:
        return "encoded" if self.encoded is not None else "tensor" if self.dtype else ""

    # The result cache's form: exactly the protobuf wire bytes of a latentserve.v1.Image (encoded = field 1;
    # tensor = field 2: Tensor{shape = 1 packed, dtype = 2, data = 3}), so entries written by any version or
    # frontend of the service read back the same. Written by hand: the core imports no protobuf.
    def to_bytes(self) -> bytes:
        if self.encoded is not None:
            return b"\x0a" + _varint(len(self.encoded)) + self.encoded
        tensor = b""
        if self.shape:
            packed = b"".join(_varint(int(d)) for d in self.shape)
            tensor += b"\x0a" + _varint(len(packed)) + packed
        tensor += b"\x10" + _varint(_DTYPE_CODES[self.dtype])
        if self.data:
            tensor += b"\x1a" + _varint(len(self.data)) + self.data
        return b"\x12" + _varint(len(tensor)) + tensor

    @classmethod
    def from_bytes(cls, blob: bytes) -> "Image":
        fields = dict(_fields(blob))
        if 1 in fields:
            return cls(encoded=bytes(fields[1]))
        if 2 not in fields:
            return cls()
        shape: list[int] = []
        dtype, data = 0, b""
        for num, value in _fields(fields[2]):
            if num == 1:  # packed (or, from an old writer, one varint per element)
                shape.extend(_varints(value) if isinstance(value, (bytes, memoryview)) else [value])
            elif num == 2:
                dtype = value
            elif num == 3:
                data = bytes(value)
        return cls(shape=tuple(shape), dtype=_DTYPE_NAMES.get(dtype, str(dtype)), data=data)


_DTYPE_CODES = {"uint8": 1, "float32": 2}  # latentserve.v1.DType
_DTYPE_NAMES = {v: k for k, v in _DTYPE_CODES.items()}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes | memoryview, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7


def _varints(buf: bytes | memoryview) -> list[int]:
    out, i = [], 0
    while i < len(buf):
        n, i = _read_varint(buf, i)
        out.append(n)
    return out


def _fields(buf: bytes | memoryview) -> list[tuple[int, object]]:
    """(field number, value) of a protobuf message's varint and length-delimited fields, in order."""
    out, i, view = [], 0, memoryview(buf)
    while i < len(view):
        key, i = _read_varint(view, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(view, i)
        elif wire == 2:
            size, i = _read_varint(view, i)
            value, i = view[i:i + size], i + size
        else:
            raise ValueError(f"unexpected protobuf wire type {wire} in a cached image")
        out.append((num, value))
    return out


def check_format(fmt: str) -> str:
    """An output format name ('png' | 'jpeg' | 'raw_uint8' | 'raw_float32' | 'svg'); a frontend passes an unknown
    wire value as its text, which is refused here."""
    if fmt not in IMAGE_FORMATS:
        raise ValidationError(f"format: unknown image format {fmt}; allowed: PNG, JPEG, RAW_UINT8, RAW_FLOAT32, SVG")
    return fmt


# ------------------------------------------------------------------------------------------------ tensors
def tensor_array(img: Image, where: str = "tensor") -> np.ndarray:
    """A raw tensor Image -> read-only numpy view of its bytes (no copy), dtype, shape and size checked."""
    dtype = TENSOR_DTYPES.get(img.dtype)
    if dtype is None:
        raise ValidationError(f"{where}: dtype must be DTYPE_UINT8 or DTYPE_FLOAT32, got {img.dtype}")
    shape = tuple(int(s) for s in img.shape)
    if not shape or any(s < 0 for s in shape):
        raise ValidationError(f"{where}: shape must be a non-empty list of non-negative sizes, got {list(shape)}")
    n = math.prod(shape)
    if len(img.data) != n * dtype.itemsize:
        raise ValidationError(
            f"{where}: {len(img.data)} data bytes do not match shape {list(shape)} of {dtype.name} "
            f"({n * dtype.itemsize} bytes expected)"
        )
    return np.frombuffer(img.data, dtype=dtype).reshape(shape)


def tensor_image(a: np.ndarray) -> Image:
    """A uint8 or float32 array -> raw tensor Image (little-endian C order; one copy, by tobytes)."""
    a = np.asarray(a)
    dt = np.dtype("<f4") if a.dtype.kind == "f" else np.dtype(a.dtype)
    names = {v: k for k, v in TENSOR_DTYPES.items()}
    if dt not in names:
        raise ValidationError(f"tensor dtype {a.dtype} is not supported; use uint8 or float32")
    return Image(shape=tuple(a.shape), dtype=names[dt], data=np.ascontiguousarray(a, dtype=dt).tobytes())


# ------------------------------------------------------------------------------------------------ images in
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the complete end chunk (length, type, CRC) every whole PNG has


def _decode_encoded(data: bytes, hw: tuple[int, int], where: str, max_bytes: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3). The pixel size is checked from the header before any pixel is
    decoded (a decompression bomb is refused by its header); a PNG must be whole (CRCs verified, end chunk
    present) and a JPEG must decode to its end, so truncated or corrupt files are refused, not padded.
    Messages name the item and never carry the decoder's own text (it can hold object reprs)."""
    import warnings

    from PIL import Image as PILImage

    if not data:
        raise ValidationError(f"{where}: empty image bytes; send a PNG or JPEG, or a raw tensor")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"{where}: {len(data)} bytes is over the limit of {max_bytes} bytes per encoded image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
        try:
            im = PILImage.open(io.BytesIO(data))  # reads the header only
        except PILImage.DecompressionBombError:
            raise ValidationError(f"{where}: the image header declares too many pixels (a decompression bomb?); "
                                  f"the model expects {hw[1]}x{hw[0]} (WxH)") from None
        except Exception:  # noqa: BLE001 - any decoder failure on caller bytes is the caller's bad input
            raise ValidationError(f"{where}: not a decodable PNG or JPEG image") from None
    if im.format not in ("PNG", "JPEG"):
        raise ValidationError(f"{where}: image format {im.format} is not accepted; send PNG or JPEG")
    w, h = im.size
    if (h, w) != hw:
        raise ValidationError(f"{where}: image is {w}x{h} (WxH) by its header, the model expects {hw[1]}x{hw[0]}")
    try:
        if im.format == "PNG":
            if PNG_IEND not in data[-4096:]:
                raise ValueError("no end chunk")
            im.verify()  # chunk CRCs through to IEND; the object cannot decode afterwards: open again
            im = PILImage.open(io.BytesIO(data))
        if im.mode != "RGB":
            # Grey, palette and alpha images are accepted; alpha is dropped (composited on nothing).
            im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - truncated / corrupt pixel data
        raise ValidationError(f"{where}: image data is corrupt or truncated; send a whole PNG or JPEG file") from None
    if arr.shape != (hw[0], hw[1], 3):
        raise ValidationError(f"{where}: image decoded to shape {list(arr.shape)}, expected [{hw[0]}, {hw[1]}, 3]")
    return arr


def decode_images(images: Sequence[Image], image_shape: Sequence[int], max_bytes: int = 4 << 20,
                  field: str = "images") -> np.ndarray:
    """Images -> float32 (N, 3, H, W) in [-1, 1] for the model with `image_shape` (3, H, W)."""
    _, h, w = (int(s) for s in image_shape)
    out = np.empty((len(images), 3, h, w), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = decode_image(img, (3, h, w), max_bytes, f"{field}[{i}]")
    return out


def decode_image(img: Image, image_shape: Sequence[int], max_bytes: int = 4 << 20, where: str = "image") -> np.ndarray:
    """One Image -> float32 (3, H, W) in [-1, 1]."""
    _, h, w = (int(s) for s in image_shape)
    kind = img.kind
    if kind == "encoded":
        u8 = _decode_encoded(img.encoded, (h, w), where, max_bytes)  # (H, W, 3)
        return (u8.transpose(2, 0, 1).astype(np.float32) / 127.5) - 1.0
    if kind == "tensor":
        a = tensor_array(img, f"{where}.tensor")
        if img.dtype == "uint8":
            if a.shape != (h, w, 3):
                raise ValidationError(f"{where}.tensor: uint8 image must have shape [{h}, {w}, 3] (H, W, RGB), got {list(a.shape)}")
            return (a.transpose(2, 0, 1).astype(np.float32) / 127.5) - 1.0
        if a.shape != (3, h, w):
            raise ValidationError(f"{where}.tensor: float32 image must have shape [3, {h}, {w}] (C, H, W), got {list(a.shape)}")
        if not np.isfinite(a).all():
            raise ValidationError(f"{where}.tensor: float32 image contains NaN or infinity")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1.0 - FLOAT_RANGE_SLACK or hi > 1.0 + FLOAT_RANGE_SLACK:
            raise ValidationError(f"{where}.tensor: float32 image values must be in [-1, 1], got [{lo:.4g}, {hi:.4g}]")
        return a
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


def encode_images(images: np.ndarray, fmt: str) -> list[Image]:
    """Decoded images -> Images in `fmt` ('png' | 'jpeg' | 'raw_uint8' | 'raw_float32').

    `images`: float32 (N, 3, H, W) in [-1, 1], or uint8 (N, H, W, 3) already converted by the model runner
    (not accepted for raw_float32: the 8-bit rounding cannot be undone). SVG is written from a vector model's
    layers (services/core/output.py), never from pixels."""
    if fmt == SVG:
        raise ValidationError("format: SVG is drawn from a vector model's layers, not from pixels")
    if images.dtype == np.uint8:
        if fmt == RAW_FLOAT32:
            raise ValidationError("raw_float32 output needs float images; the model server returned uint8")
        u8 = np.ascontiguousarray(images)  # (N, H, W, 3)
    elif fmt == RAW_FLOAT32:
        x = np.ascontiguousarray(images, dtype="<f4")
        shape = tuple(x.shape[1:])
        return [Image(shape=shape, dtype="float32", data=x[i].tobytes()) for i in range(len(x))]
    else:
        u8 = float_images_to_uint8(images)  # (N, H, W, 3)
    if fmt == RAW_UINT8:
        # one bytes object for the batch, sliced per image (a slice of bytes is one memcpy, no numpy per image)
        shape, data, step = tuple(u8.shape[1:]), u8.tobytes(), math.prod(u8.shape[1:])
        return [Image(shape=shape, dtype="uint8", data=data[i * step:(i + 1) * step]) for i in range(len(u8))]
    return [Image(encoded=b) for b in encode_uint8(u8, fmt)]


def encode_uint8(u8: np.ndarray, fmt: str) -> list[bytes]:
    """uint8 (N, H, W, 3) -> PNG or JPEG bytes per image."""
    from PIL import Image as PILImage

    if fmt not in (PNG, JPEG):
        raise ValidationError(f"cannot encode images as {fmt!r}; allowed: png, jpeg")
    out = []
    for img in u8:
        buf = io.BytesIO()
        if fmt == PNG:
            PILImage.fromarray(img, "RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        else:
            PILImage.fromarray(img, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


# ------------------------------------------------------------------------------------------------ latents
@dataclass(frozen=True)
class Latent:
    """A latent as given by a caller: its values (any float sequence; checked against the model) + class."""

    values: Sequence[float]
    label: int


def check_label(label: int, n_classes: int, where: str = "label") -> int:
    if not 0 <= int(label) < n_classes:
        raise ValidationError(f"{where}: class label {label} is out of range; the model has classes 0..{n_classes - 1}")
    return int(label)


def latents_array(latents: Sequence[Latent], dim: int, n_classes: int,
                  field: str = "latents") -> tuple[np.ndarray, np.ndarray]:
    """Latents -> (z float32 (N, D), labels int64 (N,)); length, finiteness and label range checked."""
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
    # finiteness and range once for the whole batch (NaN fails the comparison); per row only to name the culprit
    if not float(np.abs(z).max(initial=0.0)) <= LATENT_ABS_LIMIT:
        bad = ~(np.abs(z) <= LATENT_ABS_LIMIT).all(axis=1)
        check_latent_row(z[int(np.argmax(bad))], f"{field}[{int(np.argmax(bad))}]")
    return z, labels


def latent_values(lat: Latent, dim: int, where: str = "latent") -> np.ndarray:
    """One Latent's values -> float32 (D,), checked."""
    if len(lat.values) != dim:
        raise ValidationError(f"{where}: latent has {len(lat.values)} values, the model's latent size is {dim}")
    v = np.array(lat.values, dtype=np.float32)
    check_latent_row(v, where)
    return v


def check_latent_row(v: np.ndarray, where: str) -> None:
    """A latent's values must be finite and within +-LATENT_ABS_LIMIT."""
    if not np.isfinite(v).all():
        raise ValidationError(f"{where}: latent contains NaN or infinity")
    m = float(np.abs(v).max(initial=0.0))
    if m > LATENT_ABS_LIMIT:
        raise ValidationError(f"{where}: latent value {m:.6g} is out of range; latent values must lie within "
                              f"+-{LATENT_ABS_LIMIT:g}")

