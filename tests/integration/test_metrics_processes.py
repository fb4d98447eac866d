"""Metrics across real processes and ports: multiprocess recording summed by the exporter, live gauges of dead
processes pruned, request records owned by the outermost layer, the /metrics endpoint with Ray's body
appended, and `serve` refusing a busy metrics port before Ray starts.

Recording switches prometheus_client to multiprocess mode for the whole process, so everything that records
runs in child processes (`_run`); this test process only reads the files.
"""
from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import pytest

from latentserve.services.observability.exporter import MetricsExporter, snapshot, total


def _run(code: str, directory: Path, wait: bool = True) -> subprocess.Popen:
    prelude = textwrap.dedent(f"""
        import asyncio, sys
        from latentserve.services.observability import metrics
        from latentserve.services.config import ServeConfig
        metrics.setup(ServeConfig.from_dict({{"metrics_dir": {str(directory)!r}}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    return proc


def test_counts_of_all_processes_are_summed_and_survive_their_exit(tmp_path):
    code = """
        rec, token = metrics.begin_request("Decode")
        metrics.note_model("m-gan", 2)
        rec.images = 3
        metrics.end_request(rec, token)
        rec, token = metrics.begin_request("Decode")
        rec.code = "INVALID_ARGUMENT"
        metrics.end_request(rec, token)
        metrics.cache("result", "m-gan", {"hits": 2, "misses": 1, "writes": -1})
        metrics.batch("m-gan", "decode", 16, 0.002)
        metrics.replica_up("LatentIngress", {"m-gan": 2})
    """
    _run(code, tmp_path)
    _run(code, tmp_path)
    snap = snapshot(str(tmp_path))
    assert total(snap, "latentserve_requests_total", rpc="Decode", model="m-gan", version="2", code="OK") == 2
    assert total(snap, "latentserve_requests_total", model="", code="INVALID_ARGUMENT") == 2
    assert total(snap, "latentserve_images_total", model="m-gan") == 6
    assert total(snap, "latentserve_request_duration_seconds_count", rpc="Decode") == 4
    assert total(snap, "latentserve_cache_hits_total", cache="result") == 4
    assert total(snap, "latentserve_cache_misses_total", cache="result") == 2
    assert total(snap, "latentserve_cache_writes_total") == 0  # negative deltas are not counter increments
    assert total(snap, "latentserve_batch_size_rows_bucket", model="m-gan", le="16.0") == 2
    assert total(snap, "latentserve_batch_size_rows_bucket", model="m-gan", le="8.0") == 0
    # both processes have exited: their live gauges are pruned, their counts stay
    assert total(snap, "latentserve_replicas") == 0 and total(snap, "latentserve_model_info") == 0


def test_live_gauges_count_running_replicas(tmp_path):
    code = """
        metrics.replica_up("LatentIngress", {"m-gan": 2})
        print("up", flush=True)
        sys.stdin.read()
    """
    procs = [_run(code, tmp_path, wait=False) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "up"
        snap = snapshot(str(tmp_path))
        assert total(snap, "latentserve_replicas", deployment="LatentIngress") == 2
        assert total(snap, "latentserve_model_info", model="m-gan", version="2") == 1
        procs[0].communicate(timeout=30)  # one replica exits
        assert total(snapshot(str(tmp_path)), "latentserve_replicas") == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.communicate(timeout=30)


def test_outermost_layer_owns_the_request_record(tmp_path):
    """The native server's wrapper (`owns_record`) begins the record; the ingress handler inside (another task:
    wait_for) fills it in; it is emitted once, with the final code; streams count one image per message."""
    code = """
        async def inner():
            rec, token = metrics.begin_request("Decode")
            assert token is None  # not the owner
            metrics.note_model("m-gan", 1)
            metrics.note_model("other", 5)  # the first model named wins
            rec.images = 2
            metrics.end_request(rec, token)  # no-op for a non-owner

        @metrics.owns_record("Decode")
        async def outer(fail):
            await asyncio.wait_for(inner(), 5)
            if fail:
                metrics.note_status("DEADLINE_EXCEEDED")  # images of a failed call are not counted

        @metrics.counted_stream("Interpolate")
        async def frames(n):
            metrics.note_model("m-gan", 1)
            for i in range(n):
                yield i

        async def stream():
            return [f async for f in frames(3)]

        asyncio.run(outer(False))
        asyncio.run(outer(True))
        assert asyncio.run(stream()) == [0, 1, 2]

    """
    _run(code, tmp_path)
    snap = snapshot(str(tmp_path))
    assert total(snap, "latentserve_requests_total", rpc="Decode") == 2
    assert total(snap, "latentserve_requests_total", model="m-gan", version="1", code="OK", rpc="Decode") == 1
    assert total(snap, "latentserve_requests_total", model="m-gan", code="DEADLINE_EXCEEDED") == 1
    assert total(snap, "latentserve_images_total", rpc="Decode") == 2
    assert total(snap, "latentserve_requests_total", rpc="Interpolate", model="m-gan", code="OK") == 1
    assert total(snap, "latentserve_images_total", rpc="Interpolate") == 3


def test_exporter_serves_ours_and_rays_metrics(tmp_path):
    _run('metrics.cache("encode", "m", {"bypasses": 5})', tmp_path)
    ray_body = b"# HELP ray_serve_x x\n# TYPE ray_serve_x gauge\nray_serve_x 7.0"

    class Ray(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(ray_body)

        def log_message(self, *a):
            pass

    ray = http.server.HTTPServer(("127.0.0.1", 0), Ray)
    threading.Thread(target=ray.serve_forever, daemon=True).start()
    exporter = MetricsExporter(str(tmp_path), 0, "127.0.0.1", ray.server_address[1]).start()
    try:
        with urllib.request.urlopen(exporter.url, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = resp.read().decode()
        assert 'latentserve_cache_bypasses_total{cache="encode",model="m"} 5.0' in text
        assert "latentserve_ray_metrics_up 1" in text and text.endswith("ray_serve_x 7.0\n")
        from prometheus_client.parser import text_string_to_metric_families

        assert {f.name for f in text_string_to_metric_families(text)} >= {"latentserve_cache_bypasses", "ray_serve_x"}
        ray.shutdown()
        ray.server_close()
        exporter.ray_metrics_port = ray.server_address[1]
        assert "latentserve_ray_metrics_up 0" in exporter.body().decode()
        with pytest.raises(Exception, match="cannot listen"):
            MetricsExporter(str(tmp_path), exporter.port, "127.0.0.1").start()
    finally:
        exporter.stop()


def test_serve_busy_metrics_port_is_one_line_before_ray(tmp_path, capsys):
    """A taken --metrics-port fails at once with one line (Ray never starts)."""
    from latentserve import cli

    repo = tmp_path / "repo" / "g" / "1"
    repo.mkdir(parents=True)
    (repo / "manifest.json").write_text('{"name": "g", "version": 1, "family": "gan"}')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = cli.main(["serve", "--repo", str(tmp_path / "repo"), "--metrics-port", str(port), "--port", "9311"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and f"127.0.0.1:{port}" in err and "--metrics-port" in err, err
