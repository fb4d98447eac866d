"""One model's inference: sessions for its versions, dynamic batching of encode/decode, batch statistics.

`ModelRunner` is the engine (a plain class, usable in any process); `ModelServer` is the Ray Serve deployment
that wraps one runner (serve frontend, models not co-located). Promises: the default version is loaded and
checked at start, any other version of the repository on first use (an LRU of `max_loaded_versions`);
concurrent requests are batched per method on the caller's event loop (`Batcher`: how batches form is the
`batching` config group, docs/architecture.md "Batching"), run on a small thread pool (ONNX Runtime releases
the GIL), and a request whose caller was cancelled while it waited is dropped before its batch runs. Decode
returns uint8 (N, H, W, 3) images when asked (converted once per batch in the worker thread). Gradient latent
ops run on the runner's LatentOpsEngine (latent_ops.py), created with its torch import on the first such job.
A texture model (family sgan, models/texture_grid.py) has no encoder and decodes at any size: its decode takes
the size and a noise seed per row (default: the row's digest), the worker thread draws the noise grid, and a
batch combines only requests of one size.
"""
from __future__ import annotations

import asyncio
import math
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np

from latentserve.errors import NotFoundError, UnrecoverableError, ValidationError
from latentserve.models import texture_grid
from latentserve.models.manifest import DECODER_EXTRA_INPUTS, GENERATIVE, GRAPH_INPUTS, GRAPH_OUTPUTS
from latentserve.models.pixel_ar import AR_GRAPHS, ar_decode, ar_settings
from latentserve.models.repository import ModelRecord, Repository
from latentserve.services.core.backends import Session, open_session
from latentserve.services.observability import metrics
from latentserve.services.config import ServeConfig
from latentserve.services.core.images import DECODE_OUTPUTS, float_images_to_uint8
from latentserve.services.core.latent_ops import LatentOpsEngine

logger = logging.getLogger("ray.serve")
# Extra encoder outputs per family, after the contract's (latent, logits), in export order (a class-conditional
# flow adds class_latents: z under every class's map).
ENCODER_EXTRA_OUTPUTS = {"vae": ("logvar",), "flow": ("logdet", "class_latents"), "gan": (), "ae": (), "vector": (),
                         "sgan": ()}


def graph_io(record: ModelRecord, graph: str) -> tuple[list[str], list[str]]:
    """(input names, output names) of a graph in the contract's order (the manifest's JSON dicts are sorted)."""
    spec = record.manifest["graphs"][graph]
    if graph not in GRAPH_INPUTS:  # a family's own graph (the autoregressive decoder's): the export's order
        return list(spec["input_names"]), list(spec["output_names"])
    inputs = [n for n in GRAPH_INPUTS[graph] if n in spec["inputs"]]
    if graph == "decoder":
        inputs += [n for n in DECODER_EXTRA_INPUTS.get(record.family, ()) if n in spec["inputs"]]
    outputs = list(GRAPH_OUTPUTS[graph])
    if graph == "encoder":
        outputs += [n for n in ENCODER_EXTRA_OUTPUTS.get(record.family, ()) if n in spec["outputs"]]
    outputs += sorted(n for n in spec["outputs"] if n not in outputs)
    return inputs, outputs


@dataclass
class LoadedVersion:
    record: ModelRecord
    encoder: Session | None  # None: a texture model (no encoder)
    decoder: Session
    loaded_at: float = field(default_factory=time.time)
    # an autoregressive decoder (models/pixel_ar.py): its settings and the ar_context / ar_step sessions; Decode
    # then samples pixel by pixel over all rows of a batch instead of running `decoder`
    ar: dict | None = None
    ar_sessions: dict[str, Session] = field(default_factory=dict)
    texture: dict | None = None  # a texture model's manifest `texture` block: decode builds its noise grid

    @property
    def native_size(self) -> int:
        return int(self.record.image_shape[-1])


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
    out: str = "float32"  # decode only: "float32" (N, 3, H, W) or "uint8" (N, H, W, 3) images
    size: int = 0  # decode of a texture model: the output size in px (a batch holds one size)

    @property
    def version(self) -> int:
        return self.loaded.record.version

    @property
    def rows(self) -> int:
        return int(self.arrays[0].shape[0])


class Batcher:
    """Dynamic batching on one asyncio event loop (the loop of the first `submit`).

    `submit(item)` queues an item and awaits its result. A background task forms batches: it waits for a free
    slot (`max_concurrent` batches in flight), then for queued work (while another batch runs: for at least
    `max_rows // 2` queued rows, or for that batch to end), then for company: until `preferred_rows`
    (default `max_rows`) rows wait, or `wait_s` after the oldest queued item arrived, or `idle_s` (default:
    `wait_s`) after both the newest arrival and the start of this wait. It hands the batch (items whose
    callers were not cancelled: the first one whatever its size, up to `max_rows`, and more only within
    `preferred_rows` rows) to `run_batch(items) -> results` as a task. An exception fails every request of its
    batch, never the batcher."""

    def __init__(self, run_batch: Callable[[list[_Item]], Awaitable[list[Any]]], max_rows: int, wait_s: float,
                 max_concurrent: int, name: str = "batch", idle_s: float | None = None,
                 on_wait: Callable[[float], None] | None = None, preferred_rows: int = 0) -> None:
        self._run_batch = run_batch
        self._on_wait = on_wait  # called with each item's queue wait (seconds) when its batch is taken
        self.max_rows, self.wait_s, self.max_concurrent = int(max_rows), float(wait_s), int(max_concurrent)
        # a forming batch stops waiting for company at preferred_rows (0 = max_rows) and combines requests only
        # up to that many rows; a single request may have up to max_rows
        self.preferred_rows = min(self.max_rows, int(preferred_rows) or self.max_rows)
        # rows a batch needs to run beside another one: half of max_rows, not of preferred_rows, so bulk requests
        # use several cores while single-image groups strictly alternate (two small batches running at once
        # finish together and re-synchronise the groups; benchmarks/README.md, settings A/B)
        self.parallel_rows = max(1, self.max_rows // 2)
        # A forming batch also closes when no request arrived for idle_s: under load requests keep arriving
        # (each costs the gRPC thread some CPU to read) and the batch grows up to wait_s; once
        # the clients' requests are all queued it runs at once instead of idling out the whole wait.
        self.gap_s = min(self.wait_s, self.wait_s if idle_s is None else float(idle_s))
        self._last_arrival = 0.0
        self.name = name
        self._in_flight = 0
        self._queue: collections.deque[tuple[_Item, asyncio.Future, float]] = collections.deque()
        self._rows = 0  # rows queued (cancelled items included until they are popped)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()  # strong references to the batch tasks

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and self._loop is not loop and not self._loop.is_closed():
            raise UnrecoverableError(f"batcher {self.name} is bound to another running event loop")
        self._loop = loop
        self._queue.clear()
        self._rows = 0
        self._wakeup = asyncio.Event()  # something was queued
        self._full = asyncio.Event()  # preferred_rows rows are queued
        self._parallel = asyncio.Event()  # parallel_rows rows are queued, or a batch ended
        self._in_flight = 0
        self._slots = asyncio.Semaphore(self.max_concurrent)
        self._task = loop.create_task(self._form_batches(), name=f"batcher-{self.name}")

    async def submit(self, item: _Item) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._start(loop)
        fut = loop.create_future()
        self._last_arrival = now = loop.time()
        self._queue.append((item, fut, now))
        self._rows += item.rows
        self._wakeup.set()
        if self._rows >= self.parallel_rows:
            self._parallel.set()
        if self._rows >= self.preferred_rows:  # independent: preferred_rows may be below parallel_rows
            self._full.set()
        return await fut  # cancelling the caller cancels `fut`: the batcher then skips the item

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _take(self) -> list[tuple[_Item, asyncio.Future]]:
        batch, rows = [], 0
        on_wait = self._on_wait
        now = self._loop.time() if on_wait is not None and self._loop is not None else 0.0
        while self._queue:
            item, fut, arrived = self._queue[0]
            if fut.done():  # cancelled while waiting: dropped without running
                self._queue.popleft()
                self._rows -= item.rows
                continue
            if batch and rows + item.rows > self.preferred_rows:  # combined requests: at most preferred_rows
                break
            self._queue.popleft()
            self._rows -= item.rows
            batch.append((item, fut))
            rows += item.rows
            if on_wait is not None:
                on_wait(now - arrived)
        return batch

    async def _form_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                while self._in_flight and self._rows < self.parallel_rows:
                    self._parallel.clear()
                    await self._parallel.wait()
                    while not self._queue:  # everything queued was cancelled meanwhile
                        self._wakeup.clear()
                        await self._wakeup.wait()
                # wait for company: until preferred_rows rows, wait_s after the oldest queued request, or gap_s
                # after both the newest one and the start of this wait (the burst has ended: e.g. every
                # waiting client is queued; requests that queued up while the previous batch ran still get
                # gap_s of company, instead of leaving at once as a batch of one or two)
                formed = loop.time()
                while self._rows < self.preferred_rows:
                    remaining = min(self._queue[0][2] + self.wait_s,
                                    max(self._last_arrival, formed) + self.gap_s) - loop.time()
                    if remaining <= 0:
                        break
                    self._full.clear()
                    # a timer rather than asyncio.wait_for: no extra task per wait
                    timer = loop.call_later(remaining, self._full.set)
                    try:
                        await self._full.wait()
                    finally:
                        timer.cancel()
                    if not self._queue:
                        break
                batch = self._take()
                if not batch:  # everything queued was cancelled
                    self._slots.release()
                    continue
            except BaseException:
                self._slots.release()
                raise
            self._in_flight += 1
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[_Item, asyncio.Future]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - the batch's requests fail, the batcher goes on
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            self._parallel.set()
            self._slots.release()

    def close(self) -> None:
        """Stop forming batches (thread-safe; queued callers are cancelled with the loop's tasks)."""
        loop, task = self._loop, self._task
        if task is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)


class ModelRunner:
    """Sessions and batching for every loaded version of one model (see the module docstring)."""

    def __init__(self, config: ServeConfig, name: str, default_version: int | None = None,
                 device: str = "cpu") -> None:
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
        self._executor = ThreadPoolExecutor(max_workers=config.batching.max_concurrent_batches,
                                            thread_name_prefix=f"infer-{name}")
        self.stats_ = BatchStats()
        metrics.setup(config)
        # One batcher per method and runner (co-located runners of different models never mix), bound to the
        # event loop the runner is used from.
        kw = dict(max_rows=config.batching.max_batch_size, preferred_rows=config.batching.preferred_batch_size,
                  wait_s=config.batching.batch_wait_timeout_s,
                  max_concurrent=config.batching.max_concurrent_batches, idle_s=config.batching.batch_idle_timeout_s)
        wait = (lambda method: (lambda s: metrics.queue_wait(name, method, s))) if metrics.enabled() else (lambda m: None)
        self._encode_batcher = Batcher(self._encode_batch, name=f"{name}-encode", on_wait=wait("encode"), **kw)
        self._decode_batcher = Batcher(self._decode_batch, name=f"{name}-decode", on_wait=wait("decode"), **kw)
        # Fail fast at start: a broken default version must not deploy.
        self._install(self._open(self.default_version))
        # Gradient latent ops (services/core/latent_ops.py): created on the first op so torch stays unimported.
        self._latent_ops: Any = None
        if config.latent_ops.preload and config.latent_ops.enabled:
            self.latent_ops_engine().load(self.default_version)

    # -- versions -----------------------------------------------------------------------------------------
    def _open(self, version: int) -> LoadedVersion:
        """Load, verify and open one version's sessions (blocking; runs in a worker thread on demand)."""
        record = self.repo.load(self.name, version, verify=self.config.served.verify_checksums)
        if record.family not in GENERATIVE:
            raise ValidationError(
                f"model {self.name} is a {record.family} model; only generative models ({', '.join(GENERATIVE)}) are served"
            )
        fmt = "onnx" if self.config.served.backend == "onnxruntime" else "torchscript"
        sessions = {}
        ar = ar_settings(record.manifest)
        graphs = [g for g in ("encoder", "decoder") if g in record.manifest["graphs"]]
        for graph in graphs + list(AR_GRAPHS if ar else ()):
            ins, outs = graph_io(record, graph)
            sessions[graph] = open_session(
                self.config.served.backend, record.graph_path(graph, fmt), ins, outs,
                intra_op_threads=self.config.runtime.intra_op_threads, inter_op_threads=self.config.runtime.inter_op_threads,
                providers=self.config.runtime.providers, device=self.device,
            )
        logger.info("model %s v%d loaded (%s, %s)", self.name, version, self.config.served.backend, self.device)
        return LoadedVersion(record, sessions.get("encoder"), sessions["decoder"], ar=ar,
                             ar_sessions={g: sessions[g] for g in AR_GRAPHS if g in sessions},
                             texture=record.manifest.get("texture") if record.family == texture_grid.FAMILY else None)

    def _install(self, loaded: LoadedVersion) -> None:
        """Add a loaded version (event-loop thread only) and evict the least recently used non-default ones."""
        self._versions[loaded.record.version] = loaded
        while len(self._versions) > self.config.served.max_loaded_versions:
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
        """images float32 (N, 3, H, W) in [-1, 1] -> {latent (N, D), logits (N, C)[, logvar (N, D)][, logdet (N,)]
        [, class_latents (N, C, D)]}."""
        loaded = await self.version(version)
        if loaded.encoder is None:
            raise ValidationError(f"model {self.name} is a {loaded.record.family} model and has no encoder")
        item = _Item(loaded, (np.ascontiguousarray(images, dtype=np.float32),))
        if item.rows > self.config.batching.max_batch_size:
            return await self._run_chunked("encode", item)
        return await self._encode_batcher.submit(item)

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray, out: str = "float32",
                     size: int = 0, noise_seeds: np.ndarray | None = None) -> np.ndarray:
        """latents float32 (N, D), labels int64 (N,) -> images: out="float32" (N, 3, H, W) in [-1, 1], or
        out="uint8" (N, H, W, 3) RGB (clipped, rounded; what every 8-bit output format needs), or for a vector
        model out="vector" (N, 3 + 10 L): each row's background and layers (services/core/output.py draws them).
        A texture model draws `size` px (0 = native; the caller checked it: output.resolve) from each row's noise
        seed (uint64 (N,); None = texture_grid.row_seeds of the rows)."""
        if out not in DECODE_OUTPUTS:
            raise ValidationError(f"decode output {out!r} is not one of {', '.join(DECODE_OUTPUTS)}")
        loaded = await self.version(version)
        z, y = np.ascontiguousarray(latents, dtype=np.float32), np.ascontiguousarray(labels, dtype=np.int64)
        if loaded.texture is not None:
            seeds = texture_grid.row_seeds(z) if noise_seeds is None else np.asarray(noise_seeds, np.uint64)
            item = _Item(loaded, (z, y, seeds), out, size=int(size) or loaded.native_size)
        elif size and size != loaded.native_size:
            raise ValidationError(f"output_size: model {self.name} draws only {loaded.native_size} px")
        else:
            item = _Item(loaded, (z, y), out)
        if item.rows > self.config.batching.max_batch_size:
            result = await self._run_chunked("decode", item)
            images, finite = result[out], result["finite"]
        else:
            images, finite = await self._decode_batcher.submit(item)
        if not finite.all():
            raise ValidationError(f"latents[{int(np.argmin(finite))}]: the model decodes this latent to non-finite "
                                  f"pixels; use values nearer the model's prior")
        return images

    def latent_ops_engine(self) -> Any:
        """This model's LatentOpsEngine (created, and torch imported, on first use; UnsupportedError naming the
        extra to install when the server cannot run gradient ops)."""
        if self._latent_ops is None:
            self._latent_ops = LatentOpsEngine(self.config, self.name, self.device)
        return self._latent_ops

    async def latent_op(self, job: Any) -> Any:
        """Run a gradient latent-op job (services/core/latent_ops.py) for this model, batched with concurrent ones."""
        if job.version == 0:
            job.version = self.default_version
        return await self.latent_ops_engine().run(job)

    async def probe_factors(self, version: int) -> list[str]:
        """Factor names of the model's probe regressor ([] without a usable probe)."""
        return await self.latent_ops_engine().probe_factors(int(version) or self.default_version)

    def stats(self) -> dict:
        extra = {"latent_ops": self._latent_ops.stats()} if self._latent_ops is not None else {}
        return {
            **extra,
            "model": self.name,
            "default_version": self.default_version,
            "loaded_versions": list(self._versions),
            "backend": self.config.served.backend,
            "device": self.device,
            "max_batch_size": self.config.batching.max_batch_size,
            "preferred_batch_size": self._decode_batcher.preferred_rows,
            "batch_wait_timeout_s": self.config.batching.batch_wait_timeout_s,
            "methods": self.stats_.snapshot(),
        }

    # -- batching -----------------------------------------------------------------------------------------
    def _run_graph(self, method: str, loaded: LoadedVersion, arrays: tuple[np.ndarray, ...],
                   n_requests: int, outs: frozenset = frozenset(), size: int = 0) -> dict[str, np.ndarray]:
        """Runs in the thread pool: one session call on concatenated rows. Decode returns the images as
        "float32" (B, 3, H, W) and/or "uint8" (B, H, W, 3), as `outs` asks, converted here off the event loop."""
        t0 = time.perf_counter()
        if method == "encode":
            out = loaded.encoder.run({"image": arrays[0]})
        else:
            if loaded.ar:  # sequential over pixels, batched over every row of every request in this batch
                x = ar_decode(loaded.ar_sessions["ar_context"].run, loaded.ar_sessions["ar_step"].run, arrays[0],
                              arrays[1], loaded.ar["margin"], loaded.ar["temperature"])
            elif loaded.texture is not None:  # the noise grid of every row, from its seed, at the batch's size
                t = loaded.texture
                cells = int(size) // int(t["cell_px"])
                noise = texture_grid.noise_grid(arrays[2], int(t["local_dim"]), cells)
                res = loaded.decoder.run({"latent": arrays[0], "label": arrays[1], "noise": noise})
                x = res["image"]  # (B, 3, size, size)
            else:
                res = loaded.decoder.run({"latent": arrays[0], "label": arrays[1]})
                x = res["image"]  # (B, 3, H, W)
            out = {}
            if "vector" in outs:  # a vector model's drawing: background (B, 3) + layers (B, L, 10), one row each
                out["vector"] = np.concatenate([res["background"], res["layers"].reshape(len(x), -1)], axis=1)
            if "float32" in outs:
                out["float32"] = x
            # rows decoded to NaN/inf pixels (a latent far off the prior): each request checks its own rows
            out["finite"] = (np.ones(len(x), dtype=bool) if math.isfinite(float(x.sum(dtype=np.float64)))
                             else np.isfinite(x.reshape(len(x), -1)).all(axis=1))
            if "uint8" in outs:
                # in place when nobody needs the floats: saves a (B, 3, H, W) temporary
                out["uint8"] = float_images_to_uint8(x, inplace="float32" not in outs)  # (B, H, W, 3)
        seconds = time.perf_counter() - t0
        self.stats_.record(method, n_requests, int(arrays[0].shape[0]), seconds)
        metrics.batch(self.name, method, int(arrays[0].shape[0]), seconds)
        return out

    async def _run(self, method: str, loaded: LoadedVersion, arrays: tuple[np.ndarray, ...],
                   n_requests: int, outs: frozenset = frozenset(), size: int = 0) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_graph, method, loaded, arrays, n_requests, outs,
                                          size)

    async def _run_chunked(self, method: str, item: _Item) -> dict[str, np.ndarray]:
        """An oversized request: chunks of max_batch_size rows, run one after another (not queued)."""
        size = self.config.batching.max_batch_size
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, item.rows, size):
            chunk = tuple(a[start:start + size] for a in item.arrays)
            parts.append(await self._run(method, item.loaded, chunk, 1, frozenset((item.out,)), item.size))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    async def _batch(self, method: str, items: list[_Item]) -> list[dict[str, np.ndarray]]:
        """Group a batch by version (and a texture model's output size), run each group as one call, split the
        outputs back per request (views)."""
        results: list[dict[str, np.ndarray] | None] = [None] * len(items)
        by_version: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
        for i, it in enumerate(items):
            by_version[(it.version, it.size)].append(i)
        for idx in by_version.values():
            group = [items[i] for i in idx]
            if len(group) == 1:
                arrays = group[0].arrays
            else:
                arrays = tuple(np.concatenate([g.arrays[k] for g in group]) for k in range(len(group[0].arrays)))
            out = await self._run(method, group[0].loaded, arrays, len(group), frozenset(g.out for g in group),
                                  group[0].size)
            start = 0
            for i, g in zip(idx, group):
                stop = start + g.rows
                results[i] = {k: v[start:stop] for k, v in out.items()}
                start = stop
        return results  # type: ignore[return-value]

    async def _encode_batch(self, items: list[_Item]) -> list[dict[str, np.ndarray]]:
        return await self._batch("encode", items)

    async def _decode_batch(self, items: list[_Item]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(r[it.out], r["finite"]) for r, it in zip(await self._batch("decode", items), items)]

    def close(self) -> None:
        if self._latent_ops is not None:
            self._latent_ops.close()
        self._encode_batcher.close()
        self._decode_batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def model_deployment_name(model: str) -> str:
    """The Serve deployment name of a model's ModelServer (serve frontend, models not co-located)."""
    return f"model-{model}"


class ModelServer:
    """Ray Serve deployment body for one model (services/app.py wraps it with `serve.deployment`)."""

    def __init__(self, config: dict, name: str, default_version: int | None = None) -> None:
        cfg = ServeConfig.from_dict(config)
        device = "cuda" if cfg.scaling.num_gpus > 0 else "cpu"
        self.runner = ModelRunner(cfg, name, default_version, device=device)
        metrics.setup(cfg)
        metrics.replica_up(model_deployment_name(name), {name: self.runner.default_version})

    async def encode(self, version: int, images: np.ndarray) -> dict[str, np.ndarray]:
        return await self.runner.encode(version, images)

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray, out: str = "float32",
                     size: int = 0, noise_seeds: np.ndarray | None = None) -> np.ndarray:
        return await self.runner.decode(version, latents, labels, out, size, noise_seeds)

    async def latent_op(self, job: Any) -> Any:
        return await self.runner.latent_op(job)

    async def probe_factors(self, version: int) -> list[str]:
        return await self.runner.probe_factors(version)

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
