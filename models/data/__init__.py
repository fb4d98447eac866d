"""Dataset registry of latentserve: `load_dataset(name, **kwargs) -> Dataset`.

Names: shapes (default; procedural coloured shapes with 5 known factors), disks (one radius factor),
modes (a small disc at one of grid x grid positions in one of a few colours: many known modes, counted classically),
textures (random crops of stripes, checks, dots, waves, noise at varying period, orientation and hue),
textured (the shapes filled with solid / stripes / dots / checks textures: class = (shape, texture), independent),
digits (scikit-learn's 8x8 handwritten digits, upsampled), folder (a user's folder, one subfolder per
class). Each name maps to a module with a `build(**kwargs)` function; `Dataset.config` holds the kwargs
that rebuild exactly the same data, so `load_dataset(meta["name"], **meta["config"])` (see `load_from_meta`)
recreates the data a checkpoint or manifest was trained on.
"""
from __future__ import annotations

import inspect
import math

from latentserve.errors import ValidationError

from . import digits, disks, folder, modes, shapes, textured, textures
from .base import DataSplit, Dataset, Factor, to_model, to_uint8

DATASETS = ("shapes", "disks", "modes", "textures", "textured", "digits", "folder")
DEFAULT_DATASET = "shapes"
_BUILDERS = {"shapes": shapes.build, "disks": disks.build, "modes": modes.build, "textures": textures.build,
             "textured": textured.build, "digits": digits.build, "folder": folder.build}

__all__ = [
    "DATASETS", "DEFAULT_DATASET", "DataSplit", "Dataset", "Factor", "dataset_kwargs", "load_dataset",
    "load_from_meta", "parse_holdout", "to_model", "to_uint8",
]


def dataset_kwargs(name: str) -> dict[str, object]:
    """The keyword arguments dataset `name` accepts, with defaults (inspect.Parameter.empty = required)."""
    _check_name(name)
    return {p.name: p.default for p in inspect.signature(_BUILDERS[name]).parameters.values()}


def load_dataset(name: str = DEFAULT_DATASET, **kwargs) -> Dataset:
    """Build dataset `name` (shapes | disks | modes | textures | textured | digits | folder) with its keyword arguments.

    Raises ValidationError for an unknown name, an unknown or missing kwarg, or a value out of range
    (messages name the allowed values); folder may raise NotFoundError for a missing path.
    """
    allowed = dataset_kwargs(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValidationError(
            f"dataset {name!r} does not take {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    missing = [k for k, d in allowed.items() if d is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValidationError(f"dataset {name!r} needs {', '.join(missing)}")
    return _BUILDERS[name](**kwargs)


def load_from_meta(meta: dict) -> Dataset:
    """Rebuild the dataset described by `Dataset.meta()` (e.g. from a checkpoint or manifest)."""
    try:
        name, config = meta["name"], meta["config"]
    except (KeyError, TypeError):
        raise ValidationError("dataset meta needs 'name' and 'config' (see Dataset.meta())") from None
    return load_dataset(name, **config)


def parse_holdout(text: str | None) -> dict[str, list[float]] | None:
    """CLI form -> holdout dict: "scale=0.42:0.48" or "scale=0.42:0.48,hue=0.1:0.2" -> {"scale": [0.42, 0.48]}.

    Only the syntax is checked here; the dataset checks the factor names and ranges. Empty/None -> None.
    """
    if text is None or not str(text).strip():
        return None
    out: dict[str, list[float]] = {}
    for part in str(text).split(","):
        name, sep, band = part.partition("=")
        lo, sep2, hi = band.partition(":")
        try:
            values = [float(lo), float(hi)]
        except ValueError:
            values = []
        if not (sep and sep2 and name.strip() and len(values) == 2 and all(map(math.isfinite, values))):
            raise ValidationError(f"holdout must look like factor=low:high[,factor=low:high], got {text!r}")
        out[name.strip()] = values
    return out


def _check_name(name: str) -> None:
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValidationError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
