"""The serving engine of the gradient-based latent ops: geodesic paths, guided sampling, encode refinement.

`LatentOpsEngine` runs on one asyncio event loop beside a model's ModelRunner (services/core/model_server.py
creates it on the first op, or at start with `latent_ops_preload`), so it lives wherever the model runs: in
the native frontend's serving process, in a co-located ingress, or in a ModelServer deployment reached
through a handle. The ingress builds plain job dataclasses (below, numpy only) and awaits `run(job)`.

Batching: concurrent jobs of the same kind, model version and distance space (pixel vs probe) form a group.
Each group has one driver task that, per tick, advances every admitted job by ONE iteration with a single
forward/backward pass over all their rows (models/latent_ops.py `geodesic_step` / `guided_step` /
`refine_step`), on the engine's one torch thread. Jobs join at the next tick and leave when done, so a long
job never holds a short one back, and up to `latent_ops_max_batch_rows` rows share a pass (FIFO; a job with
more rows runs alone). A job whose caller was cancelled (client cancel, deadline, disconnect) is dropped at
the next tick: its loop stops within one iteration; one whose `deadline` (wall clock, from the gRPC
deadline) passed fails with DEADLINE_EXCEEDED the same way.

Torch is imported only here and only when the engine is created, so processes that never see a gradient op
never import it; without torch installed the ops fail with UNIMPLEMENTED naming the extra to install.
"""
from __future__ import annotations

import asyncio
import collections
import ctypes
import importlib.util
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latentserve.errors import DeadlineExceededError, OverloadedError, UnsupportedError, ValidationError
from latentserve.models.repository import Repository
from latentserve.services.config import ServeConfig

logger = logging.getLogger("ray.serve")
EXTRA = "latent-ops"
INSTALL_COMMAND = f"pip install -e '.[{EXTRA}]'"  # the README gives the same command (a unit test checks)
INSTALL_HINT = f"install the {EXTRA} extra on the server: {INSTALL_COMMAND}"
# Per-request bounds of the float options (steps are capped by the config's max_* fields).
MAX_LEARNING_RATE = 1.0
MAX_STEP_SIZE = 1.0
MAX_CLASS_WEIGHT = 1000.0
MAX_FACTOR_WEIGHT = 1e5
MAX_NOISE = 10.0
MAX_FEATURE_WEIGHT = 1000.0
REFINABLE = ("gan", "vae", "ae", "vector")  # Encode refine_steps: a flow's encoder is already its exact inverse


def torch_installed() -> bool:
    """Whether PyTorch can be imported here (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def availability_problem(config: ServeConfig) -> str:
    """'' when this server can run gradient latent ops, else why not (a message for the caller)."""
    if not config.latent_ops.enabled:
        return "gradient-based latent ops are disabled on this server (config latent_ops=false)"
    if not torch_installed():
        return f"gradient-based latent ops need PyTorch, which this server does not have: {INSTALL_HINT}"
    return ""


# ------------------------------------------------------------------------------------------- jobs
@dataclass
class GeodesicJob:
    version: int
    path: np.ndarray  # (S, D) initial path (lerp or slerp), ends included
    labels: np.ndarray  # (S,) frame labels
    reference: np.ndarray  # (S, D) the lerp path between the same ends (its figures go in the summary)
    space: str  # "pixel" | "probe"
    iterations: int
    learning_rate: float
    deadline: float = 0.0  # time.time() after which the job is abandoned (0 = none)
    kind = "geodesic"
    fields = ("steps", "geodesic.iterations")  # the request fields that set rows and iterations (budget errors)

    @property
    def rows(self) -> int:
        return max(1, len(self.path) - 2)

    @property
    def needs_probe(self) -> bool:
        return self.space == "probe"


@dataclass
class GeodesicResult:
    latents: np.ndarray  # (S, D)
    images: np.ndarray  # (S, 3, H, W) float32 in [-1, 1]
    steps: np.ndarray  # (S-1,) step distances in the job's space
    reference_steps: np.ndarray  # (S-1,) the lerp path's
    iterations: int


@dataclass
class GuidedJob:
    version: int
    z0: np.ndarray  # (n, D) chain starts
    labels: np.ndarray  # (n,)
    steps: int
    step_size: float
    class_weight: float
    noise: float
    factor_targets: dict[str, float] = field(default_factory=dict)
    factor_ranges: dict[str, float] = field(default_factory=dict)
    factor_weight: float = 0.0
    seed: int = 0
    deadline: float = 0.0
    kind = "guided"
    fields = ("n", "guidance.steps")

    @property
    def rows(self) -> int:
        return len(self.z0)

    needs_probe = True


@dataclass
class GuidedResult:
    latents: np.ndarray  # (n, D)
    steps: int


@dataclass
class RefineJob:
    version: int
    z0: np.ndarray  # (n, D) encoder latents
    labels: np.ndarray  # (n,)
    images: np.ndarray  # (n, 3, H, W) float32 targets
    steps: int
    learning_rate: float
    feature_weight: float = 0.0
    deadline: float = 0.0
    kind = "refine"
    fields = ("images", "refine_steps")

    @property
    def rows(self) -> int:
        return len(self.z0)

    @property
    def needs_probe(self) -> bool:
        return self.feature_weight > 0


@dataclass
class RefineResult:
    latents: np.ndarray  # (n, D) the best latent per image
    mse_before: np.ndarray  # (n,)
    mse_after: np.ndarray  # (n,)
    steps: int


def trim_heap() -> None:
    """glibc's malloc_trim: return free heap pages to the OS. A forward/backward pass frees its activations
    into malloc's arenas, which otherwise keep them and fragment across passes of varying sizes."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# ------------------------------------------------------------------------------------------- budget
class RowBudget:
    """Rows of gradient jobs admitted at once in this process, over every model's engine: memory of a
    forward/backward pass grows with its rows, so capping admitted rows caps the process's extra memory."""

    def __init__(self) -> None:
        self.rows = 0
        self._lock = threading.Lock()

    def take(self, rows: int, cap: int) -> bool:
        with self._lock:
            if self.rows + rows > cap:
                return False
            self.rows += rows
            return True

    def give(self, rows: int) -> None:
        with self._lock:
            self.rows -= rows


PROCESS_ROWS = RowBudget()


def iterations_of(job: Any) -> int:
    return int(job.iterations if job.kind == "geodesic" else job.steps)


def admit(config: ServeConfig, job: Any) -> None:
    """Refuse (RESOURCE_EXHAUSTED naming the field) a job over the per-request budget: rows <=
    latent_ops_max_request_rows and rows x iterations <= latent_ops_max_request_work. Before any model work."""
    rows_field, iters_field = job.fields
    rows, iters = int(job.rows), iterations_of(job)
    if rows > config.latent_ops.max_request_rows:
        raise OverloadedError(f"{rows_field}: {rows} rows is over this server's budget of "
                              f"{config.latent_ops.max_request_rows} rows per gradient request "
                              f"(latent_ops_max_request_rows); split the request")
    if rows * iters > config.latent_ops.max_request_work:
        raise OverloadedError(f"{rows_field} x {iters_field}: {rows} rows x {iters} iterations = {rows * iters} is "
                              f"over this server's budget of {config.latent_ops.max_request_work} row-iterations "
                              f"per gradient request (latent_ops_max_request_work); ask for fewer rows or iterations")


# ------------------------------------------------------------------------------------------- engine
@dataclass
class _Entry:
    job: Any
    state: Any
    fut: asyncio.Future
    requested: int  # iterations asked for


class _OpStats:
    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()  # jobs, completed, cancelled, deadline, failed, steps
        self.jobs_per_step: collections.Counter = collections.Counter()
        self.rows_per_step: collections.Counter = collections.Counter()
        self.seconds = 0.0

    def snapshot(self) -> dict:
        return {**{k: int(v) for k, v in sorted(self.counts.items())},
                "jobs_per_step": dict(sorted(self.jobs_per_step.items())),
                "max_jobs_per_step": max(self.jobs_per_step, default=0),
                "max_rows_per_step": max(self.rows_per_step, default=0),
                "seconds": round(self.seconds, 6)}


class LatentOpsEngine:
    """Gradient latent ops of one model (every version loaded on demand), batched across requests."""

    def __init__(self, config: ServeConfig, name: str, device: str = "cpu") -> None:
        problem = availability_problem(config)
        if problem:
            raise UnsupportedError(problem)
        import torch  # the one place serving imports torch

        from latentserve.models import latent_ops

        torch.set_num_threads(config.latent_ops.threads)
        self._torch, self._ops = torch, latent_ops
        self.config = config
        self.name = name
        self.device = device
        self.repo = Repository(config.repository_path())
        self._graphs: dict[int, Any] = {}
        self._probe_problem: dict[int, str] = {}
        self._load_locks: dict[int, asyncio.Lock] = {}
        # One torch thread for every step: passes of different groups interleave instead of competing.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"latentops-{name}")
        self._groups: dict[tuple, list[_Entry]] = {}
        self._drivers: dict[tuple, asyncio.Task] = {}
        self._stats: dict[str, _OpStats] = collections.defaultdict(_OpStats)
        self._recent: collections.deque = collections.deque(maxlen=64)
        self._steps = {"geodesic": latent_ops.geodesic_step, "guided": latent_ops.guided_step,
                       "refine": latent_ops.refine_step}

    # -- graphs -------------------------------------------------------------------------------------------
    def load(self, version: int) -> Any:
        """Load (once) the TorchScript decoder, the probe the manifest names (if any) and the prior."""
        graphs = self._graphs.get(version)
        if graphs is not None:
            return graphs
        record = self.repo.load(self.name, version, verify=self.config.served.verify_checksums)
        graphs, problem = self._ops.graphs_for_record(self.repo, record, self.config.served.verify_checksums, self.device)
        self._graphs[version] = graphs
        self._probe_problem[version] = problem
        logger.info("latent ops: %s v%d TorchScript graphs loaded (probe: %s)", self.name, version,
                    record.manifest.get("probe") if graphs.probe is not None else f"none: {problem}")
        return graphs

    async def graphs(self, version: int) -> Any:
        if version in self._graphs:
            return self._graphs[version]
        lock = self._load_locks.setdefault(version, asyncio.Lock())
        async with lock:
            if version not in self._graphs:
                await asyncio.get_running_loop().run_in_executor(self._executor, self.load, version)
        return self._graphs[version]

    async def probe_factors(self, version: int) -> list[str]:
        """The probe's factor names ([] when the model has no usable probe)."""
        return list((await self.graphs(version)).factor_names)

    # -- jobs ---------------------------------------------------------------------------------------------
    def _init_state(self, graphs: Any, job: Any) -> Any:
        ops = self._ops
        if job.kind == "geodesic":
            return ops.init_path(graphs, job.path, job.labels, job.space, job.learning_rate, job.iterations)
        if job.kind == "guided":
            return ops.init_chains(graphs, job.z0, job.labels, job.steps, job.step_size, job.class_weight, job.noise,
                                   job.factor_targets, job.factor_ranges, job.factor_weight, job.seed)
        return ops.init_refine(graphs, job.z0, job.labels, job.images, job.steps, job.learning_rate,
                               job.feature_weight)

    def _result(self, graphs: Any, job: Any, state: Any) -> Any:
        ops = self._ops
        if job.kind == "geodesic":
            z, x, d = ops.path_result(graphs, state)
            _, _, d_ref = ops.path_result(graphs, job.reference, job.labels, job.space)
            return GeodesicResult(z, x, d, d_ref, state.t)
        if job.kind == "guided":
            return GuidedResult(state.z.cpu().numpy().astype(np.float32), state.t)
        return RefineResult(state.best_z.cpu().numpy().astype(np.float32), state.mse_before.cpu().numpy(),
                            state.best_mse.cpu().numpy(), max(0, state.t - 1))

    async def run(self, job: Any) -> Any:
        """Run one job to its end, batched with concurrent jobs of its group; cancelling the caller removes
        it from the batch at the next iteration."""
        admit(self.config, job)
        rows = int(job.rows)
        if not PROCESS_ROWS.take(rows, self.config.latent_ops.max_process_rows):
            raise OverloadedError(f"{job.fields[0]}: this server's gradient ops are at their memory budget "
                                  f"({self.config.latent_ops.max_process_rows} rows at once, "
                                  f"latent_ops_max_process_rows); retry later")
        try:
            return await self._run(job)
        finally:
            PROCESS_ROWS.give(rows)

    async def _run(self, job: Any) -> Any:
        graphs = await self.graphs(job.version)
        if job.needs_probe and graphs.probe is None:
            raise ValidationError(f"{self._what(job)} needs the model's probe: {self._probe_problem[job.version]}")
        loop = asyncio.get_running_loop()
        stats = self._stats[job.kind]
        stats.counts["jobs"] += 1
        state = await loop.run_in_executor(self._executor, self._init_state, graphs, job)
        key = (job.kind, job.version, bool(job.needs_probe) if job.kind != "guided" else True,
               getattr(job, "space", ""))
        entry = _Entry(job, state, loop.create_future(), int(getattr(state, "iterations", getattr(state, "steps", 0))))
        self._groups.setdefault(key, []).append(entry)
        driver = self._drivers.get(key)
        if driver is None or driver.done():
            self._drivers[key] = loop.create_task(self._drive(key, graphs), name=f"latentops-{self.name}-{job.kind}")
        return await entry.fut  # a cancelled caller cancels entry.fut: the driver drops the entry

    @staticmethod
    def _what(job: Any) -> str:
        return {"geodesic": "geodesic interpolation in probe space", "guided": "guided sampling",
                "refine": "refinement with feature_weight > 0"}[job.kind]

    def _finish(self, entry: _Entry, outcome: str) -> None:
        st = entry.state
        self._stats[entry.job.kind].counts[outcome] += 1
        self._recent.append({"op": entry.job.kind, "outcome": outcome, "iterations": min(int(st.t), entry.requested),
                             "requested": entry.requested, "rows": entry.job.rows, "t": round(time.time(), 3)})

    async def _drive(self, key: tuple, graphs: Any) -> None:
        entries = self._groups[key]
        kind = key[0]
        step = self._steps[kind]
        stats = self._stats[kind]
        loop = asyncio.get_running_loop()
        max_rows = self.config.latent_ops.max_batch_rows
        try:
            while entries:
                now = time.time()
                for e in list(entries):
                    if e.fut.done():  # the caller was cancelled: its loop stops here
                        entries.remove(e)
                        self._finish(e, "cancelled")
                    elif e.job.deadline and now > e.job.deadline:
                        entries.remove(e)
                        e.fut.set_exception(DeadlineExceededError(
                            f"{kind}: the deadline passed after {e.state.t} of {e.requested} iterations"))
                        self._finish(e, "deadline")
                if not entries:
                    break
                batch, rows = [], 0
                for e in entries:
                    if batch and rows + e.job.rows > max_rows:
                        break
                    batch.append(e)
                    rows += e.job.rows
                t0 = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, self._tick, step, graphs, batch)
                except Exception as exc:  # noqa: BLE001 - the batch's requests fail, the engine goes on
                    logger.error("latent ops %s step failed", kind, exc_info=True)
                    for e in batch:
                        entries.remove(e)
                        if not e.fut.done():
                            e.fut.set_exception(exc)
                        self._finish(e, "failed")
                    continue
                stats.seconds += time.perf_counter() - t0
                stats.counts["steps"] += 1
                stats.jobs_per_step[len(batch)] += 1
                stats.rows_per_step[rows] += 1
                for e, result in zip(batch, results):
                    if result is None:
                        continue
                    entries.remove(e)
                    if e.fut.done():
                        self._finish(e, "cancelled")
                    else:
                        e.fut.set_result(result)
                        self._finish(e, "completed")
        finally:
            if not entries:
                self._groups.pop(key, None)
                self._drivers.pop(key, None)
                if not self._groups:  # idle: hand the passes' freed heap back to the OS (keeps RSS flat)
                    await loop.run_in_executor(self._executor, trim_heap)

    def _tick(self, step: Any, graphs: Any, batch: list[_Entry]) -> list[Any]:
        """Executor thread: one iteration of every job in `batch`; results of the jobs that finished."""
        step(graphs, [e.state for e in batch])
        return [self._result(graphs, e.job, e.state) if e.state.done else None for e in batch]

    # -- operations ---------------------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"loaded_versions": sorted(self._graphs), "active_jobs": sum(len(v) for v in self._groups.values()),
                "ops": {k: v.snapshot() for k, v in sorted(self._stats.items())}, "recent": list(self._recent)}

    def close(self) -> None:
        for task in list(self._drivers.values()):
            if task.done():  # e.g. cancelled with its loop (asyncio.run's end) before it could unregister
                continue
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # its loop is closed: nothing of it runs any more
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)
