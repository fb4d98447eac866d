"""The cluster pieces that need no Ray, against real servers and processes: the client's retry policy and
`last_server` against an in-process grpc server, process sessions and free ports (latentserve/tools/local_cluster.py)."""
from __future__ import annotations

import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from latentserve.errors import UnavailableError, ValidationError
from latentserve import client as lc
from latentserve import metadata
from latentserve.services.observability import identity
from latentserve.tools import local_cluster as cl
from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


class FlakyService(pb_grpc.LatentServiceServicer):
    """ListModels fails with UNAVAILABLE `fail_first` times, then answers; always names itself."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first, self.calls = fail_first, 0

    def ListModels(self, request, context):
        self.calls += 1
        context.set_trailing_metadata(((metadata.NODE_KEY, "node-a"), (metadata.REPLICA_KEY, "rep-1")))
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
        assert c.last_server == metadata.ServerInfo(node="node-a", replica="rep-1")

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

    assert asyncio.run(go()) == metadata.ServerInfo("node-a", "rep-1")
    assert service.calls == 2


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
