"""Metrics without processes or servers: recording is off without a directory, and the Grafana dashboard
references only names the code exports. Recording across processes and the /metrics endpoint:
tests/integration/test_metrics_processes.py.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from latentserve.services.observability import metrics
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "latentserve.json"


def test_disabled_without_directory_records_nothing():
    from latentserve.services.config import ServeConfig

    assert metrics.setup(ServeConfig()) is False
    assert metrics.begin_request("Decode") == (None, None)
    metrics.cache("result", "m", {"hits": 3})  # no-ops, no error
    metrics.redis_call("cache", 0.001)


def _dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", []) if t.get("expr")]
    for var in doc.get("templating", {}).get("list", []):
        q = var.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def test_dashboard_references_only_exported_metrics():
    exported = metrics.exported_names()
    assert "latentserve_requests_total" in exported and "latentserve_cache_hits_total" in exported
    queries = _dashboard_queries()
    used = {n for q in queries for n in re.findall(r"\blatentserve_\w+", q)}
    assert used, "the dashboard queries no latentserve metric"
    assert used <= exported, f"not exported by the service: {sorted(used - exported)}"
    # every other metric name is Ray Serve's (checked against a live scrape in tests/integration/test_metrics.py)
    others = {n for q in queries for n in re.findall(r"\b[a-z_]+_(?:total|bucket|sum|count|healthy|seconds)\b", q)}
    assert all(n.startswith(("latentserve_", "ray_serve_")) for n in others), others
    titles = " ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for needed in ("requests/s", "p99", "batch size", "cache hit ratio", "error ratio", "images/s"):
        assert needed in titles
