"""Protobuf <-> Python for the client: images, latents and references in, request builders with their local
argument checks, and response parsers. Protobuf types stop here (and in latentserve/client/augment.py)."""
from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from latentserve.client.results import (EncodeResult, FactorInfo, Frame, GateInfo, HandleStoreInfo, KnobInfo,
                                        ModelInfo, OutputSizes, PathSummary, SampleResult)
from latentserve.errors import UnrecoverableError, ValidationError
from latentserve.models.class_check import requested_threshold
from latentserve.v1 import latent_pb2 as pb


IMAGE_FORMATS = {
    "uint8": pb.IMAGE_FORMAT_RAW_UINT8,
    "float32": pb.IMAGE_FORMAT_RAW_FLOAT32,
    "png": pb.IMAGE_FORMAT_PNG,
    "jpeg": pb.IMAGE_FORMAT_JPEG,
    "svg": pb.IMAGE_FORMAT_SVG,  # vector models: each image's SVG document (bytes)
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


GUIDANCE_OPTIONS = ("steps", "step_size", "class_weight", "noise", "factor_targets", "factor_weight", "start")
GEODESIC_OPTIONS = ("iterations", "learning_rate", "space", "init")
REFINE_OPTIONS = ("learning_rate", "feature_weight")


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
    if fmt in ("png", "jpeg", "svg"):
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
    """Image protos -> uint8 (N, H, W, 3) / float32 (N, 3, H, W) arrays, or a list of bytes for png/jpeg/svg."""
    fmt = _check_format(fmt)
    outs = [_image_out(im, fmt) for im in images]
    if fmt in ("png", "jpeg", "svg"):
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


def _output_size(size: Any) -> int:
    """Output size in px (0 = the model's native size); the server checks it against the model."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 <= int(size) < 2**31:
        raise ValidationError(f"output_size must be an int >= 0 (px; 0 = the model's native size), got {size!r}")
    return int(size)


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
                         format: str = "uint8", version: int | None = None,
                         output_size: int = 0) -> pb.DecodeRequest:
    if hasattr(latents, "latents") and hasattr(latents, "labels"):  # an EncodeResult / SampleResult
        latents, labels = latents.latents, (latents.labels if labels is None else labels)
    if (latents is None) == (not handles):
        raise ValidationError("decode needs either latents (with labels) or handles, not both")
    req = pb.DecodeRequest(model=_check_model(model), version=_version(version),
                           format=IMAGE_FORMATS[_check_format(format)], output_size=_output_size(output_size))
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
                         allow_weak_knobs: bool = False, hold: Sequence[str] = (),
                         output_size: int = 0,
                         factor_classes: Mapping[str, str] | None = None) -> pb.SampleRequest:
    n = int(n)
    if n < 1:
        raise ValidationError(f"n must be >= 1, got {n}")
    if sum(x is not None for x in (label, class_name, class_weights)) > 1:
        raise ValidationError("give at most one of label, class_name and class_weights")
    by_factor = _class_map(factor_classes)
    if by_factor and any(x is not None for x in (label, class_name, class_weights)):
        raise ValidationError("factor_classes: give the classes by factor or by label / class_name / class_weights")
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
                           allow_weak_knobs=bool(allow_weak_knobs), hold=_names(hold, "hold"),
                           output_size=_output_size(output_size), factor_classes=by_factor)
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
                              geodesic: Mapping[str, Any] | None = None,
                              output_size: int = 0) -> pb.InterpolateRequest:
    steps = int(steps)
    if steps < 2:
        raise ValidationError(f"steps must be >= 2 (frames including both ends), got {steps}")
    if method not in INTERPOLATION_METHODS:
        raise ValidationError(f"unknown interpolation method {method!r}; "
                              f"choose one of {', '.join(INTERPOLATION_METHODS)}")
    req = pb.InterpolateRequest(model=_check_model(model), version=_version(version), a=latent_ref(a, "a"),
                                b=latent_ref(b, "b"), steps=steps, method=INTERPOLATION_METHODS[method],
                                format=IMAGE_FORMATS[_check_format(format)], return_handles=bool(return_handles),
                                output_size=_output_size(output_size))
    if geodesic:
        req.geodesic.CopyFrom(pb.GeodesicOptions(**_options(geodesic, GEODESIC_OPTIONS, "geodesic")))
    return req


def build_edit_request(model: str, inputs: Any, moves: Sequence[Any], format: str = "uint8",
                       return_handles: bool = False, version: int | None = None,
                       allow_weak_knobs: bool = False, hold: Sequence[str] = (),
                       factor_classes: Mapping[str, str] | None = None, output_size: int = 0) -> pb.EditRequest:
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
    by_factor = _class_map(factor_classes)
    if not pm and not by_factor:
        raise ValidationError("edit needs at least one move or factor_classes")
    return pb.EditRequest(model=_check_model(model), version=_version(version), inputs=refs, moves=pm,
                          format=IMAGE_FORMATS[_check_format(format)], return_handles=bool(return_handles),
                          allow_weak_knobs=bool(allow_weak_knobs), hold=_names(hold, "hold"),
                          factor_classes=by_factor, output_size=_output_size(output_size))


def _class_map(values: Mapping[str, str] | None) -> dict[str, str]:
    """{class factor: class name} (factor_classes), both non-empty strings; ValidationError naming the field."""
    if values is None:
        return {}
    if not isinstance(values, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                                   for k, v in values.items()):
        raise ValidationError(f"factor_classes must map class factor names to class names, got {values!r}")
    return dict(values)


def _names(names: Sequence[str] | None, field: str) -> list[str]:
    """A list of factor names (a single string is one name); ValidationError naming `field` otherwise."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    out = list(names)
    if not all(isinstance(n, str) and n for n in out):
        raise ValidationError(f"{field} must be factor names (non-empty strings), got {out!r}")
    return out


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
        gates_passed=m.gates_passed, judge=m.judge,
        handle_store=HandleStoreInfo(m.handle_store.backend, m.handle_store.durable, m.handle_store.detail)
        if m.HasField("handle_store") else None,
        max_output_pixels=m.limits.max_output_pixels,
        class_factors={f.name: tuple(f.classes) for f in m.class_factors},
        output_sizes=OutputSizes(m.output_sizes.min_px, m.output_sizes.max_px, m.output_sizes.multiple_of_px)
        if m.HasField("output_sizes") else None)


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
