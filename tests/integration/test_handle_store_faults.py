"""The handle store as a serving process (native.py `ServingProcess`, what a native replica runs, without Ray)
sees it, with real redis-servers: whether handles are durable (AOF or not) in ModelInfo, /healthz's model
and `latentserve models`; and the handle Redis going down and coming back (SIGKILL, restarted on its port).

Behaviour asserted (timings are the fault benchmark's, `latentserve bench --fault redis-down`): calls that need
no handle store never fail; a call that must store handles answers UNAVAILABLE with gRPC's "do not retry"
pushback (so the client's retry policy hands it to the caller at once); handles issued before resolve again
and new ones are issued once Redis is back, without restarting anything.
"""
from __future__ import annotations

import socket
import time

import grpc
import numpy as np
import pytest

from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tiny_repo, redis_url: str, transport: str = "auto"):
    from latentserve.services.config import load_config
    from latentserve.services.frontends.grpc import transport as grpc_transport
    from latentserve.services.frontends.grpc.native import ServingProcess

    if transport == "cxx" and grpc_transport.compiled_transport() is None:
        pytest.skip("built without the compiled gRPC transport (no libgrpc++-dev)")
    config = load_config({"repository": str(tiny_repo), "grpc_port": _free_port(), "redis_url": redis_url,
                          "grpc_transport": transport, "result_cache": False, "encode_cache": False},
                         use_env=False)
    proc = ServingProcess(config, {"tiny-gan": 2})
    proc.start()
    return proc, f"127.0.0.1:{config.frontend.grpc_port}"


@pytest.fixture(params=["cxx", "grpcio"])
def served(request, tiny_repo, redis_factory):
    redis = redis_factory(aof=True)
    proc, target = _serve(tiny_repo, redis.url(db=3), request.param)
    yield target, redis
    proc.stop(1.0)


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-persistence"])
def test_model_info_and_the_cli_say_whether_handles_are_durable(tiny_repo, redis_factory, capsys, aof):
    from latentserve.cli import main
    from latentserve.client import LatentClient

    redis = redis_factory(aof=aof)
    proc, target = _serve(tiny_repo, redis.url(db=4))
    try:
        with LatentClient(target, timeout=30) as c:
            hs = c.get_model("tiny-gan").handle_store
            assert all(m.handle_store == hs for m in c.list_models())
        assert hs.backend == "redis" and hs.durable is aof
        if aof:
            assert hs.detail == ""
        else:  # why, and what to do, without the Redis address
            assert "appendonly no" in hs.detail and "--appendonly yes" in hs.detail
            assert "127.0.0.1" not in hs.detail and str(redis.port) not in hs.detail
        capsys.readouterr()
        assert main(["models", "-t", target, "--timeout", "60"]) == 0
        listed = capsys.readouterr().out
        assert main(["models", "tiny-gan", "-t", target, "--timeout", "60"]) == 0
        described = capsys.readouterr().out
        want = "redis, durable" if aof else "redis, NOT durable: the handle Redis has appendonly no"
        assert f"handles: {want}" in listed and want in described
    finally:
        proc.stop(1.0)


def test_without_redis_the_node_store_says_it_is_not_durable(tiny_repo):
    from latentserve.client import LatentClient

    proc, target = _serve(tiny_repo, "")
    try:
        with LatentClient(target, timeout=30) as c:
            hs = c.get_model("tiny-gan").handle_store
        assert hs.backend == "node" and not hs.durable and "this node's serving processes" in hs.detail
        assert "/" not in hs.detail  # no path
    finally:
        proc.stop(1.0)


def test_redis_down_fails_only_handle_storing_calls_and_they_recover(served):
    from latentserve.client import LatentClient
    from latentserve.errors import UnavailableError

    target, redis = served
    z = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    with LatentClient(target, timeout=30) as c, grpc.insecure_channel(target) as ch:
        stub = pb_grpc.LatentServiceStub(ch)
        issued = c.sample("tiny-gan", 2, seed=4, return_handles=True).handles
        redis.kill()

        # handle-free calls never fail
        for _ in range(3):
            assert c.decode("tiny-gan", z, [0, 1]).shape == (2, 8, 8, 3)
            assert c.sample("tiny-gan", 2, seed=5).images.shape == (2, 8, 8, 3)
        # storing handles: UNAVAILABLE, told not to retry, naming what to do instead
        with pytest.raises(UnavailableError, match="handle store unavailable.*without return_handles"):
            c.sample("tiny-gan", 1, seed=6, return_handles=True)
        with pytest.raises(grpc.RpcError) as info:
            stub.Sample.with_call(pb.SampleRequest(model="tiny-gan", n=1, seed=7, return_handles=True), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ("grpc-retry-pushback-ms", "-1") in [tuple(kv) for kv in info.value.trailing_metadata()]
        assert "redis://" not in info.value.details() and "127.0.0.1" not in info.value.details()
        # handles issued before: this process keeps a copy of a durable store's handles
        assert c.decode("tiny-gan", handles=issued).shape == (2, 8, 8, 3)

        redis.start()  # same port and directory: the AOF brings the handles back
        t_end, new = time.monotonic() + 30, None
        while new is None:
            try:
                new = c.sample("tiny-gan", 1, seed=8, return_handles=True).handles
            except UnavailableError:
                assert time.monotonic() < t_end, "handle calls did not recover after Redis came back"
                time.sleep(0.05)
        assert c.decode("tiny-gan", handles=issued + new).shape == (3, 8, 8, 3)
        with redis.client(db=3) as r:  # the new handle is in Redis itself, not only in the process's copy
            assert r.exists(f"ls:h:{new[0]}")
