"""latentserve.v1 protobuf <-> the core's plain calls and answers (services/core/calls.py): the only place
besides the servicer that touches the generated pb2 code.

Conversions of requests never raise for a value the core checks (an unknown enum value travels as its
number, a missing oneof as an empty Ref), so a bad request gets the same first error on every frontend.
Images and latents are wrapped without a copy (raw tensor bytes, repeated latent values); the core checks
and converts them (services/core/images.py).
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

import numpy as np

from latentserve.errors import ValidationError
from latentserve.services.augment.spec import parse_spec
from latentserve.services.config import ServeConfig
from latentserve.services.core import calls
from latentserve.services.core import images as core_images
from latentserve.services.core.images import JPEG, PNG, RAW_FLOAT32, RAW_UINT8, SVG
from latentserve.v1 import latent_pb2 as pb

_FORMATS = {
    pb.IMAGE_FORMAT_UNSPECIFIED: PNG,
    pb.IMAGE_FORMAT_PNG: PNG,
    pb.IMAGE_FORMAT_JPEG: JPEG,
    pb.IMAGE_FORMAT_RAW_UINT8: RAW_UINT8,
    pb.IMAGE_FORMAT_RAW_FLOAT32: RAW_FLOAT32,
    pb.IMAGE_FORMAT_SVG: SVG,
}
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
_DTYPE_NAMES = {pb.DTYPE_UINT8: "uint8", pb.DTYPE_FLOAT32: "float32"}
_DTYPE_ENUM = {"uint8": pb.DTYPE_UINT8, "float32": pb.DTYPE_FLOAT32}
# Augment specs name formats like the client does (uint8/float32 for the raw tensors).
SPEC_FORMATS = {PNG: PNG, JPEG: JPEG, RAW_UINT8: "uint8", RAW_FLOAT32: "float32"}


# ------------------------------------------------------------------------------------------------ enums
def _format_name(value: int) -> str:
    """pb ImageFormat -> its name for the core (an unknown value as its number, refused there)."""
    return _FORMATS.get(value, str(value))


def image_format(value: int) -> str:
    """pb ImageFormat -> 'png' | 'jpeg' | 'raw_uint8' | 'raw_float32' | 'svg' (unspecified = png), checked."""
    return core_images.check_format(_format_name(value))


def sample_source(value: int) -> str:
    return calls.check_source(SAMPLE_SOURCES.get(value, str(value)))


def interpolation_method(value: int) -> str:
    return calls.check_method(INTERPOLATION_METHODS.get(value, str(value)))


# ------------------------------------------------------------------------------------------------ images, latents
def image_in(img: "pb.Image") -> core_images.Image:
    """pb.Image -> core Image (no copy; checked by the core)."""
    kind = img.WhichOneof("data")
    if kind == "encoded":
        return core_images.Image(encoded=img.encoded)
    if kind == "tensor":
        t = img.tensor
        dtype = _DTYPE_NAMES.get(t.dtype) or (pb.DType.Name(t.dtype) if t.dtype in pb.DType.values() else str(t.dtype))
        return core_images.Image(shape=tuple(t.shape), dtype=dtype, data=t.data)
    return core_images.Image()


def image_out(img: core_images.Image) -> "pb.Image":
    if img.encoded is not None:
        return pb.Image(encoded=img.encoded)
    return pb.Image(tensor=pb.Tensor(shape=img.shape, dtype=_DTYPE_ENUM[img.dtype], data=img.data))


def images_out(images: Sequence[core_images.Image]) -> list["pb.Image"]:
    return [image_out(i) for i in images]


def tensor_to_array(t: "pb.Tensor", where: str = "tensor") -> np.ndarray:
    """pb.Tensor -> read-only numpy view of its bytes (no copy), shape and size checked."""
    return core_images.tensor_array(image_in(pb.Image(tensor=t)), where)


def array_to_tensor(a: np.ndarray) -> "pb.Tensor":
    """uint8 or float32 array -> pb.Tensor (little-endian C order; one copy, by tobytes)."""
    return image_out(core_images.tensor_image(a)).tensor


def images_from_pb(images: Sequence["pb.Image"], image_shape: Sequence[int], max_bytes: int = 4 << 20,
                   field: str = "images") -> np.ndarray:
    """pb Images -> float32 (N, 3, H, W) in [-1, 1] for the model with `image_shape` (3, H, W)."""
    return core_images.decode_images([image_in(i) for i in images], image_shape, max_bytes, field)


def images_to_pb(images: np.ndarray, fmt: str) -> list["pb.Image"]:
    """Decoded images (float32 (N, 3, H, W) in [-1, 1] or uint8 (N, H, W, 3)) -> pb Images in `fmt`."""
    return images_out(core_images.encode_images(images, fmt))


def latent_in(lat: "pb.Latent") -> core_images.Latent:
    return core_images.Latent(lat.values, lat.label)


def latents_from_pb(latents: Sequence["pb.Latent"], dim: int, n_classes: int,
                    field: str = "latents") -> tuple[np.ndarray, np.ndarray]:
    """pb Latents -> (z float32 (N, D), labels int64 (N,)); length, finiteness and label range checked."""
    return core_images.latents_array([latent_in(lat) for lat in latents], dim, n_classes, field)


def latents_to_pb(z: np.ndarray, labels: Iterable[int]) -> list["pb.Latent"]:
    """float32 (N, D) + labels (N,) -> pb Latents."""
    return [pb.Latent(values=row, label=int(lab)) for row, lab in zip(np.asarray(z, dtype=np.float32).tolist(), labels)]


def latent_to_pb(z: np.ndarray, label: int) -> "pb.Latent":
    return pb.Latent(values=np.asarray(z, dtype=np.float32).tolist(), label=int(label))


def ref_in(ref: "pb.LatentRef") -> calls.Ref:
    kind = ref.WhichOneof("ref") or ""
    return calls.Ref(kind=kind, latent=latent_in(ref.latent) if kind == "latent" else None,
                     handle=ref.handle if kind == "handle" else "",
                     image=image_in(ref.image) if kind == "image" else None,
                     label=int(ref.label) if ref.HasField("label") else None)


# ------------------------------------------------------------------------------------------------ requests
def deadline(grpc_context: Any, config: ServeConfig) -> float:
    """Wall-clock time after which gradient work is abandoned: the gRPC deadline (when the transport exposes
    it) or request_timeout_s, whichever comes first; 0 = none. Cancellation covers transports without it."""
    now, ends = time.time(), []
    remaining = getattr(grpc_context, "time_remaining", None)
    if callable(remaining):
        try:
            r = remaining()
        except Exception:  # noqa: BLE001 - a context without a deadline
            r = None
        if r is not None and math.isfinite(r):
            ends.append(now + max(0.0, float(r)))
    if config.scaling.request_timeout_s:
        ends.append(now + config.scaling.request_timeout_s)
    return min(ends) if ends else 0.0


def encode_call(r: "pb.EncodeRequest", end: float) -> calls.EncodeCall:
    return calls.EncodeCall(
        model=r.model, version=r.version, images=[image_in(i) for i in r.images], labels=list(r.labels),
        sample_posterior=r.sample_posterior, seed=r.seed, refine_steps=r.refine_steps,
        refine=calls.RefineOptions(learning_rate=r.refine.learning_rate, feature_weight=r.refine.feature_weight),
        return_handles=r.return_handles, deadline=end)


def decode_call(r: "pb.DecodeRequest") -> calls.DecodeCall:
    return calls.DecodeCall(model=r.model, version=r.version, latents=[latent_in(lat) for lat in r.latents],
                            handles=list(r.handles), format=_format_name(r.format), output_size=r.output_size)


def sample_call(r: "pb.SampleRequest", end: float) -> calls.SampleCall:
    kind = r.WhichOneof("classes")
    classes = None
    if kind == "label":
        classes = ("label", r.label)
    elif kind == "class_name":
        classes = ("class_name", r.class_name)
    elif kind == "class_weights":
        classes = ("class_weights", dict(r.class_weights.weights))
    g = r.guidance
    guidance = calls.GuidanceOptions(
        steps=g.steps, step_size=g.step_size, class_weight=g.class_weight, noise=g.noise,
        factor_targets=dict(g.factor_targets), factor_weight=g.factor_weight,
        start=SAMPLE_SOURCES.get(g.start, str(g.start)))
    return calls.SampleCall(
        model=r.model, n=r.n, version=r.version, format=_format_name(r.format),
        source=SAMPLE_SOURCES.get(r.source, str(r.source)), guidance=guidance, temperature=r.temperature,
        seed=r.seed, classes=classes, knobs=dict(r.knobs), allow_weak_knobs=r.allow_weak_knobs,
        hold=list(r.hold), factor_classes=dict(r.factor_classes), class_check=r.class_check,
        return_handles=r.return_handles, deadline=end, output_size=r.output_size)


def interpolate_call(r: "pb.InterpolateRequest", end: float) -> calls.InterpolateCall:
    g = r.geodesic
    return calls.InterpolateCall(
        model=r.model, version=r.version, a=ref_in(r.a) if r.HasField("a") else None,
        b=ref_in(r.b) if r.HasField("b") else None, steps=r.steps,
        method=INTERPOLATION_METHODS.get(r.method, str(r.method)), format=_format_name(r.format),
        geodesic=calls.GeodesicOptions(iterations=g.iterations, learning_rate=g.learning_rate, space=g.space,
                                       init=INTERPOLATION_METHODS.get(g.init, str(g.init)) if g.init else ""),
        return_handles=r.return_handles, deadline=end, output_size=r.output_size)


def edit_call(r: "pb.EditRequest") -> calls.EditCall:
    moves = []
    for mv in r.moves:
        how = mv.WhichOneof("how")
        moves.append(calls.Move(knob=mv.knob, how=how, value=getattr(mv, how) if how else 0.0))
    return calls.EditCall(model=r.model, version=r.version, inputs=[ref_in(i) for i in r.inputs], moves=moves,
                          format=_format_name(r.format), allow_weak_knobs=r.allow_weak_knobs,
                          return_handles=r.return_handles, hold=list(r.hold), factor_classes=dict(r.factor_classes),
                          output_size=r.output_size)


def augment_call(r: "pb.AugmentRequest") -> calls.AugmentCall:
    """Parses the spec (ValidationError for a bad one, before any model is looked up)."""
    return calls.AugmentCall(spec=augment_spec_from_pb(r.spec), shards=list(r.shards),
                             allow_weak_knobs=r.allow_weak_knobs)


# ------------------------------------------------------------------------------------------------ answers
def encode_response(e: calls.Encoded) -> "pb.EncodeResponse":
    report = None
    if e.refine is not None:
        report = pb.RefineReport(mse_before=e.refine.mse_before.tolist(), mse_after=e.refine.mse_after.tolist(),
                                 steps=e.refine.steps)
    resp = pb.EncodeResponse(model=e.model, version=e.version, latents=latents_to_pb(e.latents, e.labels),
                             label_confidence=e.confidence.tolist() if e.confidence is not None else [],
                             refine=report)
    resp.handles.extend(e.handles)
    return resp


def decode_response(g: calls.Generated) -> "pb.DecodeResponse":
    return pb.DecodeResponse(model=g.model, version=g.version, images=images_out(g.images))


def sample_response(g: calls.Generated) -> "pb.SampleResponse":
    resp = pb.SampleResponse(model=g.model, version=g.version, images=images_out(g.images),
                             latents=latents_to_pb(g.latents, g.labels))
    if g.confidence is not None:
        resp.class_confidence.extend(g.confidence.tolist())
    resp.handles.extend(g.handles)
    return resp


def edit_response(g: calls.Generated) -> "pb.EditResponse":
    resp = pb.EditResponse(model=g.model, version=g.version, images=images_out(g.images),
                           latents=latents_to_pb(g.latents, g.labels))
    resp.handles.extend(g.handles)
    return resp


def interpolate_frames(p: calls.Path) -> list["pb.InterpolateFrame"]:
    summary = pb.PathSummary(**p.summary)
    steps = len(p.t)
    return [pb.InterpolateFrame(
        index=i, t=float(p.t[i]), image=image_out(p.images[i]), latent=latent_to_pb(p.latents[i], p.labels[i]),
        handle=p.handles[i] if p.handles else "", step_distance=float(p.step_distance[i]),
        summary=summary if i == steps - 1 else None) for i in range(steps)]


def augment_batch(run: calls.AugmentRun, b: Any) -> "pb.AugmentBatch":
    return pb.AugmentBatch(
        model=run.model, version=run.version, shard=b.shard, start=b.start, images=images_out(b.images),
        labels=b.labels.tolist(), seeds=b.seeds.tolist(), handles=b.handles, shard_end=b.shard_end,
        factors=[pb.FactorColumn(name=n, values=b.factors[n].tolist()) for n in run.factor_names],
        num_shards=run.num_shards, count=run.count,
        class_confidence=[] if b.confidence is None else b.confidence.tolist())


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
                         max_refine_steps=int(info["limits"].get("max_refine_steps", 0)),
                         max_output_pixels=int(info["limits"].get("max_output_pixels", 0))),
        gates=[pb.Gate(name=t["name"], value=_nan_if_none(t["value"]), threshold=_nan_if_none(t["threshold"]),
                       op=t["op"], passed=bool(t["passed"]), judge=t["judge"] or "", detail=t["detail"])
               for t in gates.get("targets", [])],
        gates_passed=bool(gates.get("passed", False)),
        judge=gates.get("judge") or "",
        handle_store=pb.HandleStore(**info["handle_store"]) if info.get("handle_store") else None,
        class_factors=[pb.ClassFactor(name=f["name"], classes=list(f["classes"]))
                       for f in info.get("class_factors", [])],
        output_sizes=pb.OutputSizes(**info["output_sizes"]) if info.get("output_sizes") else None,
    )


def _nan_if_none(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ------------------------------------------------------------------------------------------------ augment
def augment_spec_from_pb(msg: "pb.AugmentSpec") -> Any:
    """AugmentSpec proto -> the checked plain spec (services/augment/spec.py parses it: one set of checks
    and messages for YAML specs and the wire). Raises ValidationError naming the field."""
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
        "temperature": float(msg.temperature), "format": SPEC_FORMATS.get(image_format(msg.format), "svg"),
        "shard_size": msg.shard_size, "handles": bool(msg.return_handles), "class_check": round(float(msg.class_check), 6),  # float32 on the wire
    })
