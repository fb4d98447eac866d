"""The `folder` dataset: a user's image folder with one subfolder per class.

    <path>/<class name>/<any name>.<png|jpg|jpeg|bmp|gif|webp|tif|...>

class_names are the sorted subfolder names (hidden ones, starting with ".", are ignored), searched one
level deep. Files with an image extension PIL knows are loaded; other files are ignored. Each image is
EXIF-rotated, composited over black if it has transparency (the procedural datasets' background), converted
to RGB, centre-cropped to a square and resized to image_size (Lanczos). Files PIL cannot decode are
skipped, logged, and counted in `Dataset.info["skipped_files"]` (names in `info["skipped"]`), never a crash.

The split is fixed by `seed`: per class, round(test_fraction * n) images (at least 1 of a class with >= 2
images when test_fraction > 0) go to test, chosen by a permutation of the sorted file list. No continuous
factors (factors have shape (N, 0)).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from latentserve.errors import NotFoundError, ValidationError

from .base import DataSplit, Dataset, check_build_args, stratified_split

logger = logging.getLogger(__name__)

NAME = "folder"
MAX_SKIPPED_LISTED = 20  # names kept in info["skipped"]; the count is always complete


def image_extensions() -> set[str]:
    """Lower-case suffixes (".png", ...) of every format PIL can open."""
    Image.init()  # registers all plugins, so the table is complete
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def load_image(path: Path, image_size: int) -> np.ndarray:
    """One file -> uint8 (image_size, image_size, 3): EXIF-rotate, over black, RGB, centre square, resize."""
    with Image.open(path) as im:
        # JPEG: let the decoder shrink by up to 8x when the file is much larger than needed (fast, exact
        # enough before a Lanczos resize); a no-op for other formats.
        im.draft("RGB", (image_size, image_size))
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            im = Image.alpha_composite(background, rgba)
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            # 16-bit greyscale: convert("RGB") would clip at 255; rescale 0..65535 to 0..255 instead
            grey = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
            im = Image.fromarray(np.rint(np.clip(grey, 0.0, 255.0)).astype(np.uint8))
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.resize((image_size, image_size), Image.LANCZOS, box=(left, top, left + side, top + side))
        return np.asarray(im, dtype=np.uint8)


def build(path: str, image_size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Images of `path`/<class>/* as a Dataset. image_size in [8, 512]; test_fraction in [0, 0.9];
    seed in [0, 2**32 - 1]. NotFoundError if `path` does not exist; ValidationError if it is not a
    folder, has no class subfolders, or a class has no readable image."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise ValidationError(f"folder dataset needs path= a folder with one subfolder per class, got {path!r}")
    image_size, test_fraction, seed = check_build_args(
        (8, 512), image_size=image_size, test_fraction=test_fraction, seed=seed)

    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise NotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValidationError(f"{str(root)!r} is not a folder; expected one subfolder per class")
    try:
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except PermissionError as exc:
        raise ValidationError(f"cannot read folder {str(root)!r}: {exc}") from exc
    extensions = image_extensions()
    if not class_dirs:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions)
        hint = f" (found {loose} image file(s) directly in it: move them into class subfolders)" if loose else ""
        raise ValidationError(
            f"no class subfolders in {str(root)!r}{hint}; expected <folder>/<class name>/<image files>"
        )

    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    per_class: dict[str, int] = {}
    for label, class_dir in enumerate(class_dirs):
        try:
            files = sorted(
                p for p in class_dir.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
            )
        except PermissionError:
            files = []
            skipped.append(f"{class_dir.name}/ (unreadable folder)")
        count = 0
        for f in files:
            try:
                images.append(load_image(f, image_size))
            except Exception as exc:  # any decode failure of a user's file (truncated, wrong format, bomb)
                skipped.append(f"{class_dir.name}/{f.name}")
                logger.debug("skipping %s: %s", f, exc)
                continue
            labels.append(label)
            count += 1
        per_class[class_dir.name] = count

    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        logger.warning("folder dataset %s: skipped %d unreadable file(s): %s", root, len(skipped), shown)
    empty = [name for name, n in per_class.items() if n == 0]
    if empty:
        raise ValidationError(
            f"class folder(s) {', '.join(empty)} in {str(root)!r} have no readable images "
            f"(extensions: {', '.join(sorted(e for e in extensions if e in _COMMON))}); "
            "add images or remove the folder(s)"
        )

    all_images = np.stack(images)  # (N, S, S, 3)
    all_labels = np.asarray(labels, np.int64)
    train_idx, test_idx = stratified_split(all_labels, test_fraction, seed)

    def split(idx: np.ndarray) -> DataSplit:
        return DataSplit(all_images[idx], all_labels[idx], np.zeros((len(idx), 0), np.float32))

    return Dataset(
        name=NAME,
        image_size=image_size,
        class_names=[d.name for d in class_dirs],
        factors=[],
        train=split(train_idx),
        test=split(test_idx),
        config={"path": str(root), "image_size": image_size, "test_fraction": test_fraction, "seed": seed},
        info={
            "skipped_files": len(skipped),
            "skipped": skipped[:MAX_SKIPPED_LISTED],
            "files_per_class": per_class,
        },
    )


# extensions named in error messages (PIL knows ~50; these are the ones users have)
_COMMON = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
