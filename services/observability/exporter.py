"""One node's `/metrics` endpoint: latentserve's metrics from every process of the node, plus Ray's own.

`MetricsExporter(directory, port, host, ray_metrics_port)` serves, on `http://host:port/metrics`:
1. latentserve's series (services/observability/metrics.py): prometheus_client's MultiProcessCollector sums the files every
   replica process of this node writes into `directory` (ServeConfig.metrics_dir); files of `live*` gauges
   whose process no longer exists are pruned first, so `latentserve_replicas` counts live processes only;
2. `latentserve_ray_metrics_up` (1 when step 3 worked);
3. the body of Ray's metrics export port on this node (`ray_serve_*`, `ray_node_*`, ... as Ray exports
   them), appended unchanged, so one scrape job per node gets both.
Also `/healthz` (200). Runs in `latentserve serve` (a thread of the command's process) and, on cluster nodes,
as `python -m latentserve.services.observability.exporter --ray-metrics-port N` next to `ray start` (the compose
deployment's deploy/ray-entrypoint.sh), with the directory, port and host from ServeConfig / LATENTSERVE_*
(metrics_dir, metrics_port, host).

`snapshot(directory)` reads the same files into a dict, for tests and tools that want the numbers without
HTTP.
"""
from __future__ import annotations

import argparse
import glob
import http.server
import logging
import os
import re
import signal
import socket
import sys
import threading
import urllib.request
from typing import Any

from latentserve.errors import LatentServeError, ValidationError
from latentserve.services.config import load_config
from latentserve.services.observability.metrics import EXPORTER_GAUGES

logger = logging.getLogger("latentserve.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RAY_FETCH_TIMEOUT_S = 5.0
_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def ray_metrics_port() -> int:
    """Ray's metrics export port on this process's Ray node (needs a connected Ray: `ray.init` first)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return int(node.get("MetricsExportPort") or 0)
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def prune_dead(directory: str) -> list[int]:
    """Remove the `live*` gauge files of processes that no longer run (counters and histograms stay)."""
    from prometheus_client import multiprocess

    dead = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        m = _LIVE_FILE.search(os.path.basename(path))
        if m and not _pid_alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, directory)
    return sorted(dead)


def render(directory: str, ray_up: int | None = None) -> bytes:
    """latentserve's series from `directory` in the Prometheus text format (plus the ray_metrics_up gauge
    when `ray_up` is given)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry(auto_describe=False)
    if os.path.isdir(directory):
        prune_dead(directory)
        multiprocess.MultiProcessCollector(registry, path=directory)
    body = generate_latest(registry)
    if ray_up is not None:
        name = next(iter(EXPORTER_GAUGES))
        body += (f"# HELP {name} {EXPORTER_GAUGES[name]}\n# TYPE {name} gauge\n{name} {ray_up}\n").encode()
    return body


def snapshot(directory: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted label pairs): value} of latentserve's series in `directory` right now."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(render(directory).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def total(snap: dict, name: str, **labels: str) -> float:
    """Sum of the samples called `name` in a `snapshot` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in snap.items() if n == name and want <= set(lab))


class MetricsExporter:
    """The HTTP endpoint (module docstring). `start()` binds (ValidationError, one line, when the port is
    taken) and serves on a daemon thread; `stop()` closes it; `url` is the /metrics address."""

    def __init__(self, directory: str, port: int, host: str = "127.0.0.1", ray_metrics_port: int = 0) -> None:
        self.directory = directory
        self.host, self.port = host, int(port)
        self.ray_metrics_port = int(ray_metrics_port)
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def body(self) -> bytes:
        ray_body, ray_up = b"", None
        if self.ray_metrics_port:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ray_metrics_port}/metrics",
                                            timeout=RAY_FETCH_TIMEOUT_S) as resp:
                    ray_body, ray_up = resp.read(), 1
            except OSError as exc:
                logger.warning("metrics: Ray's metrics export port %d did not answer: %s", self.ray_metrics_port, exc)
                ray_up = 0
        ours = render(self.directory, ray_up)
        if ray_body and not ray_body.endswith(b"\n"):
            ray_body += b"\n"
        return ours + ray_body

    def start(self) -> "MetricsExporter":
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    try:
                        data, status, ctype = exporter.body(), 200, CONTENT_TYPE
                    except Exception as exc:  # noqa: BLE001 - a broken file must not kill the endpoint
                        logger.exception("metrics: rendering failed")
                        data, status, ctype = f"metrics unavailable: {exc}\n".encode(), 500, "text/plain"
                elif path in ("/healthz", "/"):
                    data, status, ctype = b"ok: latentserve metrics at /metrics\n", 200, "text/plain"
                else:
                    data, status, ctype = b"not found; try /metrics\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # Prometheus scrapes every few seconds: no access log
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        try:
            self._server = Server((self.host, self.port), Handler)
        except OSError as exc:
            raise ValidationError(f"metrics endpoint: cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                                  f"choose another --metrics-port (0 = no endpoint)") from None
        self.port = self._server.server_address[1]
        os.makedirs(self.directory, exist_ok=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="latentserve-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def main(argv: list[str] | None = None) -> int:
    """A cluster node's exporter: `python -m latentserve.services.observability.exporter --ray-metrics-port 8090`
    (directory, port and host: LATENTSERVE_METRICS_DIR / _METRICS_PORT / _HOST through ServeConfig)."""
    p = argparse.ArgumentParser(description="Serve this node's latentserve + Ray metrics on one /metrics endpoint.")
    p.add_argument("--ray-metrics-port", type=int, default=0, help="Ray's metrics export port on this node (0 = none)")
    p.add_argument("--port", type=int, default=None, help="listen port (default: metrics_port, 8080)")
    p.add_argument("--dir", default=None, help="metrics directory (default: metrics_dir)")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s metrics-exporter -- %(message)s")
    try:
        config = load_config({"metrics_port": args.port, "metrics_dir": args.dir})
        if not config.observability.metrics_dir or not config.observability.metrics_port:
            raise ValidationError("metrics exporter: set metrics_dir and metrics_port (LATENTSERVE_METRICS_DIR, "
                                  "LATENTSERVE_METRICS_PORT)")
        exporter = MetricsExporter(config.observability.metrics_dir, config.observability.metrics_port, config.frontend.host, args.ray_metrics_port).start()
    except LatentServeError as exc:
        print(f"metrics-exporter: error: {exc}", file=sys.stderr)
        return 2
    logger.info("serving %s (files in %s, Ray metrics from :%d)", exporter.url, config.observability.metrics_dir,
                args.ray_metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    stop.wait()
    exporter.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
