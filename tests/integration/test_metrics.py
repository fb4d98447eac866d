"""Metrics scraped for real: the session's Serve app -> the node exporter -> a real Prometheus server.

One Prometheus (Debian's `prometheus`; scripts/test.sh installs it when absent) on a free loopback port scrapes
a MetricsExporter (services/observability/exporter.py) every second; the exporter serves the session app's metrics
directory (every replica process records there) plus Ray's metrics export port. Through Prometheus' HTTP API
the tests check that the request counter grew by exactly the requests sent, the error counter by exactly the
bad ones, the result-cache hit ratio is the one the traffic implies, Ray Serve's series are there beside ours,
and every query of the Grafana dashboard evaluates.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from latentserve.tools.local_cluster import stop_process
from latentserve.services.observability.exporter import MetricsExporter, ray_metrics_port
from latentserve.v1 import latent_pb2 as pb

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "latentserve.json"
MODEL = "tiny-vae"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def scraped_after(self, t: float, timeout_s: float = 20.0) -> float:
        """Wait for a successful scrape that started after `t`; returns its timestamp."""
        deadline = time.time() + timeout_s
        last = None
        while time.time() < deadline:
            last = self.query('up{job="latentserve"}')
            if last and float(last[0]["value"][1]) == 1:
                ts = self.value('timestamp(up{job="latentserve"})')
                if ts is not None and ts > t:
                    return ts
            time.sleep(0.2)
        raise TimeoutError(f"no successful scrape after {t} within {timeout_s}s (last up: {last})")


@pytest.fixture(scope="module")
def prometheus(serve_app, tmp_path_factory, request):
    if not os.path.exists(PROMETHEUS):
        pytest.fail(f"prometheus is not installed ({PROMETHEUS}); scripts/test.sh installs Debian's package")
    exporter = MetricsExporter(serve_app.config.observability.metrics_dir, _free_port(), "127.0.0.1", ray_metrics_port()).start()
    work = tmp_path_factory.mktemp("prometheus")
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: latentserve\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n")
    port = _free_port()
    log = work / "prometheus.log"
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    failed_before = request.session.testsfailed
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"prometheus did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        stop_process(proc, 15)
        if request.session.testsfailed > failed_before:
            print(f"\n===== prometheus log =====\n{log.read_text()[-3000:]}")
            print(f"\n===== exporter body (latentserve part) =====\n{exporter.body().decode()[:6000]}")
        exporter.stop()


def _delta(name: str, sel: str, t0: float) -> str:
    """PromQL: growth of sum(name{sel}) since time t0 (0 for series that did not exist yet)."""
    return f"(sum({name}{{{sel}}}) or vector(0)) - (sum({name}{{{sel}}} @ {t0:.3f}) or vector(0))"


def test_counters_are_exact_through_prometheus(serve_app, prometheus):
    import grpc

    from latentserve.v1 import latent_pb2_grpc as pb_grpc

    fresh, repeat = 12, 6  # fresh latents (misses), then all of them again and the first 6 once more (hits)
    rng = np.random.default_rng(1234)
    latents = [rng.standard_normal(8).astype(np.float32) for _ in range(fresh)]
    t0 = prometheus.scraped_after(time.time())  # a scrape taken after all earlier traffic: the baseline
    sent = bad = 0
    with grpc.insecure_channel(serve_app.target) as ch:
        stub = pb_grpc.LatentServiceStub(ch)
        md = (("application", serve_app.app_name),) if serve_app.frontend == "serve" else None
        for z in latents + latents + latents[:repeat]:
            resp = stub.Decode(pb.DecodeRequest(model=MODEL, latents=[pb.Latent(values=z.tolist(), label=1)],
                                                format=pb.IMAGE_FORMAT_RAW_UINT8), timeout=30, metadata=md)
            assert len(resp.images) == 1
            sent += 1
        ref = pb.LatentRef(latent=pb.Latent(values=[0.1] * 8, label=0))
        frames = list(stub.Interpolate(pb.InterpolateRequest(model=MODEL, a=ref, b=ref, steps=4,
                                                             format=pb.IMAGE_FORMAT_RAW_UINT8),
                                       timeout=30, metadata=md))
        assert len(frames) == 4
        bad_requests = [
            (pb.DecodeRequest(model=MODEL, latents=[pb.Latent(values=[0.0] * 3, label=0)]), "INVALID_ARGUMENT"),
            (pb.DecodeRequest(model=MODEL, latents=[pb.Latent(values=[0.0] * 8, label=7)]), "INVALID_ARGUMENT"),
            (pb.DecodeRequest(model="no-such-model", latents=[pb.Latent(values=[0.0] * 8)]), "NOT_FOUND"),
        ]
        for req, code in bad_requests:
            with pytest.raises(grpc.RpcError) as ei:
                stub.Decode(req, timeout=30, metadata=md)
            assert ei.value.code().name == code
            bad += 1
    prometheus.scraped_after(time.time())

    ok = prometheus.value(_delta("latentserve_requests_total", 'rpc="Decode",code="OK"', t0))
    errors = prometheus.value(_delta("latentserve_requests_total", 'rpc="Decode",code!="OK"', t0))
    invalid = prometheus.value(_delta("latentserve_requests_total",
                                      f'rpc="Decode",model="{MODEL}",version="1",code="INVALID_ARGUMENT"', t0))
    not_found = prometheus.value(_delta("latentserve_requests_total", 'rpc="Decode",model="",code="NOT_FOUND"', t0))
    images = prometheus.value(_delta("latentserve_images_total", f'rpc="Decode",model="{MODEL}"', t0))
    assert (ok, errors, invalid, not_found, images) == (sent, bad, 2, 1, sent)
    streamed = prometheus.value(_delta("latentserve_requests_total", f'rpc="Interpolate",model="{MODEL}",code="OK"', t0))
    frames_counted = prometheus.value(_delta("latentserve_images_total", 'rpc="Interpolate"', t0))
    assert (streamed, frames_counted) == (1, 4)

    hits = _delta("latentserve_cache_hits_total", f'cache="result",model="{MODEL}"', t0)
    misses = _delta("latentserve_cache_misses_total", f'cache="result",model="{MODEL}"', t0)
    ratio = prometheus.value(f"({hits}) / (({hits}) + ({misses}))")
    assert ratio == pytest.approx((fresh + repeat) / (2 * fresh + repeat))  # 18 / 30 = 0.6

    # over the counts so far (a rate() needs two scrapes of the series, which may have been born just now)
    latency = prometheus.value('histogram_quantile(0.5, sum by (le) ('
                               'latentserve_request_duration_seconds_bucket{rpc="Decode"}))')
    assert latency is not None and 0 < latency < 10
    assert prometheus.value('sum(latentserve_replicas{deployment="LatentIngress"})') >= 1
    assert prometheus.value(f'max(latentserve_model_info{{model="{MODEL}",version="1"}})') == 1
    assert prometheus.value("latentserve_ray_metrics_up") == 1


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", []) if t.get("expr")]


def test_ray_serve_series_and_dashboard_queries(prometheus):
    """Ray Serve's own series come through the same endpoint, and every dashboard query evaluates; the Ray
    metric names the dashboard uses exist (latentserve_* names: tests/unit/test_metrics.py)."""
    import re

    exprs = _dashboard_exprs()
    assert exprs
    ray_names = {n for e in exprs for n in re.findall(r"\bray_\w+", e)}
    # Ray's processes report to its metrics agent every few seconds (RAY_metrics_report_interval_ms, 10 s by
    # default): a series of a young session can take that long to appear
    deadline = time.time() + 45
    while True:
        names = set(prometheus.api("label/__name__/values"))
        if ray_names <= names or time.time() > deadline:
            break
        time.sleep(1)
    assert any(n.startswith("ray_serve_") for n in names), sorted(names)[:50]
    assert "latentserve_requests_total" in names
    assert ray_names <= names, f"the dashboard uses {sorted(ray_names - names)}, which Ray does not export here"
    for expr in exprs:
        # Grafana's variables, as Grafana would substitute them
        q = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$model", ".*")
        prometheus.query(q)  # raises (status error) when the query does not parse or evaluate
