"""Local files for the CLI and scripts: image grids, PNGs, images and latents on disk, and the text forms of
references and weights used on the command line."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from latentserve.client.messages import _pil
from latentserve.errors import NotFoundError, ValidationError


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one uint8 grid image of rows*(H+pad)+pad by ncols*(W+pad)+pad pixels.

    ncols defaults to ceil(sqrt(N)); rows = ceil(N / ncols); empty cells stay pad_value."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise ValidationError(f"make_grid needs uint8 (N, H, W, 3) with N >= 1, got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    ncols = int(ncols or math.ceil(math.sqrt(n)))
    if ncols < 1:
        raise ValidationError("ncols must be >= 1")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), pad_value, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = im
    return grid


def save_png(image: np.ndarray, path: str) -> None:
    """uint8 (H, W, 3) -> PNG file (parent folders created)."""
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _pil().fromarray(np.ascontiguousarray(image), "RGB").save(p, format="PNG")


def load_image(path: str) -> np.ndarray:
    """An image file -> uint8 (H, W, 3) RGB. A missing file raises NotFoundError, a file PIL cannot read
    ValidationError, each naming the path."""
    from pathlib import Path

    if not Path(path).is_file():
        raise NotFoundError(f"{path}: no such file" if not Path(path).exists() else f"{path}: not a file")
    try:
        with _pil().open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise ValidationError(f"{path}: not a readable PNG or JPEG image ({exc})") from None


def save_latents(path: str, latents: np.ndarray, labels: np.ndarray, **extra: Any) -> None:
    """Writes latents (N, D) + labels (N,) (+ extra arrays, e.g. class_names, handles) as .npz, or the latents
    alone as .npy."""
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".npy":
        np.save(p, np.asarray(latents, dtype=np.float32))
    else:
        np.savez(p, latents=np.asarray(latents, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64),
                 **{k: np.asarray(v) for k, v in extra.items() if v is not None})


def load_latents(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """.npz (latents + labels) or .npy (latents only) -> float32 (N, D), int64 (N,) or None."""
    if str(path).endswith(".npy"):
        z = np.load(path)
        y = None
    else:
        with np.load(path) as data:
            if "latents" not in data:
                raise ValidationError(f"{path}: no 'latents' array (has {', '.join(data.files)})")
            z = data["latents"]
            y = data["labels"].astype(np.int64) if "labels" in data else None
    z = np.asarray(z, dtype=np.float32)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2:
        raise ValidationError(f"{path}: latents must be (N, D), got {z.shape}")
    if y is not None and y.shape != (len(z),):
        raise ValidationError(f"{path}: labels must be ({len(z)},), got {y.shape}")
    return z, y


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


def parse_ref(text: str, what: str = "reference") -> Any:
    """CLI text -> a latent reference for interpolate / edit:
    'img.png' (an existing image file) -> uint8 image; 'latents.npz:3' -> (latent row 3, its label);
    anything else -> a server handle."""
    from pathlib import Path

    if not text:
        raise ValidationError(f"{what}: empty")
    path, sep, index = text.rpartition(":")
    if sep and path.endswith((".npz", ".npy")):
        try:
            i = int(index)
        except ValueError:
            raise ValidationError(f"{what}: {text!r}: the row after ':' must be an integer") from None
        if not Path(path).exists():
            raise NotFoundError(f"{what}: no such file {path}")
        z, y = load_latents(path)
        if not -len(z) <= i < len(z):
            raise ValidationError(f"{what}: row {i} out of range: {path} has {len(z)} latents")
        if y is None:
            raise ValidationError(f"{what}: {path} has no labels; use an .npz written by encode or sample")
        return (z[i], int(y[i]))
    if text.lower().endswith(IMAGE_SUFFIXES):
        if not Path(text).exists():
            raise NotFoundError(f"{what}: no such image file {text}")
        return load_image(text)
    if Path(text).exists():
        raise ValidationError(f"{what}: {text} is a file but neither an image nor FILE.npz:ROW")
    return text  # a handle


def parse_class_factors(items: Sequence[str], what: str = "--class-factor") -> dict[str, str]:
    """["texture=dots", "shape=square"] -> {"texture": "dots", "shape": "square"} (CLI helper for --class-factor; a
    factor given again takes the later class). Only the syntax is checked: the model's ModelInfo.class_factors
    (or the server) checks the names."""
    out: dict[str, str] = {}
    for item in items:
        factor, sep, cls = item.partition("=")
        if not (sep and factor.strip() and cls.strip()):
            raise ValidationError(f"{what} must look like FACTOR=CLASS (e.g. texture=dots), got {item!r}")
        out[factor.strip()] = cls.strip()
    return out


def parse_weights(text: str, what: str = "weights") -> dict[str, float]:
    """'a=1,b=2.5' -> {'a': 1.0, 'b': 2.5} (CLI helper for --class-weights / --knob)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValidationError(f"{what}: expected name=value, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValidationError(f"{what}: {name.strip()}={value!r} is not a number") from None
    if not out:
        raise ValidationError(f"{what}: nothing given")
    return out
