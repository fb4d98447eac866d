"""The native gRPC frontend (`grpc_frontend="native"`): each LatentIngress replica serves gRPC itself.

Owns the server side of the transport in that mode; the RPC handlers are servicer.py's (the same ones Ray
Serve's gRPC proxy calls in the "serve" mode, serve_proxy.py), over the core's operations. Pieces: a replica
(replica.py `NativeReplica`, the Serve deployment body) starts and supervises its serving processes
(`ServingProcess` here; the child runs `serving_process_main` and holds `NativeServing`: the operations with
the models in-process and a `NativeGrpcServer`); `NativeGrpcServer` serves on its own thread and event loop
over the configured transport (transport.py), on `host:grpc_port` with SO_REUSEPORT plus a private health
port; `Admission` bounds running and queued calls per serving process; connections age out
(`max_connection_age_s`) so they rebalance; a stopping replica drains without failing a call. Why a child
process, the drain sequence and the rest: docs/architecture.md, "Native frontend".
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from latentserve import errors
from latentserve.errors import OverloadedError, UnauthenticatedError, UnavailableError
from latentserve.metadata import AUTHORIZATION_KEY
from latentserve.services.config import ServeConfig
from latentserve.services.core.operations import LatentOperations, check_token
from latentserve.services.frontends.grpc import transport as grpc_transport
from latentserve.services.frontends.grpc.servicer import INGRESS_NAME, SERVICE_NAME, LatentServiceHandlers
from latentserve.services.frontends.grpc.status import StatusSet, set_status
from latentserve.services.observability import metrics
from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc

logger = logging.getLogger("ray.serve")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # same as the client: bulk float32 batches fit, a broken peer cannot OOM us
SERVER_OPTIONS = (
    ("grpc.so_reuseport", 1),  # replicas on one node share grpc_port (Linux default; explicit on purpose)
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # clients keep idle channels open with 60 s keepalive pings (latentserve/client/ CHANNEL_OPTIONS)
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
CONNECTION_AGE_GRACE_S = 30.0  # calls still running on an aged connection get this long (streams included)
NATIVE_GRACE_S = 10.0  # RPCs in flight when the server stops get this long
AUTOSCALING_METRIC = "grpc_requests"  # a replica's running + queued gRPC requests (record_autoscaling_stats)
_LISTEN, _ESTABLISHED = "0A", "01"  # TCP states in /proc/net/tcp


def server_options(config: ServeConfig) -> list[tuple[str, int]]:
    opts = list(SERVER_OPTIONS)
    if config.frontend.max_connection_age_s > 0:
        opts += [("grpc.max_connection_age_ms", int(config.frontend.max_connection_age_s * 1000)),
                 ("grpc.max_connection_age_grace_ms", int(CONNECTION_AGE_GRACE_S * 1000))]
    return opts


# -------------------------------------------------------------------------------------------- admission
class Admission:
    """At most `max_ongoing` holders; up to `max_queued` more wait in FIFO order (-1 = unbounded); beyond that
    `acquire` raises OverloadedError at once. Event-loop only (not thread-safe), O(1) per call."""

    def __init__(self, max_ongoing: int, max_queued: int) -> None:
        self.max_ongoing, self.max_queued = int(max_ongoing), int(max_queued)
        self.ongoing = 0
        self.rejected = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.ongoing < self.max_ongoing and not self._waiters:
            self.ongoing += 1
            return
        if 0 <= self.max_queued <= len(self._waiters):
            self.rejected += 1
            raise OverloadedError(
                f"server is at capacity ({self.ongoing} requests running, {len(self._waiters)} queued), retry later"
            )
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # resolved by release(): the slot is handed over, `ongoing` stays counted
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot, then cancelled: pass it on
                self.release()
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.ongoing -= 1


# -------------------------------------------------------------------------------------------- servicer
def _rpc_methods() -> list[tuple[str, bool]]:
    """(name, server_streaming) of every LatentService RPC, from the proto descriptor."""
    service = pb.DESCRIPTOR.services_by_name["LatentService"]
    return [(m.name, bool(m.server_streaming)) for m in service.methods]


class LatentServicer:
    """grpc.aio servicer whose methods are the LatentServiceHandlers wrapped with admission control and the
    optional server-side timeout. Built from the service descriptor, so every RPC of the contract is served
    by the handlers' method of the same name (no second copy of any handler)."""

    def __init__(self, handlers: Any, admission: Admission, timeout_s: float) -> None:
        self._handlers = handlers
        self._admission = admission
        self._timeout = float(timeout_s) or None
        self._status_set = StatusSet
        self._fail = set_status
        for name, streaming in _rpc_methods():
            method = getattr(handlers, name)
            setattr(self, name, self._stream(name, method) if streaming else self._unary(name, method))

    def _unary(self, rpc: str, method: Callable[..., Awaitable[Any]]):
        admission, timeout, fail = self._admission, self._timeout, self._fail
        empty = _response_type(rpc)

        @metrics.owns_record(rpc)  # so refused and timed-out calls are counted too (`fail` records the code)
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                await admission.acquire()
            except OverloadedError as exc:
                fail(context, exc, rpc)
                return empty()
            try:
                if timeout is None:
                    return await method(request, context)
                return await asyncio.wait_for(method(request, context), timeout)
            except asyncio.TimeoutError as exc:  # request_timeout_s passed (the handler was cancelled)
                fail(context, exc, rpc)
                return empty()
            finally:
                admission.release()

        handler.__name__ = rpc
        return handler

    def _stream(self, rpc: str, method: Callable[..., AsyncIterator[Any]]):
        admission, timeout, fail, status_set = self._admission, self._timeout, self._fail, self._status_set

        @metrics.counted_stream(rpc, images=False)  # as in _unary; the handler counts the frames
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                await admission.acquire()
            except OverloadedError as exc:
                fail(context, exc, rpc)
                return
            t_end = None if timeout is None else time.monotonic() + timeout
            try:
                stream = method(request, context)
                while True:
                    try:
                        if t_end is None:
                            item = await stream.__anext__()
                        else:
                            item = await asyncio.wait_for(stream.__anext__(), max(0.0, t_end - time.monotonic()))
                    except StopAsyncIteration:
                        return
                    yield item
            except status_set:  # the handler already put the status on the context
                return
            except asyncio.TimeoutError as exc:
                fail(context, exc, rpc)
                return
            finally:
                admission.release()

        handler.__name__ = rpc
        return handler


def _reflection_servicer(names: list[str], token: str) -> Any:
    """grpc's asyncio reflection servicer; with `token`, a stream without `authorization: Bearer <token>`
    ends UNAUTHENTICATED before any answer (what a server exposes is for its clients only)."""
    servicer = reflection.aio.ReflectionServicer(names)
    if not token:
        return servicer
    inner = servicer.ServerReflectionInfo

    async def guarded(request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        sent = ""
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION_KEY:
                sent = value if isinstance(value, str) else value.decode("latin-1")
        try:
            check_token(token, sent)
        except UnauthenticatedError as exc:
            context.set_code(grpc.StatusCode.UNAUTHENTICATED)
            context.set_details(str(exc))
            return
        async for response in inner(request_iterator, context):
            yield response

    servicer.ServerReflectionInfo = guarded
    return servicer


def _response_type(rpc: str):
    service = pb.DESCRIPTOR.services_by_name["LatentService"]
    full = service.methods_by_name[rpc].output_type.full_name  # e.g. latentserve.v1.DecodeResponse
    return getattr(pb, full.rsplit(".", 1)[1])


# -------------------------------------------------------------------------------------------- the server
def check_serving(channel: grpc.Channel, port: int, timeout_s: float) -> None:
    """grpc.health.v1 Check ("") over `channel` must answer SERVING; UnavailableError otherwise."""
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError as exc:
        raise UnavailableError(f"gRPC health check on port {port} failed: {exc.code().name}: {exc.details()}") from None
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        raise UnavailableError(f"gRPC server on port {port} reports {status}")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (Ray Serve's dependencies bring it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # a bare IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}"


def _socket_inodes(pid: int | str = "self") -> set[str]:
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return out
    for fd in names:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _tcp_sockets(port: int, state: str) -> set[str] | None:
    """Inodes of the TCP sockets in `state` whose local port is `port`, in this network namespace (Linux
    /proc/net/tcp{,6}; None where there is no such table)."""
    found: set[str] = set()
    seen_table = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        seen_table = True
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == state and int(parts[1].rsplit(":", 1)[1], 16) == port:
                found.add(parts[9])
    return found if seen_table else None


def listening_sockets(port: int) -> set[str] | None:
    """Inodes of every TCP socket listening on `port` (any process; None: cannot tell on this OS)."""
    return _tcp_sockets(port, _LISTEN)


def close_listeners(port: int) -> int:
    """Stop this process's listening sockets on `port` from accepting (shutdown(SHUT_RD): on Linux the socket
    leaves the SO_REUSEPORT group, so the kernel sends new connections to the other listeners; accepted
    connections are untouched). Returns how many sockets were closed."""
    listening = listening_sockets(port) or set()
    closed = 0
    for fd_name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd_name}")
        except OSError:
            continue
        if not (target.startswith("socket:[") and target[8:-1] in listening):
            continue
        try:
            with socket.socket(fileno=os.dup(int(fd_name))) as sock:
                sock.shutdown(socket.SHUT_RD)
            closed += 1
        except OSError:
            logger.warning("could not close listening socket fd %s", fd_name, exc_info=True)
    return closed


class NativeGrpcServer:
    """One replica's gRPC server (see the module docstring). `start()` binds and serves or raises;
    `probe()` is the replica health check; `stop()` drains and stops; `call(coro)` runs a coroutine on the
    server's event loop from any thread (e.g. stats that must not race the request path)."""

    def __init__(self, handlers: Any, config: ServeConfig) -> None:
        self.handlers = handlers
        self.config = config
        self.port = config.frontend.grpc_port
        self.private_port = 0
        self.admission = Admission(config.scaling.max_ongoing_requests, config.scaling.max_queued_requests)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None  # grpc.aio.Server or grpc_transport.CompiledServer
        self._health: Any = None
        self._done: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._probe_channel: grpc.Channel | None = None
        self.transport = ""  # "cxx" or "grpcio" once started (services/frontends/grpc/transport.py)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> None:
        self._thread = threading.Thread(target=self._main, name="latentserve-grpc", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise UnavailableError(f"gRPC server on port {self.port} did not start within {timeout_s:.0f}s")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                logger.exception("latentserve gRPC server loop failed")
        finally:
            try:
                # background tasks (batchers, cache writers) end with the loop
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _serve(self) -> None:
        self._done = asyncio.Event()
        self.transport = grpc_transport.resolve(self.config.frontend.grpc_transport)
        if self.transport != "cxx" and self.config.frontend.grpc_transport == "auto":  # a cluster node without the build
            logger.warning("the compiled gRPC transport is unavailable (%s): serving over grpc.aio, at about twice "
                           "the CPU per small request", grpc_transport.import_error())
        server = grpc_transport.make_server(self.transport, server_options(self.config))
        pb_grpc.add_LatentServiceServicer_to_server(
            LatentServicer(self.handlers, self.admission, self.config.scaling.request_timeout_s), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        # the asyncio servicer for either transport (enable_server_reflection picks by the server's class)
        if self.config.frontend.reflection != "off":
            names = [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
            token = self.config.frontend.api_token if self.config.frontend.reflection == "auth" else ""
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(_reflection_servicer(names, token), server)
        _, self.private_port = await grpc_transport.listen(
            server, [_bind_address(self.config.frontend.host, self.port), "127.0.0.1:0"])
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        self._ready.set()
        await self._done.wait()

    def call(self, coro: Awaitable[Any]) -> concurrent.futures.Future:
        """Run `coro` on the server's event loop (thread-safe); returns a concurrent Future."""
        if self._loop is None or self._loop.is_closed():
            raise UnavailableError("the gRPC server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]

    # -- health -----------------------------------------------------------------------------------------
    def probe(self, timeout_s: float = 5.0) -> None:
        """Serve's replica health check: grpc.health.v1 Check through this replica's private port must
        answer SERVING (so the thread, the event loop and the server all work); UnavailableError otherwise."""
        if self._stopped:
            return  # draining: Serve is already replacing this replica
        if self._thread is None or not self._thread.is_alive():
            raise UnavailableError(f"the gRPC server thread of port {self.port} is not running")
        if self._probe_channel is None:
            self._probe_channel = grpc.insecure_channel(f"127.0.0.1:{self.private_port}")
        check_serving(self._probe_channel, self.port, timeout_s)

    def stats(self) -> dict:
        return {"port": self.port, "transport": self.transport, "ongoing": self.admission.ongoing,
                "queued": self.admission.queued, "rejected": self.admission.rejected}

    # -- drain and stop ---------------------------------------------------------------------------------
    def _open_connections(self) -> int:
        """Client connections this process accepted on the shared port that are still open."""
        established = _tcp_sockets(self.port, _ESTABLISHED) or set()
        return len(established & _socket_inodes())

    def _shed_connections(self, max_wait_s: float, peers: tuple[int, ...] = ()) -> str:
        """Close our listener (others take new connections) and wait until our clients' connections have
        aged out (they reconnect elsewhere without failing a call), at most `max_wait_s`. Listeners of the
        processes `peers` (this replica's other serving processes, stopping too) do not count as others."""
        if self.config.frontend.max_connection_age_s <= 0:
            return "connection ageing off"
        if not other_listeners(self.port, ("self", *peers)):
            return "no other listener to hand clients to"
        if not close_listeners(self.port):
            return "could not close the listener"
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_wait_s:
            if self._open_connections() == 0:
                return f"clients moved to other listeners in {time.monotonic() - t0:.1f}s"
            time.sleep(0.1)
        return f"{self._open_connections()} connections still open after {max_wait_s:.0f}s"

    def set_not_serving(self) -> None:
        """Health NOT_SERVING from now on (load balancers stop sending new connections)."""
        if self._loop is None or self._loop.is_closed() or self._health is None:
            return
        try:
            self.call(self._health.enter_graceful_shutdown()).result(5)
        except Exception:  # noqa: BLE001 - best effort: stopping matters more than the health flag
            logger.warning("could not set gRPC health to NOT_SERVING", exc_info=True)

    def stop(self, grace_s: float, drain_s: float = 0.0, peers: tuple[int, ...] = ()) -> None:
        """NOT_SERVING, wait `drain_s`, hand the clients over to the other listeners of the port (when there
        are any: connections age out within max_connection_age), then stop the server: RPCs in flight get
        `grace_s` to finish. Waiting for a replacement replica is the supervisor's job (`ServingProcess`).
        Idempotent; blocks the calling thread (never call it on the server loop)."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if self._server is None or self._loop is None or self._loop.is_closed():
            return
        if threading.current_thread() is self._thread:  # e.g. garbage collection on the server loop itself
            self._loop.create_task(self._server.stop(0)).add_done_callback(lambda _: self._done.set())
            return
        self.set_not_serving()
        if drain_s > 0:
            time.sleep(drain_s)
        # connections age out within max_connection_age (+10% jitter); calls on them within the age grace
        shed = self._shed_connections(1.1 * self.config.frontend.max_connection_age_s + 2.0, peers)
        logger.info("stopping the gRPC server on port %d (%s; %d requests running)", self.port, shed,
                    self.admission.ongoing)

        async def _stop() -> None:
            await self._server.stop(grace_s)
            self._done.set()

        try:
            self.call(_stop()).result(grace_s + 10)
        except Exception:  # noqa: BLE001
            logger.warning("gRPC server did not stop cleanly", exc_info=True)
        if self._thread is not None:
            self._thread.join(5)
        if self._probe_channel is not None:
            self._probe_channel.close()


def other_listeners(port: int, pids: tuple = ("self",)) -> bool | None:
    """True when a socket not owned by the processes `pids` listens on `port` (None: cannot tell here)."""
    listening = listening_sockets(port)
    if listening is None:
        return None
    mine: set[str] = set()
    for pid in pids:
        mine |= _socket_inodes(pid)
    return bool(listening - mine)


UPDATE_GRACE_S = 3.0  # stop-then-start rollouts: time Serve's controller takes to create the replacement


def wait_for_replacement(port: int, pids: tuple, replacement_state: Callable[[], str], drain_s: float,
                         max_wait_s: float) -> str:
    """Block until a stopping replica may hand over its port: after `drain_s`, as soon as another socket
    (not owned by `pids`) listens on it, or no replacement is starting (`replacement_state()`: "starting" |
    "updating" | "none", polled every 0.25 s), or after `max_wait_s` at most. Returns why."""
    t0 = time.monotonic()
    last_check = -1.0
    state = "none"
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= max(max_wait_s, drain_s):
            return f"replacement not listening after {elapsed:.0f}s"
        if elapsed >= drain_s:
            if other_listeners(port, pids):
                return "another replica listens on the port"
            if elapsed - last_check >= 0.25:
                last_check = elapsed
                state = _call_with_timeout(replacement_state, 3.0, default="none")
            if state == "none" or (state == "updating" and elapsed >= drain_s + UPDATE_GRACE_S):
                return "no replacement starting"
        time.sleep(0.05)


def _call_with_timeout(fn: Callable[[], Any], timeout_s: float, default: Any) -> Any:
    """fn() in a daemon thread; `default` when it raises or does not return in time (e.g. Serve's controller
    is itself shutting down when the whole instance stops)."""
    box: list = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception:  # noqa: BLE001
            logger.debug("replacement check failed", exc_info=True)

    t = threading.Thread(target=run, daemon=True, name="latentserve-drain-check")
    t.start()
    t.join(timeout_s)
    return box[0] if box else default


# ------------------------------------------------------------------------------- the serving process
# Each native replica runs its operations + NativeGrpcServer in a child process ("serving process") and
# supervises it. Why not in the replica itself: grpc.aio binds its completion-queue poller to the first
# event loop that used grpc.aio in a process, which inside a Ray worker is Ray's own loop; every gRPC event
# of our server would then take a detour through Ray's loop thread (benchmarks/README.md). The child also
# keeps Ray's threads off the serving process's GIL.
NATIVE_REPLACEMENT_WAIT_S = 45.0  # a stopping replica waits at most this long for its replacement to listen
# glibc malloc of a serving process (unless the environment sets them): few arenas, and a fixed mmap threshold,
# so the large short-lived buffers of gradient passes (torch activations) are mapped and unmapped instead of
# fragmenting the heap, whose freed pages glibc keeps; the soak's RSS drift (benchmarks/README.md) is the check.
SERVING_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
STARTUP_TIMEOUT_S = 600.0  # loading and checking every model in the serving process


def _control(conn: Any, timeout_s: float | None, cmd: str, **kw: Any) -> Any:
    conn.send({"cmd": cmd, **kw})
    if not conn.poll(timeout_s):
        raise UnavailableError(f"the serving process did not answer {cmd!r} within {timeout_s}s")
    reply = conn.recv()
    if "error" in reply:
        raise UnavailableError(f"serving process: {cmd} failed: {reply['error']}")
    return reply.get("result")


class ServingProcess:
    """The replica's side of its serving process: start it, query it (`call`), health-probe it, drain it.

    Control channel: a socketpair carrying pickled dicts (multiprocessing.connection). The child exits when
    the channel closes, so it never outlives its replica, even one killed with SIGKILL."""

    def __init__(self, config: ServeConfig, models: dict[str, int],
                 identity: tuple[tuple[str, str], ...] = ()) -> None:
        self.config = config
        self.models = dict(models)
        self.identity = tuple(identity)  # trailing metadata naming the replica (services/observability/identity.py)
        self.proc: Any = None
        self.port = config.frontend.grpc_port
        self.private_port = 0
        self._conn: Any = None
        self._lock = threading.Lock()  # one control exchange at a time (Serve calls from several threads)
        self._probe_channel: grpc.Channel | None = None
        self._stopped = False

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # the replica may run with a runtime_env (working_dir, py_modules): same import path for the child
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        for key, value in SERVING_MALLOC_ENV.items():
            env.setdefault(key, value)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "latentserve.services.frontends.grpc.native", "--control-fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, close_fds=True)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send({"config": self.config.to_dict(), "models": self.models, "identity": self.identity})
        t_end = time.monotonic() + timeout_s
        while not self._conn.poll(1.0):
            if self.proc.poll() is not None:
                raise UnavailableError(f"the serving process exited with code {self.proc.returncode} while "
                                       f"starting (its log is in this replica's stderr)")
            if time.monotonic() > t_end:
                self.proc.kill()
                raise UnavailableError(f"the serving process did not start within {timeout_s:.0f}s")
        try:
            ready = self._conn.recv()
        except EOFError:
            self.proc.wait(10)
            raise UnavailableError(f"the serving process exited with code {self.proc.returncode} while starting") from None
        if "error" in ready:
            self.proc.wait(10)
            kind = ready.get("kind", "")
            cls = next((c for c in (errors.ValidationError, errors.NotFoundError, errors.IntegrityError,
                                    errors.UnavailableError) if c.__name__ == kind), errors.UnrecoverableError)
            raise cls(f"serving process: {ready['error']}")
        self.private_port = int(ready["private_port"])
        logger.info("latentserve serving process pid %d: gRPC on %s:%d (private health port %d)", self.proc.pid,
                    self.config.frontend.host, self.port, self.private_port)

    def call(self, cmd: str, timeout_s: float = 30.0, **kw: Any) -> Any:
        if self._conn is None or self._stopped:
            raise UnavailableError("the serving process is not running")
        with self._lock:
            try:
                return _control(self._conn, timeout_s, cmd, **kw)
            except (EOFError, OSError) as exc:
                raise UnavailableError(f"the serving process is gone ({type(exc).__name__})") from None

    def probe(self, timeout_s: float = 5.0) -> None:
        """Serve's health check of the replica: the child is alive and its gRPC health service (through the
        private port, so exactly this replica's server) answers SERVING."""
        if self._stopped:
            return  # draining: Serve is already replacing this replica
        if self.proc is None or self.proc.poll() is not None:
            raise UnavailableError(f"the serving process exited (code {getattr(self.proc, 'returncode', None)})")
        if self._probe_channel is None:
            self._probe_channel = grpc.insecure_channel(f"127.0.0.1:{self.private_port}")
        check_serving(self._probe_channel, self.port, timeout_s)

    def stop(self, grace_s: float, replacement_state: Callable[[], str] | None = None,
             replacement_wait_s: float = NATIVE_REPLACEMENT_WAIT_S, peers: tuple[int, ...] = ()) -> None:
        """Drain and stop the child: NOT_SERVING; `drain_period_s`; while a replacement replica is starting,
        wait (<= `replacement_wait_s`) until it listens on the port; then the child hands its clients over
        and stops (NativeGrpcServer.stop). `peers`: pids of the replica's other serving processes, stopping
        too, whose listeners are no replacement. Idempotent; blocks."""
        if self._stopped or self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.call("not_serving", timeout_s=10)
                why = wait_for_replacement(self.port, (self.proc.pid, *peers), replacement_state or (lambda: "none"),
                                           self.config.frontend.drain_period_s, replacement_wait_s)
                logger.info("stopping the serving process pid %d (%s)", self.proc.pid, why)
                self.call("stop", timeout_s=1.1 * self.config.frontend.max_connection_age_s + grace_s + 30, grace_s=grace_s,
                          peers=list(peers))
        except Exception:  # noqa: BLE001 - whatever happened, the child must end
            logger.warning("serving process did not stop cleanly", exc_info=True)
        finally:
            self._stopped = True
            if self._conn is not None:
                self._conn.close()  # the child exits on EOF if it is still running
            try:
                self.proc.wait(15)
            except Exception:  # noqa: BLE001
                self.proc.kill()
                self.proc.wait(5)
            if self._probe_channel is not None:
                self._probe_channel.close()


def reset_niceness(target: int = 0) -> bool:
    """Set this thread's nice value (on Linux a per-thread value that new threads inherit) to `target`.

    A serving process inherits nice 15 from its Ray worker; at that value every normal-priority process on the
    node preempts the gRPC server (ServeConfig.reset_serving_niceness). Lowering it needs CAP_SYS_NICE:
    without, the value stays and a warning says so. Returns whether the value is now `target`."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != target:
            os.setpriority(os.PRIO_PROCESS, 0, target)
        return True
    except OSError as exc:  # EPERM/EACCES without CAP_SYS_NICE
        logger.warning("serving process keeps nice %d (cannot set %d: %s); start Ray's nodes with "
                       "RAY_worker_niceness=0 (docker-compose.yml does), or set reset_serving_niceness false to "
                       "silence this", os.getpriority(os.PRIO_PROCESS, 0), target, exc)
        return False


class NativeServing:
    """What a serving process holds: the operations with the models in-process, the gRPC handlers over them
    and the replica's gRPC server. Starting it loads the models, then binds and serves; `close` drains and
    stops the server, then the models."""

    def __init__(self, config: ServeConfig, models: dict[str, int], identity: tuple[tuple[str, str], ...] = ()) -> None:
        self.config = config
        device = "cuda" if config.scaling.num_gpus > 0 else "cpu"
        self.ops = LatentOperations.open(config, models, device=device)
        # after the models loaded: a replica that failed to start is not counted as live
        metrics.replica_up(INGRESS_NAME, self.ops.pool.default_versions)
        self.server = NativeGrpcServer(LatentServiceHandlers(self.ops, identity), config)
        self.server.start()
        logger.info("latentserve native gRPC server on %s:%d (private health port %d): models %s, backend %s, "
                    "auth=%s", config.frontend.host, config.frontend.grpc_port, self.server.private_port,
                    self.ops.pool.default_versions, config.served.backend, bool(config.frontend.api_token))

    async def stats(self) -> dict:
        """The operations' statistics plus the gRPC server's (run on the server loop: the state is its own)."""
        return {**await self.ops.stats(), "colocate": True, "grpc": self.server.stats()}

    def close(self, grace_s: float = NATIVE_GRACE_S, drain_s: float = 0.0, peers: tuple[int, ...] = ()) -> None:
        self.server.stop(grace_s, drain_s, peers)
        self.ops.close()


def serving_process_main(argv: list[str] | None = None) -> int:
    """Entry point of a serving process (`python -m latentserve.services.frontends.grpc.native --control-fd N`):
    receive {config, models}, load the models and start the gRPC server (`NativeServing`), report the ports,
    then serve control commands until "stop" or until the supervisor goes away."""
    parser = argparse.ArgumentParser(description="latentserve serving process (started by a native replica)")
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(levelname)s %(asctime)s latentserve-serving[{os.getpid()}] -- %(message)s")
    logger.propagate = True
    conn = Connection(args.control_fd)
    spec = conn.recv()
    if spec["config"].get("reset_serving_niceness", True):  # the config travels as ServeConfig.to_dict()
        reset_niceness()  # before any thread starts: threads inherit the value of the thread that starts them
    try:
        serving = NativeServing(ServeConfig.from_dict(spec["config"]), spec["models"],
                                identity=spec.get("identity", ()))
    except BaseException as exc:  # noqa: BLE001 - reported to the replica, which fails its start
        logger.exception("serving process failed to start")
        conn.send({"error": f"{type(exc).__name__}: {exc}", "kind": type(exc).__name__})
        return 1
    server = serving.server
    conn.send({"ready": True, "port": server.port, "private_port": server.private_port})
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the replica is gone: stop at once
            serving.close(grace_s=1.0)
            return 0
        cmd = msg.get("cmd")
        try:
            if cmd == "stats":
                result = server.call(serving.stats()).result(30)
            elif cmd == "load":
                result = float(server.admission.ongoing + server.admission.queued)
            elif cmd == "not_serving":
                result = server.set_not_serving()
            elif cmd == "stop":
                serving.close(grace_s=float(msg.get("grace_s", NATIVE_GRACE_S)), peers=tuple(msg.get("peers", ())))
                conn.send({"result": None})
                return 0
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send({"result": result})
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the process keeps serving
            conn.send({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    # run the canonical module's copy (the serving process imports latentserve.services.frontends.grpc.native,
    # not __main__)
    from latentserve.services.frontends.grpc.native import serving_process_main as _main

    raise SystemExit(_main())
