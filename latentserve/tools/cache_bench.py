"""The cache benchmark behind `latentserve bench --cache`: Decode latency over gRPC on a result-cache hit vs a
miss (p50 / p99, ms), side by side with their ratio.

For each mode it starts `latentserve serve` (its own port, metrics endpoint and, for `redis`, a throw-away
`redis-server` with the cache settings deploy/ recommends: allkeys-lru, no persistence), or uses a running
server (`--target`), then sends one-latent Decode requests one at a time on one channel:
- miss: every request carries a fresh random latent, so the result cache never has it (lookup + decoder +
  image encoding + background write);
- hit: requests cycle over 8 latents decoded once before, so each is answered from the result cache
  (lookup only: no model call, no image encoding).
Modes: `redis` (LATENTSERVE_REDIS_URL set: the shared cache, one MGET per request), `memory` (the in-process
LRU) and `off` (result cache disabled: the plain decode path, i.e. what a miss costs without any cache).
With a started server the hit phase is verified through the server's metrics endpoint
(`latentserve_cache_hits_total{cache="result"}` must grow by exactly the number of hit requests).

Target: hit p50 <= 2 ms (`TARGET_HIT_P50_MS`).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentserve.errors import NotFoundError, UnavailableError, ValidationError
from latentserve.tools.bench import DEFAULT_REPO, Proc, free_port, wait_until

MODES = ("redis", "memory", "off")
TARGET_HIT_P50_MS = 2.0
POOL = 8  # latents the hit phase cycles over
WARMUP = 20


@dataclass
class CacheBenchConfig:
    """Options of `latentserve bench --cache`."""

    model: str = "shapes-gan"
    repo: str = str(DEFAULT_REPO)
    version: int | None = None
    target: str | None = None  # a running server (measured as is, mode "target")
    modes: tuple[str, ...] = ("redis", "memory", "off")  # for started servers
    requests: int = 400  # measured requests per phase
    format: str = "png"  # png | raw_uint8
    serve_args: tuple[str, ...] = ()
    token: str | None = None
    app_name: str | None = None
    tls: Any = None  # a client.ClientTls for a --target serving TLS (None: plaintext)
    startup_timeout: float = 600.0
    json_out: str | None = "runs/bench/cache.json"
    seed: int = 0

    def validate(self) -> None:
        if not 20 <= self.requests <= 1_000_000:
            raise ValidationError(f"--requests must be in 20..1000000, got {self.requests}")
        if self.format not in ("png", "raw_uint8"):
            raise ValidationError(f"--format must be png or raw_uint8, got {self.format!r}")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValidationError(f"--cache-modes must be a comma-separated subset of {', '.join(MODES)}, got {unknown or '(none)'}")
        if self.target and self.serve_args:
            raise ValidationError("--serve-args only applies to servers the benchmark starts (no --target)")
        if self.tls is not None and not self.target:
            raise ValidationError("--tls-* options are for a --target serving TLS (started servers are plaintext)")


def summary(lat_ms: list[float]) -> dict:
    a = np.asarray(lat_ms)
    return {"n": int(len(a)), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3)}


def measure(target: str, model: str, version: int, dim: int, n: int, fmt: int, hit: bool, seed: int,
            metadata: tuple = (), tls: Any = None) -> list[float]:
    """Latencies (ms) of n sequential one-latent Decode requests (see the module docstring)."""
    from latentserve.client.connection import make_channel
    from latentserve.v1 import latent_pb2 as pb
    from latentserve.v1 import latent_pb2_grpc as pb_grpc

    rng = np.random.default_rng(seed)
    pool = [rng.standard_normal(dim).astype(np.float32) for _ in range(POOL)]

    def request(i: int) -> Any:
        z = pool[i % POOL] if hit else rng.standard_normal(dim).astype(np.float32)
        return pb.DecodeRequest(model=model, version=version, latents=[pb.Latent(values=z.tolist(), label=0)],
                                format=fmt)

    md = metadata or None
    with make_channel(target, [], tls) as ch:
        stub = pb_grpc.LatentServiceStub(ch)
        if hit:  # decode the pool once so every measured request is a hit
            for i in range(POOL):
                stub.Decode(request(i), timeout=30, metadata=md)
            time.sleep(0.3)  # cache writes happen in the background
        for i in range(WARMUP):  # connections, code paths
            stub.Decode(request(i), timeout=30, metadata=md)
        reqs = [request(i) for i in range(n)]  # built up front: request building is not measured
        out = []
        for r in reqs:
            t = time.perf_counter()
            stub.Decode(r, timeout=30, metadata=md)
            out.append((time.perf_counter() - t) * 1000.0)
    return out


def result_cache_hits(metrics_url: str) -> float:
    """latentserve_cache_hits_total{cache="result"} summed, from a /metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "latentserve_cache_hits_total" and s.labels.get("cache") == "result")


def start_redis(workdir: Path, port: int = 0, durable: bool = False) -> tuple[subprocess.Popen, str]:
    """A throw-away redis-server on `port` (0 = a free one) -> (process, URL): no persistence, or with
    `durable` as the handle Redis should run (AOF, every write synced, no eviction; its data in `workdir`
    survives a restart there)."""
    import redis

    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        raise NotFoundError("redis-server is not installed (mode redis); install it or use --cache-modes memory,off")
    port = port or free_port()
    keep = (["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"] if durable else
            ["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"])
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                             *keep, "--maxmemory", "256mb", "--daemonize", "no", "--logfile", str(workdir / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return proc, f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise UnavailableError(f"redis-server did not start:\n{(workdir / 'redis.log').read_text()[-2000:]}")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run_mode(cfg: CacheBenchConfig, mode: str, target: str, info: Any, fmt: int, metrics_url: str | None,
              md: tuple) -> dict:
    row: dict[str, Any] = {"miss": summary(measure(target, cfg.model, info.version, info.latent_dim, cfg.requests,
                                                   fmt, hit=False, seed=cfg.seed + 1, metadata=md, tls=cfg.tls))}
    if mode != "off":
        before = result_cache_hits(metrics_url) if metrics_url else None
        row["hit"] = summary(measure(target, cfg.model, info.version, info.latent_dim, cfg.requests, fmt,
                                     hit=True, seed=cfg.seed + 2, metadata=md, tls=cfg.tls))
        if metrics_url:
            # every measured + warm-up request of the hit phase must have been a hit (the pool's first
            # decodes were the misses)
            row["hits_counted"] = int(result_cache_hits(metrics_url) - before)
            row["hits_expected"] = cfg.requests + WARMUP
        row["miss_over_hit_p50"] = round(row["miss"]["p50_ms"] / row["hit"]["p50_ms"], 2)
    return row


def run_cache_bench(cfg: CacheBenchConfig) -> dict:
    """Every mode (or the --target); returns the report (also written to cfg.json_out)."""
    from latentserve.client import LatentClient
    from latentserve.v1 import latent_pb2 as pb

    cfg.validate()
    fmt = pb.IMAGE_FORMAT_PNG if cfg.format == "png" else pb.IMAGE_FORMAT_RAW_UINT8
    md = tuple(x for x in ((("authorization", f"Bearer {cfg.token}") if cfg.token else None),
                           (("application", cfg.app_name) if cfg.app_name else None)) if x)
    report: dict[str, Any] = {"config": {**asdict(cfg), "token": None, "tls": cfg.tls is not None}, "modes": {},
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    runs = [("target", cfg.target)] if cfg.target else [(m, None) for m in cfg.modes]
    for mode, target in runs:
        tmp = Path(tempfile.mkdtemp(prefix=f"latentserve-cache-bench-{mode}-"))
        redis_proc, server, failed = None, None, True
        metrics_url = None
        try:
            if target is None:
                env = {"LATENTSERVE_REDIS_URL": "", "LATENTSERVE_REDIS_CACHE_URL": "", "LATENTSERVE_RESULT_CACHE": "1"}
                if mode == "redis":
                    redis_proc, env["LATENTSERVE_REDIS_URL"] = start_redis(tmp)
                elif mode == "off":
                    env["LATENTSERVE_RESULT_CACHE"] = "0"
                port, mport = free_port(), free_port()
                target, metrics_url = f"127.0.0.1:{port}", f"http://127.0.0.1:{mport}/metrics"
                _log(f"[{mode}] starting latentserve serve on {target} ...")
                server = Proc(f"cache-{mode}", [sys.executable, "-m", "latentserve", "serve", "--port", str(port),
                                                "--http-port", str(free_port()), "--metrics-port", str(mport),
                                                "--repo", str(cfg.repo), "--models", cfg.model, *cfg.serve_args],
                              env={**env, "PYTHONWARNINGS": "ignore"})
            client = LatentClient(target, token=cfg.token, app_name=cfg.app_name, timeout=30, tls=cfg.tls)
            try:
                if server is not None:  # a --target answers now or says why not (e.g. the TLS handshake)
                    wait_until(client.health, cfg.startup_timeout, f"latentserve at {target}", server)
                info = client.get_model(cfg.model, cfg.version)
            finally:
                client.close()
            row = _run_mode(cfg, mode, target, info, fmt, metrics_url, md)
            report["modes"][mode] = row
            report.setdefault("model", {"name": info.name, "version": info.version, "latent_dim": info.latent_dim})
            _log(f"[{mode}] " + "; ".join(f"{k}: p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms"
                                          for k, v in row.items() if isinstance(v, dict)))
            failed = False
        finally:
            if server is not None:
                server.stop(keep_log=failed)
            if redis_proc is not None:
                redis_proc.kill()
                redis_proc.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
    report["checks"] = [{"check": f"{mode}: hit p50 <= {TARGET_HIT_P50_MS} ms", "value": row["hit"]["p50_ms"],
                         "pass": row["hit"]["p50_ms"] <= TARGET_HIT_P50_MS}
                        for mode, row in report["modes"].items() if "hit" in row]
    report["checks"] += [{"check": f"{mode}: every hit-phase request was a result-cache hit (metrics)",
                          "value": f"{row['hits_counted']}/{row['hits_expected']}",
                          "pass": row["hits_counted"] == row["hits_expected"]}
                         for mode, row in report["modes"].items() if "hits_counted" in row]
    if cfg.json_out:
        out = Path(cfg.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        report["json_out"] = str(out)
    return report


def format_cache_table(report: dict) -> str:
    head = ["mode", "miss p50 ms", "miss p99 ms", "hit p50 ms", "hit p99 ms", "miss/hit p50"]
    rows = []
    for mode, r in report["modes"].items():
        hit = r.get("hit", {})
        rows.append([mode, f"{r['miss']['p50_ms']:.3f}", f"{r['miss']['p99_ms']:.3f}",
                     f"{hit['p50_ms']:.3f}" if hit else "-", f"{hit['p99_ms']:.3f}" if hit else "-",
                     f"{r['miss_over_hit_p50']:.2f}x" if "miss_over_hit_p50" in r else "-"])
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    fmt_row = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    model = report.get("model", {})
    cfg = report["config"]
    lines = [f"Decode latency, result cache hit vs miss: model {model.get('name')} v{model.get('version')} "
             f"(D={model.get('latent_dim')}), one latent per request, {cfg['format']}, {cfg['requests']} "
             f"sequential requests per phase",
             fmt_row(head), "  ".join("-" * w for w in widths), *map(fmt_row, rows),
             "off: result cache disabled (no lookup; the plain decode path). memory: in-process LRU. redis: "
             "shared Redis cache (one MGET per request)."]
    for c in report.get("checks", []):
        lines.append(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['value']}")
    return "\n".join(lines)
