"""The native gRPC frontend's parts without Ray: the dynamic `Batcher` (services/model_server.py), `Admission`
control, listening-socket detection and `NativeGrpcServer` with a stub ingress (services/grpc_server.py),
the uint8 conversion of decoded images (services/codec.py) and the bench's cache-proof requests."""
from __future__ import annotations

import asyncio
import os
import socket

import grpc
import numpy as np
import pytest

from latentserve.errors import OverloadedError, ValidationError
from latentserve.services.grpc_server import Admission, NativeGrpcServer, listening_sockets
from latentserve.services.model_server import Batcher, _Item
from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc


class _Loaded:
    """Stands in for LoadedVersion: only `.record.version` is read by _Item."""

    def __init__(self, version: int = 1) -> None:
        self.record = type("R", (), {"version": version})()


def _item(rows: int) -> _Item:
    return _Item(_Loaded(), (np.zeros((rows, 2), np.float32),))


# ------------------------------------------------------------------------------------------------ Batcher
def test_batcher_merges_concurrent_requests_up_to_max_rows():
    calls: list[list[int]] = []

    async def run(items):
        calls.append([it.rows for it in items])
        return [it.rows * 10 for it in items]

    async def main():
        b = Batcher(run, max_rows=8, wait_s=0.05, max_concurrent=1)
        return await asyncio.gather(*(b.submit(_item(r)) for r in (1, 2, 3, 4, 1)))

    assert asyncio.run(main()) == [10, 20, 30, 40, 10]
    assert calls[0] == [1, 2, 3] and sum(sum(c) for c in calls) == 11  # 1+2+3 fit 8 rows, 4 does not
    assert all(sum(c) <= 8 for c in calls)


def test_batcher_does_not_wait_when_the_batch_is_full():
    async def run(items):
        return [None] * len(items)

    async def main():
        b = Batcher(run, max_rows=4, wait_s=5.0, max_concurrent=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(b.submit(_item(1)) for _ in range(4)))
        return loop.time() - t0

    assert asyncio.run(main()) < 1.0


def test_batcher_runs_at_preferred_rows_and_combines_no_more():
    calls: list[list[int]] = []

    async def run(items):
        calls.append([it.rows for it in items])
        await asyncio.sleep(0.05)  # the next requests queue up behind this batch
        return [None] * len(items)

    async def main():
        b = Batcher(run, max_rows=8, preferred_rows=2, wait_s=5.0, max_concurrent=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = [asyncio.ensure_future(b.submit(_item(1))) for _ in range(2)]
        await asyncio.sleep(0.01)  # the first batch (2 rows = preferred) runs without waiting for company
        later = [asyncio.ensure_future(b.submit(_item(r))) for r in (1, 1, 1, 6, 1, 1)]
        await asyncio.gather(*first, *later)
        return loop.time() - t0

    assert asyncio.run(main()) < 1.0  # never waited out wait_s
    # the backlog is not merged into one batch: requests combine up to 2 rows, a 6-row request runs alone
    assert calls == [[1, 1], [1, 1], [1], [6], [1, 1]]


def test_batcher_closes_when_arrivals_reach_preferred_rows_below_the_parallel_threshold():
    # preferred_rows (2) < max_rows // 2 (4): the batch must close when the second row arrives, not on its timers
    calls: list[int] = []

    async def run(items):
        calls.append(len(items))
        return [None] * len(items)

    async def main():
        b = Batcher(run, max_rows=8, preferred_rows=2, wait_s=5.0, max_concurrent=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = asyncio.ensure_future(b.submit(_item(1)))
        await asyncio.sleep(0.05)  # the batcher is now waiting for company with one row
        await asyncio.gather(first, b.submit(_item(1)))
        return loop.time() - t0

    assert asyncio.run(main()) < 1.0
    assert calls == [2]


def test_batcher_drops_cancelled_requests_before_running_them():
    ran: list[int] = []

    async def run(items):
        ran.extend(it.rows for it in items)
        return [it.rows for it in items]

    async def main():
        b = Batcher(run, max_rows=16, wait_s=0.2, max_concurrent=1)
        doomed = [asyncio.ensure_future(b.submit(_item(5))) for _ in range(2)]
        kept = asyncio.ensure_future(b.submit(_item(3)))
        await asyncio.sleep(0)  # all three are queued; the batch forms >= 1 ms later
        for t in doomed:
            t.cancel()
        return await kept

    assert asyncio.run(main()) == 3
    assert ran == [3]


def test_batcher_failure_fails_its_batch_only():
    async def run(items):
        if any(it.rows == 2 for it in items):
            raise ValidationError("bad batch")
        return [it.rows for it in items]

    async def main():
        b = Batcher(run, max_rows=4, wait_s=0.0, max_concurrent=1)
        with pytest.raises(ValidationError):
            await b.submit(_item(2))
        return await b.submit(_item(1))

    assert asyncio.run(main()) == 1


def test_batcher_limits_batches_in_flight():
    in_flight, peak = 0, 0

    async def run(items):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return [None] * len(items)

    async def main():
        b = Batcher(run, max_rows=1, wait_s=0.0, max_concurrent=2)
        await asyncio.gather(*(b.submit(_item(1)) for _ in range(8)))

    asyncio.run(main())
    assert peak == 2


# ------------------------------------------------------------------------------------------------ Admission
def test_admission_runs_queues_then_rejects_and_hands_slots_over():
    async def main():
        a = Admission(max_ongoing=1, max_queued=1)
        await a.acquire()  # runs
        waiter = asyncio.ensure_future(a.acquire())  # queued
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError, match="at capacity"):
            await a.acquire()  # neither a slot nor a queue place
        assert (a.ongoing, a.queued, a.rejected) == (1, 1, 1)
        a.release()  # the slot goes to the waiter
        await waiter
        assert (a.ongoing, a.queued) == (1, 0)
        a.release()
        assert a.ongoing == 0

    asyncio.run(main())


def test_admission_cancelled_waiter_leaves_the_queue():
    async def main():
        a = Admission(max_ongoing=1, max_queued=-1)
        await a.acquire()
        waiters = [asyncio.ensure_future(a.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        waiters[0].cancel()
        await asyncio.sleep(0)
        assert a.queued == 2
        a.release()
        await waiters[1]
        a.release()
        await waiters[2]
        a.release()
        assert (a.ongoing, a.queued) == (0, 0)

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------ sockets
def test_listening_sockets_sees_a_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        found = listening_sockets(port)
        if found is None:
            pytest.skip("no /proc/net/tcp here")
        assert len(found) == 1
    assert listening_sockets(port) == set()


# ------------------------------------------------------------------------------------------------ the server
class _StubIngress:
    """Every LatentService RPC: GetModel echoes the model name (NOT_FOUND for 'nope' via the ingress's status
    mapping), ListModels sleeps (to hold admission slots), Interpolate streams two frames."""

    def __init__(self) -> None:
        from latentserve.services import ingress

        self._ingress = ingress

    async def GetModel(self, request, context):
        from latentserve.errors import NotFoundError

        if request.model == "nope":
            self._ingress._set_status(context, NotFoundError("unknown model 'nope'"), "GetModel")
            return pb.ModelInfo()
        return pb.ModelInfo(name=request.model)

    async def ListModels(self, request, context):
        await asyncio.sleep(0.5)
        return pb.ListModelsResponse()

    async def Interpolate(self, request, context):
        for i in range(2):
            yield pb.InterpolateFrame(index=i)

    def __getattr__(self, name):
        async def unimplemented(request, context):
            context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            return None

        return unimplemented


@pytest.fixture(params=["grpcio", "cxx"])
def native_server(request):
    from latentserve.services import grpc_transport
    from latentserve.services.config import load_config

    if request.param == "cxx" and grpc_transport.compiled_transport() is None:
        pytest.skip("built without the compiled gRPC transport (no libgrpc++-dev)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config({"grpc_port": port, "max_ongoing_requests": 1, "max_queued_requests": 1,
                       "grpc_transport": request.param}, use_env=False)
    server = NativeGrpcServer(_StubIngress(), cfg)
    server.start()
    assert server.stats()["transport"] == request.param
    yield server
    server.stop(grace_s=1.0)


def test_native_server_serves_health_reflection_errors_streams_and_admission(native_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"127.0.0.1:{native_server.port}"
    native_server.probe()  # the replica health check
    with grpc.insecure_channel(target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="latentserve.v1.LatentService"),
                            timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.LatentServiceStub(ch)
        assert stub.GetModel(pb.GetModelRequest(model="m"), timeout=5).name == "m"
        with pytest.raises(grpc.RpcError) as ei:
            stub.GetModel(pb.GetModelRequest(model="nope"), timeout=5)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model" in ei.value.details()
        assert [f.index for f in stub.Interpolate(pb.InterpolateRequest(), timeout=5)] == [0, 1]
        # 1 running + 1 queued: the third concurrent call is turned away
        calls = [stub.ListModels.future(pb.ListModelsRequest(), timeout=10) for _ in range(3)]
        codes = []
        for c in calls:
            try:
                c.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert sorted(c.name for c in codes) == ["OK", "OK", "RESOURCE_EXHAUSTED"]


def test_native_server_stop_reports_not_serving_then_closes(native_server):
    port = native_server.port
    native_server.stop(grace_s=1.0)
    native_server.probe()  # stopped: the health check no longer fails the replica (Serve is replacing it)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.LatentServiceStub(ch).GetModel(pb.GetModelRequest(model="m"), timeout=2)
    assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# ------------------------------------------------------------------------------------------------ images
def test_float_images_to_uint8_matches_the_reference_and_in_place():
    from latentserve.models.data.base import to_uint8
    from latentserve.services.codec import float_images_to_uint8, images_to_pb

    x = np.random.default_rng(0).uniform(-1.3, 1.3, (3, 3, 4, 5)).astype(np.float32)  # (N, 3, H, W)
    ref = to_uint8(x)  # (N, H, W, 3)
    out = float_images_to_uint8(x)
    assert out.shape == (3, 4, 5, 3) and out.flags.c_contiguous and np.array_equal(out, ref)
    scratch = x.copy()
    assert np.array_equal(float_images_to_uint8(scratch, inplace=True), ref)
    # the server may hand the codec floats or already-converted uint8: same bytes on the wire
    assert images_to_pb(x, "raw_uint8") == images_to_pb(out, "raw_uint8")
    with pytest.raises(ValidationError):
        images_to_pb(out, "raw_float32")


def test_bench_requests_are_unique_per_call():
    from latentserve.services.bench import latentserve_requests

    reqs = latentserve_requests("m", None, 8, 3, 4, seed=0, count=2)
    a, b, c = (pb.DecodeRequest.FromString(reqs[i]) for i in (0, 1, 2))
    assert a.latents[1].values[1:] == c.latents[1].values[1:]  # same template ...
    assert a.latents[1].values[0] != c.latents[1].values[0]  # ... made unique
    assert len({reqs[i] for i in range(50)}) == 50 and b.latents[0].values[0] != a.latents[0].values[0]


def test_bench_config_checks_its_connection_count():
    from latentserve.services.bench import BenchConfig

    BenchConfig(connections=4).validate()
    for bad in (0, 65):
        with pytest.raises(ValidationError, match="--connections must be in 1..64"):
            BenchConfig(connections=bad).validate()


def test_reset_niceness_undoes_rays_worker_niceness(tmp_path):
    """A serving process inherits nice 15 from its Ray worker and sets it back to 0 (root), or keeps it with a
    warning (no CAP_SYS_NICE): either way the call never fails."""
    import subprocess
    import sys

    code = ("import os, logging; logging.basicConfig(level=logging.WARNING)\n"
            "from latentserve.services.grpc_server import reset_niceness\n"
            "ok = reset_niceness()\n"
            "print(ok, os.getpriority(os.PRIO_PROCESS, 0))\n")
    out = subprocess.run(["nice", "-n", "15", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ok, nice = out.stdout.split()
    if os.geteuid() == 0:
        assert (ok, nice) == ("True", "0")
    else:
        assert (ok, nice) == ("False", "15") and "keeps nice 15" in out.stderr
