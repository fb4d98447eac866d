"""The operations' requests and answers as plain dataclasses: what a frontend builds from its wire format and
turns back into it. Field names follow latentserve.v1 (protos/latentserve/v1/latent.proto), which documents
each field; enums travel as names ("png", "prior", "lerp"; "" = unset), 0 / empty = the server default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import numpy as np

from latentserve.errors import ValidationError
from latentserve.services.augment.spec import AugmentSpec
from latentserve.services.core.images import Image, Latent


@dataclass
class Ref:
    """Where a latent comes from: given values (`latent`), a `handle` the service issued, or an `image` to
    encode (`kind` says which; "" = none set). `label` -1 lets the encoder predict the class of an image;
    None = unset (a latent's own label, a handle's stored one)."""

    kind: str = ""
    latent: Latent | None = None
    handle: str = ""
    image: Image | None = None
    label: int | None = None


@dataclass
class GeodesicOptions:
    """Interpolate(method geodesic): optimisation of the path (0 / "" = server default)."""

    iterations: int = 0
    learning_rate: float = 0.0
    space: str = ""  # "pixel" (default) | "probe"
    init: str = ""  # "lerp" (default) | "slerp"


@dataclass
class GuidanceOptions:
    """Sample(source guided): the Langevin chains (0 = server default; class_weight, noise < 0 = off)."""

    steps: int = 0
    step_size: float = 0.0
    class_weight: float = 0.0
    factor_targets: dict[str, float] = field(default_factory=dict)  # factor -> value, through the regressor
    noise: float = 0.0
    factor_weight: float = 0.0
    start: str = ""  # "prior" | "latent_gmm" | "" (the model's default)


@dataclass
class RefineOptions:
    """Encode(refine_steps > 0): the refinement's step size and probe-feature weight (0 = default / pixels)."""

    learning_rate: float = 0.0
    feature_weight: float = 0.0


@dataclass
class Move:
    """An Edit move: `how` "amount" (a change) or "target" (a value), None = neither set."""

    knob: str
    how: str | None
    value: float = 0.0


@dataclass
class EncodeCall:
    model: str
    images: list[Image]
    version: int = 0
    labels: list[int] = field(default_factory=list)  # one per image (-1 = predict) or none
    sample_posterior: bool = False
    seed: int = 0
    refine_steps: int = 0
    refine: RefineOptions = field(default_factory=RefineOptions)
    return_handles: bool = False
    deadline: float = 0.0  # wall-clock time after which gradient work is abandoned (0 = none)


@dataclass
class DecodeCall:
    model: str
    version: int = 0
    latents: list[Latent] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)
    format: str = "png"
    output_size: int = 0  # px; 0 = the model's native size (services/core/output.py)


@dataclass
class SampleCall:
    model: str
    n: int
    version: int = 0
    format: str = "png"
    source: str = ""
    guidance: GuidanceOptions = field(default_factory=GuidanceOptions)
    temperature: float = 0.0
    seed: int = 0  # 0 = a fresh random seed
    classes: tuple[str, Any] | None = None  # ("label", int) | ("class_name", str) | ("class_weights", dict)
    knobs: dict[str, float] = field(default_factory=dict)
    allow_weak_knobs: bool = False
    hold: list[str] = field(default_factory=list)  # factors the knobs keep fixed (models/conditional.py)
    factor_classes: dict[str, str] = field(default_factory=dict)  # {class factor: class} (core/class_factors.py)
    class_check: float = 0.0
    return_handles: bool = False
    deadline: float = 0.0
    output_size: int = 0  # px; 0 = the model's native size (services/core/output.py)


@dataclass
class InterpolateCall:
    model: str
    a: Ref | None
    b: Ref | None
    steps: int
    version: int = 0
    method: str = "lerp"
    format: str = "png"
    geodesic: GeodesicOptions = field(default_factory=GeodesicOptions)
    return_handles: bool = False
    deadline: float = 0.0
    output_size: int = 0  # px; 0 = native; another size for texture models only (services/core/operations.py)


@dataclass
class EditCall:
    model: str
    inputs: list[Ref]
    moves: list[Move]
    version: int = 0
    format: str = "png"
    allow_weak_knobs: bool = False
    return_handles: bool = False
    hold: list[str] = field(default_factory=list)  # factors every factor move keeps fixed
    factor_classes: dict[str, str] = field(default_factory=dict)  # class factors set on every input first
    output_size: int = 0  # px; 0 = the model's native size (services/core/output.py)


@dataclass
class AugmentCall:
    spec: AugmentSpec
    shards: list[int] = field(default_factory=list)
    allow_weak_knobs: bool = False


# ------------------------------------------------------------------------------------------------ answers
@dataclass
class RefineReport:
    mse_before: np.ndarray
    mse_after: np.ndarray
    steps: int


@dataclass
class Encoded:
    model: str
    version: int
    latents: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int64 (N,)
    confidence: np.ndarray | None  # the class head's p(label) (N,); None when the head is not trusted
    refine: RefineReport | None = None
    handles: list[str] = field(default_factory=list)


@dataclass
class Generated:
    """Images with their latents: Decode (no latents), Sample, Edit."""

    model: str
    version: int
    images: list[Image]
    latents: np.ndarray | None = None
    labels: np.ndarray | None = None
    confidence: np.ndarray | None = None  # Sample with the label check
    handles: list[str] = field(default_factory=list)


@dataclass
class Path:
    """An interpolation path: frame i is (t[i], images[i], latents[i], labels[i], handles[i], step_distance[i])."""

    model: str
    version: int
    t: np.ndarray
    images: list[Image]
    latents: np.ndarray
    labels: np.ndarray
    step_distance: np.ndarray  # 0 for the first frame
    summary: dict  # PathSummary fields
    handles: list[str] | None = None


@dataclass
class AugmentRun:
    """A checked augmentation job: `batches` yields services/augment/stream.py GeneratedBatch objects."""

    model: str
    version: int
    factor_names: list[str]
    num_shards: int
    count: int
    batches: AsyncIterator[Any]


# ------------------------------------------------------------------------------------------------ enum names
SAMPLE_SOURCES = ("prior", "latent_gmm", "guided")
INTERPOLATION_METHODS = ("lerp", "slerp", "geodesic")


def check_source(name: str) -> str:
    """A sample source name ("" = the model's default); a frontend passes an unknown wire value as its text."""
    if name and name not in SAMPLE_SOURCES:
        raise ValidationError(f"source: unknown sample source {name}; allowed: PRIOR, LATENT_GMM, GUIDED")
    return name


def check_method(name: str) -> str:
    """An interpolation method name ("" = lerp)."""
    if name and name not in INTERPOLATION_METHODS:
        raise ValidationError(f"method: unknown interpolation method {name}; allowed: LERP, SLERP, GEODESIC")
    return name or "lerp"
