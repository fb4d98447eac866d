"""The native frontend's two gRPC transports (services/frontends/grpc/transport.py) behave alike: every test runs on
grpc.aio and on the compiled transport, in-process on a loopback port, driven by grpcio's sync client.

Covered: unary calls with metadata in and trailing metadata out, status codes set, aborted, escaped or
unimplemented, malformed request bytes, server streams (async generators and `context.write`, past the write
window), client streams (grpc's reflection service), client deadlines and cancellation reaching the handler,
`time_remaining`, large messages, many concurrent calls, and stop with a grace period."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import grpc
import pytest

from latentserve.errors import UnavailableError
from latentserve.services.frontends.grpc import transport as grpc_transport
SERVICE = "test.Echo"
TRANSPORTS = ["grpcio", pytest.param("cxx", marks=pytest.mark.skipif(
    grpc_transport.compiled_transport() is None, reason="built without the compiled transport (no libgrpc++-dev)"))]


def _ident(x):
    return x


class _Echo:
    """Handlers on bytes (no protobuf): what they saw is kept for the assertions."""

    def __init__(self) -> None:
        self.seen_metadata: tuple = ()
        self.remaining: float | None = None
        self.cancelled = threading.Event()
        self.started = threading.Event()

    async def echo(self, request: bytes, context) -> bytes:
        self.seen_metadata = tuple(context.invocation_metadata())
        self.remaining = context.time_remaining()
        context.set_trailing_metadata((("x-served-by", "echo"),))
        return request[::-1]

    async def status(self, request: bytes, context) -> bytes:
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        context.set_details(f"bad value {request.decode()!r}: allowed 'a'..'z'")
        return b"never sent"

    async def abort(self, request: bytes, context) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b"unreachable"

    async def boom(self, request: bytes, context) -> bytes:
        raise RuntimeError("kaput")

    async def hang(self, request: bytes, context) -> bytes:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b""

    async def stubborn(self, request: bytes, context) -> bytes:
        """Ignores cancellation (a handler stuck in code that swallows it): stop must still end."""
        self.started.set()
        never = asyncio.get_running_loop().create_future()
        while True:
            try:
                await asyncio.shield(never)
            except asyncio.CancelledError:
                self.cancelled.set()

    async def slow(self, request: bytes, context) -> bytes:
        self.started.set()
        await asyncio.sleep(float(request.decode()))
        return b"done"

    async def count(self, request: bytes, context):
        for i in range(int(request.decode())):
            yield str(i).encode()

    async def count_by_write(self, request: bytes, context) -> None:
        for i in range(int(request.decode())):
            await context.write(str(i).encode())

    async def forever(self, request: bytes, context):
        try:
            i = 0
            while True:
                yield b"x" * 1000 + str(i).encode()
                i += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise

    async def total(self, requests, context) -> bytes:
        return str(sum([int(r.decode()) async for r in requests])).encode()


def _register(server, echo: _Echo) -> None:
    from grpc_health.v1 import health, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

    uu = lambda fn: grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_ident, response_serializer=_ident)  # noqa: E731
    us = lambda fn: grpc.unary_stream_rpc_method_handler(fn, request_deserializer=_ident, response_serializer=_ident)  # noqa: E731
    handlers = {name: uu(getattr(echo, name)) for name in ("echo", "status", "abort", "boom", "hang", "slow",
                                                                 "stubborn")}
    handlers.update(count=us(echo.count), count_by_write=us(echo.count_by_write), forever=us(echo.forever),
                    total=grpc.stream_unary_rpc_method_handler(echo.total, request_deserializer=_ident,
                                                               response_serializer=_ident))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if hasattr(server, "add_registered_method_handlers"):
        server.add_registered_method_handlers(SERVICE, handlers)
    echo.health = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(echo.health, server)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer([SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME]), server)


class _Running:
    """A server of one transport on its own thread and event loop, like the native frontend runs it."""

    def __init__(self, transport: str) -> None:
        self.echo = _Echo()
        self.transport = transport
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.run(self._start(transport))

    async def _start(self, transport: str):
        server = grpc_transport.make_server(transport, [("grpc.max_receive_message_length", 64 << 20),
                                                        ("grpc.max_send_message_length", 64 << 20)])
        _register(server, self.echo)
        (self.port,) = await grpc_transport.listen(server, ["127.0.0.1:0"])
        return server

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(params=TRANSPORTS)
def served(request):
    running = _Running(request.param)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}", options=[("grpc.max_receive_message_length", 64 << 20),
                                                                         ("grpc.max_send_message_length", 64 << 20)])
    running.channel = channel
    yield running
    channel.close()
    running.close()


def _unary(ch, name):
    return ch.unary_unary(f"/{SERVICE}/{name}")


def test_transport_resolution(monkeypatch):
    assert grpc_transport.resolve("grpcio") == "grpcio"
    built = grpc_transport.compiled_transport() is not None
    assert grpc_transport.resolve("auto") == ("cxx" if built else "grpcio")
    if built:
        assert grpc_transport.resolve("cxx") == "cxx"
    # an installation without the extension: auto falls back, an explicit cxx says what to install
    monkeypatch.setattr(grpc_transport, "compiled_transport", lambda: None)
    assert grpc_transport.resolve("auto") == "grpcio"
    with pytest.raises(UnavailableError, match="libgrpc\\+\\+-dev"):
        grpc_transport.resolve("cxx")


def test_unary_metadata_in_trailing_metadata_out(served):
    resp, call = _unary(served.channel, "echo").with_call(
        b"abc", metadata=(("authorization", "Bearer t0k"), ("trace-bin", b"\x00\xff")), timeout=5)
    assert resp == b"cba"
    assert ("x-served-by", "echo") in tuple(call.trailing_metadata())
    seen = dict(served.echo.seen_metadata)
    assert seen["authorization"] == "Bearer t0k" and seen["trace-bin"] == b"\x00\xff"
    assert served.echo.remaining is not None and 0 < served.echo.remaining <= 5.5  # grpc.aio rounds up a little
    _unary(served.channel, "echo")(b"x")  # no deadline: time_remaining is None
    assert served.echo.remaining is None


def test_compressed_requests(served):
    payload = b"latent " * 10_000
    assert _unary(served.channel, "echo")(payload, compression=grpc.Compression.Gzip, timeout=5) == payload[::-1]


@pytest.mark.parametrize("method,code,details", [
    ("status", grpc.StatusCode.INVALID_ARGUMENT, "bad value 'q': allowed 'a'..'z'"),
    ("abort", grpc.StatusCode.NOT_FOUND, "no such thing"),
    ("boom", grpc.StatusCode.UNKNOWN, "kaput"),
    ("missing", grpc.StatusCode.UNIMPLEMENTED, ""),
])
def test_status_codes_and_details(served, method, code, details):
    with pytest.raises(grpc.RpcError) as ei:
        _unary(served.channel, method)(b"q", timeout=5)
    assert ei.value.code() == code
    assert details in (ei.value.details() or "")
    assert _unary(served.channel, "echo")(b"ok", timeout=5) == b"ko"  # still serving


def test_malformed_request_bytes_are_the_clients_error(served):
    from grpc_health.v1 import health_pb2_grpc  # noqa: F401 - the service is registered by _register

    call = served.channel.unary_unary("/grpc.health.v1.Health/Check")
    with pytest.raises(grpc.RpcError) as ei:
        call(b"\xff\xff\xff", timeout=5)  # not a HealthCheckRequest
    # the caller's bad bytes, said without the parser's text, on either transport (grpc.aio alone says INTERNAL)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "wire format" in ei.value.details()


def test_server_streams_past_the_write_window(served):
    n = 5 * grpc_transport.WRITE_WINDOW + 3
    for method in ("count", "count_by_write"):
        got = list(served.channel.unary_stream(f"/{SERVICE}/{method}")(str(n).encode(), timeout=10))
        assert got == [str(i).encode() for i in range(n)]


def test_a_stream_the_client_leaves_ends_on_the_server(served):
    stream = served.channel.unary_stream(f"/{SERVICE}/forever")(b"", timeout=30)
    assert [next(stream)[-1:] for _ in range(3)] == [b"0", b"1", b"2"]
    stream.cancel()  # the server is blocked on its write window by now, or soon
    assert served.echo.cancelled.wait(5), "the server kept streaming to a client that left"
    assert _unary(served.channel, "echo")(b"up", timeout=5) == b"pu"


def test_client_stream_and_health_and_reflection(served):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    total = served.channel.stream_unary(f"/{SERVICE}/total")
    assert total(iter([b"1", b"2", b"39"]), timeout=5) == b"42"
    served.run(served.echo.health.set("svc", health_pb2.HealthCheckResponse.SERVING))
    health = health_pb2_grpc.HealthStub(served.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="svc"), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as ei:
        health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=5)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    watch = health.Watch(health_pb2.HealthCheckRequest(service="svc"), timeout=5)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    served.run(served.echo.health.set("svc", health_pb2.HealthCheckResponse.NOT_SERVING))
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    services = ProtoReflectionDescriptorDatabase(served.channel).get_services()
    assert SERVICE in services and "grpc.health.v1.Health" in services


def test_deadline_and_cancel_reach_the_handler(served):
    with pytest.raises(grpc.RpcError) as ei:
        _unary(served.channel, "hang")(b"", timeout=0.3)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert served.echo.cancelled.wait(5), "the handler was not cancelled at the deadline"
    served.echo.cancelled.clear()
    served.echo.started.clear()
    fut = _unary(served.channel, "hang").future(b"", timeout=30)
    assert served.echo.started.wait(5)
    fut.cancel()
    assert served.echo.cancelled.wait(5), "the handler was not cancelled with the call"
    assert _unary(served.channel, "echo")(b"up", timeout=5) == b"pu"


def test_every_call_is_finished_however_early_it_is_cancelled(served):
    # deadlines of 0.1-2 ms: many calls are cancelled in the same burst of events that starts them (their task
    # is cancelled before its first step), others while the handler runs; each must still be finished
    futures = [_unary(served.channel, "slow").future(b"0.002", timeout=0.0001 + 0.002 * (i % 10) / 10)
               for i in range(400)]
    for i, f in enumerate(futures):
        if i % 7 == 0:
            f.cancel()
    for f in futures:
        try:
            f.result(timeout=10)
        except grpc.FutureCancelledError:
            pass
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    if isinstance(served.server, grpc_transport.CompiledServer):  # nothing left open on either side
        t_end = time.monotonic() + 5
        while (served.server.transport.active() or served.server._calls) and time.monotonic() < t_end:
            time.sleep(0.05)
        assert served.server.transport.active() == 0 and not served.server._calls
    assert _unary(served.channel, "echo")(b"up", timeout=5) == b"pu"


def test_large_messages_and_many_concurrent_calls(served):
    big = bytes(range(256)) * (32 << 12)  # 32 MiB
    assert _unary(served.channel, "echo")(big, timeout=30) == big[::-1]
    calls = [_unary(served.channel, "echo").future(str(i).encode(), timeout=20) for i in range(300)]
    assert [c.result() for c in calls] == [str(i).encode()[::-1] for i in range(300)]


def test_stop_gives_calls_in_flight_their_grace_then_refuses(served):
    fut = _unary(served.channel, "slow").future(b"0.3", timeout=10)
    assert served.echo.started.wait(5)
    t0 = time.monotonic()
    served.run(served.server.stop(3.0))
    assert fut.result() == b"done"  # finished within the grace period
    assert time.monotonic() - t0 < 3.0
    with pytest.raises(grpc.RpcError) as ei:
        _unary(served.channel, "echo")(b"late", timeout=2)
    assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_stop_cancels_calls_that_outlive_the_grace(served):
    fut = _unary(served.channel, "hang").future(b"", timeout=20)
    assert served.echo.started.wait(5)
    t0 = time.monotonic()
    served.run(served.server.stop(0.3))
    assert time.monotonic() - t0 < 5
    with pytest.raises(grpc.RpcError):
        fut.result(timeout=10)
    assert served.echo.cancelled.wait(5)


def test_stop_ends_even_when_a_handler_never_answers(served):
    # the client's deadline cancels the call first, so grpc cancels nothing more at stop; the handler ignores
    # its cancellation. The stop must still end, soon after its grace period.
    with pytest.raises(grpc.RpcError) as ei:
        _unary(served.channel, "stubborn")(b"", timeout=0.3)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert served.echo.cancelled.wait(15)  # the deadline's cancellation reaches the handler (late on a loaded host)
    t0 = time.monotonic()
    served.run(served.server.stop(0.2), timeout=15)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_taken_port_is_a_clear_error(transport):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]

        async def start():
            server = grpc_transport.make_server(transport, [("grpc.so_reuseport", 0)])
            await grpc_transport.listen(server, [f"127.0.0.1:{port}"])

        with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
            asyncio.run(start())
