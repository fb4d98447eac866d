"""The native frontend's Ray Serve deployment body, `NativeReplica`, and its group of serving processes.

A replica runs `serving_processes` serving processes (native.py `ServingProcess`: the models in-process and a
gRPC server on host:grpc_port with SO_REUSEPORT), 2 by default on a node with two or more CPUs (their handles
in Redis or the node's store, `serving_process_count`), so the death of one refuses no connection: the kernel hands new connections to the live one, and the calls that were in
flight on the dead one fail UNAVAILABLE, which the client retries on a new connection. A monitor thread
restarts a dead serving process in place (loading the models again), without Serve replacing the replica;
Serve's health check fails only when no serving process of the replica serves. They share the replica's
CPU reservation (Ray schedules replicas, not processes). docs/architecture.md, "Native frontend".
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any, Callable

from latentserve.errors import UnavailableError
from latentserve.services.config import ServeConfig
from latentserve.services.frontends.grpc.native import AUTOSCALING_METRIC, NATIVE_GRACE_S, ServingProcess
from latentserve.services.observability.identity import replica_identity
from latentserve.services.storage.factory import handle_store_kind

logger = logging.getLogger("ray.serve")
MONITOR_PERIOD_S = 0.1  # how often the monitor looks for a dead serving process
RESTART_BACKOFF_S = (1.0, 30.0)  # after a failed restart: first wait, doubling up to the second
HUNG_AFTER_FAILED_PROBES = 3  # a live serving process failing this many health checks in a row is killed


def serving_process_count(config: ServeConfig, cpus: int | None = None) -> int:
    """Serving processes per replica: `serving_processes`, or with 0 two where this node has >= 2 CPUs and
    the processes share the handles (Redis, or the node's store: `handle_store_kind`); with handle_store
    'memory' a handle issued by one would be unknown to the other, so one process serves and a dead one is
    restarted."""
    shared = handle_store_kind(config) != "memory"
    if config.frontend.serving_processes:
        if config.frontend.serving_processes > 1 and not shared:
            logger.warning("serving_processes %d with handle_store 'memory': each process keeps its own handles, "
                           "so a handle resolves only on the process that issued it",
                           config.frontend.serving_processes)
        return config.frontend.serving_processes
    if not shared:
        return 1
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 else 1


_NOT_SUMMED = frozenset({"default_version", "preferred_batch_size", "uptime_s"})


def merge_stats(parts: list[dict]) -> dict:
    """The serving processes' `stats` dicts as one: counts add up; settings, states, gauges named `max_*` or
    `*_s` and the like are the largest (numbers) or the first process's (anything else); lists concatenate
    (in the processes' order: a "recent" list is each process's own, see `processes` in NativeReplica.stats)."""
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if key not in out:
                out[key] = value
            elif isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = merge_stats([out[key], value])
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not isinstance(out[key], (int, float)):
                if isinstance(value, list) and isinstance(out[key], list):
                    out[key] = out[key] + value
            elif isinstance(key, str) and (key in _NOT_SUMMED or key.startswith("max_") or key.endswith("_s")):
                out[key] = max(out[key], value)
            else:
                out[key] = out[key] + value
    return out


class ServingGroup:
    """This replica's serving processes: start them (in parallel), restart any that dies, probe, stop.

    Slot i holds the current ServingProcess of that place (None while it restarts). `stop` ends the monitor
    first, so nothing restarts while the group drains."""

    def __init__(self, config: ServeConfig, models: dict[str, int], identity: tuple[tuple[str, str], ...] = (),
                 count: int | None = None) -> None:
        self.config, self.models, self.identity = config, dict(models), tuple(identity)
        self.slots: list[ServingProcess | None] = [None] * (count or serving_process_count(config))
        self.restarts = 0
        self._failed_probes: dict[int, int] = {}  # pid -> health checks failed in a row
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def _new(self) -> ServingProcess:
        proc = ServingProcess(self.config, self.models, identity=self.identity)
        proc.start()
        return proc

    def start(self) -> None:
        """Start every serving process; raises (after stopping those that started) if any fails."""
        results: list[Any] = [None] * len(self.slots)

        def run(i: int) -> None:
            try:
                results[i] = self._new()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(self.slots))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for r in results:
                if isinstance(r, ServingProcess):
                    r.stop(1.0)
            raise failed[0]
        self.slots = list(results)
        self._monitor = threading.Thread(target=self._watch, name="latentserve-serving-monitor", daemon=True)
        self._monitor.start()

    def live(self) -> list[ServingProcess]:
        with self._lock:
            return [p for p in self.slots if p is not None and p.proc is not None and p.proc.poll() is None]

    def _watch(self) -> None:
        """Restart a serving process that exited (killed, crashed), one at a time, with a backoff after a
        failed restart."""
        backoff = 0.0
        while not self._stop.wait(backoff or MONITOR_PERIOD_S):
            backoff = 0.0
            for i, proc in enumerate(list(self.slots)):
                if self._stop.is_set() or proc is None or proc.proc is None or proc.proc.poll() is None:
                    continue
                logger.warning("serving process pid %d exited with code %s; restarting it (%d other(s) serve "
                               "meanwhile)", proc.proc.pid, proc.proc.returncode, len(self.live()))
                with self._lock:
                    self.slots[i] = None
                proc.stop(0.0)  # closes its control channel and probe channel
                try:
                    new = self._new()
                except Exception:  # noqa: BLE001 - retried after the backoff
                    logger.exception("could not restart a serving process")
                    with self._lock:
                        self.slots[i] = proc  # still dead: found again after the backoff
                    backoff = RESTART_BACKOFF_S[0] if not backoff else min(2 * backoff, RESTART_BACKOFF_S[1])
                    break
                if self._stop.is_set():
                    new.stop(1.0)
                    return
                with self._lock:
                    self.slots[i] = new
                self.restarts += 1

    def probe(self) -> None:
        """Serve's health check: UnavailableError unless at least one serving process answers SERVING. A
        live process that fails HUNG_AFTER_FAILED_PROBES checks in a row (hung, not merely slow once) is
        killed, so the monitor restarts it."""
        healthy, problems = 0, []
        for proc in self.live():
            pid = proc.proc.pid
            try:
                proc.probe()
                healthy += 1
                self._failed_probes.pop(pid, None)
            except UnavailableError as exc:
                problems.append(str(exc))
                n = self._failed_probes[pid] = self._failed_probes.get(pid, 0) + 1
                if n >= HUNG_AFTER_FAILED_PROBES:
                    logger.warning("serving process pid %d failed %d health checks in a row (%s); killing it to "
                                   "restart it", pid, n, exc)
                    self._failed_probes.pop(pid, None)
                    proc.proc.kill()
        if not healthy:
            raise UnavailableError("no serving process of this replica serves" +
                                   (f": {'; '.join(problems)}" if problems else " (restarting)"))

    def call(self, cmd: str, timeout_s: float = 30.0) -> list[Any]:
        """`cmd` on every live serving process; their answers (those that answered)."""
        out = []
        for proc in self.live():
            try:
                out.append(proc.call(cmd, timeout_s=timeout_s))
            except UnavailableError:
                continue  # died meanwhile: the monitor restarts it
        return out

    def stop(self, grace_s: float, replacement_state: Callable[[], str] | None = None) -> None:
        """Drain and stop every serving process at once (each as ServingProcess.stop, the others' listeners
        being no replacement)."""
        self._stop.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(60)
        procs = [p for p in self.slots if p is not None]
        pids = [p.proc.pid for p in procs if p.proc is not None]
        threads = [threading.Thread(target=p.stop, args=(grace_s, replacement_state),
                                    kwargs={"peers": tuple(q for q in pids if q != p.proc.pid)}, daemon=True)
                   for p in procs if p.proc is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _name(value: Any) -> str:
    """Enum member or string -> bare name ('ReplicaState.STARTING' -> 'STARTING')."""
    return str(getattr(value, "value", value)).rsplit(".", 1)[-1].upper()


def serve_replacement_state(app_name: str, deployment: str) -> Callable[[], str]:
    """The check a stopping replica polls (native.py `wait_for_replacement`), from Serve's status: "starting"
    when a replica of this deployment is starting (a replacement is on its way), "updating" when the
    deployment is being updated or scaled up but no replica is starting yet, "none" otherwise (deleted,
    scaled down, shutting down)."""

    def check() -> str:
        from ray import serve

        app = serve.status().applications.get(app_name)
        if app is None or _name(app.status) == "DELETING":
            return "none"
        dep = app.deployments.get(deployment)
        if dep is None:
            return "none"
        if any(_name(state) in ("STARTING", "RECOVERING") and n > 0 for state, n in dep.replica_states.items()):
            return "starting"
        return "updating" if _name(dep.status) in ("UPDATING", "UPSCALING") else "none"

    return check


class NativeReplica:
    """Ray Serve deployment body of the native frontend (services/app.py deploys it as `LatentIngress`):
    starts and supervises this replica's serving processes (`ServingGroup`). Serve keeps placing,
    health-checking (`check_health`), scaling (`record_autoscaling_stats`) and replacing the replicas; `stats`
    answers the same dict as the serve frontend's ingress (the serving processes compute it, merged here, each
    process's own under `processes`);
    `__del__` drains."""

    def __init__(self, config: dict, models: dict[str, int]) -> None:
        self.config = ServeConfig.from_dict(config)
        self._replacement: Callable[[], str] | None = None
        try:
            from ray import serve

            ctx = serve.get_replica_context()
            self._replacement = serve_replacement_state(ctx.app_name, ctx.deployment)
        except Exception:  # noqa: BLE001 - outside a Serve replica (tools, tests): no rollouts to wait for
            pass
        self.group = ServingGroup(self.config, models, identity=replica_identity())
        self.group.start()

    def check_health(self) -> None:
        self.group.probe()

    async def stats(self) -> dict:
        parts = await asyncio.to_thread(self.group.call, "stats")
        if not parts:
            raise UnavailableError("no serving process of this replica answered (restarting)")
        return {**merge_stats(parts), "serving_processes": len(parts), "serving_restarts": self.group.restarts,
                "processes": parts}

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {AUTOSCALING_METRIC: float(sum(self.group.call("load", timeout_s=5)))}

    def __del__(self) -> None:
        group = getattr(self, "group", None)
        if group is not None:
            group.stop(NATIVE_GRACE_S, self._replacement)
