"""JSON bodies (schemas.py) <-> the core's plain calls and answers (services/core/calls.py). Pure functions, no
FastAPI: unit-tested field by field (tests/unit/test_http_convert.py).

Like the gRPC codec, conversions leave every check the core makes to the core, so a bad request gets the same
message on both doors; what only JSON has (base64, nested arrays, "set exactly one of") is checked here and
raises ValidationError naming the field the way the caller wrote it (`images[2].png`, `a.latent`).
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Optional

import numpy as np

from latentserve.errors import ValidationError
from latentserve.services.augment.spec import parse_spec
from latentserve.services.core import calls
from latentserve.services.core import images as core_images
from latentserve.services.core.images import JPEG, PNG, RAW_FLOAT32, RAW_UINT8, SVG
from latentserve.services.frontends.http import schemas as s

FORMATS = {"png": PNG, "jpeg": JPEG, "array": RAW_UINT8, "float_array": RAW_FLOAT32, "svg": SVG}  # JSON name -> core name
SPEC_FORMATS = {"png": "png", "jpeg": "jpeg", "array": "uint8", "float_array": "float32"}  # -> augment spec


# ------------------------------------------------------------------------------------------------ images, latents
def b64decode(text: str, where: str) -> bytes:
    """Standard or URL-safe base64, optionally a `data:image/...;base64,` URL."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(f"{where}: not valid base64") from None


def image_in(img: Optional[s.ImageIn], where: str) -> core_images.Image:
    """ImageIn -> core Image (PNG/JPEG bytes or a raw uint8 (H, W, 3) tensor; sizes checked by the core)."""
    if img is None:
        return core_images.Image()
    if (img.png is None) == (img.array is None):
        raise ValidationError(f"{where}: set exactly one of png (base64) and array (H x W x 3 uint8)")
    if img.png is not None:
        return core_images.Image(encoded=b64decode(img.png, f"{where}.png"))
    try:
        a = np.asarray(img.array, dtype=np.float64)
    except (ValueError, TypeError):
        raise ValidationError(f"{where}.array: must be H x W x 3 nested lists of numbers") from None
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValidationError(f"{where}.array: must be H x W x 3 (RGB), got shape {list(a.shape)}")
    if not np.all(np.isfinite(a)) or a.min(initial=0) < 0 or a.max(initial=0) > 255 or np.any(a != np.round(a)):
        raise ValidationError(f"{where}.array: values must be integers in [0, 255]")
    return core_images.tensor_image(a.astype(np.uint8))


def image_out(img: core_images.Image) -> dict[str, Any]:
    """core Image -> ImageOut fields (base64 for encoded images, nested lists for tensors)."""
    if img.encoded is not None:
        if img.encoded[:1] == b"<":  # an SVG document (format svg): sent as text
            return {"svg": img.encoded.decode()}
        key = "jpeg" if img.encoded[:2] == b"\xff\xd8" else "png"
        return {key: base64.b64encode(img.encoded).decode()}
    dtype = core_images.TENSOR_DTYPES[img.dtype]
    return {"array": np.frombuffer(img.data, dtype=dtype).reshape(img.shape).tolist()}


def latent_in(lat: s.Latent) -> core_images.Latent:
    return core_images.Latent(lat.values, lat.label)


def latents_out(z: Optional[np.ndarray], labels: Any) -> list[dict]:
    if z is None:
        return []
    return [{"values": row, "label": int(lab)} for row, lab in zip(np.asarray(z, dtype=np.float32).tolist(), labels)]


def ref_in(ref: Optional[s.Ref], where: str) -> Optional[calls.Ref]:
    if ref is None:
        return None
    kinds = [k for k in ("latent", "handle", "image") if getattr(ref, k) is not None]
    if len(kinds) > 1:
        raise ValidationError(f"{where}: set exactly one of latent, handle and image (got {', '.join(kinds)})")
    kind = kinds[0] if kinds else ""
    return calls.Ref(kind=kind, latent=latent_in(ref.latent) if kind == "latent" else None,
                     handle=ref.handle if kind == "handle" else "",
                     image=image_in(ref.image, f"{where}.image") if kind == "image" else None, label=ref.label)


def format_name(fmt: str) -> str:
    """JSON format name -> core name (pydantic already refused names outside schemas.Format)."""
    return FORMATS[fmt]


# ------------------------------------------------------------------------------------------------ requests
def encode_call(model: str, r: s.EncodeRequest, end: float) -> calls.EncodeCall:
    return calls.EncodeCall(
        model=model, version=r.version, images=[image_in(img, f"images[{i}]") for i, img in enumerate(r.images)],
        labels=list(r.labels), sample_posterior=r.sample_posterior, seed=r.seed, refine_steps=r.refine_steps,
        refine=calls.RefineOptions(learning_rate=r.refine.learning_rate, feature_weight=r.refine.feature_weight),
        return_handles=r.return_handles, deadline=end)


def decode_call(model: str, r: s.DecodeRequest) -> calls.DecodeCall:
    return calls.DecodeCall(model=model, version=r.version, latents=[latent_in(lat) for lat in r.latents],
                            handles=list(r.handles), format=format_name(r.format), output_size=r.output_size)


def sample_call(model: str, r: s.SampleRequest, end: float) -> calls.SampleCall:
    given = [k for k in ("label", "class_name", "class_weights") if getattr(r, k) is not None]
    if len(given) > 1:
        raise ValidationError(f"{given[1]}: set at most one of label, class_name and class_weights")
    classes = (given[0], getattr(r, given[0])) if given else None
    g = r.guidance
    guidance = calls.GuidanceOptions(steps=g.steps, step_size=g.step_size, class_weight=g.class_weight,
                                     noise=g.noise, factor_targets=dict(g.factor_targets),
                                     factor_weight=g.factor_weight, start=g.start)
    return calls.SampleCall(
        model=model, n=r.n, version=r.version, format=format_name(r.format), source=r.source, guidance=guidance,
        temperature=r.temperature, seed=r.seed, classes=classes, knobs=dict(r.knobs),
        allow_weak_knobs=r.allow_weak_knobs, class_check=r.class_check, return_handles=r.return_handles,
        hold=list(r.hold), factor_classes=dict(r.factor_classes), deadline=end, output_size=r.output_size)


def interpolate_call(model: str, r: s.InterpolateRequest, end: float) -> calls.InterpolateCall:
    g = r.geodesic
    return calls.InterpolateCall(
        model=model, version=r.version, a=ref_in(r.a, "a"), b=ref_in(r.b, "b"), steps=r.steps, method=r.method,
        format=format_name(r.format),
        geodesic=calls.GeodesicOptions(iterations=g.iterations, learning_rate=g.learning_rate, space=g.space,
                                       init=g.init),
        return_handles=r.return_handles, deadline=end, output_size=r.output_size)


def edit_call(model: str, r: s.EditRequest) -> calls.EditCall:
    moves = []
    for i, mv in enumerate(r.moves):
        if mv.amount is not None and mv.target is not None:
            raise ValidationError(f"moves[{i}]: set one of amount and target, not both")
        how = "amount" if mv.amount is not None else "target" if mv.target is not None else None
        moves.append(calls.Move(knob=mv.knob, how=how, value=float(getattr(mv, how)) if how else 0.0))
    return calls.EditCall(model=model, version=r.version,
                          inputs=[ref_in(ref, f"inputs[{i}]") for i, ref in enumerate(r.inputs)], moves=moves,
                          format=format_name(r.format), allow_weak_knobs=r.allow_weak_knobs,
                          return_handles=r.return_handles, hold=list(r.hold), factor_classes=dict(r.factor_classes),
                          output_size=r.output_size)


def augment_call(r: s.AugmentRequest) -> calls.AugmentCall:
    """The spec is parsed by the one spec parser (services/augment/spec.py: YAML files, gRPC and HTTP); its
    `format` may use the JSON names too."""
    spec = dict(r.spec)
    if isinstance(spec.get("format"), str) and spec["format"] in SPEC_FORMATS:
        spec["format"] = SPEC_FORMATS[spec["format"]]
    return calls.AugmentCall(spec=parse_spec(spec), shards=list(r.shards), allow_weak_knobs=r.allow_weak_knobs)


# ------------------------------------------------------------------------------------------------ answers
def encode_response(e: calls.Encoded) -> dict:
    refine = None
    if e.refine is not None:
        refine = {"mse_before": e.refine.mse_before.tolist(), "mse_after": e.refine.mse_after.tolist(),
                  "steps": int(e.refine.steps)}
    return {"model": e.model, "version": e.version, "latents": latents_out(e.latents, e.labels),
            "label_confidence": e.confidence.tolist() if e.confidence is not None else [], "refine": refine,
            "handles": list(e.handles)}


def images_response(g: calls.Generated) -> dict:
    """Decode, Sample and Edit answers."""
    return {"model": g.model, "version": g.version, "images": [image_out(i) for i in g.images],
            "latents": latents_out(g.latents, g.labels if g.labels is not None else ()),
            "class_confidence": g.confidence.tolist() if g.confidence is not None else [],
            "handles": list(g.handles)}


def interpolate_response(p: calls.Path) -> dict:
    frames = [{"index": i, "t": float(p.t[i]), "image": image_out(p.images[i]),
               "latent": latents_out(p.latents[i:i + 1], p.labels[i:i + 1])[0],
               "handle": p.handles[i] if p.handles else "", "step_distance": float(p.step_distance[i])}
              for i in range(len(p.t))]
    return {"model": p.model, "version": p.version, "frames": frames,
            "summary": {k: _plain(v) for k, v in p.summary.items()}}


def _plain(v: Any) -> Any:
    """A PathSummary value as JSON: text, an integer (iterations) or a float."""
    if isinstance(v, str):
        return v
    return int(v) if isinstance(v, (int, np.integer)) else float(v)


def augment_batch(run: calls.AugmentRun, b: Any) -> dict:
    """One streamed batch (a line of the NDJSON answer)."""
    return {"model": run.model, "version": run.version, "shard": b.shard, "start": b.start,
            "images": [image_out(i) for i in b.images], "labels": b.labels.tolist(), "seeds": b.seeds.tolist(),
            "handles": list(b.handles), "shard_end": bool(b.shard_end),
            "factors": {n: b.factors[n].tolist() for n in run.factor_names}, "num_shards": run.num_shards,
            "count": run.count, "class_confidence": [] if b.confidence is None else b.confidence.tolist()}


def single_image(images: list[core_images.Image]) -> bytes:
    """The bytes for an `Accept: image/png` answer: exactly one PNG image."""
    if len(images) != 1:
        raise ValidationError(f"Accept: image/png answers with one image; this request makes {len(images)} "
                              "(ask for application/json)")
    return images[0].encoded or b""
