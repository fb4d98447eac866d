"""The native frontend's gRPC transport: grpc.aio, or the compiled transport (services/frontends/grpc/cxx/grpc_transport.cc).

`make_server(transport, options)` returns a server that the native frontend (services/frontends/grpc/native.py) fills
like a grpc.aio server: generated `add_*Servicer_to_server` functions register their handlers, and
`listen(server, addresses)` binds and starts either kind. With the compiled transport (`CompiledServer`) a grpc++
server moves the calls' bytes and hands them to this process's event loop in bursts (one eventfd wake-up and
one `poll()` per burst); the handlers are the same async functions grpc.aio would run, with a
`ServicerContext` offering the grpc.aio context methods our handlers, grpc's health servicer and the
reflection servicer use. Why: grpc.aio's own machinery (its completion-queue poller thread, the per-call
callbacks into the event loop) cost more of the serving process's CPU on single-image requests than our
handlers and the model together (benchmarks/README.md).

Transports (`ServeConfig.grpc_transport`): "cxx" (needs the extension, built at install when Debian's
libgrpc++-dev is present), "grpcio", "auto" = cxx when built, else grpcio.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Iterable, Sequence

import grpc

from latentserve.errors import UnavailableError

logger = logging.getLogger("ray.serve")
WRITE_WINDOW = 8  # server-stream messages handed to grpc++ and not yet sent, before `write` waits
_EOF = object()  # end of a client stream


def _load() -> tuple[Any, str]:
    """(the extension module, "") or (None, why it does not import: not built, or e.g. grpc++'s library missing)."""
    try:
        from latentserve.services.frontends.grpc import _grpc_transport
    except ImportError as exc:
        return None, str(exc)
    return _grpc_transport, ""


def compiled_transport():
    """The extension module, or None when it cannot be imported (`import_error()` says why)."""
    return _load()[0]


def import_error() -> str:
    """Why the extension does not import ("" when it does)."""
    return _load()[1]


def resolve(transport: str) -> str:
    """"cxx" or "grpcio" for a configured transport; UnavailableError when "cxx" is asked for and not built."""
    if transport == "grpcio":
        return "grpcio"
    if compiled_transport() is not None:
        return "cxx"
    if transport == "cxx":
        raise UnavailableError("grpc_transport 'cxx' needs the compiled transport, which this installation lacks "
                               f"({import_error() or 'not built'}): install Debian's libgrpc++-dev and reinstall "
                               "latentserve (scripts/install.sh), or set grpc_transport to 'grpcio' or 'auto'")
    return "grpcio"


def make_server(transport: str, options: Sequence[tuple[str, int]]) -> Any:
    """A grpc.aio server (behind `AioServer`) or a CompiledServer (call on the event loop that will serve)."""
    if resolve(transport) == "cxx":
        return CompiledServer(options)
    return AioServer(grpc.aio.server(options=list(options)))


BAD_MESSAGE = "request: not a valid message of this method (protobuf wire format is corrupt)"


class AioServer:
    """A grpc.aio server whose unary-request handlers parse the request themselves, so bytes that are no valid
    message answer INVALID_ARGUMENT (the caller's error, as on the compiled transport) instead of grpc.aio's
    INTERNAL "Exception deserializing request". Everything else is the wrapped server's."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._server.add_generic_rpc_handlers([_ParsingHandler(h) for h in handlers])

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(service, {n: _parsing(h) for n, h in handlers.items()})


class _ParsingHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def service(self, details: Any) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        return None if handler is None else _parsing(handler)


def _parsing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` taking the request's bytes and parsing them itself (unary requests; others unchanged)."""
    parse, fn = handler.request_deserializer, handler.unary_unary or handler.unary_stream
    if handler.request_streaming or parse is None or fn is None or not (
            inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
        return handler

    if handler.unary_unary is not None or inspect.iscoroutinefunction(fn):  # (a stream written through the
        # context, e.g. grpc's health Watch, is a coroutine too)
        async def unary(data: bytes, context: Any) -> Any:
            try:
                request = parse(data)
            except Exception:  # noqa: BLE001 - a malformed message is the client's error
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, BAD_MESSAGE)
            return await fn(request, context)

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary, None, handler.response_serializer)
        return grpc.unary_stream_rpc_method_handler(unary, None, handler.response_serializer)

    async def stream(data: bytes, context: Any) -> Any:
        try:
            request = parse(data)
        except Exception:  # noqa: BLE001
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, BAD_MESSAGE)
        async for item in fn(request, context):
            yield item

    return grpc.unary_stream_rpc_method_handler(stream, None, handler.response_serializer)


async def listen(server: Any, addresses: Sequence[str]) -> list[int]:
    """Bind every address and start serving: the bound ports, in order. UnavailableError when one is taken."""
    if isinstance(server, CompiledServer):
        return await server.listen(addresses)
    server = getattr(server, "_server", server)  # AioServer -> the grpc.aio server
    ports = []
    for address in addresses:
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...") on a taken port
            raise UnavailableError(f"cannot listen on {address}: {exc} (is another program using the port?)") from None
        if not port:
            raise UnavailableError(f"cannot listen on {address} (is another program using the port?)")
        ports.append(port)
    await server.start()
    return ports


class _Abort(Exception):
    """Raised by ServicerContext.abort: the handler ends, the status already set is sent."""


class ServicerContext:
    """The grpc.aio ServicerContext methods our handlers and grpc's health/reflection servicers call."""

    __slots__ = ("_server", "_id", "_metadata", "_deadline", "_peer", "_code", "_details", "_trailing", "_task",
                 "_messages", "_unsent", "_write_ready", "_broken", "_finished", "_serialize", "_cancelled")

    def __init__(self, server: "CompiledServer", call_id: int, metadata: tuple, timeout_s: float, peer: str) -> None:
        self._server, self._id, self._metadata, self._peer = server, call_id, metadata, peer
        self._deadline = None if timeout_s < 0 else time.monotonic() + timeout_s
        self._code: grpc.StatusCode = grpc.StatusCode.OK
        self._details = ""
        self._trailing: tuple = ()
        self._task: asyncio.Task | None = None
        self._messages: asyncio.Queue | None = None
        self._unsent = 0
        self._write_ready: asyncio.Future | None = None
        self._broken = self._finished = self._cancelled = False
        self._serialize: Any = None

    # -- what handlers read and set ----------------------------------------------------------------------
    def invocation_metadata(self) -> tuple:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, Any]]) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple:
        return self._trailing

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._finished

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Iterable = ()) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort needs a status code other than OK")
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise _Abort()

    async def write(self, message: Any) -> None:
        """Send one message of a server stream; waits while WRITE_WINDOW messages are still unsent."""
        if self._finished or self._broken:
            raise asyncio.CancelledError("the call has ended")
        self._server.transport.write(self._id, self._serialize(message))  # sent by the sender thread
        self._unsent += 1
        while self._unsent >= WRITE_WINDOW and not self._broken:
            self._write_ready = asyncio.get_running_loop().create_future()
            await self._write_ready
        if self._broken:
            raise asyncio.CancelledError("the client stream is broken")

    # -- transport events --------------------------------------------------------------------------------
    def _written(self, ok: bool) -> None:
        self._unsent -= 1
        self._broken = self._broken or not ok
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def _finish(self, payload: bytes | None) -> None:
        if self._finished:
            return
        self._finished = True
        code = self._code.value[0]
        self._server.transport.reply(self._id, payload if code == 0 else None, code, self._details, self._trailing)


class CompiledServer:
    """A grpc.aio.Server look-alike on the compiled transport (see the module docstring). Event-loop only."""

    def __init__(self, options: Sequence[tuple[str, int]]) -> None:
        self._options = [(str(k), int(v)) for k, v in options]
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[Any] = []
        self._calls: dict[int, ServicerContext] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.transport: Any = None
        self._new = self._message = self._half_close = self._cancel = self._written = -1

    # -- grpc.aio.Server's registration API (what generated add_*_to_server functions call) -------------
    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def _handler(self, method: str, metadata: tuple) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(method)
        if handler is None:
            details = _CallDetails(method, metadata)
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    self._methods[method] = handler
                    break
        return handler

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def listen(self, addresses: Sequence[str]) -> list[int]:
        ext = compiled_transport()
        streaming = [m for m, h in self._methods.items() if h.request_streaming]
        self._new, self._message, self._half_close = ext.NEW, ext.MESSAGE, ext.HALF_CLOSE
        self._cancel, self._written = ext.CANCEL, ext.WRITTEN
        transport = ext.Transport(list(addresses), self._options, streaming)
        try:
            ports = transport.start()
        except RuntimeError as exc:
            raise UnavailableError(f"{exc} (is another program using the port?)") from None
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(transport.fileno(), self._drain)
        return list(ports)

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, give the ones in flight `grace` seconds (None: none), then cancel them."""
        if self.transport is None:
            return
        transport = self.transport
        await asyncio.get_running_loop().run_in_executor(None, transport.shutdown, float(grace or 0.0))
        self._drain()
        self._loop.remove_reader(transport.fileno())
        for ctx in list(self._calls.values()):
            if ctx._task is not None:
                ctx._task.cancel()

    # -- the event pump ----------------------------------------------------------------------------------
    def _drain(self) -> None:
        for ev in self.transport.poll():
            kind = ev[0]
            if kind == self._new:
                try:
                    self._begin(*ev[1:])
                except Exception as exc:  # noqa: BLE001 - a call must always be finished, and the pump go on
                    logger.exception("could not start %s", ev[2])
                    self.transport.reply(ev[1], None, grpc.StatusCode.INTERNAL.value[0],
                                         f"the server could not start the call: {type(exc).__name__}: {exc}", [])
                continue
            ctx = self._calls.get(ev[1])
            if ctx is None:
                continue
            if kind == self._message:
                ctx._messages.put_nowait(ev[2])
            elif kind == self._half_close:
                ctx._messages.put_nowait(_EOF)
            elif kind == self._written:
                ctx._written(ev[2])
            elif kind == self._cancel:
                ctx._cancelled = True
                if ctx._task is not None:
                    ctx._task.cancel()

    def _begin(self, call_id: int, method: str, data: bytes | None, metadata: tuple, timeout_s: float,
               peer: str) -> None:
        handler = self._handler(method, metadata)
        if handler is None:
            self.transport.reply(call_id, None, grpc.StatusCode.UNIMPLEMENTED.value[0], f"Method not found: {method}", [])
            return
        ctx = ServicerContext(self, call_id, metadata, timeout_s, peer)
        ctx._serialize = handler.response_serializer or _identity
        if handler.request_streaming:
            ctx._messages = asyncio.Queue()
        self._calls[call_id] = ctx
        ctx._task = self._loop.create_task(self._run(handler, ctx, data))
        # finishes the call when the task ends, however it ends: a task cancelled before its first step (its
        # client's deadline passed in the same burst of events) never runs _run's body
        ctx._task.add_done_callback(lambda task, ctx=ctx: self._done(ctx, task))

    def _done(self, ctx: ServicerContext, task: asyncio.Task) -> None:
        self._calls.pop(ctx._id, None)
        payload = None if task.cancelled() else task.result()
        if task.cancelled() and not ctx._cancelled and ctx._code == grpc.StatusCode.OK:
            ctx._code, ctx._details = grpc.StatusCode.CANCELLED, "the server cancelled the call (stopping)"
        ctx._finish(payload)  # exactly once per call: grpc++ waits for it even after a cancel

    async def _run(self, handler: grpc.RpcMethodHandler, ctx: ServicerContext, data: bytes | None) -> bytes | None:
        """Run the handler; the last message to send (None: none). Every failure becomes the context's status;
        only a task cancelled before its first step ends cancelled (`_done` gives that call its status)."""
        payload = None
        try:
            if handler.request_streaming:
                request: Any = _requests(ctx._messages, handler.request_deserializer or _identity)
            else:
                try:
                    request = (handler.request_deserializer or _identity)(data)
                except Exception:  # noqa: BLE001 - a malformed message is the client's error
                    ctx._code, ctx._details = grpc.StatusCode.INVALID_ARGUMENT, BAD_MESSAGE
                    return None
            fn = handler.unary_unary or handler.stream_unary
            if fn is not None and not inspect.iscoroutinefunction(fn):  # e.g. a servicer base class's
                # "Method not implemented!" stub: off the loop, as a sync server would run it
                response = await asyncio.get_running_loop().run_in_executor(None, fn, request, ctx)
            elif fn is not None:
                response = await fn(request, ctx)
            if fn is not None:
                if response is not None and ctx._code == grpc.StatusCode.OK:
                    payload = ctx._serialize(response)
                return payload
            result = (handler.unary_stream or handler.stream_stream)(request, ctx)
            if inspect.isasyncgen(result):
                async for item in result:
                    await ctx.write(item)
            else:  # a coroutine that writes through the context (grpc's health Watch)
                await result
        except _Abort:
            pass
        except asyncio.CancelledError:  # handled here (not left to `_done`) so the handler's async generator
            # is dropped with this frame and closed now, as grpc.aio does, not when the task's traceback goes
            if not ctx._cancelled and ctx._code == grpc.StatusCode.OK:
                ctx._code, ctx._details = grpc.StatusCode.CANCELLED, "the server cancelled the call (stopping)"
        except Exception as exc:  # noqa: BLE001 - as grpc: an escaped exception is UNKNOWN (unless the handler
            # set a status first, like the "not implemented" stubs), never a crash
            if ctx._code == grpc.StatusCode.OK:
                logger.exception("unhandled error in %s", handler)
                ctx._code, ctx._details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}"
        return payload


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple) -> None:
        self.method, self.invocation_metadata = method, metadata


async def _requests(queue: asyncio.Queue, deserialize: Any):
    while True:
        data = await queue.get()
        if data is _EOF:
            return
        yield deserialize(data)


def _identity(x: Any) -> Any:
    return x
