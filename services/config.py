"""Typed configuration of the serving side, validated once at start: `ServeConfig`, made of groups
(`served`, `runtime`, `batching`, `scaling`, `frontend`, `security`, `limits`, `latent_ops`, `storage`,
`observability`).

Every setting is declared once, with its doc and its bounds (`setting(...)` metadata: lo / hi / choices /
a check), and checked by one generic validator; the few rules that relate two settings are in
`ServeConfig.validate`. Settings have one flat name each (the field name; the latent-ops group prefixes
its own with `latent_ops_` where they would be ambiguous), which is what YAML (flat, or nested by group),
Serve's `args` (deploy/serve.yaml), environment variables (LATENTSERVE_<NAME>, read in `env_overrides` only)
and the `latentserve serve` flags map onto. An unknown name is refused, naming the nearest valid one.
Nothing is read at import time: `load_config()` is called by `latentserve serve`, by `services.app.app_builder`
(Serve's import path) and by tests, which pass explicit overrides.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from latentserve.errors import ValidationError
from latentserve.services.access import read_tokens
from latentserve.models.repository import default_repository_path

BACKENDS = ("onnxruntime", "torchscript")
KNOWN_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")
GRPC_FRONTENDS = ("native", "serve")  # who listens on grpc_port: see Frontend.grpc_frontend
GRPC_TRANSPORTS = ("auto", "cxx", "grpcio")  # what moves the bytes of the native frontend: Frontend.grpc_transport
REFLECTION_MODES = ("open", "auth", "off")  # who may use gRPC server reflection: Frontend.reflection
ENV_PREFIX = "LATENTSERVE_"


def setting(default: Any, doc: str, *, lo: float | str | None = None, hi: float | str | None = None,
            lo_open: bool = False, also: tuple = (), choices: tuple | None = None,
            check: Callable[[Any], str] | None = None, flat: str | None = None) -> Any:
    """A config field: its default, what it means (`doc`), and its bounds: `lo`/`hi` (a number, or the name of
    another setting of the same group), `lo_open`, `also` (values allowed outside the bounds, e.g. 0 = off),
    `choices` (for a list: of each item), `check(value) -> problem` for the rest. `flat`: the setting's
    name outside the group when it is not the field name."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "lo_open": lo_open, "also": also, "choices": choices,
            "check": check, "flat": flat}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _no_space(v: str) -> str:
    return "must be a string without whitespace" if any(c.isspace() for c in v) else ""


def _redis_url(v: str) -> str:
    return _redis_url_problem(v)


@dataclass
class Served:
    """What is served."""

    repository: str = setting("", "model repository root; '' = the bundled models/repository")
    models: list[str] = setting([], "names to serve; [] = every generative model in the repository")
    backend: str = setting("onnxruntime", "onnxruntime | torchscript (torch is imported only for torchscript)",
                           choices=BACKENDS)
    max_loaded_versions: int = setting(3, "per model: the default version is loaded at start, pinned other ones "
                                          "on demand (LRU)", lo=1, hi=64)
    verify_checksums: bool = setting(True, "sha256 of every model file checked when a version is loaded")


@dataclass
class Runtime:
    """Inference threads. Ray sets OMP_NUM_THREADS=1 in every actor, so they are always set explicitly."""

    intra_op_threads: int = setting(1, "ONNX Runtime intra_op_num_threads / torch.set_num_threads per model replica",
                                    lo=1, hi=256)
    inter_op_threads: int = setting(1, "ONNX Runtime inter_op_num_threads (the graphs are sequential chains)",
                                    lo=1, hi=64)
    providers: list[str] = setting([], "ONNX Runtime providers; [] = auto: CUDA first when onnxruntime-gpu sees a "
                                       "GPU", choices=KNOWN_PROVIDERS)


@dataclass
class Batching:
    """Dynamic batching per model replica, of encode and decode each (services/core/model_server.py Batcher)."""

    max_batch_size: int = setting(64, "rows (images / latents) per model call; bigger requests run in chunks",
                                  lo=1, hi=4096)
    preferred_batch_size: int = setting(
        16, "a forming batch closes once this many rows wait, and combines requests only up to this many (one "
            "request may still have max_batch_size); 0 = max_batch_size. Below the clients' concurrency on "
            "purpose: single-image clients then split into groups whose batches alternate with the reading and "
            "answering of the next group", lo=0, hi=4096)
    batch_wait_timeout_s: float = setting(
        0.01, "how long the first request of a batch waits for company at most", lo=0.0, hi=1.0)
    batch_idle_timeout_s: float = setting(
        0.002, "a batch also closes once no request arrived for this long (capped at batch_wait_timeout_s), so "
               "light load waits little while sustained load grows batches", lo=0.0, hi=1.0)
    max_concurrent_batches: int = setting(2, "batches in flight per method: one runs while the next one forms",
                                          lo=1, hi=16)


@dataclass
class Scaling:
    """Replicas, their resources, and back-pressure."""

    replicas: int = setting(1, "model-server replicas per model (ignored when autoscaling)", lo=1, hi=1024)
    autoscaling: bool = setting(False, "Serve autoscaling between min_replicas and max_replicas")
    min_replicas: int = setting(1, "autoscaling floor", lo=0, hi=1024)
    max_replicas: int = setting(4, "autoscaling ceiling", lo=1, hi=1024)
    target_ongoing_requests: float = setting(16.0, "autoscaling target per replica", lo=0.0, hi=10_000, lo_open=True)
    num_cpus: float = setting(1.0, "CPUs reserved per model replica (Ray scheduling)", lo=0.0, hi=1024)
    num_gpus: float = setting(0.0, "GPUs per model replica (needs onnxruntime-gpu or a CUDA torch)", lo=0.0, hi=64)
    ingress_replicas: int = setting(1, "replicas of the LatentIngress deployment", lo=1, hi=1024)
    ingress_num_cpus: float = setting(0.5, "CPUs reserved per ingress replica", lo=0.0, hi=1024)
    max_ongoing_requests: int = setting(
        128, "concurrent requests per replica (native: per serving process); >= max_batch_size * max_concurrent_batches lets a model replica "
             "fill its batches from single-image requests", lo=1, hi=100_000)
    max_queued_requests: int = setting(256, "queued beyond that, per replica; full -> RESOURCE_EXHAUSTED; -1 = "
                                            "unbounded (0 would refuse every request that has to wait)",
                                       lo=1, hi=1_000_000, also=(-1,))
    request_timeout_s: float = setting(0.0, "server-side cap per gRPC call (0 = none; client deadlines still "
                                            "apply)", lo=0.0, hi=86_400)
    colocate: bool = setting(False, "serve frontend: run the models inside the ingress replica (no model-server "
                                    "hop)")


@dataclass
class Frontend:
    """Who listens for gRPC and HTTP, on which address, and how replicas hand over (services/app.py,
    services/frontends/)."""

    grpc_frontend: str = setting(
        "native", "native = every LatentIngress replica runs its own gRPC server with the models in-process, "
                  "replicas on a node sharing grpc_port (SO_REUSEPORT); serve = Ray Serve's gRPC proxy (or its "
                  "direct ingress) in front of the ingress deployment", choices=GRPC_FRONTENDS)
    grpc_transport: str = setting(
        "auto", "native: cxx = the compiled grpc++ transport (built at install with libgrpc++-dev), grpcio = "
                "grpc.aio, auto = cxx when built", choices=GRPC_TRANSPORTS)
    direct_ingress: bool = setting(
        False, "serve frontend: the ingress replicas serve gRPC themselves (Serve's direct ingress + "
               "throughput-optimized mode; replica k on grpc_port + k), Serve's proxy moves to proxy_grpc_port; "
               "needs services.app.ray_env(config) before Ray starts (`latentserve serve` does it)")
    proxy_grpc_port: int = setting(0, "Serve's gRPC proxy port with direct_ingress (0 = grpc_port + "
                                      "ingress_replicas + 1)", lo=0, hi=65_535)
    access_log: bool = setting(False, "Serve's per-request access log lines in replica logs (costs CPU per request)")
    drain_period_s: float = setting(
        0.0, "native: a stopping replica answers health checks NOT_SERVING and keeps serving this long (for a "
             "TCP load balancer), then while its replacement is still starting", lo=0.0, hi=3600)
    max_surge_percent: int = setting(
        25, "native rollouts: extra replicas Serve may start (percent, rounded up) so new replicas serve before "
            "old ones stop; 0 = stop-then-start", lo=0, hi=100)
    max_connection_age_s: float = setting(
        10.0, "native: client connections are closed gracefully after this long (GOAWAY; clients reconnect "
              "without failing a call), so connections rebalance and a draining replica sheds them; 0 = never",
        lo=1.0, hi=86_400, also=(0, 0.0))
    serving_processes: int = setting(
        0, "native: serving processes per replica, each with the models in-process, sharing grpc_port "
           "(SO_REUSEPORT) so one can die without refusing a connection; a dead one is restarted; 0 = 2 on a "
           "node with >= 2 CPUs when handles live in Redis (redis_url), else 1 (an in-process handle store "
           "is one process's)", lo=0, hi=64)
    reset_serving_niceness: bool = setting(
        True, "native: the serving process sets its nice value back to 0 (Ray starts workers at nice 15, where "
              "every normal-priority job on the node preempts the gRPC server); needs CAP_SYS_NICE, else a "
              "warning")
    grpc_port: int = setting(9000, "the gRPC port clients connect to", lo=1, hi=65_535)
    http_port: int = setting(
        8000, "the HTTP/JSON API and the latent explorer page (services/frontends/http/) on Ray Serve's HTTP "
              "proxy, host:http_port; 0 = no HTTP door (and, with the native frontend, no Serve proxy at all)",
        lo=1, hi=65_535, also=(0,))
    host: str = setting("127.0.0.1", "address to listen on", check=lambda v: "" if v else "must be a host name or "
                                                                                        "IP address")
    api_token: str = setting("", "'' = no auth; else LatentService calls need `authorization: Bearer <token>`",
                             check=_no_space)
    app_name: str = setting("latentserve", "Serve application name (gRPC `application` metadata)",
                            check=lambda v: "" if v and "/" not in v else "must be a non-empty name without '/'")
    reflection: str = setting(
        "auth", "gRPC server reflection on the native servers: auth = needs the API token when one is set (open "
                "without one), open = never needs it, off = not served. Health never needs a token",
        choices=REFLECTION_MODES)


def _pem(kind: str) -> Callable[[str], str]:
    """A check of a PEM file setting: '' (unset) or a readable file holding a PEM block of `kind`."""
    def check(path: str) -> str:
        if not path:
            return ""
        try:
            text = Path(path).expanduser().read_text(errors="replace")
        except OSError as exc:
            return f"cannot read the file ({exc.strerror or type(exc).__name__})"
        return "" if f"-----BEGIN {kind}" in text or (kind == "PRIVATE KEY" and "PRIVATE KEY-----" in text) else (
            f"is not a PEM file with a {kind} block")
    return check


def _tokens_file(path: str) -> str:
    if not path:
        return ""
    try:
        read_tokens(path)
    except ValidationError as exc:
        return str(exc)
    return ""


@dataclass
class Security:
    """TLS of the listeners and who may call (services/access.py). With tls_cert + tls_key the gRPC port and the
    HTTP door speak TLS; with tls_ca too, gRPC clients must present a certificate signed by it (mutual TLS).
    Tokens: frontend.api_token (one token, client name "default") and/or a tokens file of named tokens,
    re-read when it changes (at most every tokens_reload_s), so a removed line is refused within that time."""

    tls_cert: str = setting("", "PEM certificate chain the servers present ('' = plaintext)", check=_pem("CERTIFICATE"))
    tls_key: str = setting("", "PEM private key of tls_cert", check=_pem("PRIVATE KEY"))
    tls_ca: str = setting("", "PEM CA bundle: gRPC clients must present a certificate it signed (mutual TLS); their "
                              "certificate's CN is the client's name unless a token names it", check=_pem("CERTIFICATE"))
    insecure: bool = setting(False, "allow an API token on a plaintext listener bound beyond loopback (it travels in "
                                    "clear text)")
    tokens_file: str = setting("", "file of named API tokens, one `NAME TOKEN` per line (# comments); names are the "
                                   "client names in logs and in the metrics' client label", check=_tokens_file)
    tokens_reload_s: float = setting(2.0, "how often the tokens file's modification is checked (on the next call)",
                                     lo=0.1, hi=3600.0)


@dataclass
class Limits:
    """Per-request caps (INVALID_ARGUMENT above them)."""

    max_images_per_request: int = setting(256, "images (or latents, handles) per request", lo=1, hi=65_536)
    max_interpolation_steps: int = setting(64, "frames of an Interpolate path, both ends included", lo=2, hi=4096)
    max_image_bytes: int = setting(4 << 20, "one encoded PNG/JPEG (protects the decoder from decompression bombs)",
                                   lo=1024, hi=1 << 30)
    http_max_body_bytes: int = setting(64 << 20, "one HTTP request body: bigger ones are refused (413) before "
                                                 "they are read", lo=1024, hi=1 << 30)
    class_check_rounds: int = setting(8, "label check of Sample / Augment (models/class_check.py): draws per image "
                                         "at most, the first included; each costs a decode and an encode",
                                      lo=1, hi=64)
    max_output_pixels: int = setting(64 << 20, "pixels of one Sample / Decode's images together (n x "
                                                "output_size^2; RESOURCE_EXHAUSTED above): a vector model draws "
                                                "up to 1024 px", lo=1 << 16, hi=1 << 34)


@dataclass
class LatentOps:
    """Gradient-based latent ops (services/core/latent_ops.py; need PyTorch, the `latent-ops` extra): geodesic
    interpolation, guided sampling, encode refinement, on the TorchScript artefacts; torch is imported on the
    first such request (or at start with preload), never otherwise. Caps refuse requests above them; the
    other values are the defaults of requests that leave an option at 0."""

    enabled: bool = setting(True, "serve them when torch is installed (false: UNIMPLEMENTED)", flat="latent_ops")
    preload: bool = setting(False, "import torch and load the default versions' graphs at start",
                            flat="latent_ops_preload")
    threads: int = setting(1, "torch intra-op threads of a model's latent-ops engine", lo=1, hi=256,
                           flat="latent_ops_threads")
    max_batch_rows: int = setting(256, "rows (path frames, chains, images) sharing one forward/backward pass",
                                  lo=1, hi=65_536, flat="latent_ops_max_batch_rows")
    max_geodesic_iterations: int = setting(500, "cap", lo=1, hi=100_000)
    max_guidance_steps: int = setting(500, "cap", lo=1, hi=100_000)
    max_refine_steps: int = setting(500, "cap", lo=1, hi=100_000)
    # Memory budget of the gradient ops (RESOURCE_EXHAUSTED naming the request field when over): a pass's memory
    # grows with its rows, so rows admitted at once are capped per request and per process.
    max_request_rows: int = setting(64, "rows (chains, inner path frames, images) of one gradient request",
                                    lo=1, hi=65_536, flat="latent_ops_max_request_rows")
    max_request_work: int = setting(32_768, "rows x iterations of one gradient request (its CPU time)",
                                    lo=1, hi=1 << 40, flat="latent_ops_max_request_work")
    max_process_rows: int = setting(256, "rows of gradient requests admitted at once in one process",
                                    lo="max_request_rows", hi=1 << 20, flat="latent_ops_max_process_rows")
    geodesic_iterations: int = setting(100, "default", lo=1, hi="max_geodesic_iterations")
    geodesic_learning_rate: float = setting(0.05, "Adam step in latent units", lo=0.0, hi=1.0, lo_open=True)
    guidance_steps: int = setting(50, "default Langevin steps", lo=1, hi="max_guidance_steps")
    guidance_step_size: float = setting(0.02, "Langevin step eta", lo=0.0, hi=1.0, lo_open=True)
    guidance_class_weight: float = setting(10.0, "weight of log p(label | decode(z)) (1 = the plain posterior)",
                                           lo=0.0, hi=1000.0)
    guidance_noise: float = setting(1.0, "Langevin noise scale (1 = the exact Langevin noise)", lo=0.0, hi=10.0)
    guidance_factor_weight: float = setting(200.0, "weight of the factor term ((r - target) / range)^2",
                                            lo=0.0, hi=1e5)
    refine_learning_rate: float = setting(0.05, "Adam step in latent units", lo=0.0, hi=1.0, lo_open=True)


@dataclass
class Storage:
    """Latent handles and the encode / result caches: in-process, or Redis shared by every replica
    (services/storage/)."""

    handle_store_size: int = setting(
        100_000, "without Redis: the handle store itself (one process only); with Redis: each replica's "
                 "read-through copy of recent handles", lo=1, hi=100_000_000)
    redis_url: str = setting("", "handles (and the caches unless redis_cache_url): redis://[user:password@]host:"
                                 "port/db, rediss:// = TLS, unix:///path; '' = in-process", check=_redis_url)
    redis_cache_url: str = setting("", "a separate Redis for the caches ('' = redis_url)", check=_redis_url)
    handle_ttl_s: float = setting(7 * 86_400.0, "handle expiry (refreshed when the same latent is issued again)",
                                  lo=1.0, hi=366 * 86_400.0)
    encode_cache: bool = setting(True, "(model, version, image pixels) -> encoder outputs; a hit skips the encoder")
    result_cache: bool = setting(True, "(model, version, latent, format) -> image; Decode, Edit, seeded Sample")
    cache_ttl_s: float = setting(86_400.0, "expiry of cache entries", lo=1.0, hi=366 * 86_400.0)
    cache_max_entry_bytes: int = setting(1 << 20, "bigger entries are not cached", lo=1024, hi=512 << 20)
    cache_memory_bytes: int = setting(64 << 20, "in-process cache budget per replica (caches not in Redis)",
                                      lo=1 << 20, hi=1 << 40)
    redis_timeout_s: float = setting(0.05, "cache calls: after this the cache is bypassed (the request succeeds)",
                                     lo=0.001, hi=60.0)
    redis_handle_timeout_s: float = setting(0.5, "handle calls: after this the request fails with UNAVAILABLE",
                                            lo=0.001, hi=60.0)
    redis_backoff_s: float = setting(0.2, "circuit breaker: first window Redis is skipped after a failure",
                                     lo=0.01, hi=600.0)
    redis_backoff_max_s: float = setting(0.5, "... doubling per failed probe up to this (a Redis that is back "
                                              "is used again within about this long)", lo="redis_backoff_s",
                                         hi=3600.0)
    redis_key_prefix: str = setting("ls:", "namespace of every key (several deployments may share one Redis)",
                                    check=lambda v: _no_space(v) or ("at most 64 characters" if len(v) > 64 else ""))


@dataclass
class Observability:
    """Metrics (services/observability/)."""

    metrics_dir: str = setting("", "per-node directory where every replica process records its metrics; '' = "
                                   "none recorded (`latentserve serve` uses a fresh temporary one)")
    metrics_port: int = setting(8080, "the node's /metrics endpoint (latentserve_* + Ray's metrics); 0 = none",
                                lo=0, hi=65_535)


GROUPS = {"served": Served, "runtime": Runtime, "batching": Batching, "scaling": Scaling, "frontend": Frontend,
          "security": Security, "limits": Limits, "latent_ops": LatentOps, "storage": Storage, "observability": Observability}


def _flat_names() -> dict[str, tuple[str, str]]:
    out = {}
    for group, cls in GROUPS.items():
        for f in fields(cls):
            out[f.metadata.get("flat") or f.name] = (group, f.name)
    return out


FLAT = _flat_names()  # flat name (YAML / env / CLI) -> (group, field)


@dataclass
class ServeConfig:
    """Every serving setting, by group. Build it with `load_config` (or `from_dict`), which validates."""

    served: Served = field(default_factory=Served)
    runtime: Runtime = field(default_factory=Runtime)
    batching: Batching = field(default_factory=Batching)
    scaling: Scaling = field(default_factory=Scaling)
    frontend: Frontend = field(default_factory=Frontend)
    security: Security = field(default_factory=Security)
    limits: Limits = field(default_factory=Limits)
    latent_ops: LatentOps = field(default_factory=LatentOps)
    storage: Storage = field(default_factory=Storage)
    observability: Observability = field(default_factory=Observability)

    # ------------------------------------------------------------------------------------------------------
    def validate(self) -> "ServeConfig":
        """Every setting against its declared bounds, then the rules between settings; raises ValidationError
        naming the setting, its value and what is allowed."""
        for flat, (group, name) in FLAT.items():
            _check_setting(flat, getattr(self, group), name)
        f, s = self.frontend, self.scaling

        def bad(flat: str, why: str) -> None:
            group, name = FLAT[flat]
            raise ValidationError(f"serve config: {flat}={getattr(getattr(self, group), name)!r}: {why}")

        if not all(isinstance(m, str) and m for m in self.served.models):
            bad("models", "must be a list of model names")
        if len(set(self.served.models)) != len(self.served.models):
            bad("models", "lists a model twice")
        if s.autoscaling and s.min_replicas > s.max_replicas:
            bad("min_replicas", f"must be <= max_replicas ({s.max_replicas})")
        if f.grpc_frontend == "native" and f.direct_ingress:
            bad("direct_ingress", "is an option of grpc_frontend 'serve' (the native frontend already serves gRPC from the replicas)")
        if f.direct_ingress and self.effective_proxy_grpc_port in range(f.grpc_port, f.grpc_port + s.ingress_replicas + 1):
            bad("proxy_grpc_port", f"must not be one of the direct-ingress ports {f.grpc_port}..{f.grpc_port + s.ingress_replicas}")
        if f.direct_ingress and f.grpc_port + s.ingress_replicas + 1 > 65_535:
            bad("grpc_port", "direct_ingress needs grpc_port + ingress_replicas + 1 <= 65535")
        if f.http_port and f.http_port == f.grpc_port:
            bad("http_port", "must differ from grpc_port")
        metrics_port = self.observability.metrics_port
        if metrics_port and metrics_port in (f.grpc_port, f.http_port):
            bad("metrics_port", "must differ from grpc_port and http_port")
        if s.colocate and s.num_gpus > 0:
            bad("colocate", "co-located inference runs in the ingress replica, which reserves no GPU; set num_gpus=0")
        self._validate_security(bad)
        return self

    def _validate_security(self, bad: Callable[[str, str], None]) -> None:
        f, sec = self.frontend, self.security
        if bool(sec.tls_cert) != bool(sec.tls_key):
            bad("tls_key" if sec.tls_cert else "tls_cert", "TLS needs both tls_cert and tls_key")
        if sec.tls_ca and not sec.tls_cert:
            bad("tls_ca", "mutual TLS needs tls_cert and tls_key too (the server's own certificate)")
        if sec.tls_cert:
            import ssl

            try:  # the pair must match and parse: a bad file is one line at start, not a failed replica
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(sec.tls_cert, sec.tls_key)
            except (ssl.SSLError, OSError) as exc:
                bad("tls_key", f"does not load with tls_cert {sec.tls_cert!r} ({getattr(exc, 'reason', None) or exc})")
            if sec.tls_ca:
                try:
                    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(sec.tls_ca)
                except (ssl.SSLError, OSError) as exc:
                    bad("tls_ca", f"is not a usable CA bundle ({getattr(exc, 'reason', None) or exc})")
            if f.grpc_frontend != "native":
                bad("tls_cert", "TLS is served by the native frontend; Ray Serve 2.60's gRPC proxy has no TLS option "
                                "(grpc_frontend 'serve'): terminate TLS in a proxy in front of it instead")
        if sec.tls_ca and f.http_port:
            bad("tls_ca", "the HTTP door cannot require client certificates (Ray Serve 2.60's HTTP proxy offers "
                          "no client-certificate option): set http_port 0, or terminate mutual TLS in a proxy")
        if (f.api_token or sec.tokens_file) and not sec.tls_cert and not sec.insecure and not is_loopback(f.host):
            bad("host", "an API token on a plaintext listener beyond loopback would travel in clear text: "
                        "give tls_cert and tls_key (--tls-cert/--tls-key), or set insecure (--insecure) to accept that")

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ServeConfig":
        """A validated config from flat names (`to_dict()`, Serve args) or groups, nothing from the environment."""
        return _build(values)

    def repository_path(self) -> Path:
        """The repository root as an absolute path ('' -> the bundled repository)."""
        if self.served.repository:
            return Path(self.served.repository).expanduser().resolve()
        return default_repository_path().resolve()

    def with_overrides(self, **overrides: Any) -> "ServeConfig":
        """A validated copy with some settings (flat names) replaced (unknown names raise ValidationError)."""
        return _build({**self.to_dict(), **overrides})

    def to_dict(self) -> dict:
        """{flat name: value}: JSON-able, what Serve args and the serving process receive. The token is kept:
        callers that print must use `redacted()`."""
        return {flat: _copy(getattr(getattr(self, group), name)) for flat, (group, name) in FLAT.items()}

    def redacted(self) -> dict:
        d = self.to_dict()
        if d["api_token"]:
            d["api_token"] = "***"
        for name in ("redis_url", "redis_cache_url"):
            d[name] = _redact_url_password(d[name])
        return d

    @property
    def effective_proxy_grpc_port(self) -> int:
        """Port of Serve's gRPC proxy: grpc_port, or with direct_ingress proxy_grpc_port (0 = after the replicas)."""
        f = self.frontend
        if not f.direct_ingress:
            return f.grpc_port
        return f.proxy_grpc_port or f.grpc_port + self.scaling.ingress_replicas + 1

    @property
    def grpc_address(self) -> str:
        return f"{self.frontend.host}:{self.frontend.grpc_port}"


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an IP literal, IPv6 possibly in brackets) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else v


def _check_setting(flat: str, group: Any, name: str) -> None:
    """The one validator: type from the default, then the declared bounds, choices and check."""
    spec = next(f for f in fields(group) if f.name == name)
    meta, value = spec.metadata, getattr(group, name)
    default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()

    def bad(why: str) -> None:
        raise ValidationError(f"serve config: {flat}={value!r}: {why}")

    def bound(b: Any) -> Any:
        return getattr(group, b) if isinstance(b, str) else b

    lo, hi = bound(meta["lo"]), bound(meta["hi"])
    span = f"{'(' if meta['lo_open'] else '['}{lo}, {hi if hi is not None else 'inf'}]"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            bad("must be true or false")
    elif isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            bad(f"must be an integer in {span}")
    elif isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            bad("must be a number")
    elif isinstance(default, str):
        if not isinstance(value, str):
            bad("must be a string")
    elif isinstance(default, list):
        if not isinstance(value, list):
            bad("must be a list")
    if meta["choices"] is not None:
        items = value if isinstance(value, list) else [value]
        if any(v not in meta["choices"] for v in items):
            bad(f"must be {'a list of ' if isinstance(value, list) else ''}one of {', '.join(meta['choices'])}")
    if lo is not None and value not in meta["also"]:
        below = value <= lo if meta["lo_open"] else value < lo
        if below or (hi is not None and value > hi):
            kind = "an integer" if isinstance(default, int) and not isinstance(default, bool) else ""
            also = "".join(f" or {a}" for a in dict.fromkeys(meta["also"]))
            bad(f"must be {kind + ' ' if kind else ''}in {span}{also}")
    if meta["check"] is not None:
        problem = meta["check"](value)
        if problem:
            if flat in ("redis_url", "redis_cache_url"):  # the URL may hold a password: never echo it
                raise ValidationError(f"serve config: {flat}: {problem}")
            bad(problem)


def _redis_url_problem(url: Any) -> str:
    """'' when `url` is empty or a usable Redis URL, else what is wrong (never echoes the password)."""
    if not isinstance(url, str):
        return "must be a string"
    if not url:
        return ""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "must be empty or a redis://, rediss:// or unix:// URL"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme == "unix":
        return "" if parts.path else "unix:// needs a socket path, e.g. unix:///run/redis.sock"
    if not parts.hostname:
        return "needs a host, e.g. redis://:password@redis:6379/0"
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        return f"the path must be the db number (e.g. /0), got /{db}"
    return ""


def _redact_url_password(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "<invalid url>"


# ---------------------------------------------------------------------------------------------- loading
def _parse(name: str, raw: Any) -> Any:
    """Coerce a string (env var / CLI / YAML) to the setting's type; non-strings pass through."""
    group, fname = FLAT[name]
    spec = next(f for f in fields(GROUPS[group]) if f.name == fname)
    if spec.default is dataclasses.MISSING:  # list settings
        if isinstance(raw, str):
            return [p.strip() for p in raw.split(",") if p.strip()]
        return list(raw) if isinstance(raw, (list, tuple)) else raw
    default = spec.default
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValidationError(
            f"serve config: {name}={raw!r} is not a valid {type(default).__name__}"
        ) from None
    return raw


def env_overrides(environ: Mapping[str, str] | None = None) -> dict:
    """The ONE function that reads environment variables: LATENTSERVE_<NAME> for every setting's flat name.

    Unknown LATENTSERVE_* variables are ignored (other tools share the prefix, e.g. the client's target)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name in FLAT:
        key = ENV_PREFIX + name.upper()
        if key in env:
            out[name] = _parse(name, env[key])
    return out


def _unknown(name: str, group: str = "") -> ValidationError:
    """An unknown setting, naming the nearest valid one (in `group` when it was given in one)."""
    valid = [f"{group}.{f.name}" for f in fields(GROUPS[group])] if group else [*FLAT, *GROUPS]
    full = f"{group}.{name}" if group else name
    near = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else f"; settings: {', '.join(valid if group else FLAT)}"
    return ValidationError(f"serve config: unknown field {full!r}{hint}")


def flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given flat ({max_batch_size: 8}) or by group ({batching: {max_batch_size: 8}}) -> flat names."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in GROUPS and isinstance(value, Mapping):
            names = {f.name: f.metadata.get("flat") or f.name for f in fields(GROUPS[key])}
            for k, v in value.items():
                if k not in names:
                    raise _unknown(k, key) if k not in FLAT else ValidationError(
                        f"serve config: {k!r} is not in group {key!r}; it is in {FLAT[k][0]!r}")
                out[names[k]] = v
        elif key in FLAT:
            out[key] = value
        else:
            raise _unknown(key)
    return out


def _build(values: Mapping[str, Any]) -> ServeConfig:
    flat = flatten(values)
    groups: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
    for name, value in flat.items():
        group, fname = FLAT[name]
        groups[group][fname] = _parse(name, value)
    return ServeConfig(**{g: GROUPS[g](**kw) for g, kw in groups.items()}).validate()


def load_config(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                use_env: bool = True) -> ServeConfig:
    """Defaults <- environment (LATENTSERVE_*) <- explicit `overrides` (None values are skipped), validated.

    `overrides` (flat names or groups) may hold strings (parsed like env values), e.g. Serve's YAML `args` or
    CLI flags."""
    values: dict[str, Any] = env_overrides(environ) if use_env else {}
    for k, v in flatten({k: v for k, v in (overrides or {}).items() if v is not None}).items():
        if v is not None:
            values[k] = v
    return _build(values)
