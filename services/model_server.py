"""One model's inference: sessions for its versions, dynamic batching of encode/decode, batch statistics.

`ModelRunner` is the engine (plain class, usable in any process); `ModelServer` is the Ray Serve deployment
that wraps one runner per served model name (services/app.py binds one per model). With `colocate=True` the
ingress holds the runners itself and skips the deployment hop.

Versions: the version the app was built with (`default_version`, the newest at deploy time) is loaded and
checked at start; a request pinning another version of the same model (older, or newer but not rolled out
yet) loads it on demand, once, into a small LRU (`max_loaded_versions`), so old versions cost nothing until
used and a canary can be tried before `serve deploy` makes it the default.

Batching: `@serve.batch` queues (one per runner and method, made per instance so co-located runners never
mix) collect concurrent requests for up to `batch_wait_timeout_s` and up to `max_batch_size` rows; a batch
is grouped by version, concatenated and run on a small thread pool (ONNX Runtime releases the GIL, so the
event loop keeps forming the next batch). A request with more rows than `max_batch_size` skips the queue
and runs in chunks of `max_batch_size`. Every model call is recorded: `stats()` reports how many requests
and rows each batch had.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from latentserve.errors import NotFoundError, UnrecoverableError, ValidationError
from latentserve.models.manifest import GRAPH_INPUTS, GRAPH_OUTPUTS
from latentserve.models.repository import ModelRecord, Repository
from latentserve.services.backends import Session, open_session
from latentserve.services.config import ServeConfig

logger = logging.getLogger("ray.serve")
GENERATIVE = ("gan", "vae", "flow")
# Extra encoder outputs per family, after the contract's (latent, logits), in export order.
ENCODER_EXTRA_OUTPUTS = {"vae": ("logvar",), "flow": ("logdet",), "gan": ()}


def graph_io(record: ModelRecord, graph: str) -> tuple[list[str], list[str]]:
    """(input names, output names) of a graph in the contract's order (the manifest's JSON dicts are sorted)."""
    spec = record.manifest["graphs"][graph]
    inputs = [n for n in GRAPH_INPUTS[graph] if n in spec["inputs"]]
    outputs = list(GRAPH_OUTPUTS[graph])
    if graph == "encoder":
        outputs += [n for n in ENCODER_EXTRA_OUTPUTS.get(record.family, ()) if n in spec["outputs"]]
    outputs += sorted(n for n in spec["outputs"] if n not in outputs)
    return inputs, outputs


@dataclass
class LoadedVersion:
    record: ModelRecord
    encoder: Session
    decoder: Session
    loaded_at: float = field(default_factory=time.time)


class BatchStats:
    """Thread-safe counters of model calls: requests and rows per batch, per method."""

    def __init__(self, recent: int = 256) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = collections.Counter()
        self.requests_per_batch: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.rows_per_batch: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.recent: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=recent))
        self.seconds: dict[str, float] = collections.Counter()

    def record(self, method: str, requests: int, rows: int, seconds: float) -> None:
        with self._lock:
            self.calls[method] += 1
            self.requests_per_batch[method][requests] += 1
            self.rows_per_batch[method][rows] += 1
            self.recent[method].append((requests, rows))
            self.seconds[method] += seconds

    def snapshot(self) -> dict:
        with self._lock:
            return {
                m: {
                    "batches": self.calls[m],
                    "requests_per_batch": dict(sorted(self.requests_per_batch[m].items())),
                    "rows_per_batch": dict(sorted(self.rows_per_batch[m].items())),
                    "max_requests_per_batch": max(self.requests_per_batch[m], default=0),
                    "recent": list(self.recent[m]),
                    "model_seconds": round(self.seconds[m], 6),
                }
                for m in sorted(self.calls)
            }


@dataclass
class _Item:
    """One queued request: `rows` rows of `arrays` (same leading size) for `version`."""

    loaded: LoadedVersion  # captured at enqueue time, so LRU eviction cannot pull sessions from under a batch
    arrays: tuple[np.ndarray, ...]

    @property
    def version(self) -> int:
        return self.loaded.record.version

    @property
    def rows(self) -> int:
        return int(self.arrays[0].shape[0])


def _in_replica() -> bool:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


def _rows(items: list[_Item]) -> int:
    return sum(it.rows for it in items)


class ModelRunner:
    """Sessions and batching for every loaded version of one model (see the module docstring)."""

    def __init__(self, config: ServeConfig, name: str, default_version: int | None = None,
                 device: str = "cpu") -> None:
        from ray import serve

        self.config = config
        self.name = name
        self.device = device
        self.repo = Repository(config.repository_path())
        versions = self.repo.versions(name)
        if not versions:
            raise NotFoundError(f"model {name!r} has no versions in repository {self.repo.root}")
        self.default_version = int(default_version) if default_version else versions[-1]
        self._versions: collections.OrderedDict[int, LoadedVersion] = collections.OrderedDict()
        self._load_locks: dict[int, asyncio.Lock] = {}
        self._executor = ThreadPoolExecutor(max_workers=config.max_concurrent_batches,
                                            thread_name_prefix=f"infer-{name}")
        self.stats_ = BatchStats()
        # Per-instance batch queues (serve.batch keeps one queue per decorated callable; decorating bound
        # methods here gives each runner its own, so co-located runners of different models never mix).
        # Outside a Serve replica (tools, unit tests) serve.batch cannot run: requests then go one by one.
        if _in_replica():
            kw = dict(max_batch_size=config.max_batch_size, batch_wait_timeout_s=config.batch_wait_timeout_s,
                      max_concurrent_batches=config.max_concurrent_batches, batch_size_fn=_rows)
            self._encode_batched = serve.batch(**kw)(self._encode_batch)
            self._decode_batched = serve.batch(**kw)(self._decode_batch)
        else:
            self._encode_batched = self._unbatched(self._encode_batch)
            self._decode_batched = self._unbatched(self._decode_batch)
        # Fail fast at start: a broken default version must not deploy.
        self._install(self._open(self.default_version))

    # -- versions -----------------------------------------------------------------------------------------
    def _open(self, version: int) -> LoadedVersion:
        """Load, verify and open one version's sessions (blocking; runs in a worker thread on demand)."""
        record = self.repo.load(self.name, version, verify=self.config.verify_checksums)
        if record.family not in GENERATIVE:
            raise ValidationError(
                f"model {self.name} is a {record.family} model; only generative models (gan, vae, flow) are served"
            )
        fmt = "onnx" if self.config.backend == "onnxruntime" else "torchscript"
        sessions = {}
        for graph in ("encoder", "decoder"):
            ins, outs = graph_io(record, graph)
            sessions[graph] = open_session(
                self.config.backend, record.graph_path(graph, fmt), ins, outs,
                intra_op_threads=self.config.intra_op_threads, inter_op_threads=self.config.inter_op_threads,
                providers=self.config.providers, device=self.device,
            )
        logger.info("model %s v%d loaded (%s, %s)", self.name, version, self.config.backend, self.device)
        return LoadedVersion(record, sessions["encoder"], sessions["decoder"])

    def _install(self, loaded: LoadedVersion) -> None:
        """Add a loaded version (event-loop thread only) and evict the least recently used non-default ones."""
        self._versions[loaded.record.version] = loaded
        while len(self._versions) > self.config.max_loaded_versions:
            victim = next(v for v in self._versions if v != self.default_version)
            del self._versions[victim]

    async def version(self, version: int) -> LoadedVersion:
        """The loaded version (0 = default), loading a pinned one on demand (once, in a thread)."""
        v = int(version) or self.default_version
        loaded = self._versions.get(v)
        if loaded is not None:
            self._versions.move_to_end(v)
            return loaded
        lock = self._load_locks.setdefault(v, asyncio.Lock())
        async with lock:
            loaded = self._versions.get(v)
            if loaded is None:
                loaded = await asyncio.get_running_loop().run_in_executor(None, self._open, v)
                self._install(loaded)
        return loaded

    # -- public API (called by the deployment or, co-located, by the ingress) ------------------------------
    async def encode(self, version: int, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 (N, 3, H, W) in [-1, 1] -> {latent (N, D), logits (N, C)[, logvar (N, D)][, logdet (N,)]}."""
        item = _Item(await self.version(version), (np.ascontiguousarray(images, dtype=np.float32),))
        if item.rows > self.config.max_batch_size:
            return await self._run_chunked("encode", item)
        return await self._encode_batched(item)

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """latents float32 (N, D), labels int64 (N,) -> images float32 (N, 3, H, W) in [-1, 1]."""
        item = _Item(await self.version(version),
                     (np.ascontiguousarray(latents, dtype=np.float32), np.ascontiguousarray(labels, dtype=np.int64)))
        if item.rows > self.config.max_batch_size:
            return (await self._run_chunked("decode", item))["image"]
        return await self._decode_batched(item)

    def stats(self) -> dict:
        return {
            "model": self.name,
            "default_version": self.default_version,
            "loaded_versions": list(self._versions),
            "backend": self.config.backend,
            "device": self.device,
            "max_batch_size": self.config.max_batch_size,
            "batch_wait_timeout_s": self.config.batch_wait_timeout_s,
            "methods": self.stats_.snapshot(),
        }

    # -- batching -----------------------------------------------------------------------------------------
    def _run_graph(self, method: str, loaded: LoadedVersion, arrays: tuple[np.ndarray, ...],
                   n_requests: int) -> dict[str, np.ndarray]:
        """Runs in the thread pool: one session call on concatenated rows."""
        t0 = time.perf_counter()
        if method == "encode":
            out = loaded.encoder.run({"image": arrays[0]})
        else:
            out = loaded.decoder.run({"latent": arrays[0], "label": arrays[1]})
        self.stats_.record(method, n_requests, int(arrays[0].shape[0]), time.perf_counter() - t0)
        return out

    async def _run(self, method: str, loaded: LoadedVersion, arrays: tuple[np.ndarray, ...],
                   n_requests: int) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_graph, method, loaded, arrays, n_requests)

    async def _run_chunked(self, method: str, item: _Item) -> dict[str, np.ndarray]:
        """An oversized request: chunks of max_batch_size rows, run one after another (not queued)."""
        size = self.config.max_batch_size
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, item.rows, size):
            chunk = tuple(a[start:start + size] for a in item.arrays)
            parts.append(await self._run(method, item.loaded, chunk, 1))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    async def _batch(self, method: str, items: list[_Item]) -> list[dict[str, np.ndarray]]:
        """Group a batch by version, run each group as one call, split the outputs back per request."""
        results: list[dict[str, np.ndarray] | None] = [None] * len(items)
        by_version: dict[int, list[int]] = collections.defaultdict(list)
        for i, it in enumerate(items):
            by_version[it.version].append(i)
        for idx in by_version.values():
            group = [items[i] for i in idx]
            if len(group) == 1:
                arrays = group[0].arrays
            else:
                arrays = tuple(np.concatenate([g.arrays[k] for g in group]) for k in range(len(group[0].arrays)))
            out = await self._run(method, group[0].loaded, arrays, len(group))
            start = 0
            for i, g in zip(idx, group):
                stop = start + g.rows
                results[i] = {k: v[start:stop] for k, v in out.items()}
                start = stop
        return results  # type: ignore[return-value]

    async def _encode_batch(self, items: list[_Item]) -> list[dict[str, np.ndarray]]:
        return await self._batch("encode", items)

    async def _decode_batch(self, items: list[_Item]) -> list[np.ndarray]:
        return [r["image"] for r in await self._batch("decode", items)]

    @staticmethod
    def _unbatched(fn):
        async def call(item: _Item):
            return (await fn([item]))[0]

        return call

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ModelServer:
    """Ray Serve deployment body for one model (services/app.py wraps it with `serve.deployment`)."""

    def __init__(self, config: dict, name: str, default_version: int | None = None) -> None:
        cfg = ServeConfig(**config).validate()
        device = "cuda" if cfg.num_gpus > 0 else "cpu"
        self.runner = ModelRunner(cfg, name, default_version, device=device)

    async def encode(self, version: int, images: np.ndarray) -> dict[str, np.ndarray]:
        return await self.runner.encode(version, images)

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return await self.runner.decode(version, latents, labels)

    def stats(self) -> dict:
        return self.runner.stats()

    def check_health(self) -> None:
        """Serve's periodic health check: the default version must still be loaded."""
        if self.runner.default_version not in self.runner._versions:
            raise UnrecoverableError(f"model {self.runner.name} default version is not loaded")

    def __del__(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()
