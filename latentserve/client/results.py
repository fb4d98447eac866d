"""Plain results of client calls (dataclasses over numpy arrays): what the SDK returns instead of protobuf."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentserve.errors import ValidationError


# ----------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class FactorInfo:
    name: str
    low: float
    high: float
    unit: str = ""
    doc: str = ""


@dataclass(frozen=True)
class KnobInfo:
    name: str  # factor name (kind "factor") or pc0, pc1, ... (kind "pca")
    kind: str  # "factor" | "pca"
    unit: str  # factor units, "std" for principal directions
    low: float  # allowed target range (factor knobs)
    high: float
    r2_fit: float  # linear fit quality on held-out latents
    r2_judged: float = float("nan")  # judged R² on the default sample source (NaN = not judged)
    usable: bool = True  # False: below its quality gate; requests need allow_weak_knobs to use it


@dataclass(frozen=True)
class GateInfo:
    """One quality target of a model (models/gates.py)."""

    name: str  # e.g. class_fidelity.square, gan_train, knob_r2.scale, flow.round_trip_max_abs
    value: float  # NaN = not measured
    threshold: float  # NaN for op "present"
    op: str  # ">=" | "<=" | "present"
    passed: bool
    judge: str  # "geometric", "real_classifier", "direct" (the model's own graphs)
    detail: str


@dataclass(frozen=True)
class HandleStoreInfo:
    """The server's latent handle store: where handles live and whether they survive its restart."""

    backend: str  # "redis" | "node" (a file shared by the node's serving processes) | "memory" (one process's)
    durable: bool  # issued handles survive a restart of the store (Redis with appendonly yes)
    detail: str  # why not, when not durable ("" when durable)


@dataclass(frozen=True)
class OutputSizes:
    """The output_size values Sample and Decode accept besides 0 (the native size): every multiple of
    `multiple_of_px` in [min_px, max_px] (a raster model: its native size only; a texture model: whole cells)."""

    min_px: int
    max_px: int
    multiple_of_px: int

    def accepts(self, size: int) -> bool:
        return self.min_px <= size <= self.max_px and size % max(self.multiple_of_px, 1) == 0


@dataclass(frozen=True)
class ModelInfo:
    """Everything a client needs to use one model (GetModel / ListModels)."""

    name: str
    version: int
    versions: tuple[int, ...]
    family: str  # gan | vae | flow | ae | vector | sgan (textures of any size)
    image_shape: tuple[int, ...]  # (3, H, W)
    latent_shape: tuple[int, ...]  # (D,)
    class_names: tuple[str, ...]
    factors: tuple[FactorInfo, ...]
    knobs: tuple[KnobInfo, ...]
    sample_sources: tuple[str, ...]  # names from SAMPLE_SOURCES
    interpolation_methods: tuple[str, ...]  # names from INTERPOLATION_METHODS
    metrics: dict[str, float]
    backend: str
    prior: str
    max_images_per_request: int  # 0 = the server did not say
    max_interpolation_steps: int
    max_geodesic_iterations: int = 0  # gradient latent ops caps (0 = not available on the server)
    max_guidance_steps: int = 0
    default_sample_source: str = "prior"  # what Sample uses when no source is given (a VAE: latent_gmm)
    max_refine_steps: int = 0
    default_class_check: float = 0.0  # label-check threshold Sample / Augment use by default (0 = off)
    # the same per sample source ("prior", "latent_gmm"); a source missing here is off
    default_class_checks: dict[str, float] = field(default_factory=dict)
    gates: tuple[GateInfo, ...] = ()  # quality targets (empty: a server without gates)
    gates_passed: bool = False
    judge: str = ""  # who judged the gates' figures ("" = never judged)
    handle_store: HandleStoreInfo | None = None  # None: the server did not say (an older server)
    max_output_pixels: int = 0  # n x output_size^2 of one request (0 = the server did not say)
    # {class factor: its class names}, in label order (first factor most significant): what factor_classes may
    # name; empty when the model's classes are not combinations
    class_factors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    output_sizes: OutputSizes | None = None  # None: the server did not say (an older server: native size only)

    def class_check_for(self, source: str) -> float:
        """The threshold a Sample / Augment from `source` gets when it leaves the check unset (0 = off)."""
        return self.default_class_checks.get(source, 0.0)

    @property
    def latent_dim(self) -> int:
        return int(np.prod(self.latent_shape)) if self.latent_shape else 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return (int(self.image_shape[1]), int(self.image_shape[2])) if len(self.image_shape) == 3 else (0, 0)

    def check_factor_classes(self, factor_classes: dict[str, str], what: str = "factor_classes") -> None:
        """ValidationError naming `what` unless every factor and class is one of this model's class factors (what
        the server checks; said here with the names a caller may use). `what`: the option to name (a CLI flag)."""
        if not self.class_factors:
            raise ValidationError(f"{what}: {self.name} has no class factors (its classes are not combinations)")
        for factor, cls in factor_classes.items():
            if factor not in self.class_factors:
                raise ValidationError(f"{what}: unknown class factor {factor!r} for {self.name}; factors: "
                                      f"{', '.join(self.class_factors)}")
            if cls not in self.class_factors[factor]:
                raise ValidationError(f"{what}: unknown {factor} class {cls!r} for {self.name}; classes: "
                                      f"{', '.join(self.class_factors[factor])}")

    def class_index(self, name_or_index: str | int) -> int:
        """The label of a class name (or a label checked against the class list)."""
        if isinstance(name_or_index, (int, np.integer)) or str(name_or_index).lstrip("-").isdigit():
            idx = int(name_or_index)
            if not 0 <= idx < len(self.class_names):
                raise ValidationError(f"label {idx} out of range: {self.name} has {len(self.class_names)} classes")
            return idx
        try:
            return self.class_names.index(str(name_or_index))
        except ValueError:
            raise ValidationError(f"unknown class {name_or_index!r} for {self.name}; classes: "
                                  f"{', '.join(self.class_names)}") from None


@dataclass
class EncodeResult:
    latents: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int64 (N,)
    handles: list[str]  # empty unless return_handles
    confidence: np.ndarray  # float32 (N,): encoder's probability of the returned label; (0,): class head not trusted
    model: str = ""
    version: int = 0
    # refine_steps > 0: reconstruction MSE ([-1, 1] scale) per image, encoder alone vs refined
    mse_before: np.ndarray | None = None
    mse_after: np.ndarray | None = None
    refine_steps: int = 0


@dataclass
class SampleResult:
    images: Any  # uint8 (N, H, W, 3) | float32 (N, 3, H, W) | list[bytes], by format
    latents: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int64 (N,)
    handles: list[str]
    model: str = ""
    version: int = 0
    # Sample with the label check: the model's own class-head probability of each label (None: no check)
    class_confidence: np.ndarray | None = None


# Edit returns the same four things as Sample.
EditResult = SampleResult


@dataclass
class AugmentChunk:
    """Consecutive images of one shard of an augmentation job (global indices start .. start + n - 1)."""

    shard: int
    start: int
    images: Any  # by the spec's format: list of PNG/JPEG bytes | uint8 (n, H, W, 3) | float32 (n, 3, H, W)
    labels: np.ndarray  # int64 (n,)
    seeds: np.ndarray  # uint64 (n,): per-image seeds
    factors: dict[str, np.ndarray]  # the requested factor values, float64 (n,) each, spec order
    handles: list[str]  # empty unless the spec asks for handles
    shard_end: bool  # the last chunk of its shard
    num_shards: int
    count: int  # images in the whole job
    model: str = ""
    version: int = 0
    class_confidence: np.ndarray | None = None  # float32 (n,) with the label check, else None

    @property
    def indices(self) -> range:
        return range(self.start, self.start + len(self.labels))


@dataclass(frozen=True)
class PathSummary:
    path_length: float  # sum of step distances
    evenness_cv: float  # coefficient of variation of step distances (0 = perfectly even)
    lerp_path_length: float  # the same for lerp between the same ends (geodesic only, else 0)
    lerp_evenness_cv: float
    space: str = "pixel"  # where distances are measured: pixel | probe
    iterations: int = 0  # geodesic optimisation iterations


@dataclass
class Frame:
    """One frame of an interpolation path."""

    index: int
    t: float  # 0..1 along the path
    image: Any  # uint8 (H, W, 3) | float32 (3, H, W) | bytes, by format; arrays are read-only views
    latent: np.ndarray  # float32 (D,)
    label: int
    handle: str
    step_distance: float  # RMS distance to the previous frame in summary.space (pixel: [-1, 1] scale; 0 first)
    summary: PathSummary | None = None  # set on the last frame only
