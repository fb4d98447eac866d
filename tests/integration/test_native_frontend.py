"""The native gRPC frontend's server without Ray (services/frontends/grpc/native.py): listening-socket detection,
`NativeGrpcServer` on both transports with stub handlers on a loopback port, and the serving process's
niceness reset (in a child process)."""
from __future__ import annotations

import asyncio
import os
import socket

import grpc
import pytest

from latentserve.services.frontends.grpc.native import NativeGrpcServer, listening_sockets
from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc


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
    """Every LatentService RPC: GetModel echoes the model name (NOT_FOUND for 'nope' via the gRPC status
    mapping), ListModels sleeps (to hold admission slots), Interpolate streams two frames."""

    def __init__(self) -> None:
        from latentserve.services.frontends.grpc.status import set_status
        self._set_status = set_status

    async def GetModel(self, request, context):
        from latentserve.errors import NotFoundError

        if request.model == "nope":
            self._set_status(context, NotFoundError("unknown model 'nope'"), "GetModel")
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
    from latentserve.services.frontends.grpc import transport as grpc_transport
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


def test_corrupt_request_bytes_are_invalid_argument_on_both_transports(native_server):
    """Bytes that are no valid message of the method: the caller's error (INVALID_ARGUMENT naming the wire
    format), never INTERNAL, on unary and server-streaming LatentService methods; the server keeps serving."""
    with grpc.insecure_channel(f"127.0.0.1:{native_server.port}") as ch:
        for method, call in (("GetModel", ch.unary_unary), ("Interpolate", ch.unary_stream)):
            rpc = call(f"/latentserve.v1.LatentService/{method}")
            with pytest.raises(grpc.RpcError) as ei:
                result = rpc(b"\x0a\xff\xff\xff\xff", timeout=5)  # a length prefix beyond the bytes sent
                list(result)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, ei.value.code())
            assert "wire format" in ei.value.details()
        assert pb_grpc.LatentServiceStub(ch).GetModel(pb.GetModelRequest(model="m"), timeout=5).name == "m"


def test_native_server_stop_reports_not_serving_then_closes(native_server):
    port = native_server.port
    native_server.stop(grace_s=1.0)
    native_server.probe()  # stopped: the health check no longer fails the replica (Serve is replacing it)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.LatentServiceStub(ch).GetModel(pb.GetModelRequest(model="m"), timeout=2)
    assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_reset_niceness_undoes_rays_worker_niceness(tmp_path):
    """A serving process inherits nice 15 from its Ray worker and sets it back to 0 (root), or keeps it with a
    warning (no CAP_SYS_NICE): either way the call never fails."""
    import subprocess
    import sys

    code = ("import os, logging; logging.basicConfig(level=logging.WARNING)\n"
            "from latentserve.services.frontends.grpc.native import reset_niceness\n"
            "ok = reset_niceness()\n"
            "print(ok, os.getpriority(os.PRIO_PROCESS, 0))\n")
    out = subprocess.run(["nice", "-n", "15", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ok, nice = out.stdout.split()
    if os.geteuid() == 0:
        assert (ok, nice) == ("True", "0")
    else:
        assert (ok, nice) == ("False", "15") and "keeps nice 15" in out.stderr


# ------------------------------------------------------------------------------------------------ closed doors
@pytest.mark.parametrize("transport", ["grpcio", "cxx"])
@pytest.mark.parametrize("mode", ["auth", "open", "off"])
def test_reflection_needs_the_token_unless_open_and_health_never(transport, mode):
    """With an API token: reflection answers only with it (auth, the default), always (open), never (off);
    health answers without it. A request whose bytes are no valid message is INVALID_ARGUMENT (compiled
    transport), never INTERNAL."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from latentserve.services.config import load_config
    from latentserve.services.frontends.grpc import transport as grpc_transport

    if transport == "cxx" and grpc_transport.compiled_transport() is None:
        pytest.skip("built without the compiled gRPC transport (no libgrpc++-dev)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config({"grpc_port": port, "grpc_transport": transport, "api_token": "s3cret", "reflection": mode},
                      use_env=False)
    server = NativeGrpcServer(_StubIngress(), cfg)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING  # no token
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            ask = [reflection_pb2.ServerReflectionRequest(list_services="")]

            def services(metadata=()):
                answers = list(refl.ServerReflectionInfo(iter(ask), timeout=5, metadata=metadata))
                return {s.name for s in answers[0].list_services_response.service}

            good = (("authorization", "Bearer s3cret"),)
            if mode == "off":
                with pytest.raises(grpc.RpcError) as ei:
                    services(good)
                assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
            else:
                assert "latentserve.v1.LatentService" in services(good)
                if mode == "auth":
                    for md in ((), (("authorization", "Bearer wrong"),)):
                        with pytest.raises(grpc.RpcError) as ei:
                            services(md)
                        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED, ei.value
                else:
                    assert "latentserve.v1.LatentService" in services()
            if transport == "cxx":
                with pytest.raises(grpc.RpcError) as ei:
                    ch.unary_unary("/latentserve.v1.LatentService/GetModel")(b"\xff" * 12, timeout=5)
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request" in ei.value.details()
    finally:
        server.stop(grace_s=1.0)
