"""Typed configuration of the serving side (Ray Serve app behind gRPC), validated once at start.

Owns `ServeConfig` (every knob of services/app.py, the ingress and the model deployments) and the ONE place
that reads environment variables (`env_overrides`). Nothing here reads the environment at import time:
`load_config()` is called by `latentserve serve`, by `services.app.app_builder` (Serve's import path) and
by tests, which pass explicit overrides.

Environment variables (all optional; explicit arguments win over them):
    LATENTSERVE_REPOSITORY        model repository root (default: the bundled models/repository)
    LATENTSERVE_MODELS            comma-separated model names to serve (default: every generative model)
    LATENTSERVE_BACKEND           onnxruntime | torchscript
    LATENTSERVE_API_TOKEN         require `authorization: Bearer <token>` on every LatentService call
    LATENTSERVE_REDIS_URL         Redis for latent handles and caches: redis://[user:password@]host:port/db or
                                  rediss:// (TLS); unset = in-process LRUs, single-process only
                                  (services/storage/redis_store.py documents the deployment)
    LATENTSERVE_REDIS_CACHE_URL   optional separate Redis (LRU eviction, no persistence) for the caches
    LATENTSERVE_METRICS_DIR       per-node directory where replicas record metrics (services/observability/metrics.py)
    LATENTSERVE_METRICS_PORT      the node's /metrics endpoint (default 8080; 0 = none)
    LATENTSERVE_GRPC_PORT, LATENTSERVE_HOST, LATENTSERVE_REPLICAS, LATENTSERVE_MAX_BATCH_SIZE, ...:
    every other field as LATENTSERVE_<FIELD NAME IN UPPER CASE> (see `ServeConfig`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from latentserve.errors import ValidationError
from latentserve.models.repository import default_repository_path

BACKENDS = ("onnxruntime", "torchscript")
KNOWN_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")
GRPC_FRONTENDS = ("native", "serve")  # who listens on grpc_port: see ServeConfig.grpc_frontend
GRPC_TRANSPORTS = ("auto", "cxx", "grpcio")  # what moves the bytes of the native frontend: ServeConfig.grpc_transport
ENV_PREFIX = "LATENTSERVE_"


@dataclass
class ServeConfig:
    """Everything the Serve app needs. Range checks run in `validate()` (called by `load_config`)."""

    # -- what is served ----------------------------------------------------------------------------------
    repository: str = ""  # model repository root; "" = the bundled models/repository
    models: list[str] = field(default_factory=list)  # names to serve; [] = every generative model in the repo
    backend: str = "onnxruntime"  # onnxruntime | torchscript (torch is imported only for torchscript)
    max_loaded_versions: int = 3  # per model: newest is loaded at start, pinned older ones on demand (LRU)
    verify_checksums: bool = True  # sha256 of every model file checked when a version is loaded

    # -- inference runtime -------------------------------------------------------------------------------
    # Ray sets OMP_NUM_THREADS=1 in every actor, so ORT/torch threads are always set explicitly from here.
    intra_op_threads: int = 1  # ORT intra_op_num_threads / torch.set_num_threads per model replica
    inter_op_threads: int = 1  # ORT inter_op_num_threads (graphs here are sequential chains)
    providers: list[str] = field(default_factory=list)  # [] = auto: CUDA first when onnxruntime-gpu sees a GPU

    # -- dynamic batching (per model replica, encode and decode each) ------------------------------------
    max_batch_size: int = 64  # rows (images/latents) per model call; bigger requests are split into chunks
    # a forming batch closes as soon as this many rows wait, and combines requests only up to this many rows
    # (one request may still have max_batch_size); 0 = max_batch_size; capped at max_batch_size, so a smaller
    # max_batch_size needs no change here. Smaller than the clients' concurrency on purpose: single-image
    # clients then split into groups whose batches alternate (one runs while the next group's requests are
    # read), instead of all waiting for one big batch and leaving the gRPC thread idle while it runs
    # (benchmarks/README.md)
    preferred_batch_size: int = 16
    # how long the first request of a batch waits for company at most; a batch also closes once no request
    # arrived for batch_idle_timeout_s (the burst is over, e.g. every waiting client is queued), so light load
    # waits ~2 ms while sustained load grows batches up to this wait (services/core/model_server.py Batcher)
    batch_wait_timeout_s: float = 0.01
    batch_idle_timeout_s: float = 0.002  # capped at batch_wait_timeout_s
    max_concurrent_batches: int = 2  # batches in flight per method: one runs while the next one forms

    # -- capacity and back-pressure ------------------------------------------------------------------------
    replicas: int = 1  # model-server replicas per model (ignored when autoscaling is on)
    autoscaling: bool = False  # Serve autoscaling between min_replicas and max_replicas
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 16.0  # autoscaling target per replica
    num_cpus: float = 1.0  # CPUs reserved per model replica (Ray scheduling)
    num_gpus: float = 0.0  # GPUs per model replica (needs onnxruntime-gpu or a CUDA torch)
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.5
    # Concurrent requests per replica (ingress and model servers); >= max_batch_size * max_concurrent_batches
    # lets a model replica fill its batches from single-image requests.
    max_ongoing_requests: int = 128
    max_queued_requests: int = 256  # queued per caller beyond that; full -> RESOURCE_EXHAUSTED; -1 unbounded
    request_timeout_s: float = 0.0  # server-side end-to-end cap per gRPC call (0 = none; client deadlines still apply)
    colocate: bool = False  # run ONNX Runtime inside the ingress replica (no model-server hop); one process
    # per ingress replica then holds every model. Measured: ~2x single-image throughput.
    direct_ingress: bool = False  # the ingress replica itself serves gRPC on grpc_port (Ray Serve direct ingress
    # + throughput-optimized mode), skipping the proxy hop; Serve's proxy moves to proxy_grpc_port. Needs the
    # RAY_SERVE_* variables of `services.app.ray_env(config)` in the environment before Ray starts (the
    # `latentserve serve` command does that). Single-node: replica k listens on grpc_port + k (one spare port
    # for a replacement replica); a port released by a dead replica is quarantined by Serve for 150 s.
    access_log: bool = False  # Serve's per-request access log lines in replica logs (costs CPU per request)
    proxy_grpc_port: int = 0  # Serve's gRPC proxy port when direct_ingress (0 = grpc_port + ingress_replicas + 1)
    # Who listens on grpc_port (services/app.py, services/frontends/grpc/native.py): "native" = every LatentIngress replica
    # runs its own grpc.aio server with the models in-process, bound with SO_REUSEPORT so the replicas on a node
    # share the port (the kernel spreads connections); Ray Serve keeps placement, health, scaling and rollout.
    # "serve" = Ray Serve's gRPC proxy (or, with direct_ingress, Serve's direct ingress) in front of the
    # ingress deployment, models in model-server deployments unless colocate. Measured (benchmarks/README.md):
    # native serves single-image requests several times faster than the proxy path.
    grpc_frontend: str = "native"
    # native: what moves the gRPC bytes (services/frontends/grpc/transport.py). "cxx" = the compiled grpc++ transport
    # (built at install when Debian's libgrpc++-dev is present; hands calls to the handlers in bursts),
    # "grpcio" = grpc.aio, "auto" = cxx when built, else grpcio. Same handlers, statuses and options either
    # way; measured (benchmarks/README.md): cxx takes about half of grpc.aio's CPU per single-image request.
    grpc_transport: str = "auto"
    # native: a stopping replica answers health checks with NOT_SERVING and keeps serving at least this long
    # (time for a TCP load balancer to take it out), then while its replacement is still starting.
    drain_period_s: float = 0.0
    # native rollouts: extra replicas Serve may start (percent of the replica count, rounded up) so new
    # replicas serve before old ones stop; needs that much spare CPU/GPU. 0 = Serve's stop-then-start.
    max_surge_percent: int = 25
    # native: each client connection is closed gracefully after this long (GOAWAY; clients reconnect without
    # failing a call), so connections rebalance over the replicas sharing the port and a draining replica
    # sheds its clients before it stops. 0 = never (a stopping replica then cuts its connections).
    max_connection_age_s: float = 10.0
    # native: each serving process sets its nice value back to 0. Ray starts its workers (our replicas) at
    # nice 15 and the serving process inherits it, so on a busy node every normal-priority job preempts the
    # gRPC server: measured at c=32 with a training job beside it, 34 and 1,012 img/s at nice 15 vs 1,119 and
    # 1,413 at nice 0 (two rounds). Lowering the value needs CAP_SYS_NICE (root): without it the process keeps
    # Ray's value and logs a warning. So `latentserve serve` starts its local Ray with RAY_worker_niceness=0 and
    # docker-compose.yml sets that for its nodes (the image runs as a non-root user); this reset covers
    # clusters started without it.
    reset_serving_niceness: bool = True

    # -- per-request caps (INVALID_ARGUMENT above them) ----------------------------------------------------
    max_images_per_request: int = 256
    max_interpolation_steps: int = 64
    max_image_bytes: int = 4 << 20  # one encoded PNG/JPEG; protects the decoder from decompression bombs
    # label check of Sample / Augment (models/class_check.py): draws per image at most, the first included;
    # each costs a decode and an encode (the bundled shapes-vae at its default threshold 0.99 needs ~1.7 on average)
    class_check_rounds: int = 8

    # -- gradient-based latent ops (services/core/latent_ops.py; need PyTorch: the `latent-ops` extra) ----------
    # Geodesic interpolation, guided sampling and encode refinement run on the TorchScript artefacts. torch
    # is imported on the first such request (or at start with latent_ops_preload), never otherwise.
    latent_ops: bool = True  # serve them when torch is installed (false: UNIMPLEMENTED, like a torch-less server)
    latent_ops_preload: bool = False  # import torch + load the default versions' graphs at start, not on first use
    latent_ops_threads: int = 1  # torch intra-op threads of a model's latent-ops engine
    latent_ops_max_batch_rows: int = 256  # rows (inner path frames, chains, images) sharing one forward/backward
    max_geodesic_iterations: int = 500  # per-request caps (INVALID_ARGUMENT above them)
    max_guidance_steps: int = 500
    max_refine_steps: int = 500
    # Memory budget of the gradient ops (RESOURCE_EXHAUSTED naming the request field when over): a pass's
    # memory grows with its rows, so rows admitted at once are capped per request and per process.
    latent_ops_max_request_rows: int = 64  # rows (chains, inner path frames, images) of one gradient request
    latent_ops_max_request_work: int = 32_768  # rows x iterations of one gradient request (its CPU time)
    latent_ops_max_process_rows: int = 256  # rows of gradient requests admitted at once in one process
    geodesic_iterations: int = 100  # defaults for requests that leave an option at 0
    geodesic_learning_rate: float = 0.05  # Adam step in latent units
    guidance_steps: int = 50
    guidance_step_size: float = 0.02  # Langevin step eta
    guidance_class_weight: float = 10.0  # weight of log p(label | decode(z)) (1 = the plain posterior)
    guidance_noise: float = 1.0  # Langevin noise scale (1 = sqrt(2 eta) N(0, I), the exact Langevin noise)
    guidance_factor_weight: float = 200.0  # weight of the factor term ((r - target) / range)^2
    refine_learning_rate: float = 0.05  # Adam step in latent units

    # -- network / security --------------------------------------------------------------------------------
    grpc_port: int = 9000
    http_port: int = 8000  # Serve always starts its HTTP proxy next to the gRPC one (unused by latentserve)
    host: str = "127.0.0.1"  # address the gRPC proxy listens on (Ray Serve binds all interfaces; we print this)
    api_token: str = ""  # "" = no auth; else LatentService calls need `authorization: Bearer <token>`
    app_name: str = "latentserve"  # Serve application name (route prefix / gRPC `application` metadata)
    # gRPC server reflection on the native servers: "auth" = needs the API token when one is set (open
    # without one), "open" = never needs it, "off" = not served. Health never needs a token.
    reflection: str = "auth"

    # -- latent handles --------------------------------------------------------------------------------------
    # Without Redis: the handle store itself (single-process only). With Redis: each replica's read-through
    # copy of recently used handles (handles are content-addressed, so a copy is never stale).
    handle_store_size: int = 100_000
    # Handles (and the caches unless redis_cache_url): redis://[user:password@]host:port/db, rediss:// = TLS,
    # unix:///path. Shared by every replica and node; see services/storage/redis_store.py for the deployment.
    redis_url: str = ""
    redis_cache_url: str = ""  # separate Redis for the encode/result caches ("" = redis_url)
    handle_ttl_s: float = 7 * 86_400.0  # handle expiry (refreshed when the same latent is issued again)
    encode_cache: bool = True  # (model, version, image pixels) -> encoder outputs; a hit skips the encoder
    result_cache: bool = True  # (model, version, latent, format) -> image; Decode, Edit, seeded Sample
    cache_ttl_s: float = 86_400.0  # expiry of cache entries in Redis (and in the in-process cache)
    cache_max_entry_bytes: int = 1 << 20  # bigger entries are not cached
    cache_memory_bytes: int = 64 << 20  # in-process cache budget per replica (when the caches are not in Redis)
    redis_timeout_s: float = 0.05  # cache calls: after this the cache is bypassed (the request still succeeds)
    redis_handle_timeout_s: float = 0.5  # handle calls: after this the request fails with UNAVAILABLE
    redis_backoff_s: float = 0.2  # circuit breaker: first window Redis is skipped after a failure ...
    redis_backoff_max_s: float = 5.0  # ... doubling per failed probe up to this
    redis_key_prefix: str = "ls:"  # namespace of every key (several deployments may share one Redis)

    # -- metrics (services/observability/metrics.py, services/observability/exporter.py) ---------------------------------------
    # Directory (one per node) where every replica process records its metrics (prometheus_client
    # multiprocess files); the node's exporter sums them. "" = nothing recorded. `latentserve serve` uses a
    # fresh temporary directory; the compose nodes set LATENTSERVE_METRICS_DIR.
    metrics_dir: str = ""
    # The node's /metrics endpoint (latentserve_* + Ray's own metrics) on host:metrics_port; 0 = none.
    metrics_port: int = 8080

    # ------------------------------------------------------------------------------------------------------
    def validate(self) -> "ServeConfig":
        """Range and type checks; raises ValidationError naming the field, what it was and what is allowed."""
        def bad(name: str, why: str) -> None:
            raise ValidationError(f"serve config: {name}={getattr(self, name)!r}: {why}")

        def int_range(name: str, lo: int, hi: int | None = None) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
                bad(name, f"must be an integer in [{lo}, {hi if hi is not None else 'inf'}]")

        def num_range(name: str, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
                bad(name, "must be a number")
            if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
                bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]")

        if not isinstance(self.repository, str):
            bad("repository", "must be a path string")
        if not isinstance(self.models, list) or not all(isinstance(m, str) and m for m in self.models):
            bad("models", "must be a list of model names")
        if len(set(self.models)) != len(self.models):
            bad("models", "lists a model twice")
        if self.backend not in BACKENDS:
            bad("backend", f"must be one of {', '.join(BACKENDS)}")
        int_range("max_loaded_versions", 1, 64)
        int_range("intra_op_threads", 1, 256)
        int_range("inter_op_threads", 1, 64)
        if not isinstance(self.providers, list) or any(p not in KNOWN_PROVIDERS for p in self.providers):
            bad("providers", f"must be a list of {', '.join(KNOWN_PROVIDERS)} ([] = auto)")
        int_range("max_batch_size", 1, 4096)
        int_range("preferred_batch_size", 0, 4096)
        num_range("batch_wait_timeout_s", 0.0, 1.0)
        num_range("batch_idle_timeout_s", 0.0, 1.0)
        int_range("max_concurrent_batches", 1, 16)
        int_range("replicas", 1, 1024)
        int_range("min_replicas", 0, 1024)
        int_range("max_replicas", 1, 1024)
        if self.autoscaling and self.min_replicas > self.max_replicas:
            bad("min_replicas", f"must be <= max_replicas ({self.max_replicas})")
        num_range("target_ongoing_requests", 0.0, 10_000, lo_open=True)
        num_range("num_cpus", 0.0, 1024)
        num_range("num_gpus", 0.0, 64)
        int_range("ingress_replicas", 1, 1024)
        num_range("ingress_num_cpus", 0.0, 1024)
        int_range("max_ongoing_requests", 1, 100_000)
        int_range("max_queued_requests", -1, 1_000_000)
        if self.max_queued_requests == 0:
            bad("max_queued_requests", "0 would reject every request that has to wait; use -1 (unbounded) or >= 1")
        num_range("request_timeout_s", 0.0, 86_400)
        int_range("max_images_per_request", 1, 65_536)
        int_range("max_interpolation_steps", 2, 4096)
        int_range("max_image_bytes", 1024, 1 << 30)
        if not isinstance(self.latent_ops, bool):
            bad("latent_ops", "must be true or false")
        if not isinstance(self.latent_ops_preload, bool):
            bad("latent_ops_preload", "must be true or false")
        int_range("latent_ops_threads", 1, 256)
        int_range("latent_ops_max_batch_rows", 1, 65_536)
        int_range("max_geodesic_iterations", 1, 100_000)
        int_range("max_guidance_steps", 1, 100_000)
        int_range("max_refine_steps", 1, 100_000)
        int_range("latent_ops_max_request_rows", 1, 65_536)
        int_range("latent_ops_max_request_work", 1, 1 << 40)
        int_range("latent_ops_max_process_rows", self.latent_ops_max_request_rows, 1 << 20)
        int_range("class_check_rounds", 1, 64)
        int_range("geodesic_iterations", 1, self.max_geodesic_iterations)
        int_range("guidance_steps", 1, self.max_guidance_steps)
        num_range("geodesic_learning_rate", 0.0, 1.0, lo_open=True)
        num_range("guidance_step_size", 0.0, 1.0, lo_open=True)
        num_range("guidance_class_weight", 0.0, 1000.0)
        num_range("guidance_noise", 0.0, 10.0)
        num_range("guidance_factor_weight", 0.0, 1e5)
        num_range("refine_learning_rate", 0.0, 1.0, lo_open=True)
        int_range("grpc_port", 1, 65_535)
        int_range("http_port", 1, 65_535)
        int_range("proxy_grpc_port", 0, 65_535)
        if self.grpc_transport not in GRPC_TRANSPORTS:
            bad("grpc_transport", f"must be one of {', '.join(GRPC_TRANSPORTS)}")
        if self.grpc_frontend not in GRPC_FRONTENDS:
            bad("grpc_frontend", f"must be one of {', '.join(GRPC_FRONTENDS)}")
        if self.grpc_frontend == "native" and self.direct_ingress:
            bad("direct_ingress", "is an option of grpc_frontend 'serve' (the native frontend already serves gRPC from the replicas)")
        num_range("drain_period_s", 0.0, 3600)
        int_range("max_surge_percent", 0, 100)
        if self.max_connection_age_s != 0:
            num_range("max_connection_age_s", 1.0, 86_400)
        if self.direct_ingress and self.effective_proxy_grpc_port in range(self.grpc_port, self.grpc_port + self.ingress_replicas + 1):
            bad("proxy_grpc_port", f"must not be one of the direct-ingress ports {self.grpc_port}..{self.grpc_port + self.ingress_replicas}")
        if self.direct_ingress and self.grpc_port + self.ingress_replicas + 1 > 65_535:
            bad("grpc_port", "direct_ingress needs grpc_port + ingress_replicas + 1 <= 65535")
        if self.http_port == self.grpc_port:
            bad("http_port", "must differ from grpc_port")
        if not isinstance(self.host, str) or not self.host:
            bad("host", "must be a host name or IP address")
        if not isinstance(self.api_token, str) or any(c.isspace() for c in self.api_token):
            bad("api_token", "must be a string without whitespace")
        if self.reflection not in ("open", "auth", "off"):
            bad("reflection", "must be one of open, auth, off")
        if not isinstance(self.app_name, str) or not self.app_name or "/" in self.app_name:
            bad("app_name", "must be a non-empty name without '/'")
        int_range("handle_store_size", 1, 100_000_000)
        for name in ("redis_url", "redis_cache_url"):
            problem = _redis_url_problem(getattr(self, name))
            if problem:  # not via bad(): the URL may hold a password
                raise ValidationError(f"serve config: {name}: {problem}")
        num_range("handle_ttl_s", 1.0, 366 * 86_400.0)
        num_range("cache_ttl_s", 1.0, 366 * 86_400.0)
        int_range("cache_max_entry_bytes", 1024, 512 << 20)
        int_range("cache_memory_bytes", 1 << 20, 1 << 40)
        num_range("redis_timeout_s", 0.001, 60.0)
        num_range("redis_handle_timeout_s", 0.001, 60.0)
        num_range("redis_backoff_s", 0.01, 600.0)
        num_range("redis_backoff_max_s", 0.01, 3600.0)
        if self.redis_backoff_max_s < self.redis_backoff_s:
            bad("redis_backoff_max_s", f"must be >= redis_backoff_s ({self.redis_backoff_s})")
        if not isinstance(self.redis_key_prefix, str) or len(self.redis_key_prefix) > 64 or any(c.isspace() for c in self.redis_key_prefix):
            bad("redis_key_prefix", "must be a string of at most 64 characters without whitespace")
        if not isinstance(self.metrics_dir, str):
            bad("metrics_dir", "must be a directory path string (\"\" = no metrics)")
        int_range("metrics_port", 0, 65_535)
        if self.metrics_port and self.metrics_port in (self.grpc_port, self.http_port):
            bad("metrics_port", "must differ from grpc_port and http_port")
        if self.colocate and self.num_gpus > 0:
            bad("colocate", "co-located inference runs in the ingress replica, which reserves no GPU; set num_gpus=0")
        return self

    # ------------------------------------------------------------------------------------------------------
    def repository_path(self) -> Path:
        """The repository root as an absolute path ('' -> the bundled repository)."""
        if self.repository:
            return Path(self.repository).expanduser().resolve()
        return default_repository_path().resolve()

    def with_overrides(self, **overrides: Any) -> "ServeConfig":
        """A validated copy with some fields replaced (unknown names raise ValidationError)."""
        return _build({**dataclasses.asdict(self), **overrides})

    def to_dict(self) -> dict:
        """JSON-able dict (Serve `args`, logging). The token is kept: callers that print must use `redacted()`."""
        return dataclasses.asdict(self)

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
        if not self.direct_ingress:
            return self.grpc_port
        return self.proxy_grpc_port or self.grpc_port + self.ingress_replicas + 1

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"


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
_FIELDS = {f.name: f for f in fields(ServeConfig)}


def _parse(name: str, raw: Any) -> Any:
    """Coerce a string (env var / CLI / YAML) to the field's type; non-strings pass through."""
    default = _FIELDS[name].default
    if default is dataclasses.MISSING:  # list fields (default_factory)
        if isinstance(raw, str):
            return [p.strip() for p in raw.split(",") if p.strip()]
        return list(raw) if isinstance(raw, (list, tuple)) else raw
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
    """The ONE function that reads environment variables: LATENTSERVE_<FIELD> for every ServeConfig field.

    Unknown LATENTSERVE_* variables are ignored (other tools share the prefix, e.g. the client's target)."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env:
            out[name] = _parse(name, env[key])
    return out


def _build(values: Mapping[str, Any]) -> ServeConfig:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValidationError(f"serve config: unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    parsed = {k: _parse(k, v) for k, v in values.items()}
    return ServeConfig(**parsed).validate()


def load_config(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                use_env: bool = True) -> ServeConfig:
    """Defaults <- environment (LATENTSERVE_*) <- explicit `overrides` (None values are skipped), validated.

    `overrides` may hold strings (parsed like env values), e.g. Serve's YAML `args` or CLI flags."""
    values: dict[str, Any] = env_overrides(environ) if use_env else {}
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    return _build(values)
