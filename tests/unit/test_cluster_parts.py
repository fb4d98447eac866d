"""Unit tests of the cluster pieces that need no Ray: the client's retry policy and `last_server` against an
in-process grpc server, the identity metadata, the loopback cluster's Serve config (deploy/serve.yaml with
only ports/paths/replicas changed), process sessions, and the cluster-demo command's early checks."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml

from latentserve.errors import UnavailableError, ValidationError
from latentserve.services import client as lc
from latentserve.services import identity
from latentserve.services import local_cluster as cl
from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


class FlakyService(pb_grpc.LatentServiceServicer):
    """ListModels fails with UNAVAILABLE `fail_first` times, then answers; always names itself."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first, self.calls = fail_first, 0

    def ListModels(self, request, context):
        self.calls += 1
        context.set_trailing_metadata(((identity.NODE_KEY, "node-a"), (identity.REPLICA_KEY, "rep-1")))
        if self.calls <= self.fail_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica going away")
        return pb.ListModelsResponse()


@pytest.fixture
def flaky_server():
    servers = []

    def start(fail_first: int):
        service = FlakyService(fail_first)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_LatentServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", service

    yield start
    for s in servers:
        s.stop(0)


def test_client_retries_unavailable_bounded_and_reports_the_server(flaky_server):
    target, service = flaky_server(fail_first=2)
    with lc.LatentClient(target, timeout=10) as c:
        assert c.list_models() == []
        assert service.calls == 3  # two UNAVAILABLE answers retried by gRPC's policy
        assert c.last_server == identity.ServerInfo(node="node-a", replica="rep-1")

    target, service = flaky_server(fail_first=100)
    with lc.LatentClient(target, timeout=10) as c:
        with pytest.raises(UnavailableError, match="replica going away"):
            c.list_models()
        assert service.calls == lc.DEFAULT_RETRIES + 1  # bounded
        assert c.last_server is not None and c.last_server.node == "node-a"  # also on a failed call

    target, service = flaky_server(fail_first=1)
    with lc.LatentClient(target, timeout=10, retries=0) as c:
        with pytest.raises(UnavailableError):
            c.list_models()
        assert service.calls == 1


def test_async_client_retries_and_reports_the_server(flaky_server):
    import asyncio

    target, service = flaky_server(fail_first=1)

    async def go():
        async with lc.AsyncLatentClient(target, timeout=10) as c:
            await c.list_models()
            return c.last_server

    assert asyncio.run(go()) == identity.ServerInfo("node-a", "rep-1")
    assert service.calls == 2


def test_retry_options_checks_and_policy():
    assert lc.retry_options(0) == []
    opts = dict(lc.retry_options(3))
    policy = json.loads(opts["grpc.service_config"])["methodConfig"][0]["retryPolicy"]
    assert policy["maxAttempts"] == 4 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    for bad in (-1, 5, 1.5, True, "2"):
        with pytest.raises(ValidationError, match="retries"):
            lc.retry_options(bad)


def test_identity_metadata_parsing():
    assert identity.server_info(None) is None
    assert identity.server_info([("other", "x")]) is None
    info = identity.server_info([(identity.NODE_KEY, b"abc"), (identity.REPLICA_KEY, "r1"), ("x", "y")])
    assert info == identity.ServerInfo(node="abc", replica="r1")
    assert identity.replica_identity() == ()  # not inside a Serve replica


def _serve_deploy():
    spec = importlib.util.spec_from_file_location("latentserve_deploy_serve_deploy_cl", DEPLOY / "serve_deploy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_loopback_serve_config_changes_only_ports_paths_and_replicas(tmp_path):
    base = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    out = cl.serve_config_for(base, "/some/repo", 41000, 41001, replicas=3)
    app, base_app = out["applications"][0], base["applications"][0]
    changed = {k for k in set(app["args"]) | set(base_app["args"]) if app["args"].get(k) != base_app["args"].get(k)}
    assert changed == {"repository", "host", "grpc_port", "http_port", "ingress_replicas"}
    assert app["args"]["ingress_replicas"] == 3 and app["args"]["host"] == "127.0.0.1"
    assert app["deployments"] == [{"name": cl.INGRESS_DEPLOYMENT, "max_replicas_per_node": 1}]
    assert out["grpc_options"]["port"] == 41000 and out["http_options"]["port"] == 41001
    assert {k: v for k, v in out.items() if k not in ("applications", "grpc_options", "http_options")} == \
        {k: v for k, v in base.items() if k not in ("applications", "grpc_options", "http_options")}
    assert base["applications"][0]["args"]["grpc_port"] == 9000  # the input is not modified
    # serve_deploy.py accepts it (ports consistent) up to the repository check
    sd = _serve_deploy()
    doc = sd.effective_config(out, {})
    with pytest.raises(Exception, match="repo"):
        sd.validate(doc, {})


def test_session_pids_finds_a_whole_session():
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while len(cl.session_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = cl.session_pids(proc.pid)
        assert proc.pid in pids and len(pids) == 2
    finally:
        import os
        import signal

        for pid in cl.session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait(10)


def test_free_ports_distinct_and_deploy_files():
    ports = cl.free_ports(12)
    assert len(set(ports)) == 12
    config, script = cl.deploy_files()
    assert config == DEPLOY / "serve.yaml" and script == DEPLOY / "serve_deploy.py"
    with pytest.raises(ValidationError, match="not found"):
        cl.deploy_files("/nonexistent/serve.yaml")


def test_cluster_demo_fails_early_with_one_line(tmp_path, capsys):
    from latentserve.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["cluster-demo", "--repo", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no generative model" in err[0], err
    assert main(["cluster-demo", "--repo", str(tmp_path / "empty"), "--cpus-per-node", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reserves ingress_num_cpus + num_cpus = 1.5 CPUs" in err[0], err
    with pytest.raises(SystemExit):
        main(["cluster-demo", "--workers", "0"])
