"""Result-cache benchmark: Decode latency over gRPC on a cache hit vs a cache miss (p50 / p99, ms).

For each mode it starts `latentserve serve` (and, for `redis`, a throw-away `redis-server` with the cache
settings the deployment docs recommend), then sends one-latent Decode requests one at a time:
- miss: every request carries a fresh random latent, so the result cache never has it (lookup + decoder +
  image encoding + background write);
- hit: requests cycle over a few latents decoded once before, so each is answered from the result cache
  (lookup only: no model call, no PNG encoding).
Modes: `redis` (LATENTSERVE_REDIS_URL set: shared cache, one MGET per request), `memory` (the in-process LRU)
and `off` (result cache disabled: the plain decode path, for the cost of the lookup on a miss).

    python benchmarks/dev_repo.py --repo /tmp/bench-repo       # once: the dev shapes-gan model
    python benchmarks/cache_bench.py --repo /tmp/bench-repo --modes redis,off --requests 400

Target: hit p50 <= 2 ms. Results go to stdout and, with --json, to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                             "--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru",
                             "--daemonize", "no", "--logfile", str(workdir / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return proc, f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not start:\n{(workdir / 'redis.log').read_text()[-2000:]}")


def start_server(repo: str, model: str, port: int, env_extra: dict[str, str], log: Path) -> subprocess.Popen:
    env = {**os.environ, **env_extra, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "latentserve", "serve", "--repo", repo, "--models", model, "--port", str(port),
           "--http-port", str(free_port()), "--ray-cpus", "2"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(target: str, proc: subprocess.Popen, log: Path, timeout_s: float = 240.0) -> None:
    from latentserve.services.client import LatentClient

    deadline = time.time() + timeout_s
    with LatentClient(target, timeout=10) as c:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"latentserve serve exited:\n{log.read_text()[-3000:]}")
            if c.health(timeout=2):
                return
            time.sleep(0.5)
    raise RuntimeError(f"server not healthy after {timeout_s}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def measure(target: str, model: str, dim: int, n: int, fmt: int, hit: bool, seed: int) -> list[float]:
    """Latencies (ms) of n sequential one-latent Decode requests."""
    import grpc

    from latentserve.v1 import latent_pb2 as pb
    from latentserve.v1 import latent_pb2_grpc as pb_grpc

    rng = np.random.default_rng(seed)
    pool = [rng.standard_normal(dim).astype(np.float32) for _ in range(8)]
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.LatentServiceStub(ch)

        def request(i: int) -> "pb.DecodeRequest":
            z = pool[i % len(pool)] if hit else rng.standard_normal(dim).astype(np.float32)
            return pb.DecodeRequest(model=model, latents=[pb.Latent(values=z.tolist(), label=0)], format=fmt)

        if hit:  # decode the pool once so every measured request is a hit
            for i in range(len(pool)):
                stub.Decode(request(i), timeout=30)
            time.sleep(0.2)  # cache writes happen in the background
        for i in range(20):  # warm-up (connections, code paths)
            stub.Decode(request(i), timeout=30)
        reqs = [request(i) for i in range(n)]
        out = []
        for r in reqs:
            t = time.perf_counter()
            stub.Decode(r, timeout=30)
            out.append((time.perf_counter() - t) * 1000.0)
    return out


def summary(lat: list[float]) -> dict:
    a = np.asarray(lat)
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default="/tmp/bench-repo", help="model repository (see benchmarks/dev_repo.py)")
    p.add_argument("--model", default="shapes-gan")
    p.add_argument("--modes", default="redis,off", help="comma-separated: redis, memory, off")
    p.add_argument("--requests", type=int, default=400, help="measured requests per phase")
    p.add_argument("--format", choices=("png", "raw_uint8"), default="png")
    p.add_argument("--json", default=None, help="write the figures to this file")
    a = p.parse_args()

    from latentserve.models.repository import Repository
    from latentserve.v1 import latent_pb2 as pb

    repo = Repository(Path(a.repo))
    if a.model not in repo.names():
        print(f"cache_bench: no model {a.model!r} in {a.repo}; run benchmarks/dev_repo.py --repo {a.repo}", file=sys.stderr)
        return 2
    dim = int(repo.load(a.model, repo.versions(a.model)[-1], verify=False).latent_dim)
    fmt = pb.IMAGE_FORMAT_PNG if a.format == "png" else pb.IMAGE_FORMAT_RAW_UINT8
    results: dict = {"model": a.model, "format": a.format, "requests": a.requests, "modes": {}}
    for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
        tmp = Path(tempfile.mkdtemp(prefix=f"cache-bench-{mode}-"))
        redis_proc = server = None
        try:
            env = {"LATENTSERVE_REDIS_URL": "", "LATENTSERVE_RESULT_CACHE": "1"}
            if mode == "redis":
                redis_proc, url = start_redis(tmp)
                env["LATENTSERVE_REDIS_URL"] = url
            elif mode == "off":
                env["LATENTSERVE_RESULT_CACHE"] = "0"
            elif mode != "memory":
                raise SystemExit(f"unknown mode {mode!r}")
            port = free_port()
            log = tmp / "serve.log"
            print(f"[{mode}] starting latentserve serve on :{port} ...", flush=True)
            server = start_server(a.repo, a.model, port, env, log)
            wait_healthy(f"127.0.0.1:{port}", server, log)
            target = f"127.0.0.1:{port}"
            row = {"miss": summary(measure(target, a.model, dim, a.requests, fmt, hit=False, seed=1))}
            if mode != "off":
                row["hit"] = summary(measure(target, a.model, dim, a.requests, fmt, hit=True, seed=2))
            results["modes"][mode] = row
            print(f"[{mode}] " + "; ".join(f"{k}: p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms" for k, v in row.items()), flush=True)
        finally:
            stop(server)
            if redis_proc is not None:
                redis_proc.kill()
                redis_proc.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n| mode | miss p50 ms | miss p99 ms | hit p50 ms | hit p99 ms |\n|---|---|---|---|---|")
    for mode, row in results["modes"].items():
        hit = row.get("hit", {})
        print(f"| {mode} | {row['miss']['p50_ms']} | {row['miss']['p99_ms']} | {hit.get('p50_ms', '-')} | {hit.get('p99_ms', '-')} |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
