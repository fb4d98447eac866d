"""The Python client of latentserve.v1: `LatentClient` (sync) and `AsyncLatentClient` (grpc.aio).

Owns the client side of the gRPC contract (protos/latentserve/v1/latent.proto). Protobuf types stop here:
methods take and return numpy arrays, PIL images, bytes and plain dataclasses.

    from latentserve.client import LatentClient
    with LatentClient("127.0.0.1:9000") as c:
        info = c.get_model("shapes-gan")
        out = c.sample("shapes-gan", 16, class_name="ellipse", knobs={"scale": 0.8}, seed=1)
        out.images            # uint8 (16, H, W, 3)
        enc = c.encode("shapes-gan", out.images)
        imgs = c.decode("shapes-gan", enc.latents, enc.labels)

Conventions
- Images in: uint8 (N, H, W, 3) array (or one (H, W, 3) image), float32 (N, 3, H, W) in [-1, 1], a list of PIL
  images, of uint8 arrays or of encoded PNG/JPEG bytes. Arrays travel as raw tensors (no PNG cost: the fast
  path); bytes travel as they are.
- Images out (`format`): "uint8" (default) -> uint8 (N, H, W, 3); "float32" -> float32 (N, 3, H, W) in [-1, 1];
  "png" / "jpeg" -> list of encoded bytes. Raw tensors are read with np.frombuffer (no copy per image; one copy
  when a batch is stacked). Single images (interpolation frames) are read-only views of the message bytes.
- A latent is a float32 (D,) vector plus a class label; batches are (N, D) + (N,).
- References to a latent (interpolate ends, edit inputs): a handle string, a `(vector, label)` tuple, an image
  (uint8 (H, W, 3) array, PIL image or encoded bytes) or `(image, label)` to force the class.

Retries: calls that fail with UNAVAILABLE (the server went away: a replica stopped or its node died, a
connection was reset) are retried by gRPC itself, on a new connection, up to `retries` more times (default
3, at most 4) with a randomized exponential backoff (0.1 s doubling, at most 1 s per wait), and gRPC's retry
throttling stops retrying after ~50 failures in a row, so a dead service sees no retry storm. Every RPC is
safe to repeat (handles are content-addressed; seeded samples are deterministic). A stream is retried only
before its first frame arrived. `retries=0` turns this off.

Which server answered: `client.last_server` is the `ServerInfo(node, replica)` (Ray node id and Serve
replica id, services/observability/identity.py) from the trailing metadata of the last call that finished (None when the
server sent none), for debugging placement behind a load balancer.

Errors: every grpc.RpcError is re-raised as the latentserve.errors class of its status code (INVALID_ARGUMENT,
OUT_OF_RANGE, FAILED_PRECONDITION -> ValidationError; NOT_FOUND -> NotFoundError; RESOURCE_EXHAUSTED ->
OverloadedError; DEADLINE_EXCEEDED -> DeadlineExceededError; UNAVAILABLE -> UnavailableError; UNAUTHENTICATED,
PERMISSION_DENIED -> UnauthenticatedError; UNIMPLEMENTED -> UnsupportedError; anything else ->
UnrecoverableError), with the message
"<CODE>: <details>" and the original status in `exc.status` (a grpc.StatusCode); the RpcError is chained as
`__cause__`. Client-side argument checks raise ValidationError before anything is sent.
"""
from __future__ import annotations

import io
import json
import math
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from latentserve.errors import (
    DeadlineExceededError,
    LatentServeError,
    NotFoundError,
    OverloadedError,
    UnauthenticatedError,
    UnavailableError,
    UnrecoverableError,
    UnsupportedError,
    ValidationError,
)
from latentserve.models.class_check import requested_threshold
from latentserve.services.observability.identity import ServerInfo, server_info
from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc

DEFAULT_TARGET = "127.0.0.1:9000"
# Bulk decodes of 64 images at 64x64 are ~0.8 MB raw uint8, PNG is smaller; 64 MB leaves room for large
# float32 batches without letting a broken peer exhaust memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keep idle connections to a server alive across CLI pauses / benchmark phases.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
DEFAULT_RETRIES = 3
MAX_RETRIES = 4  # gRPC caps a retry policy at 5 attempts


def retry_options(retries: int) -> list[tuple[str, str]]:
    """Channel options with gRPC's retry policy for LatentService: `retries` more attempts on UNAVAILABLE
    (see the module docstring); [] for retries=0."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValidationError(f"retries must be an integer in [0, {MAX_RETRIES}], got {retries!r}")
    if retries == 0:
        return []
    config = {
        "methodConfig": [{
            "name": [{"service": "latentserve.v1.LatentService"}],
            "retryPolicy": {"maxAttempts": retries + 1, "initialBackoff": "0.1s", "maxBackoff": "1s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        }],
        # gRPC's token bucket per channel: each failed attempt takes a token, each success gives back 0.1, and
        # no retry is made while half of them are gone. 100 tokens: a node failure that fails every call in
        # flight on the channel at once (up to ~50) is still retried; a service that stays down is not.
        "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
    }
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]

IMAGE_FORMATS = {
    "uint8": pb.IMAGE_FORMAT_RAW_UINT8,
    "float32": pb.IMAGE_FORMAT_RAW_FLOAT32,
    "png": pb.IMAGE_FORMAT_PNG,
    "jpeg": pb.IMAGE_FORMAT_JPEG,
}
SAMPLE_SOURCES = {
    "prior": pb.SAMPLE_SOURCE_PRIOR,
    "latent_gmm": pb.SAMPLE_SOURCE_LATENT_GMM,
    "guided": pb.SAMPLE_SOURCE_GUIDED,
}
INTERPOLATION_METHODS = {
    "lerp": pb.INTERPOLATION_METHOD_LERP,
    "slerp": pb.INTERPOLATION_METHOD_SLERP,
    "geodesic": pb.INTERPOLATION_METHOD_GEODESIC,
}
_SOURCE_NAMES = {v: k for k, v in SAMPLE_SOURCES.items()}
_SOURCE_NAMES[pb.SAMPLE_SOURCE_UNSPECIFIED] = "prior"
_METHOD_NAMES = {v: k for k, v in INTERPOLATION_METHODS.items()}
_METHOD_NAMES[pb.INTERPOLATION_METHOD_UNSPECIFIED] = "lerp"

_STATUS_ERRORS: dict[grpc.StatusCode, type[LatentServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.OUT_OF_RANGE: ValidationError,
    grpc.StatusCode.FAILED_PRECONDITION: ValidationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: UnauthenticatedError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedError,  # e.g. gradient latent ops on a server without torch
}
GUIDANCE_OPTIONS = ("steps", "step_size", "class_weight", "noise", "factor_targets", "factor_weight", "start")
GEODESIC_OPTIONS = ("iterations", "learning_rate", "space", "init")
REFINE_OPTIONS = ("learning_rate", "feature_weight")


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
class ModelInfo:
    """Everything a client needs to use one model (GetModel / ListModels)."""

    name: str
    version: int
    versions: tuple[int, ...]
    family: str  # gan | vae | flow
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


# ------------------------------------------------------------------------------------- image conversion
def _pil():
    from PIL import Image  # imported lazily: only needed for PIL inputs and PNG/JPEG outputs

    return Image


def _is_pil(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("PIL.")


def _tensor(arr: np.ndarray, dtype: int) -> pb.Tensor:
    return pb.Tensor(shape=arr.shape, dtype=dtype, data=arr.tobytes())


def image_to_proto(image: Any) -> pb.Image:
    """One image -> Image proto. uint8 (H, W, 3) array or PIL image -> raw uint8 tensor; float32 (3, H, W) in
    [-1, 1] -> raw float32 tensor; bytes -> encoded (PNG/JPEG, passed through unchanged)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ValidationError("empty image bytes")
        return pb.Image(encoded=data)
    if _is_pil(image):
        image = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not isinstance(image, np.ndarray):
        raise ValidationError("an image must be a numpy array, a PIL image or encoded bytes, "
                              f"not {type(image).__name__}")
    if image.dtype == np.uint8:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValidationError(f"a uint8 image must have shape (H, W, 3), got {image.shape}")
        return pb.Image(tensor=_tensor(np.ascontiguousarray(image), pb.DTYPE_UINT8))
    if np.issubdtype(image.dtype, np.floating):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValidationError(f"a float image must have shape (3, H, W) in [-1, 1], got {image.shape}")
        arr = np.ascontiguousarray(image, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValidationError("float image contains NaN or infinity")
        return pb.Image(tensor=_tensor(arr, pb.DTYPE_FLOAT32))
    raise ValidationError(f"unsupported image dtype {image.dtype}: use uint8 (H, W, 3) or float32 (3, H, W)")


def images_to_protos(images: Any) -> list[pb.Image]:
    """A batch of images -> Image protos. Accepts uint8 (N, H, W, 3) or one (H, W, 3), float (N, 3, H, W) or
    one (3, H, W), or a sequence of arrays / PIL images / encoded bytes."""
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8:
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[3] != 3:
                raise ValidationError(f"uint8 images must have shape (N, H, W, 3), got {images.shape}")
        elif np.issubdtype(images.dtype, np.floating):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValidationError(f"float images must have shape (N, 3, H, W), got {images.shape}")
        else:
            raise ValidationError(f"unsupported image dtype {images.dtype}: "
                                  "use uint8 (N, H, W, 3) or float32 (N, 3, H, W)")
        out = [image_to_proto(im) for im in images]
    elif isinstance(images, (bytes, bytearray, memoryview)) or _is_pil(images):
        out = [image_to_proto(images)]
    elif isinstance(images, Iterable):
        out = [image_to_proto(im) for im in images]
    else:
        raise ValidationError(f"images must be an array or a list of images, not {type(images).__name__}")
    if not out:
        raise ValidationError("no images given")
    return out


def _tensor_array(t: pb.Tensor) -> np.ndarray:
    """Tensor proto -> numpy view of its bytes (no copy; read-only)."""
    dtype = {pb.DTYPE_UINT8: np.uint8, pb.DTYPE_FLOAT32: np.float32}.get(t.dtype)
    if dtype is None:
        raise UnrecoverableError(f"server sent a tensor of unknown dtype {t.dtype}")
    shape = tuple(int(s) for s in t.shape)
    arr = np.frombuffer(t.data, dtype=dtype)
    if arr.size != math.prod(shape):
        raise UnrecoverableError(f"server sent a tensor of shape {shape} with {arr.size} values")
    return arr.reshape(shape)


def decode_image_bytes(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3)."""
    with _pil().open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def image_from_proto(image: pb.Image) -> np.ndarray:
    """Image proto -> uint8 (H, W, 3) (encoded or uint8 tensor) or float32 (3, H, W) (float32 tensor)."""
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return decode_image_bytes(image.encoded)
    if kind == "tensor":
        return _tensor_array(image.tensor)
    raise UnrecoverableError("server sent an empty image")


def _image_out(image: pb.Image, fmt: str) -> Any:
    if fmt in ("png", "jpeg"):
        if image.WhichOneof("data") != "encoded":
            raise UnrecoverableError(f"asked for {fmt} but the server sent a raw tensor")
        return image.encoded
    arr = image_from_proto(image)
    if fmt == "uint8" and arr.dtype != np.uint8:
        raise UnrecoverableError(f"asked for uint8 images but the server sent {arr.dtype}")
    if fmt == "float32" and arr.dtype != np.float32:
        raise UnrecoverableError(f"asked for float32 images but the server sent {arr.dtype}")
    return arr


def images_from_protos(images: Sequence[pb.Image], fmt: str = "uint8") -> Any:
    """Image protos -> uint8 (N, H, W, 3) / float32 (N, 3, H, W) arrays, or a list of bytes for png/jpeg."""
    fmt = _check_format(fmt)
    outs = [_image_out(im, fmt) for im in images]
    if fmt in ("png", "jpeg"):
        return outs
    if not outs:
        shape = (0, 0, 0, 3) if fmt == "uint8" else (0, 3, 0, 0)
        return np.zeros(shape, np.uint8 if fmt == "uint8" else np.float32)
    return np.stack(outs)  # the one copy: N read-only views -> one writable (N, ...) array


def latents_to_protos(latents: Any, labels: Any) -> list[pb.Latent]:
    """float (N, D) latents + labels (N,) or one int -> Latent protos."""
    z = np.asarray(latents, dtype=np.float32)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValidationError(f"latents must have shape (N, D) with N, D >= 1, got {z.shape}")
    if not np.isfinite(z).all():
        raise ValidationError("latents contain NaN or infinity")
    y = _labels_array(labels, len(z))
    # tolist() once is much faster than feeding numpy scalars to the repeated field one by one.
    return [pb.Latent(values=row, label=lab) for row, lab in zip(z.tolist(), y.tolist())]


def latents_from_protos(latents: Sequence[pb.Latent]) -> tuple[np.ndarray, np.ndarray]:
    """Latent protos -> float32 (N, D), int64 (N,)."""
    if not latents:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
    z = np.array([lat.values for lat in latents], dtype=np.float32)
    y = np.fromiter((lat.label for lat in latents), dtype=np.int64, count=len(latents))
    return z, y


def _labels_array(labels: Any, n: int) -> np.ndarray:
    if labels is None:
        raise ValidationError("labels are required with latents: one int per latent, or one int for all")
    y = np.asarray(labels)
    if y.ndim == 0:
        y = np.full((n,), int(y), dtype=np.int64)
    if y.shape != (n,):
        raise ValidationError(f"labels must have shape ({n},) to match the latents, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValidationError("labels must be integers")
    y = y.astype(np.int64)
    if (y < 0).any():
        raise ValidationError("labels must be >= 0")
    return y


def latent_ref(ref: Any, what: str = "reference") -> pb.LatentRef:
    """A latent reference -> LatentRef proto: handle str, (vector, label), image, or (image, label)."""
    if isinstance(ref, pb.LatentRef):
        return ref
    label = None
    if isinstance(ref, tuple):
        if len(ref) != 2:
            raise ValidationError(f"{what}: a tuple must be (latent or image, label)")
        ref, label = ref
        if label is not None:
            label = int(label)
            if label < 0:
                raise ValidationError(f"{what}: label must be >= 0, got {label}")
    if isinstance(ref, str):
        if not ref:
            raise ValidationError(f"{what}: empty handle")
        if label is not None:
            raise ValidationError(f"{what}: a handle already carries its label")
        return pb.LatentRef(handle=ref)
    if isinstance(ref, (list, np.ndarray)) and np.ndim(ref) == 1:
        if label is None:
            raise ValidationError(f"{what}: a latent vector needs its label: pass (vector, label)")
        (lat,) = latents_to_protos(np.asarray(ref, dtype=np.float32)[None], label)
        return pb.LatentRef(latent=lat)
    msg = pb.LatentRef(image=image_to_proto(ref))
    if label is not None:
        msg.label = label
    return msg


# ------------------------------------------------------------------------------------- argument checks
def _check_model(model: str) -> str:
    if not isinstance(model, str) or not model.strip():
        raise ValidationError("model name must be a non-empty string")
    return model


def _version(version: int | None) -> int:
    if version is None:
        return 0
    v = int(version)
    if v < 0:
        raise ValidationError(f"version must be >= 1 (or None for the newest), got {v}")
    return v


def _check_format(fmt: str) -> str:
    if fmt not in IMAGE_FORMATS:
        raise ValidationError(f"unknown image format {fmt!r}; choose one of {', '.join(IMAGE_FORMATS)}")
    return fmt


def _seed(seed: int) -> int:
    s = int(seed)
    if not 0 <= s < 2**64:
        raise ValidationError(f"seed must be in [0, 2^64), got {s}")
    return s


def _float_map(values: Mapping[str, float] | None, what: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (values or {}).items():
        if not isinstance(k, str) or not k:
            raise ValidationError(f"{what}: names must be non-empty strings")
        fv = float(v)
        if not math.isfinite(fv):
            raise ValidationError(f"{what}: {k} must be finite, got {v}")
        out[k] = fv
    return out


def _move(move: Any) -> pb.Move:
    """("scale", {"amount": 0.1}) | ("scale", 0.1) (= amount) | {"knob": "scale", "target": 0.8}."""
    if isinstance(move, pb.Move):
        return move
    if isinstance(move, Mapping):
        spec = dict(move)
        knob = spec.pop("knob", None)
    elif isinstance(move, tuple) and len(move) == 2:
        knob, how = move
        spec = dict(how) if isinstance(how, Mapping) else {"amount": how}
    else:
        raise ValidationError(f"a move is (knob, {{'amount'|'target': x}}), (knob, amount) or "
                              f"{{'knob': name, 'amount'|'target': x}}, not {move!r}")
    if not isinstance(knob, str) or not knob:
        raise ValidationError(f"move {move!r}: knob name missing")
    if set(spec) not in ({"amount"}, {"target"}):
        raise ValidationError(f"move on {knob!r}: give exactly one of 'amount' or 'target', got {sorted(spec)}")
    key, value = next(iter(spec.items()))
    value = float(value)
    if not math.isfinite(value):
        raise ValidationError(f"move on {knob!r}: {key} must be finite")
    return pb.Move(knob=knob, **{key: value})


# ------------------------------------------------------------------------------------ request builders
def _options(values: Mapping[str, Any] | None, allowed: Sequence[str], what: str) -> dict:
    """Checked option names; enum options given by name ('lerp', 'latent_gmm') become enum values."""
    out = dict(values or {})
    unknown = set(out) - set(allowed)
    if unknown:
        raise ValidationError(f"unknown {what} options {sorted(unknown)}; allowed: {', '.join(allowed)}")
    if isinstance(out.get("init"), str):
        if out["init"] not in ("lerp", "slerp"):
            raise ValidationError(f"geodesic init must be lerp or slerp, got {out['init']!r}")
        out["init"] = INTERPOLATION_METHODS[out["init"]]
    if isinstance(out.get("start"), str):
        if out["start"] not in ("prior", "latent_gmm"):
            raise ValidationError(f"guidance start must be prior or latent_gmm, got {out['start']!r}")
        out["start"] = SAMPLE_SOURCES[out["start"]]
    return out


def build_encode_request(model: str, images: Any, labels: Any = None, return_handles: bool = False,
                         sample_posterior: bool = False, seed: int = 0, version: int | None = None,
                         refine_steps: int = 0, refine: Mapping[str, Any] | None = None) -> pb.EncodeRequest:
    protos = images_to_protos(images)
    if int(refine_steps) < 0:
        raise ValidationError(f"refine_steps must be >= 0, got {refine_steps}")
    req = pb.EncodeRequest(model=_check_model(model), version=_version(version), images=protos,
                           sample_posterior=bool(sample_posterior), seed=_seed(seed),
                           return_handles=bool(return_handles), refine_steps=int(refine_steps))
    if refine:
        req.refine.CopyFrom(pb.RefineOptions(**_options(refine, REFINE_OPTIONS, "refine")))
    if labels is not None:
        y = np.asarray(labels)
        y = np.full((len(protos),), int(y)) if y.ndim == 0 else y
        if y.shape != (len(protos),):
            raise ValidationError(f"labels must have one entry per image ({len(protos)}), got shape {y.shape}")
        if (y < -1).any():
            raise ValidationError("labels must be >= 0, or -1 to let the encoder predict the class")
        req.labels.extend(int(v) for v in y)
    return req


def build_decode_request(model: str, latents: Any = None, labels: Any = None, handles: Sequence[str] | None = None,
                         format: str = "uint8", version: int | None = None) -> pb.DecodeRequest:
    if hasattr(latents, "latents") and hasattr(latents, "labels"):  # an EncodeResult / SampleResult
        latents, labels = latents.latents, (latents.labels if labels is None else labels)
    if (latents is None) == (not handles):
        raise ValidationError("decode needs either latents (with labels) or handles, not both")
    req = pb.DecodeRequest(model=_check_model(model), version=_version(version),
                           format=IMAGE_FORMATS[_check_format(format)])
    if handles:
        if isinstance(handles, str):
            handles = [handles]
        if not all(isinstance(h, str) and h for h in handles):
            raise ValidationError("handles must be non-empty strings")
        req.handles.extend(handles)
    else:
        req.latents.extend(latents_to_protos(latents, labels))
    return req


def build_sample_request(model: str, n: int, label: int | None = None, class_name: str | None = None,
                         class_weights: Mapping[str, float] | None = None, knobs: Mapping[str, float] | None = None,
                         seed: int = 0, temperature: float = 0.0, source: str | None = None, format: str = "uint8",
                         return_handles: bool = False, version: int | None = None,
                         guidance: Mapping[str, Any] | None = None, class_check: float = 0.0,
                         allow_weak_knobs: bool = False) -> pb.SampleRequest:
    n = int(n)
    if n < 1:
        raise ValidationError(f"n must be >= 1, got {n}")
    if sum(x is not None for x in (label, class_name, class_weights)) > 1:
        raise ValidationError("give at most one of label, class_name and class_weights")
    if source is not None and source not in SAMPLE_SOURCES:
        raise ValidationError(f"unknown sample source {source!r}; choose one of {', '.join(SAMPLE_SOURCES)}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValidationError(f"temperature must be >= 0 (0 = model default), got {temperature}")
    class_check = requested_threshold(class_check)
    req = pb.SampleRequest(model=_check_model(model), version=_version(version), n=n, seed=_seed(seed),
                           temperature=temperature,
                           source=pb.SAMPLE_SOURCE_UNSPECIFIED if source is None else SAMPLE_SOURCES[source],
                           format=IMAGE_FORMATS[_check_format(format)], return_handles=bool(return_handles),
                           knobs=_float_map(knobs, "knobs"), class_check=class_check,
                           allow_weak_knobs=bool(allow_weak_knobs))
    if label is not None:
        if int(label) < 0:
            raise ValidationError(f"label must be >= 0, got {label}")
        req.label = int(label)
    elif class_name is not None:
        if not class_name:
            raise ValidationError("class_name must be non-empty")
        req.class_name = class_name
    elif class_weights is not None:
        weights = _float_map(class_weights, "class_weights")
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValidationError("class_weights must be non-negative with a positive sum")
        req.class_weights.weights.update(weights)
    if guidance:
        g = _options(guidance, GUIDANCE_OPTIONS, "guidance")
        targets = _float_map(g.pop("factor_targets", None), "guidance.factor_targets")
        req.guidance.CopyFrom(pb.GuidanceOptions(factor_targets=targets, **g))
    return req


def build_interpolate_request(model: str, a: Any, b: Any, steps: int = 8, method: str = "lerp",
                              format: str = "uint8", return_handles: bool = False, version: int | None = None,
                              geodesic: Mapping[str, Any] | None = None) -> pb.InterpolateRequest:
    steps = int(steps)
    if steps < 2:
        raise ValidationError(f"steps must be >= 2 (frames including both ends), got {steps}")
    if method not in INTERPOLATION_METHODS:
        raise ValidationError(f"unknown interpolation method {method!r}; "
                              f"choose one of {', '.join(INTERPOLATION_METHODS)}")
    req = pb.InterpolateRequest(model=_check_model(model), version=_version(version), a=latent_ref(a, "a"),
                                b=latent_ref(b, "b"), steps=steps, method=INTERPOLATION_METHODS[method],
                                format=IMAGE_FORMATS[_check_format(format)], return_handles=bool(return_handles))
    if geodesic:
        req.geodesic.CopyFrom(pb.GeodesicOptions(**_options(geodesic, GEODESIC_OPTIONS, "geodesic")))
    return req


def build_edit_request(model: str, inputs: Any, moves: Sequence[Any], format: str = "uint8",
                       return_handles: bool = False, version: int | None = None,
                       allow_weak_knobs: bool = False) -> pb.EditRequest:
    one_image = isinstance(inputs, np.ndarray) and inputs.ndim == 3
    if isinstance(inputs, (str, tuple, bytes)) or _is_pil(inputs) or one_image:
        inputs = [inputs]  # one reference
    elif isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        inputs = list(inputs)  # a uint8 image batch
    refs = [latent_ref(r, f"inputs[{i}]") for i, r in enumerate(inputs)]
    if not refs:
        raise ValidationError("edit needs at least one input")
    one_move = isinstance(moves, tuple) and len(moves) == 2 and isinstance(moves[0], str)
    if isinstance(moves, (Mapping, pb.Move)) or one_move:
        moves = [moves]
    pm = [_move(m) for m in moves]
    if not pm:
        raise ValidationError("edit needs at least one move")
    return pb.EditRequest(model=_check_model(model), version=_version(version), inputs=refs, moves=pm,
                          format=IMAGE_FORMATS[_check_format(format)], return_handles=bool(return_handles),
                          allow_weak_knobs=bool(allow_weak_knobs))


# ----------------------------------------------------------------------------------- response parsers
def build_augment_request(spec: Any, shards: Sequence[int] | None = None,
                          allow_weak_knobs: bool = False) -> pb.AugmentRequest:
    """An AugmentSpec (services/augment/spec.py) or its dict form + shard indices (None = all) -> request.
    The spec is parsed (so every local check runs) before anything is sent. `allow_weak_knobs`: use factor
    knobs below their quality gate (a permission, not part of the spec)."""
    from latentserve.services.augment.spec import AugmentSpec, parse_spec

    if not isinstance(spec, AugmentSpec):
        spec = parse_spec(spec)
    msg = pb.AugmentSpec(model=spec.model, version=spec.version, count=spec.count, seed=spec.seed,
                         source=SAMPLE_SOURCES[spec.source], temperature=spec.temperature,
                         format=IMAGE_FORMATS[spec.format], shard_size=spec.shard_size,
                         return_handles=spec.handles, class_check=spec.class_check)
    if spec.class_counts is not None:
        msg.class_counts.update(spec.class_counts)
    if spec.class_weights is not None:
        msg.class_weights.update(spec.class_weights)
    for f in spec.factors:
        fm = msg.factors.add(name=f.name)
        if f.kind == "value":
            fm.value = f.values[0]
        elif f.kind == "range":
            fm.range.low, fm.range.high = f.values
        elif f.kind == "grid":
            fm.grid.low, fm.grid.high = f.values
            fm.grid.steps = f.steps
        else:
            fm.list.values.extend(f.values)
    return pb.AugmentRequest(spec=msg, shards=[int(k) for k in (shards or [])],
                             allow_weak_knobs=bool(allow_weak_knobs))


def augment_chunk(m: pb.AugmentBatch, fmt: str) -> AugmentChunk:
    return AugmentChunk(
        shard=m.shard, start=m.start, images=images_from_protos(m.images, fmt),
        labels=np.fromiter(m.labels, dtype=np.int64, count=len(m.labels)),
        seeds=np.fromiter(m.seeds, dtype=np.uint64, count=len(m.seeds)),
        factors={c.name: np.array(c.values, dtype=np.float64) for c in m.factors}, handles=list(m.handles),
        shard_end=m.shard_end, num_shards=m.num_shards, count=m.count, model=m.model, version=m.version,
        class_confidence=np.array(m.class_confidence, dtype=np.float32) if len(m.class_confidence) else None)


def model_info_from_proto(m: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name, version=m.version, versions=tuple(m.versions), family=m.family,
        image_shape=tuple(int(s) for s in m.image_shape), latent_shape=tuple(int(s) for s in m.latent_shape),
        class_names=tuple(m.class_names),
        factors=tuple(FactorInfo(f.name, f.low, f.high, f.unit, f.doc) for f in m.factors),
        # a server without gates sends neither r2_judged nor usable: its knobs are not judged
        knobs=tuple(KnobInfo(k.name, k.kind, k.unit, k.low, k.high, k.r2_fit,
                             k.r2_judged if len(m.gates) else float("nan"), k.usable or not len(m.gates))
                    for k in m.knobs),
        sample_sources=tuple(_SOURCE_NAMES.get(s, str(s)) for s in m.sample_sources),
        interpolation_methods=tuple(_METHOD_NAMES.get(s, str(s)) for s in m.interpolation_methods),
        metrics=dict(m.metrics), backend=m.backend, prior=m.prior,
        max_images_per_request=m.limits.max_images_per_request,
        max_interpolation_steps=m.limits.max_interpolation_steps,
        max_geodesic_iterations=m.limits.max_geodesic_iterations, max_guidance_steps=m.limits.max_guidance_steps,
        max_refine_steps=m.limits.max_refine_steps,
        default_sample_source=_SOURCE_NAMES.get(m.default_sample_source, "prior"),
        default_class_check=round(float(m.default_class_check), 6),  # float32 on the wire
        default_class_checks={k: round(float(v), 6) for k, v in sorted(m.default_class_checks.items())},
        gates=tuple(GateInfo(g.name, g.value, g.threshold, g.op, g.passed, g.judge, g.detail) for g in m.gates),
        gates_passed=m.gates_passed, judge=m.judge)


def encode_result(resp: pb.EncodeResponse) -> EncodeResult:
    z, y = latents_from_protos(resp.latents)
    refined = resp.HasField("refine")
    return EncodeResult(latents=z, labels=y, handles=list(resp.handles),
                        confidence=np.asarray(resp.label_confidence, dtype=np.float32),
                        model=resp.model, version=resp.version,
                        mse_before=np.asarray(resp.refine.mse_before, np.float32) if refined else None,
                        mse_after=np.asarray(resp.refine.mse_after, np.float32) if refined else None,
                        refine_steps=resp.refine.steps if refined else 0)


def images_result(resp: pb.SampleResponse | pb.EditResponse, fmt: str) -> SampleResult:
    z, y = latents_from_protos(resp.latents)
    conf = getattr(resp, "class_confidence", ())  # EditResponse has none
    return SampleResult(images=images_from_protos(resp.images, fmt), latents=z, labels=y,
                        handles=list(resp.handles), model=resp.model, version=resp.version,
                        class_confidence=np.array(conf, dtype=np.float32) if len(conf) else None)


def frame_from_proto(f: pb.InterpolateFrame, fmt: str) -> Frame:
    summary = None
    if f.HasField("summary"):
        s = f.summary
        summary = PathSummary(s.path_length, s.evenness_cv, s.lerp_path_length, s.lerp_evenness_cv,
                              s.space or "pixel", s.iterations)
    return Frame(index=f.index, t=f.t, image=_image_out(f.image, fmt) if f.HasField("image") else None,
                 latent=np.asarray(f.latent.values, dtype=np.float32), label=f.latent.label, handle=f.handle,
                 step_distance=f.step_distance, summary=summary)


def error_from_rpc(exc: grpc.RpcError) -> LatentServeError:
    """grpc.RpcError -> the latentserve.errors class of its status code (see the module docstring)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    cls = _STATUS_ERRORS.get(code, UnrecoverableError)
    err = cls(f"{code.name}: {details or 'no details'}")
    err.status = code  # type: ignore[attr-defined]
    return err


def _answered_by(exc: grpc.RpcError) -> ServerInfo | None:
    """The server identity on a failed call, if a server answered it at all."""
    trailing = getattr(exc, "trailing_metadata", None)
    try:
        return server_info(trailing()) if callable(trailing) else None
    except Exception:  # noqa: BLE001 - an aio error raised before the call started has no metadata
        return None


# --------------------------------------------------------------------------------------------- clients
def _metadata(token: str | None, app_name: str | None) -> tuple[tuple[str, str], ...]:
    md = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if app_name:
        md.append(("application", app_name))  # Ray Serve's gRPC proxy routes on it when several apps run
    return tuple(md)


def _check_client_args(target: str, timeout: float | None) -> None:
    if not isinstance(target, str) or ":" not in target:
        raise ValidationError(f"target must be host:port, got {target!r}")
    if timeout is not None and not (timeout > 0):
        raise ValidationError(f"timeout must be > 0 seconds (or None), got {timeout}")


class LatentClient:
    """Synchronous client. Thread-safe (one HTTP/2 channel); use as a context manager or call close()."""

    def __init__(self, target: str = DEFAULT_TARGET, token: str | None = None, timeout: float | None = 30.0,
                 app_name: str | None = None, options: Sequence[tuple[str, Any]] = (),
                 retries: int = DEFAULT_RETRIES) -> None:
        _check_client_args(target, timeout)
        self.target, self.timeout = target, timeout
        self._metadata = _metadata(token, app_name)
        self._channel = grpc.insecure_channel(
            target, options=list(CHANNEL_OPTIONS) + retry_options(retries) + list(options))
        self._stub = pb_grpc.LatentServiceStub(self._channel)
        self._models: dict[tuple[str, int], ModelInfo] = {}
        self.last_server: ServerInfo | None = None  # who answered the last finished call (module docstring)

    # -- plumbing -----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "LatentClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method, request):
        try:
            response, call = method.with_call(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            self.last_server = _answered_by(exc)
            raise error_from_rpc(exc) from exc
        self.last_server = server_info(call.trailing_metadata())
        return response

    # -- health ---------------------------------------------------------------------------------------------
    def health(self, service: str = "", timeout: float = 5.0) -> bool:
        """True when the server answers grpc.health.v1 Check with SERVING (or, on a server without the health
        service, Ray Serve's Healthz with OK). Never raises for an unreachable server: returns False."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=self._metadata)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                return False
        try:  # Ray Serve's own health RPC: empty request, any response = healthy
            self._channel.unary_unary("/ray.serve.RayServeAPIService/Healthz", request_serializer=None,
                                      response_deserializer=None)(b"", timeout=timeout)
            return True
        except grpc.RpcError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        """Block until health() is True; raises UnavailableError after `timeout` seconds."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health(timeout=max(0.5, min(5.0, deadline - time.monotonic()))):
                return
            time.sleep(interval)
        raise UnavailableError(f"latentserve at {self.target} not healthy after {timeout:.0f}s")

    # -- models ---------------------------------------------------------------------------------------------
    def list_models(self, all_versions: bool = False) -> list[ModelInfo]:
        resp = self._call(self._stub.ListModels, pb.ListModelsRequest(all_versions=bool(all_versions)))
        return [model_info_from_proto(m) for m in resp.models]

    def get_model(self, name: str, version: int | None = None) -> ModelInfo:
        resp = self._call(self._stub.GetModel, pb.GetModelRequest(model=_check_model(name), version=_version(version)))
        info = model_info_from_proto(resp)
        self._models[(name, _version(version))] = info
        return info

    def model_info(self, name: str, version: int | None = None) -> ModelInfo:
        """get_model, cached per client (model metadata does not change while a version is served)."""
        cached = self._models.get((name, _version(version)))
        return cached if cached is not None else self.get_model(name, version)

    # -- latent operations ------------------------------------------------------------------------------------
    def encode(self, model: str, images: Any, labels: Any = None, return_handles: bool = False,
               sample_posterior: bool = False, seed: int = 0, version: int | None = None,
               refine_steps: int = 0, refine: Mapping[str, Any] | None = None) -> EncodeResult:
        """`refine_steps` > 0 (gan, vae): gradient refinement of the encoder's latents on the reconstruction
        error; `refine` = {learning_rate, feature_weight}; the result carries mse_before / mse_after."""
        req = build_encode_request(model, images, labels, return_handles, sample_posterior, seed, version,
                                   refine_steps, refine)
        return encode_result(self._call(self._stub.Encode, req))

    def decode(self, model: str, latents: Any = None, labels: Any = None, handles: Sequence[str] | None = None,
               format: str = "uint8", version: int | None = None) -> Any:
        req = build_decode_request(model, latents, labels, handles, format, version)
        return images_from_protos(self._call(self._stub.Decode, req).images, format)

    def sample(self, model: str, n: int, label: int | None = None, class_name: str | None = None,
               class_weights: Mapping[str, float] | None = None, knobs: Mapping[str, float] | None = None,
               seed: int = 0, temperature: float = 0.0, source: str | None = None, format: str = "uint8",
               return_handles: bool = False, version: int | None = None,
               guidance: Mapping[str, Any] | None = None, class_check: float = 0.0,
               allow_weak_knobs: bool = False) -> SampleResult:
        """`class_check`: the label check's threshold (0 = the model's default, < 0 = off; see SampleRequest).
        `allow_weak_knobs`: use knobs below their quality gate (KnobInfo.usable False) instead of a refusal."""
        req = build_sample_request(model, n, label, class_name, class_weights, knobs, seed, temperature, source,
                                   format, return_handles, version, guidance, class_check, allow_weak_knobs)
        return images_result(self._call(self._stub.Sample, req), format)

    def interpolate(self, model: str, a: Any, b: Any, steps: int = 8, method: str = "lerp", format: str = "uint8",
                    return_handles: bool = False, version: int | None = None,
                    geodesic: Mapping[str, Any] | None = None) -> Iterator[Frame]:
        """Frames as the server streams them. Stopping the iteration early cancels the call."""
        req = build_interpolate_request(model, a, b, steps, method, format, return_handles, version, geodesic)
        try:
            call = self._stub.Interpolate(req, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return self._stream(call, lambda f: frame_from_proto(f, format))

    def _stream(self, call, convert) -> Iterator[Any]:
        """The converted messages of a server-streaming call; errors as latentserve errors; closing the
        iterator early cancels the call."""
        try:
            for message in call:
                yield convert(message)
            self.last_server = server_info(call.trailing_metadata())
        except grpc.RpcError as exc:
            self.last_server = _answered_by(exc)
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()  # no-op when the stream completed

    def edit(self, model: str, inputs: Any, moves: Sequence[Any], format: str = "uint8",
             return_handles: bool = False, version: int | None = None, allow_weak_knobs: bool = False) -> EditResult:
        req = build_edit_request(model, inputs, moves, format, return_handles, version, allow_weak_knobs)
        return images_result(self._call(self._stub.Edit, req), format)

    def augment(self, spec: Any, shards: Sequence[int] | None = None, timeout: float | None = None,
                allow_weak_knobs: bool = False) -> Iterator[AugmentChunk]:
        """The chunks of an augmentation job (an AugmentSpec or its dict form), shard by shard in index order;
        `shards`: only these shard indices (ascending; None = all). The server generates only as fast as this
        iterator is read. `timeout`: a deadline for the whole stream (default none: bulk jobs run long; the
        client's own timeout is for unary calls). `allow_weak_knobs`: use factor knobs below their quality gate.
        Stopping the iteration early cancels the call."""
        req = build_augment_request(spec, shards, allow_weak_knobs)
        fmt = {v: k for k, v in IMAGE_FORMATS.items()}[req.spec.format]
        try:
            call = self._stub.Augment(req, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return self._stream(call, lambda m: augment_chunk(m, fmt))


class AsyncLatentClient:
    """asyncio client (grpc.aio) with the same methods as LatentClient, as coroutines; interpolate returns an
    async iterator. Create it inside the running event loop; `async with` or `await close()`."""

    def __init__(self, target: str = DEFAULT_TARGET, token: str | None = None, timeout: float | None = 30.0,
                 app_name: str | None = None, options: Sequence[tuple[str, Any]] = (),
                 retries: int = DEFAULT_RETRIES) -> None:
        _check_client_args(target, timeout)
        self.target, self.timeout = target, timeout
        self._metadata = _metadata(token, app_name)
        self._channel = grpc.aio.insecure_channel(
            target, options=list(CHANNEL_OPTIONS) + retry_options(retries) + list(options))
        self._stub = pb_grpc.LatentServiceStub(self._channel)
        self.last_server: ServerInfo | None = None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncLatentClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, method, request):
        call = method(request, timeout=self.timeout, metadata=self._metadata)
        try:
            response = await call
        except grpc.RpcError as exc:
            self.last_server = _answered_by(exc)
            raise error_from_rpc(exc) from exc
        self.last_server = server_info(await call.trailing_metadata())
        return response

    async def health(self, service: str = "", timeout: float = 5.0) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=self._metadata)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                return False
        try:
            await self._channel.unary_unary("/ray.serve.RayServeAPIService/Healthz")(b"", timeout=timeout)
            return True
        except grpc.RpcError:
            return False

    async def list_models(self, all_versions: bool = False) -> list[ModelInfo]:
        resp = await self._call(self._stub.ListModels, pb.ListModelsRequest(all_versions=bool(all_versions)))
        return [model_info_from_proto(m) for m in resp.models]

    async def get_model(self, name: str, version: int | None = None) -> ModelInfo:
        return model_info_from_proto(await self._call(
            self._stub.GetModel, pb.GetModelRequest(model=_check_model(name), version=_version(version))))

    async def encode(self, model: str, images: Any, labels: Any = None, return_handles: bool = False,
                     sample_posterior: bool = False, seed: int = 0, version: int | None = None,
                     refine_steps: int = 0, refine: Mapping[str, Any] | None = None) -> EncodeResult:
        req = build_encode_request(model, images, labels, return_handles, sample_posterior, seed, version,
                                   refine_steps, refine)
        return encode_result(await self._call(self._stub.Encode, req))

    async def decode(self, model: str, latents: Any = None, labels: Any = None,
                     handles: Sequence[str] | None = None, format: str = "uint8", version: int | None = None) -> Any:
        req = build_decode_request(model, latents, labels, handles, format, version)
        return images_from_protos((await self._call(self._stub.Decode, req)).images, format)

    async def sample(self, model: str, n: int, label: int | None = None, class_name: str | None = None,
                     class_weights: Mapping[str, float] | None = None, knobs: Mapping[str, float] | None = None,
                     seed: int = 0, temperature: float = 0.0, source: str | None = None, format: str = "uint8",
                     return_handles: bool = False, version: int | None = None,
                     guidance: Mapping[str, Any] | None = None, class_check: float = 0.0,
                     allow_weak_knobs: bool = False) -> SampleResult:
        req = build_sample_request(model, n, label, class_name, class_weights, knobs, seed, temperature, source,
                                   format, return_handles, version, guidance, class_check, allow_weak_knobs)
        return images_result(await self._call(self._stub.Sample, req), format)

    def interpolate(self, model: str, a: Any, b: Any, steps: int = 8, method: str = "lerp",
                    format: str = "uint8", return_handles: bool = False, version: int | None = None,
                    geodesic: Mapping[str, Any] | None = None) -> AsyncIterator[Frame]:
        """`async for frame in client.interpolate(...)`; arguments are checked at the call, not at the first
        iteration. Leaving the loop early cancels the call."""
        req = build_interpolate_request(model, a, b, steps, method, format, return_handles, version, geodesic)
        return self._stream(self._stub.Interpolate, req, self.timeout, lambda f: frame_from_proto(f, format))

    def augment(self, spec: Any, shards: Sequence[int] | None = None, timeout: float | None = None,
                allow_weak_knobs: bool = False) -> AsyncIterator[AugmentChunk]:
        """`async for chunk in client.augment(spec)`: as LatentClient.augment."""
        req = build_augment_request(spec, shards, allow_weak_knobs)
        fmt = {v: k for k, v in IMAGE_FORMATS.items()}[req.spec.format]
        return self._stream(self._stub.Augment, req, timeout, lambda m: augment_chunk(m, fmt))

    async def _stream(self, method, req: Any, timeout: float | None, convert) -> AsyncIterator[Any]:
        call = method(req, timeout=timeout, metadata=self._metadata)
        try:
            async for message in call:
                yield convert(message)
            self.last_server = server_info(await call.trailing_metadata())
        except grpc.RpcError as exc:
            self.last_server = _answered_by(exc)
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def edit(self, model: str, inputs: Any, moves: Sequence[Any], format: str = "uint8",
                   return_handles: bool = False, version: int | None = None,
                   allow_weak_knobs: bool = False) -> EditResult:
        req = build_edit_request(model, inputs, moves, format, return_handles, version, allow_weak_knobs)
        return images_result(await self._call(self._stub.Edit, req), format)


# ------------------------------------------------------------------------------ client-side file helpers
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


__all__ = [
    "AsyncLatentClient", "LatentClient", "ModelInfo", "FactorInfo", "KnobInfo", "EncodeResult", "SampleResult",
    "EditResult", "Frame", "PathSummary", "AugmentChunk", "DEFAULT_TARGET", "IMAGE_FORMATS", "SAMPLE_SOURCES",
    "INTERPOLATION_METHODS", "image_to_proto", "images_to_protos", "image_from_proto", "images_from_protos",
    "latents_to_protos", "latents_from_protos", "latent_ref", "error_from_rpc", "make_grid", "save_png",
    "load_image", "save_latents", "load_latents", "parse_weights", "parse_ref", "decode_image_bytes",
]
