"""Fault benchmark (`latentserve bench --fault kill-replica|redis-down`): a fault under load, and what clients saw.

It starts `latentserve serve` as a user would, every bundled model served (with `--serve-args`, e.g.
`--serving-processes 1`) on free loopback ports: without Redis (the default serve: two serving processes sharing
the node's handle store), or with `redis=True` (`--fault-redis`; always for redis-down) using a handle Redis with
AOF, as the documented cluster setup runs. Then
`concurrency` threads, each with its own `LatentClient` and the client's default retries, send one-latent
Decode calls (by latent values) for `duration` seconds, while a probe opens a new TCP connection to the port every 20 ms.
`fault_at` seconds in:
- kill-replica: SIGKILL to one serving process (the process holding the gRPC port);
- redis-down: the handle Redis (AOF, as the documented setup runs it) is killed and restarted on the same
  port `down_s` seconds later; half of the threads send calls that need it: a one-image Sample that returns
  a new handle (a handle lookup may be answered by the replica's copy of a durable store, so only storing
  one surely needs Redis).
Printed: calls, failed calls by status, the longest gap without a successful call (outage), how long new
connections were refused; for kill-replica also how long until as many serving processes listened on the port
as before (the killed one restarted); for redis-down also how fast handle calls failed and how long after
Redis came back the first handle call succeeded.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentserve.client import LatentClient
from latentserve.errors import LatentServeError, ValidationError
from latentserve.tools.bench import Proc, free_port, wait_until
from latentserve.tools.cache_bench import start_redis

FAULTS = ("kill-replica", "redis-down")
SERVING_MARK = "latentserve.services.frontends.grpc.native"  # the serving process's command line


@dataclass
class FaultBenchConfig:
    fault: str
    model: str = "shapes-gan"
    repo: str = ""
    serve_args: tuple[str, ...] = ()
    concurrency: int = 16
    duration: float = 20.0
    fault_at: float = 5.0
    down_s: float = 3.0
    redis: bool = False  # a handle Redis (redis-down always has it)
    startup_timeout: float = 240.0


def listening_pids(port: int, pids: list[int]) -> list[int]:
    """Those of `pids` that hold a TCP socket listening on `port` (Linux /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        listening.add(f"socket:[{parts[9]}]")
        except OSError:
            continue
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in listening:
                    out.append(pid)
                    break
            except OSError:
                continue
    return out


def serving_pids(root: int) -> list[int]:
    """Serving processes (native frontend) below process `root`."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if SERVING_MARK.encode() in f.read():
                    out.append(pid)
        except OSError:
            continue
    return sorted(out)


class _Record:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[float, float, str, str]] = []  # (start, end, kind, status)
        self.refused: list[float] = []
        self.restored: float | None = None  # when as many serving processes listened as before the fault

    def add(self, t0: float, t1: float, kind: str, status: str) -> None:
        with self.lock:
            self.calls.append((t0, t1, kind, status))


def _load(target: str, model: str, dim: int, kind: str, stop: threading.Event, rec: _Record) -> None:
    rng = np.random.default_rng()
    with LatentClient(target, timeout=10) as client:  # the client's default retries
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                if kind == "handle":
                    client.sample(model, 1, seed=int(rng.integers(1 << 62)), return_handles=True)
                else:
                    client.decode(model, rng.standard_normal((1, dim)).astype(np.float32), [0], format="uint8")
                status = "OK"
            except LatentServeError as exc:
                status = getattr(getattr(exc, "status", None), "name", type(exc).__name__)
            rec.add(t0, time.monotonic(), kind, status)


def _probe(port: int, stop: threading.Event, rec: _Record) -> None:
    while not stop.is_set():
        t = time.monotonic()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            rec.refused.append(t)
        time.sleep(0.02)


def _watch_restart(root: int, port: int, before: list[int], t_fault: float, stop: threading.Event,
                   rec: _Record) -> None:
    while not stop.is_set():
        now = serving_pids(root)
        if len(listening_pids(port, now)) >= len(before) and set(now) != set(before):
            rec.restored = time.monotonic()
            return
        time.sleep(0.05)


def _longest_gap(ok_ends: list[float], t_from: float, t_to: float) -> float:
    points = [t_from] + sorted(t for t in ok_ends if t_from <= t <= t_to) + [t_to]
    return max(b - a for a, b in zip(points, points[1:]))


def run_fault_bench(cfg: FaultBenchConfig) -> dict:
    if cfg.fault not in FAULTS:
        raise ValidationError(f"--fault must be one of {', '.join(FAULTS)}, got {cfg.fault!r}")
    tmp = Path(tempfile.mkdtemp(prefix="latentserve-fault-"))
    redis_proc, env, server = None, {"LATENTSERVE_REDIS_URL": "", "PYTHONWARNINGS": "ignore"}, None
    port = free_port()
    target = f"127.0.0.1:{port}"
    try:
        if cfg.redis or cfg.fault == "redis-down":
            redis_proc, env["LATENTSERVE_REDIS_URL"] = start_redis(tmp, durable=True)
        server = Proc("fault", [sys.executable, "-m", "latentserve", "serve", "--port", str(port), "--http-port",
                                str(free_port()), "--metrics-port", "0", "--repo", cfg.repo, *cfg.serve_args],
                      env=env)
        with LatentClient(target, timeout=30) as c:
            wait_until(c.health, cfg.startup_timeout, f"latentserve at {target}", server)
            info = c.get_model(cfg.model)
        serving = serving_pids(server.proc.pid)
        rec, stop = _Record(), threading.Event()
        kinds = ["handle" if cfg.fault == "redis-down" and i % 2 else "latent" for i in range(cfg.concurrency)]
        threads = [threading.Thread(target=_load, args=(target, cfg.model, info.latent_dim, k, stop, rec),
                                    daemon=True) for k in kinds]
        threads.append(threading.Thread(target=_probe, args=(port, stop, rec), daemon=True))
        t_start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(cfg.fault_at)
        t_fault, t_back = time.monotonic(), None
        if cfg.fault == "kill-replica":
            if not serving:
                raise ValidationError("no serving process found (the native frontend runs one per ingress replica)")
            os.kill(serving[0], signal.SIGKILL)
            threading.Thread(target=_watch_restart, args=(server.proc.pid, port, serving, t_fault, stop, rec),
                             daemon=True).start()
        else:
            redis_port = int(env["LATENTSERVE_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
            redis_proc.kill()
            redis_proc.wait(10)
            time.sleep(cfg.down_s)
            redis_proc = start_redis(tmp, redis_port, durable=True)[0]
            t_back = time.monotonic()
        time.sleep(max(0.0, cfg.duration - (time.monotonic() - t_start)))
        stop.set()
        for t in threads:
            t.join(15)
        t_end = time.monotonic()
    finally:
        if server is not None:
            server.stop()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return _report(cfg, rec, serving, t_start, t_fault, t_back, t_end)


def _report(cfg: FaultBenchConfig, rec: _Record, serving: list[int], t_start: float, t_fault: float,
            t_back: float | None, t_end: float) -> dict:
    out: dict = {"fault": cfg.fault, "serving_processes": len(serving), "concurrency": cfg.concurrency,
                 "serve_args": " ".join(cfg.serve_args), "redis": cfg.redis or cfg.fault == "redis-down"}
    refused = [t for t in rec.refused if t >= t_fault]
    if cfg.fault == "kill-replica":
        out["serving_restored_s"] = None if rec.restored is None else round(rec.restored - t_fault, 3)
    out["connections_refused_s"] = round(max(refused) - min(refused) + 0.02, 3) if refused else 0.0
    for kind in sorted({c[2] for c in rec.calls}):
        calls = [c for c in rec.calls if c[2] == kind]
        failed: dict[str, int] = {}
        for c in calls:
            if c[3] != "OK":
                failed[c[3]] = failed.get(c[3], 0) + 1
        ok_ends = [c[1] for c in calls if c[3] == "OK"]
        row = {"calls": len(calls), "failed": sum(failed.values()), "failed_by_status": failed,
               "outage_s": round(_longest_gap(ok_ends, t_fault, t_end), 3)}
        if kind == "handle" and t_back is not None:
            down = [c for c in calls if c[3] != "OK" and c[0] >= t_fault]
            row["failed_call_ms_p50"] = round(float(np.median([(c[1] - c[0]) * 1000 for c in down])), 1) if down else 0
            row["failed_call_ms_max"] = round(max((c[1] - c[0]) * 1000 for c in down), 1) if down else 0
            back = [c[1] for c in calls if c[3] == "OK" and c[0] >= t_back]
            row["recovered_after_s"] = round(min(back) - t_back, 3) if back else None
        out[kind] = row
    return out


def format_fault_report(r: dict) -> str:
    lines = [f"fault {r['fault']}: {r['serving_processes']} serving process(es) before, {r['concurrency']} client "
             f"threads (default retries); handles: {'Redis (AOF)' if r.get('redis', True) else 'no Redis'}; serve args: "
             f"{r['serve_args'] or '(none)'}",
             f"new connections refused for {r['connections_refused_s']:.2f} s after the fault" +
             ("" if "serving_restored_s" not in r else
              f"; serving processes back to {r['serving_processes']} after "
              f"{'(not within the run)' if r['serving_restored_s'] is None else str(r['serving_restored_s']) + ' s'}"),
             "| calls by | calls | failed | failed by status | outage s (longest gap without an OK) | extra |",
             "|---|---|---|---|---|---|"]
    for kind, label in (("latent", "Decode by latent values"), ("handle", "Sample returning a handle")):
        if kind in r:
            row = r[kind]
            extra = ""
            if "recovered_after_s" in row:
                extra = (f"failed calls p50 {row['failed_call_ms_p50']} ms (max {row['failed_call_ms_max']}); "
                         f"first OK {row['recovered_after_s']} s after Redis returned")
            lines.append(f"| {label} | {row['calls']} | {row['failed']} | {row['failed_by_status'] or '-'} | "
                         f"{row['outage_s']:.2f} | {extra} |")
    return "\n".join(lines)
