"""latentserve's Prometheus metrics: what is recorded, and how every process's counts reach one endpoint.

Every process that handles requests calls `setup(config)`; from then on each update is a write into that
process's memory-mapped prometheus_client file in the node's `metrics_dir` (multiprocess mode), which the
node's exporter (exporter.py) sums at scrape time. Counts are exact (written before the response is sent),
a dead process's counters keep their totals, its `live*` gauges are dropped. Names carry the `latentserve_`
prefix and their unit; labels are few and fixed, and no label value comes from a request. Without
`metrics_dir` every recording function is a no-op. Why this design: docs/architecture.md, "Metrics".
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from typing import Any

logger = logging.getLogger("ray.serve")

PREFIX = "latentserve_"
# Request latencies: from sub-millisecond cache hits to gradient ops of many seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
REDIS_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
CACHE_COUNTERS = ("hits", "misses", "bypasses", "errors", "writes", "write_drops", "too_large")

_lock = threading.Lock()
_metrics: "_Metrics | None" = None  # set by setup(); None = recording disabled in this process
_access_log = False  # setup(): one log line per request (ServeConfig access_log), with or without metrics
_directory = ""


# ---------------------------------------------------------------------------------------------- definitions
def _define(registry: Any = None) -> dict[str, Any]:
    """Every latentserve metric, created in `registry` (None: prometheus_client's default registry). The one
    list of what is exported: `exported_names()` derives the scrape names from it."""
    from prometheus_client import Counter, Gauge, Histogram

    kw = {"registry": registry} if registry is not None else {}
    return {
        "requests": Counter(PREFIX + "requests", "gRPC requests of LatentService by RPC, model, version, status "
                            "code (model/version empty when the request named no served model) and client (a "
                            "configured token name, 'default' for api_token, else 'anonymous': services/access.py)",
                            ["rpc", "model", "version", "code", "client"], **kw),
        "latency": Histogram(PREFIX + "request_duration_seconds", "Server-side duration of LatentService RPCs "
                             "(all status codes)", ["rpc", "model"], buckets=LATENCY_BUCKETS, **kw),
        "images": Counter(PREFIX + "images", "Images returned to clients (Decode, Sample, Edit, Interpolate "
                          "frames)", ["rpc", "model", "version"], **kw),
        "batch_rows": Histogram(PREFIX + "batch_size_rows", "Rows (images or latents) per model call of the "
                                "dynamic batcher", ["model", "method"], buckets=BATCH_BUCKETS, **kw),
        "batch_seconds": Histogram(PREFIX + "batch_duration_seconds", "Duration of one model call (inference on "
                                   "a batch)", ["model", "method"], buckets=LATENCY_BUCKETS, **kw),
        "queue_wait": Histogram(PREFIX + "queue_wait_seconds", "Time a request waited in the batcher's queue "
                                "before its batch started", ["model", "method"], buckets=QUEUE_BUCKETS, **kw),
        **{f"cache_{c}": Counter(PREFIX + f"cache_{c}", _CACHE_HELP[c], ["cache", "model"], **kw)
           for c in CACHE_COUNTERS},
        "handle_lookups": Counter(PREFIX + "handle_lookups", "Latent handles resolved, per handle: "
                                  "result=hit (Redis or the in-process store), local_hit (the replica's copy), "
                                  "miss (NOT_FOUND), unavailable (Redis down: UNAVAILABLE)", ["result"], **kw),
        "handle_stores": Counter(PREFIX + "handle_stores", "Latent handles issued, per handle: result=ok | "
                                 "unavailable (Redis down: UNAVAILABLE)", ["result"], **kw),
        "redis_latency": Histogram(PREFIX + "redis_command_duration_seconds", "Duration of Redis round trips "
                                   "(one MGET or one pipeline), role=handles | cache", ["role"],
                                   buckets=REDIS_BUCKETS, **kw),
        "redis_errors": Counter(PREFIX + "redis_errors", "Failed Redis calls (timeouts, connection errors, "
                                "error replies)", ["role"], **kw),
        "redis_skipped": Counter(PREFIX + "redis_skipped", "Redis calls not made because the circuit breaker "
                                 "was open (Redis recently failed)", ["role"], **kw),
        "model_info": Gauge(PREFIX + "model_info", "1 for each model and default version served by a live "
                            "replica", ["model", "version"], multiprocess_mode="livemax", **kw),
        "handle_store_durable": Gauge(PREFIX + "handle_store_durable", "1 when the handle Redis persists its "
                                      "data (appendonly yes), so handles survive its restart; 0 when they would "
                                      "be lost; absent without Redis", [], multiprocess_mode="livemin", **kw),
        "replicas": Gauge(PREFIX + "replicas", "Live replica processes on this node (native: serving "
                          "processes; serve: ingress and model-server replicas)", ["deployment"],
                          multiprocess_mode="livesum", **kw),
    }


_CACHE_HELP = {
    "hits": "Cache lookups answered from the cache, per image (cache=encode | result)",
    "misses": "Cache lookups the cache did not have, per image",
    "bypasses": "Cache lookups skipped or failed (Redis down or slow), per image; the request computed instead",
    "errors": "Failed cache calls (Redis errors, corrupt entries)",
    "writes": "Entries sent to the cache to be written (write_drops of them were then dropped)",
    "write_drops": "Cache writes dropped (Redis unavailable, too many writes pending)",
    "too_large": "Entries not cached because they exceed cache_max_entry_bytes",
}
# Series the exporter itself adds to every scrape (services/observability/exporter.py).
EXPORTER_GAUGES = {PREFIX + "ray_metrics_up": "1 when Ray's metrics export port answered this scrape"}


def exported_names() -> set[str]:
    """Every sample name a scrape can contain for latentserve's own metrics (counter `x` -> `x_total`,
    histogram `x` -> `x_bucket`, `x_sum`, `x_count`), derived from the metric definitions."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    out = set(EXPORTER_GAUGES)
    for m in _define(reg).values():
        for family in m.describe():
            t = family.type
            if t == "counter":
                out.add(family.name + "_total")
            elif t == "histogram":
                out.update(family.name + s for s in ("_bucket", "_sum", "_count"))
            else:
                out.add(family.name)
    return out


# ---------------------------------------------------------------------------------------------- setup
def setup(config: Any) -> bool:
    """Turn recording on in this process, into `config.observability.metrics_dir` (no-op when it is ""). Idempotent; a
    process records into one directory only (a second, different one is ignored with a warning)."""
    global _metrics, _directory, _access_log
    _access_log = bool(config.frontend.access_log)
    directory = config.observability.metrics_dir
    if not directory:
        return False
    with _lock:
        if _metrics is not None:
            if os.path.abspath(directory) != os.path.abspath(_directory):
                logger.warning("metrics: this process already records into %s; ignoring %s", _directory, directory)
            return True
        os.makedirs(directory, exist_ok=True)
        from prometheus_client import values

        # prometheus_client picks its value class at import time from PROMETHEUS_MULTIPROC_DIR; a Ray worker
        # may have imported it before we knew the directory, so switch the class here (the metrics below are
        # created after this line, and label children are created lazily with the same class). The process
        # id names this process's files; prometheus_client calls os.getpid() on every update to notice a
        # fork (a syscall on every update), so it gets the pid from a cell that a fork refreshes.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        pid = [os.getpid()]
        os.register_at_fork(after_in_child=lambda: pid.__setitem__(0, os.getpid()))
        values.ValueClass = values.MultiProcessValue(process_identifier=lambda: pid[0])
        from prometheus_client import CollectorRegistry

        _metrics = _Metrics(_define(CollectorRegistry(auto_describe=True)))
        _directory = directory
    return True


def enabled() -> bool:
    return _metrics is not None


class _Metrics:
    """The metric objects plus caches of their label children (labels() costs a lock and a dict build)."""

    def __init__(self, m: dict[str, Any]) -> None:
        self.m = m
        self._children: dict[tuple, Any] = {}

    def child(self, key: str, *labels: str) -> Any:
        k = (key, *labels)
        c = self._children.get(k)
        if c is None:
            c = self._children[k] = self.m[key].labels(*labels)
        return c


# ---------------------------------------------------------------------------------------------- requests
class RequestRecord:
    """What one RPC did, filled in by whichever layers handle it and emitted once by the outermost one."""

    __slots__ = ("rpc", "model", "version", "code", "images", "t0", "model_fixed", "client", "client_label")

    def __init__(self, rpc: str) -> None:
        self.rpc = rpc
        self.client = self.client_label = "anonymous"  # note_client: who called (services/access.py)
        self.model = ""
        self.version = ""
        self.code = "OK"
        self.images = 0
        self.model_fixed = False
        self.t0 = time.perf_counter()


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("latentserve_request", default=None)


def begin_request(rpc: str) -> tuple[RequestRecord | None, Any]:
    """(record, token): token is not None when this call started the record (the caller must `end_request`).
    An inner layer (the ingress handler under the native server's wrapper) gets the outer record and None.
    (None, None) when neither metrics nor the access log are on."""
    if _metrics is None and not _access_log:
        return None, None
    rec = _current.get()
    if rec is not None:
        return rec, None
    rec = RequestRecord(rpc)
    return rec, _current.set(rec)


def end_request(rec: RequestRecord | None, token: Any) -> None:
    """Emit the record (only the layer that began it, i.e. got a token)."""
    if token is None or rec is None:
        return
    try:
        _current.reset(token)
    except ValueError:  # an async generator finished in another context (e.g. closed by the GC)
        pass
    if _access_log:
        logger.info("request %s model=%s version=%s code=%s client=%s %.1f ms", rec.rpc, rec.model or "-",
                    rec.version or "-", rec.code, rec.client, 1000 * (time.perf_counter() - rec.t0))
    m = _metrics
    if m is None:
        return
    m.child("requests", rec.rpc, rec.model, rec.version, rec.code, rec.client_label).inc()
    m.child("latency", rec.rpc, rec.model).observe(time.perf_counter() - rec.t0)
    if rec.images and rec.code == "OK":
        m.child("images", rec.rpc, rec.model, rec.version).inc(rec.images)


def note_client(name: str, label: str) -> None:
    """The current request's caller: `name` for the log, `label` (bounded: services/access.py metric_name) for
    the metrics."""
    rec = _current.get()
    if rec is not None:
        rec.client, rec.client_label = name, label


def current_client() -> str:
    """The current request's caller as noted ("" outside a recorded request), for log lines."""
    rec = _current.get()
    return rec.client if rec is not None else ""


def note_status(code: str) -> None:
    """The current request ends with this gRPC status code name (`frontends.grpc.status.set_status` calls it)."""
    rec = _current.get()
    if rec is not None:
        rec.code = code


def owns_record(rpc: str):
    """Decorator of a unary handler coroutine function: it begins and emits the record of each call (an
    outer layer, e.g. the native server's wrapper around the ingress handler)."""
    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            rec, token = begin_request(rpc)
            try:
                return await fn(*args, **kwargs)
            except asyncio.CancelledError:
                if rec is not None:
                    rec.code = "CANCELLED"
                raise
            finally:
                end_request(rec, token)
        return wrapper
    return deco


def counted_stream(rpc: str, images: bool = True):
    """Decorator of a server-streaming handler (an async generator function): records each call like
    `owns_record` (or fills in an outer layer's record), each message counting as one image if `images`."""
    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            rec, token = begin_request(rpc)
            try:
                async for item in fn(*args, **kwargs):
                    if images and rec is not None:
                        rec.images += 1
                    yield item
            except (asyncio.CancelledError, GeneratorExit):
                if rec is not None:
                    rec.code = "CANCELLED"
                raise
            finally:
                end_request(rec, token)
        return wrapper
    return deco


def add_images(n: int) -> None:
    """The current request returned `n` more images (streams whose messages carry many, e.g. Augment)."""
    rec = _current.get()
    if rec is not None:
        rec.images += int(n)


def note_model(name: str, version: int) -> None:
    """The current request uses this served model version (its labels; the first model named wins)."""
    rec = _current.get()
    if rec is not None and not rec.model_fixed:
        rec.model, rec.version, rec.model_fixed = name, str(int(version)), True


def clear_model() -> None:
    """The current request is about no single model (ListModels touches each of them)."""
    rec = _current.get()
    if rec is not None:
        rec.model, rec.version, rec.model_fixed = "", "", True


# ---------------------------------------------------------------------------------------------- batches
def batch(model: str, method: str, rows: int, seconds: float) -> None:
    m = _metrics
    if m is not None:
        m.child("batch_rows", model, method).observe(rows)
        m.child("batch_seconds", model, method).observe(seconds)


def queue_wait(model: str, method: str, seconds: float) -> None:
    m = _metrics
    if m is not None:
        m.child("queue_wait", model, method).observe(seconds)


# ---------------------------------------------------------------------------------------------- caches, Redis
def cache(cache_name: str, model: str, deltas: dict[str, int]) -> None:
    """Cache counter increments (services/storage/cache.py ServingCache._add); negative deltas (a scheduled write that
    was then dropped) are not counters: they show as write_drops instead."""
    m = _metrics
    if m is None:
        return
    for name, n in deltas.items():
        if n > 0:
            m.child("cache_" + name, cache_name, model).inc(n)


def handle_lookups(result: str, n: int = 1) -> None:
    m = _metrics
    if m is not None and n > 0:
        m.child("handle_lookups", result).inc(n)


def handle_stores(result: str, n: int = 1) -> None:
    m = _metrics
    if m is not None and n > 0:
        m.child("handle_stores", result).inc(n)


def redis_call(role: str, seconds: float | None, error: bool = False, skipped: bool = False) -> None:
    """One Redis round trip of `role` (handles | cache): its duration, whether it failed; or, `skipped`,
    a call the breaker did not let through."""
    m = _metrics
    if m is None:
        return
    if skipped:
        m.child("redis_skipped", role).inc()
        return
    if seconds is not None:
        m.child("redis_latency", role).observe(seconds)
    if error:
        m.child("redis_errors", role).inc()


# ---------------------------------------------------------------------------------------------- gauges
def handle_store_durable(durable: bool) -> None:
    m = _metrics
    if m is not None:
        m.m["handle_store_durable"].set(1 if durable else 0)


def replica_up(deployment: str, models: dict[str, int]) -> None:
    """This process is a live replica of `deployment` serving these {model: default version}."""
    m = _metrics
    if m is None:
        return
    m.child("replicas", deployment).set(1)
    for name, version in models.items():
        m.child("model_info", name, str(int(version))).set(1)
