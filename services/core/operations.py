"""The gRPC ingress: LatentService (+ grpc.health.v1.Health) as a Ray Serve deployment.

The methods named like the RPCs are THE handlers, whichever transport delivers the call (config
`grpc_frontend`): "native" (default) = this replica's own grpc.aio server (services/frontends/grpc/native.py, started
in `__init__`, models in-process) calls them with a grpc.aio context; "serve" = Ray Serve's gRPC proxy (or
direct ingress) calls them with the request message and `grpc_context`. Each method: checks the API token,
validates and converts the request to numpy (services/frontends/grpc/codec.py), does the latent math with
models/latent.py, calls the model (a co-located ModelRunner, or a ModelServer deployment handle) and
converts back. Errors are mapped to gRPC status codes in ONE place (`status_for`); a request can never crash
the replica: unary RPCs answer with the status set on the context, the streaming Interpolate raises
`_StatusSet` after setting it (Serve forwards user-set codes; the native frontend ends the stream).

Semantics decided here (documented for clients):
- version 0 = the model's default version (newest at deploy time); a pinned version is served on demand.
  Handles carry their version: a request that pins a different version than its handles is rejected.
- Sample: seed 0 = a fresh random seed; any other seed gives the same images for the same options.
  Labels: `label`/`class_name` for all images, `class_weights` drawn with the seed, none = uniform.
  Knob targets must lie in the factor's range (rejected, not clamped). temperature 0 = model default.
- Edit/knob names: factor names as listed, PCA directions as `pca_<i>` (also accepted: `pc<i>`).
- Quality gates (models/gates.py): ModelInfo carries the gates computed from the manifest's metrics; a factor
  knob the gate judged unusable (`Knob.usable` false) is refused in Sample knobs, Edit moves and Augment
  factors (INVALID_ARGUMENT naming the knob, its judged R² and the judge) unless the request sets
  `allow_weak_knobs`. A knob without a judged figure is never refused.
- Interpolate: the label switches from a's to b's at t = 0.5 (labels are discrete); step_distance is the
  RMS distance of consecutive decoded frames on the [-1, 1] scale, before 8-bit quantisation.
- DEADLINE: the client's deadline cancels the call; the frontend cancels the ingress task and the model call
  it is awaiting, and a cancelled request still waiting in a batch queue is dropped before it runs.
- Augment (services/augment/stream.py, spec semantics in services/augment/spec.py): the request is checked
  completely before the first image is generated; images flow at the client's pace (bounded prefetch); the
  result cache is bypassed (bulk jobs would only evict interactive results).
- Images: 8-bit output formats (RAW_UINT8, PNG, JPEG) ask the model for uint8 images (converted once per
  batch in the model's worker thread); only RAW_FLOAT32 and Interpolate's step distances use float32.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable

import grpc
import numpy as np

from latentserve.errors import LatentServeError, NotFoundError, UnauthenticatedError, UnsupportedError, ValidationError
from latentserve.models import class_check, gates
from latentserve.models.latent import (PCA_KNOB_PREFIX, LatentSpace, default_sample_source, latents_under_labels,
                                       lerp, slerp)
from latentserve.models.manifest import read_manifest
from latentserve.models.repository import ModelRecord, Repository
from latentserve.services.augment import spec as augment_spec
from latentserve.services.augment import stream as augment_stream
from latentserve.services.frontends.grpc import codec
from latentserve.services.observability import metrics
from latentserve.services.core import latent_ops as lops
from latentserve.services.core import latent_ops_settings as lreq
from latentserve.services.config import ServeConfig
from latentserve.services.observability.identity import replica_identity
from latentserve.services.storage.handles import LatentStore, make_handle, open_stores, parse_handle
from latentserve.v1 import latent_pb2 as pb

logger = logging.getLogger("ray.serve")
SERVICE_NAME = "latentserve.v1.LatentService"
GENERATIVE = ("gan", "vae", "flow")

_STATUS = {
    "validation": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "unrecoverable": grpc.StatusCode.INTERNAL,
    "unsupported": grpc.StatusCode.UNIMPLEMENTED,
}


# ------------------------------------------------------------------------------------------- errors
def _unwrap(exc: BaseException) -> BaseException:
    """The user exception inside Ray's wrappers (RayTaskError carries the original as `.cause`)."""
    for _ in range(4):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
        else:
            break
    return exc


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """THE mapping from exceptions to (gRPC status code, message)."""
    exc = _unwrap(exc)
    if isinstance(exc, LatentServeError):
        return _STATUS.get(exc.kind, grpc.StatusCode.INTERNAL), str(exc)
    from ray import exceptions as ray_exc
    from ray.serve import exceptions as serve_exc

    if isinstance(exc, serve_exc.BackPressureError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"server is at capacity, retry later ({exc.message})"
    if isinstance(exc, (serve_exc.DeploymentUnavailableError, ray_exc.RayActorError,
                        getattr(ray_exc, "ActorUnavailableError", ray_exc.RayActorError))):
        return grpc.StatusCode.UNAVAILABLE, f"a model server is unavailable, retry later ({type(exc).__name__})"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ray_exc.GetTimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the request did not finish in time"
    if isinstance(exc, (asyncio.CancelledError, getattr(serve_exc, "RequestCancelledError", asyncio.CancelledError))):
        return grpc.StatusCode.CANCELLED, "the request was cancelled"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


class _StatusSet(Exception):
    """Raised out of a streaming method after the status was set on the context (Serve forwards it)."""


def _set_status(grpc_context: Any, exc: BaseException, rpc: str) -> None:
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        logger.error("%s failed", rpc, exc_info=(type(exc), exc, exc.__traceback__))
    elif code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
        logger.warning("%s: %s: %s", rpc, code.name, message)
    if grpc_context is not None:
        grpc_context.set_code(code)
        grpc_context.set_details(message[:4000])
    metrics.note_status(code.name)  # the code of the call being recorded, if any (services/observability/metrics.py)


# ------------------------------------------------------------------------------------------- model state
@dataclass
class ServedVersion:
    """What the ingress knows about one model version: manifest facts and its latent space."""

    record: ModelRecord
    space: LatentSpace
    info: dict  # ModelInfo fields (without `versions`, which changes as versions appear)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def family(self) -> str:
        return self.record.family

    @property
    def dim(self) -> int:
        return int(self.record.latent_dim)

    @property
    def n_classes(self) -> int:
        return len(self.record.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.record.image_shape

    @property
    def reports_confidence(self) -> bool:
        return class_head_trusted(self.family, self.record.manifest.get("metrics") or {})


def _flatten_metrics(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten_metrics(v, f"{prefix}{k}." if prefix or k else ""))
    elif isinstance(d, bool):
        out[prefix.rstrip(".")] = float(d)
    elif isinstance(d, (int, float)) and math.isfinite(float(d)):
        out[prefix.rstrip(".")] = float(d)
    return out


def model_info(record: ModelRecord, config: ServeConfig) -> dict:
    """ModelInfo fields of one version, from its manifest."""
    m = record.manifest
    gmm = m.get("gmm") or {}
    prior = (m.get("prior") or {}).get("type", "")
    default_source = default_sample_source(record.family, bool(gmm.get("components")), gmm.get("kind", "em"))
    checks = class_check.default_thresholds(m, default_source)  # per sample source
    grad_ops = not lops.availability_problem(config)  # gradient latent ops: torch installed and enabled
    knobs = [dict(k) for k in m.get("knobs") or []]
    gated = gates.compute_gates(record.family, m.get("metrics") or {}, gates.factor_knobs(m))
    for k in knobs:  # the judged figure of each factor knob (None: not judged, always usable)
        judged = gated["knobs"].get(k["name"]) or {}
        k["r2_judged"], k["usable"] = judged.get("r2"), judged.get("usable", True)
    return {
        "name": record.name,
        "version": record.version,
        "family": record.family,
        "image_shape": list(m["image_shape"]),
        "latent_shape": list(m.get("latent_shape") or []),
        "class_names": list(m["class_names"]),
        "factors": list(m["factors"]),
        "knobs": knobs,
        "gates": gated,
        "sample_sources": ["prior"] + (["latent_gmm"] if gmm.get("components") else [])
                          + (["guided"] if grad_ops and m.get("probe") else []),
        "default_sample_source": default_source,
        "default_class_checks": checks,
        "default_class_check": checks.get(default_source, 0.0),
        "interpolation_methods": ["lerp", "slerp"] + (["geodesic"] if grad_ops else []),
        "metrics": _flatten_metrics(m.get("metrics") or {}),
        "backend": config.backend,
        "prior": prior,
        "limits": {"max_images_per_request": config.max_images_per_request,
                   "max_interpolation_steps": config.max_interpolation_steps,
                   "max_geodesic_iterations": config.max_geodesic_iterations if grad_ops else 0,
                   "max_guidance_steps": config.max_guidance_steps if grad_ops and m.get("probe") else 0,
                   "max_refine_steps": config.max_refine_steps if grad_ops and record.family in lops.REFINABLE else 0},
    }


def class_head_trusted(family: str, metrics: dict) -> bool:
    """Whether Encode reports the class head's probability of each label (`label_confidence`; else none): for
    a head that evaluation found to classify at least class_check.MIN_HEAD_ACCURACY of the real test images
    (manifest metrics `encoder_accuracy`) or, not evaluated, a gan/vae head trained as a classifier. A flow's
    class posterior (Bayes rule over its class Gaussians) is near 1 for nearly every image, right or wrong,
    so it is reported only where evaluation found it accurate."""
    accuracy = metrics.get("encoder_accuracy")
    if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool):
        return accuracy >= class_check.MIN_HEAD_ACCURACY
    return family != "flow"


def not_served_error(repo: Repository, name: str, served: Iterable[str]) -> NotFoundError:
    """NOT_FOUND for a model this server does not serve, saying why when the repository has it: a probe is the
    evaluator / guide of the generative models (evaluation scores samples with it, guided sampling steers by
    it) and is never served; any other model was left out by the `models` setting."""
    listed = ", ".join(sorted(served))
    family = None
    if name in repo.names():  # only a name the repository lists: a request never chooses a path
        try:
            family = read_manifest(repo.resolve(name)[1], validate=False).get("family")
        except (LatentServeError, OSError):
            pass
    if family == "probe":
        return NotFoundError(f"model {name!r} is not served: it is a probe, the evaluator / guide model that scores "
                             f"the generative models and steers guided sampling; served models: {listed}")
    if family is not None:
        return NotFoundError(f"model {name!r} ({family}) is in the repository but not served here; served models: "
                             f"{listed}")
    return NotFoundError(f"unknown model {name!r}; served models: {listed}")


def _knob_name(name: str) -> str:
    """Accept `pc3` as well as the manifest's `pca_3`."""
    if name.startswith("pc") and not name.startswith(PCA_KNOB_PREFIX) and name[2:].isdigit():
        return f"{PCA_KNOB_PREFIX}{int(name[2:])}"
    return name


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def _rng(seed: int) -> np.random.Generator:
    """seed 0 = fresh entropy; otherwise deterministic."""
    return np.random.default_rng(int(seed) if seed else None)


class _RemoteModel:
    """The ModelRunner API over a Serve deployment handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def encode(self, version: int, images: np.ndarray) -> dict[str, np.ndarray]:
        return await self.handle.encode.remote(version, images)

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray, out: str = "float32") -> np.ndarray:
        return await self.handle.decode.remote(version, latents, labels, out)

    async def stats(self) -> dict:
        return await self.handle.stats.remote()

    async def latent_op(self, job: Any) -> Any:
        # cancelling this await cancels the request on the model server, whose engine drops the job
        return await self.handle.latent_op.remote(job)

    async def probe_factors(self, version: int) -> list[str]:
        return await self.handle.probe_factors.remote(version)

    def close(self) -> None:
        pass


class _LocalModel:
    """The ModelRunner API in-process (co-located mode)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    async def encode(self, version: int, images: np.ndarray) -> dict[str, np.ndarray]:
        return await self.runner.encode(version, images)

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray, out: str = "float32") -> np.ndarray:
        return await self.runner.decode(version, latents, labels, out)

    async def stats(self) -> dict:
        return self.runner.stats()

    async def latent_op(self, job: Any) -> Any:
        return await self.runner.latent_op(job)

    async def probe_factors(self, version: int) -> list[str]:
        return await self.runner.probe_factors(version)

    def close(self) -> None:
        self.runner.close()


# ------------------------------------------------------------------------------------------- the servicer
class LatentIngress:
    """LatentService + Health. `models`: name -> default version; `handles`: name -> ModelServer handle
    (None when co-located, always with the native frontend: the runners are created here).

    Serve frontend: this class is the ingress deployment. Native frontend: each replica's serving process
    (services/frontends/grpc/native.py) holds one instance, whose `__init__` ends by starting its gRPC server on
    grpc_port, and `close()` drains and stops it."""

    NATIVE_GRACE_S = 10.0  # native: RPCs in flight when the server stops get this long

    def __init__(self, config: dict, models: dict[str, int], handles: dict[str, Any] | None = None,
                 identity: tuple[tuple[str, str], ...] | None = None) -> None:
        self.config = ServeConfig(**config).validate()
        metrics.setup(self.config)  # before the stores and runners: they record into it too
        # trailing metadata naming this replica and its Ray node (services/observability/identity.py); the native serving
        # process is no Ray actor, so its replica passes it in
        self._identity = tuple(tuple(kv) for kv in identity) if identity is not None else replica_identity()
        self.repo = Repository(self.config.repository_path())
        self.default_versions = {name: int(v) for name, v in models.items()}
        # Handle store + encode/result caches (services/storage/handles.py open_stores): in-process, or Redis shared by
        # every replica; a wrong Redis password fails here, at start.
        self.store: LatentStore
        self.store, self.cache = open_stores(self.config)
        self._token = self.config.api_token.encode() if self.config.api_token else b""
        self._versions: dict[tuple[str, int], ServedVersion] = {}
        self._load_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._started = time.time()
        self.requests: dict[str, int] = {}
        self.augment_stats = augment_stream.AugmentStats()
        self._augment_plans: dict[tuple, augment_spec.AugmentPlan] = {}  # a few recent jobs (resumes, workers)
        for name, v in self.default_versions.items():
            self._versions[(name, v)] = self._load_version(name, v)
        self._native = None
        native = self.config.grpc_frontend == "native"
        if handles is None:
            from latentserve.services.core.model_server import ModelRunner

            device = "cuda" if native and self.config.num_gpus > 0 else "cpu"
            self.models = {name: _LocalModel(ModelRunner(self.config, name, v, device=device))
                           for name, v in self.default_versions.items()}
        else:
            if native:
                raise ValidationError("ingress: the native gRPC frontend runs the models in-process; pass no handles")
            missing = set(self.default_versions) - set(handles)
            if missing:
                raise ValidationError(f"ingress: no model server handle for {', '.join(sorted(missing))}")
            self.models = {name: _RemoteModel(handles[name]) for name in self.default_versions}
        # after the models loaded: a replica that failed to start is not counted as live
        metrics.replica_up("LatentIngress", self.default_versions)
        if native:
            self._start_native()
        logger.info("latentserve ingress up: models %s, backend %s, frontend %s, colocate=%s, auth=%s",
                    self.default_versions, self.config.backend, self.config.grpc_frontend,
                    self.config.colocate or native, bool(self._token))

    # -- native frontend ----------------------------------------------------------------------------------
    def _start_native(self) -> None:
        from latentserve.services.frontends.grpc.native import NativeGrpcServer

        self._native = NativeGrpcServer(self, self.config)
        self._native.start()
        logger.info("latentserve native gRPC server on %s:%d (private health port %d)",
                    self.config.host, self.config.grpc_port, self._native.private_port)

    def close(self, grace_s: float | None = None, drain_s: float = 0.0) -> None:
        """Stop the native gRPC server if any (NOT_SERVING, `drain_s`, clients handed over to the other
        listeners of the port, in-flight RPCs get `grace_s`), then the model runners. Idempotent."""
        native = getattr(self, "_native", None)
        if native is not None:
            native.stop(self.NATIVE_GRACE_S if grace_s is None else grace_s, drain_s)
        for m in getattr(self, "models", {}).values():
            m.close()

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica (serve frontend); garbage collection otherwise.
        self.close()

    # -- model versions -----------------------------------------------------------------------------------
    def _load_version(self, name: str, version: int) -> ServedVersion:
        record = self.repo.load(name, version, verify=self.config.verify_checksums)
        if record.family not in GENERATIVE:
            raise ValidationError(f"model {name!r} is a {record.family} model; only gan, vae and flow models are served")
        space = self.repo.latent_space(record)
        return ServedVersion(record, space, model_info(record, self.config))

    async def _model(self, name: str, version: int = 0) -> ServedVersion:
        """The served version of `name` (0 = default); NOT_FOUND for unknown models and versions."""
        if not name:
            raise ValidationError(f"model: required; served models: {', '.join(sorted(self.default_versions))}")
        if name not in self.default_versions:
            raise not_served_error(self.repo, name, self.default_versions)
        if version < 0:
            raise ValidationError(f"version must be >= 0 (0 = default), got {version}")
        key = (name, int(version) or self.default_versions[name])
        sv = self._versions.get(key)
        if sv is not None:
            metrics.note_model(name, key[1])
            return sv
        lock = self._load_locks.setdefault(key, asyncio.Lock())
        async with lock:
            sv = self._versions.get(key)
            if sv is None:
                versions = self.repo.versions(name)
                if key[1] not in versions:
                    raise NotFoundError(f"model {name!r} has no version {key[1]}; versions: {', '.join(map(str, versions))}")
                sv = await asyncio.get_running_loop().run_in_executor(None, self._load_version, *key)
                self._versions[key] = sv
        metrics.note_model(name, key[1])
        return sv

    def _info_pb(self, sv: ServedVersion) -> pb.ModelInfo:
        info = dict(sv.info)
        info["versions"] = self.repo.versions(sv.name)
        return codec.model_info_to_pb(info)

    # -- request plumbing ---------------------------------------------------------------------------------
    def _authorize(self, grpc_context: Any) -> None:
        if not self._token:
            return
        value = ""
        if grpc_context is not None:
            for key, v in grpc_context.invocation_metadata():
                if key == "authorization":
                    value = v if isinstance(v, str) else v.decode("latin-1")
                    break
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise UnauthenticatedError(
                "missing or wrong API token: send metadata 'authorization: Bearer <token>'"
                if value else "missing API token: send metadata 'authorization: Bearer <token>'"
            )

    def _count(self, n: int, what: str) -> None:
        cap = self.config.max_images_per_request
        if n < 1:
            raise ValidationError(f"{what}: at least 1 required, got {n}")
        if n > cap:
            raise ValidationError(f"{what}: {n} is over the limit of {cap} per request (Limits.max_images_per_request)")

    async def _handles_for(self, sv: ServedVersion, z: np.ndarray, labels: np.ndarray) -> list[str]:
        hs = [make_handle(sv.name, sv.version, z[i], int(labels[i])) for i in range(len(z))]
        await self.store.aput_many([(h, z[i], int(labels[i])) for i, h in enumerate(hs)])
        return hs

    async def _model_for_handles(self, name: str, version: int, handles: list[str], where: str) -> ServedVersion:
        """Handles fix the model version: all must agree with each other and with a pinned version."""
        refs = [parse_handle(h) for h in handles]
        for i, r in enumerate(refs):
            if r.model != name:
                raise ValidationError(f"{where}[{i}]: handle belongs to model {r.model!r}, the request is for {name!r}")
        versions = sorted({r.version for r in refs})
        if len(versions) > 1:
            raise ValidationError(f"{where}: handles come from different versions {versions}; use one version per request")
        if version and versions[0] != version:
            raise ValidationError(f"{where}: handles belong to version {versions[0]}, the request pins version {version}")
        return await self._model(name, versions[0])

    async def _get_handles(self, sv: ServedVersion, handles: list[str]) -> tuple[np.ndarray, np.ndarray]:
        items = await self.store.aget_many(list(handles))
        z = np.stack([it[0] for it in items]).astype(np.float32, copy=False) if items else np.zeros((0, sv.dim), np.float32)
        labels = np.array([it[1] for it in items], dtype=np.int64)
        if z.shape[1] != sv.dim:
            raise ValidationError(f"handles hold latents of size {z.shape[1]}, model {sv.name} v{sv.version} needs {sv.dim}")
        return z, labels

    async def _encode(self, sv: ServedVersion, x: np.ndarray, labels: np.ndarray | None = None,
                      sample_posterior: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images (N,3,H,W) -> (latents (N,D), labels (N,), confidence of each label (N,)).
        `labels` (N,) with -1 = predict."""
        # Encode cache (services/storage/cache.py): the encoder runs only for images it has not seen.
        out = await self.cache.encoder_outputs(sv.name, sv.version, x, lambda xs: self.models[sv.name].encode(sv.version, xs))
        z = np.asarray(out["latent"], dtype=np.float32)
        if sample_posterior:
            if "logvar" not in out:
                raise ValidationError(f"sample_posterior is only for vae models; {sv.name} is a {sv.family} model")
            eps = _rng(seed).standard_normal(z.shape, dtype=np.float32)
            z = (z + np.exp(0.5 * np.asarray(out["logvar"], dtype=np.float32)) * eps).astype(np.float32)
        probs = _softmax(np.asarray(out["logits"]))  # (N, C)
        chosen = probs.argmax(axis=1).astype(np.int64)
        if labels is not None:
            chosen = np.where(labels >= 0, labels, chosen)
            if "class_latents" in out:  # a class-conditional flow: z under the requested class's map
                z = latents_under_labels(out, chosen).astype(np.float32)
        conf = probs[np.arange(len(chosen)), chosen].astype(np.float32)
        return z, chosen, conf

    async def _decode(self, sv: ServedVersion, z: np.ndarray, labels: np.ndarray, fmt: str = codec.RAW_FLOAT32) -> np.ndarray:
        """latents (N, D) + labels (N,) -> float32 (N, 3, H, W) for RAW_FLOAT32, else uint8 (N, H, W, 3)."""
        out = "float32" if fmt == codec.RAW_FLOAT32 else "uint8"
        return await self.models[sv.name].decode(sv.version, z, labels, out)

    async def _decoded_images(self, sv: ServedVersion, fmt: str, z: np.ndarray | None = None,
                              labels: np.ndarray | None = None, handles: list[str] | None = None,
                              cacheable: bool = True) -> list:
        """Output images of latents z (N, D) + labels (N,), or of handles, through the result cache
        (services/storage/cache.py): only the rows it misses are fetched (handles), decoded and encoded."""
        async def run(rows: list[int] | None) -> list:
            if handles is not None:
                zz, ll = await self._get_handles(sv, handles if rows is None else [handles[i] for i in rows])
            else:
                zz, ll = (z, labels) if rows is None else (z[rows], labels[rows])
            return await self._images_out(await self._decode(sv, zz, ll, fmt), fmt)

        if handles is not None:  # a handle's digest is its latent's digest: no fetch needed for a hit
            digests = [h.rsplit(":", 1)[1] for h in handles] if self.cache.result_enabled else None
            return await self.cache.images(sv.name, sv.version, fmt, run, digests=digests, cacheable=cacheable)
        return await self.cache.images(sv.name, sv.version, fmt, run, latents=(z, labels), cacheable=cacheable)

    async def _images_out(self, x: np.ndarray, fmt: str) -> list:
        # Big PNG/JPEG batches are encoded off the event loop (PIL releases the GIL while compressing).
        if fmt in (codec.PNG, codec.JPEG) and len(x) >= 16:
            return await asyncio.get_running_loop().run_in_executor(None, codec.images_to_pb, x, fmt)
        return codec.images_to_pb(x, fmt)

    async def _model_for_refs(self, name: str, version: int, refs: list, where: str) -> ServedVersion:
        """Like `_model`, but an unpinned request whose refs include handles uses the handles' version."""
        handles = [r.handle for r in refs if r.WhichOneof("ref") == "handle"]
        if handles:
            return await self._model_for_handles(name, version, handles, where)
        return await self._model(name, version)

    async def _refs(self, sv: ServedVersion, refs: list, where: str) -> tuple[np.ndarray, np.ndarray]:
        """LatentRefs -> (latents (N, D), labels (N,)); image refs are encoded together in one call."""
        n = len(refs)
        z = np.empty((n, sv.dim), dtype=np.float32)
        labels = np.empty((n,), dtype=np.int64)
        image_idx, images, image_labels = [], [], []
        handle_idx, handles = [], []
        for i, ref in enumerate(refs):
            kind = ref.WhichOneof("ref")
            given = int(ref.label) if ref.HasField("label") else -1
            if given >= 0:
                codec.check_label(given, sv.n_classes, f"{where}[{i}].label")
            elif given < -1:
                raise ValidationError(f"{where}[{i}].label: {given} is not a class; use -1 (or leave it unset) to predict it")
            if kind == "latent":
                z[i] = codec.latent_values(ref.latent, sv.dim, f"{where}[{i}].latent")
                labels[i] = given if given >= 0 else codec.check_label(ref.latent.label, sv.n_classes, f"{where}[{i}].latent.label")
            elif kind == "handle":
                ref_h = parse_handle(ref.handle)
                if ref_h.model != sv.name or ref_h.version != sv.version:
                    raise ValidationError(
                        f"{where}[{i}].handle: belongs to {ref_h.model} v{ref_h.version}, the request uses {sv.name} v{sv.version}"
                    )
                handle_idx.append(i)
                handles.append((ref.handle, given))
            elif kind == "image":
                image_idx.append(i)
                images.append(codec.image_from_pb(ref.image, sv.image_shape, self.config.max_image_bytes, f"{where}[{i}].image"))
                image_labels.append(given)
            else:
                raise ValidationError(f"{where}[{i}]: empty LatentRef; set latent, handle or image")
        if handles:
            got = await self.store.aget_many([h for h, _ in handles])
            for i, (_, given), (vec, lab) in zip(handle_idx, handles, got):
                z[i] = vec
                labels[i] = given if given >= 0 else lab
        if images:
            ez, elab, _ = await self._encode(sv, np.stack(images), np.array(image_labels, dtype=np.int64))
            z[image_idx] = ez
            labels[image_idx] = elab
        return z, labels

    def _identify(self, grpc_context: Any) -> None:
        """Name the answering replica and node in the response's trailing metadata (services/observability/identity.py)."""
        if self._identity and grpc_context is not None:
            grpc_context.set_trailing_metadata(list(self._identity))  # Serve's context concatenates lists

    async def _unary(self, rpc: str, grpc_context: Any, fn, empty):
        """Run one unary RPC: auth, body, error mapping, metrics (`_set_status` records the code). Never
        raises to Serve."""
        self.requests[rpc] = self.requests.get(rpc, 0) + 1
        rec, token = metrics.begin_request(rpc)  # token None: the native server's wrapper records the call
        self._identify(grpc_context)
        try:
            self._authorize(grpc_context)
            resp = await fn()
            if rec is not None:
                rec.images = len(getattr(resp, "images", ()))
            return resp
        except asyncio.CancelledError:
            metrics.note_status("CANCELLED")
            raise  # the client went away or its deadline passed: Serve reports it; nothing to answer
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crashed replica
            _set_status(grpc_context, exc, rpc)
            return empty
        finally:
            metrics.end_request(rec, token)

    # -- LatentService ------------------------------------------------------------------------------------
    async def ListModels(self, request: pb.ListModelsRequest, grpc_context: Any = None) -> pb.ListModelsResponse:
        async def body():
            out = []
            for name in sorted(self.default_versions):
                if request.all_versions:
                    for v in self.repo.versions(name):
                        try:
                            out.append(self._info_pb(await self._model(name, v)))
                        except LatentServeError as exc:  # a broken old version must not hide the others
                            logger.warning("ListModels: skipping %s v%d: %s", name, v, exc)
                else:
                    out.append(self._info_pb(await self._model(name)))
            metrics.clear_model()
            return pb.ListModelsResponse(models=out)

        return await self._unary("ListModels", grpc_context, body, pb.ListModelsResponse())

    async def GetModel(self, request: pb.GetModelRequest, grpc_context: Any = None) -> pb.ModelInfo:
        async def body():
            return self._info_pb(await self._model(request.model, request.version))

        return await self._unary("GetModel", grpc_context, body, pb.ModelInfo())

    async def Encode(self, request: pb.EncodeRequest, grpc_context: Any = None) -> pb.EncodeResponse:
        async def body():
            sv = await self._model(request.model, request.version)
            n = len(request.images)
            self._count(n, "images")
            labels = np.full((n,), -1, dtype=np.int64)
            if len(request.labels):
                if len(request.labels) != n:
                    raise ValidationError(f"labels: {len(request.labels)} labels for {n} images; send one per image or none")
                for i, lab in enumerate(request.labels):
                    if lab != -1:
                        codec.check_label(lab, sv.n_classes, f"labels[{i}]")
                    labels[i] = lab
            if request.sample_posterior and sv.family != "vae":
                raise ValidationError(f"sample_posterior is only for vae models; {sv.name} is a {sv.family} model")
            if request.refine_steps:
                lreq.require_available(self.config, "refine_steps")
                refine = lreq.refine_settings(self.config, sv.family, request.refine_steps, request.refine)
            x = codec.images_from_pb(request.images, sv.image_shape, self.config.max_image_bytes)
            z, chosen, conf = await self._encode(sv, x, labels, request.sample_posterior, request.seed)
            report = None
            if request.refine_steps:  # warm-started from the encoder's latents (after sample_posterior)
                res = await self.models[sv.name].latent_op(lops.RefineJob(
                    version=sv.version, z0=z, labels=chosen, images=x,
                    deadline=lreq.deadline(grpc_context, self.config), **refine))
                z = res.latents
                report = pb.RefineReport(mse_before=res.mse_before.tolist(), mse_after=res.mse_after.tolist(),
                                         steps=res.steps)
            resp = pb.EncodeResponse(model=sv.name, version=sv.version, latents=codec.latents_to_pb(z, chosen),
                                     label_confidence=conf.tolist() if sv.reports_confidence else [],
                                     refine=report)
            if request.return_handles:
                resp.handles.extend(await self._handles_for(sv, z, chosen))
            return resp

        return await self._unary("Encode", grpc_context, body, pb.EncodeResponse())

    async def Decode(self, request: pb.DecodeRequest, grpc_context: Any = None) -> pb.DecodeResponse:
        async def body():
            fmt = codec.image_format(request.format)
            if len(request.latents) and len(request.handles):
                raise ValidationError("send either latents or handles, not both")
            if len(request.handles):
                self._count(len(request.handles), "handles")
                sv = await self._model_for_handles(request.model, request.version, list(request.handles), "handles")
                images = await self._decoded_images(sv, fmt, handles=list(request.handles))
            else:
                sv = await self._model(request.model, request.version)
                self._count(len(request.latents), "latents")
                z, labels = codec.latents_from_pb(request.latents, sv.dim, sv.n_classes)
                images = await self._decoded_images(sv, fmt, z, labels)
            return pb.DecodeResponse(model=sv.name, version=sv.version, images=images)

        return await self._unary("Decode", grpc_context, body, pb.DecodeResponse())

    async def Sample(self, request: pb.SampleRequest, grpc_context: Any = None) -> pb.SampleResponse:
        async def body():
            sv = await self._model(request.model, request.version)
            fmt = codec.image_format(request.format)
            source = codec.sample_source(request.source) or sv.info["default_sample_source"]
            guided = source == "guided"
            if guided:
                lreq.require_available(self.config, "source GUIDED")
                settings = lreq.guidance_settings(self.config, request.guidance)
                source = codec.sample_source(request.guidance.start) or sv.info["default_sample_source"]
                if source == "guided":
                    raise ValidationError("guidance.start: chains start from PRIOR or LATENT_GMM")
            self._count(request.n, "n")
            temperature = float(request.temperature)
            if not math.isfinite(temperature) or temperature < 0 or temperature > 10:
                raise ValidationError(f"temperature must be in [0, 10] (0 = model default), got {request.temperature}")
            if temperature == 0:
                temperature = float((sv.record.manifest.get("prior") or {}).get("sample_temperature", 1.0))
            if source == "latent_gmm" and sv.space.gmm_weights is None:
                raise ValidationError(f"model {sv.name} v{sv.version} has no latent GMM; use source PRIOR")
            targets = self._knob_targets(sv, dict(request.knobs), request.allow_weak_knobs)
            threshold = self._class_check(sv, request.class_check, "guided" if guided else source)
            rng = _rng(request.seed)
            labels = self._sample_labels(sv, request, rng)

            def draw(rows: np.ndarray, round_: int = 0) -> np.ndarray:  # latents of labels[rows], knobs applied
                y = labels[rows]
                z = (sv.space.sample_gmm(y, rng, temperature) if source == "latent_gmm"
                     else sv.space.sample_prior(y, rng, temperature))
                for name, target in targets:
                    z = sv.space.set_factor(z, name, target, y)
                return z

            confidence = None
            if threshold > 0:
                checked = await self._checked(sv, class_check.check_loop(draw, labels, threshold,
                                                                        self.config.class_check_rounds))
                z, confidence = checked.latents, checked.confidence
                images = await self._images_out(checked.images, fmt)
            else:
                z = draw(np.arange(len(labels)))
                if guided:
                    z = await self._guided(sv, request, settings, z, labels, grpc_context)
                images = await self._decoded_images(sv, fmt, z, labels, cacheable=request.seed != 0)  # seed 0: random
            resp = pb.SampleResponse(model=sv.name, version=sv.version, images=images,
                                     latents=codec.latents_to_pb(z, labels))
            if confidence is not None:
                resp.class_confidence.extend(confidence.tolist())
            if request.return_handles:
                resp.handles.extend(await self._handles_for(sv, z, labels))
            return resp

        return await self._unary("Sample", grpc_context, body, pb.SampleResponse())

    def _class_check(self, sv: ServedVersion, value: float, source: str) -> float:
        """A request's label-check threshold for samples from `source`: 0 -> the model's default for that source
        (none for guided chains, which the probe already steers to their class), < 0 -> 0 (off), else it must
        lie in (0, 1)."""
        value = class_check.requested_threshold(value)
        if value < 0:
            return 0.0
        if value == 0:
            return sv.info["default_class_checks"].get(source, 0.0)
        if source == "guided":
            raise ValidationError("class_check applies to PRIOR and LATENT_GMM samples; guided chains are "
                                  "steered to their class by the probe (use guidance.class_weight)")
        return value

    async def _checked(self, sv: ServedVersion, loop: Any, offload: bool = False) -> class_check.Checked:
        """Run a label check (models/class_check.py) through this model's batched decode and encode
        (`offload`: its draws off the event loop)."""
        model = self.models[sv.name]

        async def decode(z: np.ndarray, y: np.ndarray) -> np.ndarray:
            return await model.decode(sv.version, z.astype(np.float32), y, "float32")

        async def classify(x: np.ndarray) -> np.ndarray:
            return (await model.encode(sv.version, x))["logits"]

        return await class_check.run_async(loop, decode, classify, offload)

    async def _guided(self, sv: ServedVersion, request: pb.SampleRequest, settings: dict, z: np.ndarray,
                      labels: np.ndarray, grpc_context: Any) -> np.ndarray:
        """Guided Langevin chains from the start latents z (N, D) (services/core/latent_ops_settings.py)."""
        model = self.models[sv.name]
        targets, ranges = {}, {}
        if len(request.guidance.factor_targets):
            targets, ranges = lreq.factor_targets(dict(request.guidance.factor_targets), sv.record.factors,
                                                  await model.probe_factors(sv.version), sv.name)
        for name, value in targets.items():  # the knob's estimate as the starting point
            if name in sv.space.knobs:
                z = sv.space.set_factor(z, name, value, labels)
        # chains get their own seed stream: the same request seed gives the same samples
        seed = int(request.seed) if request.seed else int(np.random.default_rng().integers(1, 2**62))
        job = lops.GuidedJob(version=sv.version, z0=z, labels=labels, factor_targets=targets, factor_ranges=ranges,
                             seed=seed, deadline=lreq.deadline(grpc_context, self.config), **settings)
        return (await model.latent_op(job)).latents

    def _sample_labels(self, sv: ServedVersion, request: pb.SampleRequest, rng: np.random.Generator) -> np.ndarray:
        n, names = request.n, sv.record.class_names
        kind = request.WhichOneof("classes")
        if kind == "label":
            return np.full((n,), codec.check_label(request.label, sv.n_classes, "label"), dtype=np.int64)
        if kind == "class_name":
            if request.class_name not in names:
                raise ValidationError(f"class_name: unknown class {request.class_name!r}; classes: {', '.join(names)}")
            return np.full((n,), names.index(request.class_name), dtype=np.int64)
        if kind == "class_weights":
            weights = dict(request.class_weights.weights)
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValidationError(f"class_weights: unknown class(es) {', '.join(map(repr, unknown))}; classes: {', '.join(names)}")
            p = np.array([weights.get(c, 0.0) for c in names], dtype=np.float64)
            if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
                raise ValidationError("class_weights: weights must be finite, >= 0 and not all zero")
            return rng.choice(len(names), size=n, p=p / p.sum()).astype(np.int64)
        return rng.integers(0, sv.n_classes, size=n).astype(np.int64)

    def _knob_targets(self, sv: ServedVersion, knobs: dict[str, float], allow_weak: bool) -> list[tuple[str, float]]:
        """Sample knobs {factor: target} -> checked (name, target) pairs; targets must lie in the factor range,
        knobs below their quality gate need `allow_weak`."""
        out = []
        for raw_name, target in knobs.items():
            name = _knob_name(raw_name)
            if name.startswith(PCA_KNOB_PREFIX):
                raise ValidationError(
                    f"knobs: {raw_name!r} is a principal direction; Sample knobs take factor targets "
                    f"({', '.join(sv.space.knobs) or 'none'}); move principal directions with Edit"
                )
            knob = sv.space.knobs.get(name)
            if knob is None:
                raise ValidationError(f"knobs: unknown factor {raw_name!r}; factor knobs: {', '.join(sv.space.knobs) or '(none)'}")
            self._check_target(knob, target, f"knobs[{raw_name!r}]")
            self._check_gate(sv, name, allow_weak)
            out.append((name, float(target)))
        return out

    @staticmethod
    def _check_gate(sv: ServedVersion, knob: str, allow_weak: bool) -> None:
        """INVALID_ARGUMENT for a factor knob the quality gate judged unusable, unless the request opts in."""
        gates.refuse_weak_knob(sv.name, sv.version, knob, sv.info["gates"]["knobs"], allow_weak)

    @staticmethod
    def _check_target(knob: Any, target: float, where: str) -> None:
        if not math.isfinite(target) or not (knob.low <= target <= knob.high):
            unit = f" {knob.unit}" if knob.unit else ""
            raise ValidationError(f"{where}: target {target} is outside the factor range [{knob.low}, {knob.high}]{unit}")

    @metrics.counted_stream("Interpolate")  # one image per frame
    async def Interpolate(self, request: pb.InterpolateRequest, grpc_context: Any = None) -> AsyncIterator[pb.InterpolateFrame]:
        self.requests["Interpolate"] = self.requests.get("Interpolate", 0) + 1
        self._identify(grpc_context)
        try:
            self._authorize(grpc_context)
            sv = await self._model_for_refs(request.model, request.version, [request.a, request.b], "ends")
            fmt = codec.image_format(request.format)
            method = codec.interpolation_method(request.method)
            if method == "geodesic":
                lreq.require_available(self.config, "method GEODESIC")
            steps, cap = int(request.steps), self.config.max_interpolation_steps
            if not 2 <= steps <= cap:
                raise ValidationError(f"steps: {steps} is outside [2, {cap}] (frames including both ends; Limits.max_interpolation_steps)")
            if not request.HasField("a") or not request.HasField("b"):
                raise ValidationError("a and b are required (each a latent, a handle or an image)")
            t = np.linspace(0.0, 1.0, steps)
            if method == "geodesic":  # options are checked before the ends are encoded or fetched
                settings = lreq.geodesic_settings(self.config, request.geodesic)
            ends, end_labels = await self._refs(sv, [request.a, request.b], "ends")
            labels = np.where(t < 0.5, end_labels[0], end_labels[1]).astype(np.int64)
            if method == "geodesic":
                job = lreq.geodesic_job(sv.version, settings, ends, labels, lreq.deadline(grpc_context, self.config))
                res = await self.models[sv.name].latent_op(job)
                path, x, diffs = res.latents, res.images, res.steps
                summary = pb.PathSummary(**lreq.path_summary(diffs, res.reference_steps, job.space, res.iterations))
            else:
                path = (slerp if method == "slerp" else lerp)(ends[0], ends[1], steps)  # (S, D)
                x = await self._decode(sv, path, labels)  # (S, 3, H, W)
                diffs = np.sqrt(np.mean((x[1:].astype(np.float64) - x[:-1]) ** 2, axis=(1, 2, 3)))  # (S-1,)
                summary = pb.PathSummary(**lreq.path_summary(diffs, None, "pixel"))
            dist = np.concatenate([[0.0], diffs])
            images = await self._images_out(x, fmt)
            handles = await self._handles_for(sv, path, labels) if request.return_handles else None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            _set_status(grpc_context, exc, "Interpolate")
            raise _StatusSet(status_for(exc)[1]) from None
        for i in range(steps):
            yield pb.InterpolateFrame(
                index=i, t=float(t[i]), image=images[i], latent=codec.latent_to_pb(path[i], labels[i]),
                handle=handles[i] if handles else "", step_distance=float(dist[i]),
                summary=summary if i == steps - 1 else None,
            )

    async def Edit(self, request: pb.EditRequest, grpc_context: Any = None) -> pb.EditResponse:
        async def body():
            sv = await self._model_for_refs(request.model, request.version, list(request.inputs), "inputs")
            fmt = codec.image_format(request.format)
            self._count(len(request.inputs), "inputs")
            if not len(request.moves):
                raise ValidationError("moves: at least one move required (knob + amount or target)")
            moves = []
            known = sv.space.knob_names()
            for i, mv in enumerate(request.moves):
                name = _knob_name(mv.knob)
                if name not in known:
                    raise ValidationError(f"moves[{i}].knob: unknown knob {mv.knob!r}; knobs: {', '.join(known) or '(none)'}")
                self._check_gate(sv, name, request.allow_weak_knobs)
                how = mv.WhichOneof("how")
                if how is None:
                    raise ValidationError(f"moves[{i}]: set amount (change) or target (value)")
                value = float(getattr(mv, how))
                if not math.isfinite(value):
                    raise ValidationError(f"moves[{i}].{how}: must be a finite number, got {value}")
                if how == "target":
                    if name.startswith(PCA_KNOB_PREFIX):
                        raise ValidationError(f"moves[{i}]: principal direction {mv.knob!r} takes an amount in std units, not a target")
                    self._check_target(sv.space.knobs[name], value, f"moves[{i}].target")
                moves.append((name, how, value))
            z, labels = await self._refs(sv, list(request.inputs), "inputs")
            for name, how, value in moves:
                z = sv.space.set_factor(z, name, value, labels) if how == "target" else sv.space.move(z, name, value)
            images = await self._decoded_images(sv, fmt, z, labels)
            resp = pb.EditResponse(model=sv.name, version=sv.version, images=images,
                                   latents=codec.latents_to_pb(z, labels))
            if request.return_handles:
                resp.handles.extend(await self._handles_for(sv, z, labels))
            return resp

        return await self._unary("Edit", grpc_context, body, pb.EditResponse())

    AUGMENT_PLANS_KEPT = 8

    async def _augment_plan(self, spec: augment_spec.AugmentSpec, sv: ServedVersion) -> augment_spec.AugmentPlan:
        """The job's plan (O(count) to build: off the event loop), kept for a few recent jobs (resumes and
        dataset workers ask for the same job again). The cache is only touched on the event loop."""
        key = (sv.name, sv.version, spec.digest())
        plan = self._augment_plans.pop(key, None)
        if plan is None:
            plan = await asyncio.get_running_loop().run_in_executor(
                None, augment_spec.AugmentPlan, spec, sv.record.class_names)
        self._augment_plans[key] = plan  # most recent last
        while len(self._augment_plans) > self.AUGMENT_PLANS_KEPT:
            self._augment_plans.pop(next(iter(self._augment_plans)))
        return plan

    @staticmethod
    def augment_facts(sv: ServedVersion) -> augment_spec.ModelFacts:
        return augment_spec.ModelFacts(
            name=sv.name, version=sv.version, class_names=tuple(sv.record.class_names),
            knobs={k.name: (k.low, k.high, k.unit) for k in sv.space.knobs.values()},
            sources=tuple(s for s in sv.info["sample_sources"] if s in augment_spec.SOURCES),
            judged_knobs=sv.info["gates"]["knobs"])

    @metrics.counted_stream("Augment", images=False)  # a batch message carries many images: counted below
    async def Augment(self, request: pb.AugmentRequest, grpc_context: Any = None) -> AsyncIterator[pb.AugmentBatch]:
        self.requests["Augment"] = self.requests.get("Augment", 0) + 1
        self._identify(grpc_context)
        try:
            self._authorize(grpc_context)
            spec = codec.augment_spec_from_pb(request.spec)
            sv = await self._model(spec.model, spec.version)
            augment_spec.check_spec(spec, self.augment_facts(sv), allow_weak_knobs=request.allow_weak_knobs)
            shards = augment_spec.check_shards(list(request.shards), spec.num_shards)
            fmt = codec.AUGMENT_WIRE_FORMATS[spec.format]
            temperature = spec.temperature or float((sv.record.manifest.get("prior") or {}).get("sample_temperature", 1.0))
            threshold = self._class_check(sv, spec.class_check, spec.source)
            plan = await self._augment_plan(spec, sv)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            _set_status(grpc_context, exc, "Augment")
            raise _StatusSet(status_for(exc)[1]) from None

        async def render(z: np.ndarray, labels: np.ndarray) -> list:
            return await self._images_out(await self._decode(sv, z, labels, fmt), fmt)

        async def store(z: np.ndarray, labels: np.ndarray) -> list[str]:
            return await self._handles_for(sv, z, labels)

        async def check(draw: Any, labels: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
            loop = class_check.check_loop(draw, labels, threshold, self.config.class_check_rounds)
            c = await self._checked(sv, loop, offload=True)  # per-image draws: milliseconds per batch
            return c.latents, await self._images_out(c.images, fmt), c.confidence

        batch_size = max(1, min(spec.shard_size, self.config.max_batch_size))
        stream = augment_stream.generate(spec, plan, shards, sv.space, temperature, render, batch_size,
                                         store if spec.handles else None, self.augment_stats,
                                         check=check if threshold > 0 else None)
        names = [f.name for f in spec.factors]
        try:
            async for b in stream:
                metrics.add_images(len(b.images))
                yield pb.AugmentBatch(
                    model=sv.name, version=sv.version, shard=b.shard, start=b.start, images=b.images,
                    labels=b.labels.tolist(), seeds=b.seeds.tolist(), handles=b.handles, shard_end=b.shard_end,
                    factors=[pb.FactorColumn(name=n, values=b.factors[n].tolist()) for n in names],
                    num_shards=spec.num_shards, count=spec.count,
                    class_confidence=[] if b.confidence is None else b.confidence.tolist())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failure mid-stream ends the stream with its status
            _set_status(grpc_context, exc, "Augment")
            raise _StatusSet(status_for(exc)[1]) from None
        finally:
            await stream.aclose()

    # -- grpc.health.v1.Health ----------------------------------------------------------------------------
    def _health(self, service: str):
        from grpc_health.v1 import health_pb2

        if service in ("", SERVICE_NAME):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        raise NotFoundError(f"unknown service {service!r}; this server has '' and {SERVICE_NAME!r}")

    async def Check(self, request: Any, grpc_context: Any = None) -> Any:
        """Health check without auth (load balancers and probes carry no token)."""
        from grpc_health.v1 import health_pb2

        try:
            return self._health(request.service)
        except Exception as exc:  # noqa: BLE001
            _set_status(grpc_context, exc, "Check")
            return health_pb2.HealthCheckResponse()

    async def Watch(self, request: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        """Sends the current status once and ends (status changes end the stream; clients re-watch)."""
        try:
            resp = self._health(request.service)
        except Exception as exc:  # noqa: BLE001
            _set_status(grpc_context, exc, "Watch")
            raise _StatusSet(status_for(exc)[1]) from None
        yield resp

    # -- operations (Serve handle only, not on the gRPC surface) ------------------------------------------
    async def stats(self) -> dict:
        """Request counts, handle store size and every model's batch statistics."""
        if self._native is not None:  # the state belongs to the gRPC server's event loop: read it there
            return await asyncio.wrap_future(self._native.call(self._stats()))
        return await self._stats()

    async def _stats(self) -> dict:
        models = {}
        for name, m in self.models.items():
            try:
                models[name] = await m.stats()
            except Exception as exc:  # noqa: BLE001 - stats must not fail because one model is down
                models[name] = {"error": f"{type(exc).__name__}: {exc}"}
        out = {"uptime_s": round(time.time() - self._started, 3), "requests": dict(self.requests),
               "handles": self.store.stats(), "cache": self.cache.stats(), "frontend": self.config.grpc_frontend,
               "colocate": self.config.colocate or self._native is not None, "models": models,
               "augment": self.augment_stats.snapshot()}
        if self._native is not None:
            out["grpc"] = self._native.stats()
        return out
