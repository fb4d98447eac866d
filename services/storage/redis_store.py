"""Redis behind latent handles and the serving caches, shared by every replica on every node.

Owns `RedisBackend` (one Redis endpoint: redis.asyncio clients per event loop, short timeouts, a circuit
breaker, the fail-fast check at start), `RedisLatentStore` (handles) and `RedisKV` (the caches' KV). Promises:
one round trip per batch (MGET; writes pipelined, awaited for handles, in the background for caches); a call
never hangs (timeouts, then the breaker skips Redis: caches are bypassed, handle calls fail UNAVAILABLE; one
probe per backoff window, no retry storm); a wrong password or db fails at start in one line; passwords are
never logged. Configuration, key layout and the two-Redis deployment: docs/architecture.md, "Handles, caches
and Redis".
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import weakref
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

import numpy as np

from latentserve.errors import NotFoundError, UnavailableError, ValidationError
from latentserve.services.observability import metrics
from latentserve.services.storage.cache import KV, CacheBypass
from latentserve.services.storage.handles import InProcessLatentStore, LatentStore, pack_latent, unpack_latent

logger = logging.getLogger("ray.serve")
T = TypeVar("T")
MAX_PENDING_WRITES = 256  # background cache writes in flight per KV; beyond that writes are dropped (counted)
LOCAL_HANDLE_ENTRIES = 10_000  # cap of each replica's read-through copy of handles (config handle_store_size)
LOCAL_HANDLE_BYTES = 32 << 20  # ... and of its bytes
CHECK_TIMEOUT_S = 2.0  # the start check may wait a little longer than request-path calls
JITTER = 0.2


def redact_url(url: str) -> str:
    """`scheme://host:port/db` without credentials or query (for logs and error messages)."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path or ''}"
    except ValueError:
        return "<unparsable redis url>"


# ---------------------------------------------------------------------------------------------- breaker
class CircuitBreaker:
    """closed -> (failure) -> open for a backoff window -> half-open: ONE probe call -> closed or open longer.

    The backoff starts at `base_s`, doubles on each failed probe up to `max_s`, and is jittered by +-20% so
    replicas do not probe in lockstep. Failures of calls that were already in flight when the breaker opened
    do not extend the window. Thread-safe; `allow()` is one attribute read while closed."""

    def __init__(self, base_s: float = 0.2, max_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        if not (0 < base_s <= max_s):
            raise ValidationError(f"breaker backoff must satisfy 0 < base ({base_s}) <= max ({max_s})")
        self.base_s, self.max_s = float(base_s), float(max_s)
        self._clock, self._rand = clock, rand
        self._lock = threading.Lock()
        self.closed = True
        self._open_until = 0.0
        self._backoff = 0.0
        self._probing = False
        self.opened = 0  # times the breaker opened
        self.last_error = ""

    def allow(self) -> bool:
        """May a call go to Redis now? While open: False, except for the one half-open probe."""
        if self.closed:
            return True
        with self._lock:
            if self.closed:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        if self.closed and not self._probing:
            return
        with self._lock:
            was_open = not self.closed
            self.closed, self._probing, self._backoff = True, False, 0.0
        if was_open:
            logger.warning("redis: reachable again; breaker closed (caching resumes)")

    def failure(self, exc: BaseException | str, probe: bool) -> None:
        """Record a failed call. `probe`: this call was let through by a half-open breaker."""
        with self._lock:
            self.last_error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
            if not self.closed and not probe:
                return  # already open: a straggler from before the breaker opened
            self._backoff = min(self.max_s, self._backoff * 2 if self._backoff else self.base_s)
            window = self._backoff * (1.0 + JITTER * (2.0 * self._rand() - 1.0))
            self._open_until = self._clock() + window
            self.closed, self._probing = False, False
            self.opened += 1
        logger.warning("redis: %s; skipping Redis for %.2f s", self.last_error, window)

    def abandon_probe(self) -> None:
        """The probe ended without a verdict (cancelled): let the next call probe."""
        with self._lock:
            self._probing = False

    def retry_in(self) -> float:
        return 0.0 if self.closed else max(0.0, self._open_until - self._clock())

    def skipping(self) -> bool:
        """Would a call now be skipped (open, and not yet time for the probe, or the probe is out)?"""
        return not self.closed and (self._probing or self._clock() < self._open_until)

    def snapshot(self) -> dict:
        return {"state": "closed" if self.closed else ("half_open" if self._probing else "open"),
                "opened": self.opened, "backoff_s": round(self._backoff, 3),
                "retry_in_s": round(self.retry_in(), 3), "last_error": self.last_error}


# ---------------------------------------------------------------------------------------------- backend
def _redis_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(errors that mean 'Redis unreachable or unhealthy' -> trip the breaker, all redis errors)."""
    from redis import exceptions as rex

    trip = (rex.ConnectionError, rex.TimeoutError, rex.ReadOnlyError, OSError, asyncio.TimeoutError, EOFError)
    return trip, (rex.RedisError,) + trip


class RedisBackend:
    """One Redis endpoint: per-event-loop redis.asyncio clients with short timeouts, and a circuit breaker.

    `role` ("handles" or "cache") only names it in logs and messages."""

    def __init__(self, url: str, role: str = "cache", timeout_s: float = 0.05, backoff_s: float = 0.2,
                 backoff_max_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValidationError(f"serve config: redis url must start with redis://, rediss:// or unix://, got {redact_url(str(url))!r}")
        if not timeout_s > 0:
            raise ValidationError(f"redis timeout must be > 0 s, got {timeout_s}")
        self.url, self.role, self.timeout_s = url, role, float(timeout_s)
        self.where = redact_url(url)
        self.breaker = CircuitBreaker(backoff_s, backoff_max_s, clock=clock)
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()
        self._clients_lock = threading.Lock()
        self.calls = 0
        self.failures = 0
        self._trip, self._all = _redis_errors()

    def _make_client(self, timeout_s: float, sync: bool = False) -> Any:
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        if sync:
            import redis
            from redis.retry import Retry

            cls: Any = redis.Redis
            retry = Retry(NoBackoff(), 0)
        else:
            import redis.asyncio
            from redis.asyncio.retry import Retry as AsyncRetry

            cls = redis.asyncio.Redis
            # One immediate retry, only for a dead pooled connection (e.g. after a Redis restart): never
            # for timeouts, which would multiply the wait of a slow Redis.
            retry = AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        return cls.from_url(self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=retry,
                            protocol=2, client_name=f"latentserve-{self.role}", health_check_interval=0)

    def client(self) -> Any:
        """The redis.asyncio client of the running event loop (created on first use; connects lazily)."""
        loop = asyncio.get_running_loop()
        c = self._clients.get(loop)
        if c is None:
            with self._clients_lock:
                c = self._clients.get(loop)
                if c is None:
                    c = self._clients[loop] = self._make_client(self.timeout_s)
        return c

    async def call(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run `op(client)` unless the breaker is open. Raises CacheBypass(error=False) when skipped,
        CacheBypass(error=True) when the call failed (connectivity failures also open the breaker)."""
        breaker = self.breaker
        probe = not breaker.closed
        if not breaker.allow():
            metrics.redis_call(self.role, None, skipped=True)
            raise CacheBypass(f"Redis ({self.role}) at {self.where} is unavailable "
                              f"(retrying in {breaker.retry_in():.1f} s; last error: {breaker.last_error})", error=False,
                              cause="not answering; retrying shortly")
        self.calls += 1
        t0 = time.perf_counter()
        try:
            result = await op(self.client())
        except self._trip as exc:
            self.failures += 1
            metrics.redis_call(self.role, time.perf_counter() - t0, error=True)
            breaker.failure(exc, probe)
            raise CacheBypass(f"Redis ({self.role}) at {self.where} failed: {type(exc).__name__}: {exc}", error=True,
                              cause=type(exc).__name__) from None
        except self._all as exc:  # the server answered with an error (e.g. OOM): not a connectivity problem
            self.failures += 1
            metrics.redis_call(self.role, time.perf_counter() - t0, error=True)
            if probe:
                breaker.success()
            raise CacheBypass(f"Redis ({self.role}) at {self.where} refused the command: {exc}", error=True,
                              cause=f"command refused: {type(exc).__name__}") from None
        except BaseException:
            if probe:
                breaker.abandon_probe()
            raise
        metrics.redis_call(self.role, time.perf_counter() - t0)
        breaker.success()
        return result

    def check(self, handles: bool = False, timeout_s: float = CHECK_TIMEOUT_S) -> str:
        """Connect once (sync; for constructors and the CLI). Wrong credentials or db: ValidationError, one
        line. Unreachable: a warning is logged and returned (the service starts and keeps retrying). With
        `handles`, warns when the server's eviction policy could evict live handles. Returns '' when fine."""
        from redis import exceptions as rex

        client = self._make_client(timeout_s, sync=True)
        try:
            client.ping()
            if handles:
                try:
                    policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "")
                except rex.RedisError:  # CONFIG is often disabled on managed Redis: nothing to check then
                    policy = ""
                if policy.startswith("allkeys"):
                    msg = (f"redis: the handle Redis at {self.where} has maxmemory-policy {policy}: it may evict live "
                           f"handles; use noeviction (or volatile-ttl with a separate cache Redis)")
                    logger.warning(msg)
                    return msg
            return ""
        except rex.AuthenticationError as exc:
            raise ValidationError(
                f"serve config: Redis ({self.role}) at {self.where} rejected the credentials: {exc} "
                f"(set the password in the URL: redis://:<password>@host:port/db)") from None
        except rex.ResponseError as exc:
            raise ValidationError(f"serve config: Redis ({self.role}) at {self.where} refused the connection setup: {exc}") from None
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            msg = (f"redis: {self.role} Redis at {self.where} is not reachable at start ({type(exc).__name__}: {exc}); "
                   f"serving without it until it is (caches bypassed, handles UNAVAILABLE)")
            logger.warning(msg)
            return msg
        finally:
            client.close()

    def persistence(self, timeout_s: float = CHECK_TIMEOUT_S) -> str:
        """'' when this Redis persists writes (appendonly yes), else why handles would not survive its
        restart, without the address (logged as a warning, with it). Unknown (CONFIG disabled, unreachable):
        '' and nothing logged."""
        from redis import exceptions as rex

        client = self._make_client(timeout_s, sync=True)
        try:
            conf = client.config_get("appendonly")
            conf.update(client.config_get("save"))
        except (rex.RedisError, OSError):
            return ""
        finally:
            client.close()
        if conf.get("appendonly") == "yes":
            return ""
        snapshots = f"RDB snapshots only (save {conf.get('save')!r}): handles since the last one" if conf.get("save") \
            else "no persistence at all: every handle"
        why = f"appendonly no and {snapshots} would be lost if it restarts; run it with --appendonly yes"
        logger.warning("redis: the handle Redis at %s has %s (docker-compose.yml does)", self.where, why)
        return f"the handle Redis has {why}"  # no address: callers see it (ModelInfo.handle_store)

    async def aclose(self) -> None:
        """Close the current loop's client (its pooled connections)."""
        c = self._clients.pop(asyncio.get_running_loop(), None)
        if c is not None:
            await c.aclose()

    def stats(self) -> dict:
        return {"where": self.where, "calls": self.calls, "failures": self.failures, **self.breaker.snapshot()}


# ---------------------------------------------------------------------------------------------- handles
class RedisLatentStore(LatentStore):
    """Handles in Redis (`SET ... PX ttl`, `MGET`), with a per-replica read-through LRU in front."""

    kind = "redis"

    def __init__(self, backend: RedisBackend, ttl_s: float = 7 * 86_400.0, prefix: str = "ls:",
                 local_entries: int = 10_000, durable: bool = True, detail: str = "") -> None:
        if not ttl_s > 0:
            raise ValidationError(f"handle TTL must be > 0 s, got {ttl_s}")
        self.backend, self.ttl_s, self.prefix = backend, float(ttl_s), prefix
        # Honest handles: the store's epoch (a random id under `<prefix>epoch`, set once by whichever replica
        # comes first) is what this replica saw; a Redis that lost its data comes back without it, so a miss
        # after the epoch changed is reported as a lost handle, not an expired one. A local copy could answer
        # a handle that Redis lost (two replicas answering differently): it is kept only for a durable Redis.
        self.durable, self.epoch = bool(durable), ""
        self.detail = "" if self.durable else (detail or "the handle Redis does not persist its data")
        if not self.durable:
            local_entries = 0
        self._ttl_ms = max(1, int(round(self.ttl_s * 1000)))
        # Handles are content-addressed (immutable), so a local copy can never be stale; it expires with the TTL
        # and is bounded in entries and bytes (LOCAL_HANDLE_BYTES: flow latents are D = 3 H W floats).
        self.local = (InProcessLatentStore(min(local_entries, LOCAL_HANDLE_ENTRIES), ttl_s=self.ttl_s,
                                           max_bytes=LOCAL_HANDLE_BYTES) if local_entries else None)
        self.counters = {"puts": 0, "gets": 0, "hits": 0, "local_hits": 0, "misses": 0, "bypasses": 0, "errors": 0}
        self._lock = threading.Lock()

    def _add(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.counters[k] += v

    def _unavailable(self, exc: CacheBypass, what: str, n: int) -> UnavailableError:
        self._add(bypasses=1, errors=int(exc.error))
        if what.startswith("resolve"):
            metrics.handle_lookups("unavailable", n)
        else:
            metrics.handle_stores("unavailable", n)
        # the caller hears what failed and what to do; where Redis is and why it failed go to the log only
        logger.warning("latent handle store: cannot %s: %s", what, exc)
        return UnavailableError(f"latent handle store unavailable ({exc.cause or 'no answer'}), cannot {what}; retry later"
                                + (", or send latent values instead of handles" if what.startswith("resolve") else
                                   ", or call without return_handles"), retry=False)

    def _saw_epoch(self, value: Any) -> bool:
        """Note the store's epoch as read on a round trip; True when it changed since this replica last saw
        it (Redis lost its data: the epoch key went with it). A changed store drops the local copy."""
        now = value.decode() if isinstance(value, bytes) else str(value or "")
        seen, self.epoch = self.epoch, now
        if not seen or now == seen:
            return False
        if self.local is not None:
            self.local = type(self.local)(self.local.max_entries, ttl_s=self.ttl_s, max_bytes=LOCAL_HANDLE_BYTES)
        logger.warning("latent handle store: Redis lost its data (epoch %s -> %s): handles issued before are lost",
                       seen, now or "none")
        return True

    def _missing(self, handle: str, reset: bool) -> NotFoundError:
        """The NOT_FOUND of a handle Redis does not have: lost with a reset store, or expired / never issued."""
        if reset:
            return NotFoundError(
                f"handle {handle!r:.80} was lost: the handle store was reset (its Redis restarted without "
                f"persistence) after the handle was issued; send the latent values instead")
        since = self.epoch.rpartition("@")[2]
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(since))) if since.isdigit() else ""
        return NotFoundError(
            f"unknown handle {handle!r:.80}: expired (handles live {self.ttl_s / 86_400:g} days after they were "
            f"last issued) or never issued by this service"
            + (f" (or lost, if issued before the handle store was last reset at {when})" if when else
               " (or lost: the handle store has issued no handle since it last started empty)" if not self.epoch else "")
            + "; send the latent values instead")

    def describe(self) -> dict:
        return {"backend": self.kind, "durable": self.durable, "detail": self.detail}

    def check_available(self, what: str) -> None:
        if self.backend.breaker.skipping():
            self._add(bypasses=1)
            metrics.handle_stores("unavailable", 1)
            raise UnavailableError(f"latent handle store unavailable (not answering; retrying shortly), cannot "
                                   f"{what}; retry later, or call without return_handles", retry=False)

    async def aput_many(self, items: list[tuple[str, np.ndarray, int]]) -> None:
        if not items:
            return
        packed = [(self.prefix + "h:" + h, pack_latent(z, label)) for h, z, label in items]
        ttl_ms, epoch_key = self._ttl_ms, self.prefix + "epoch"
        mine = f"{os.urandom(6).hex()}@{int(time.time())}"

        async def op(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            for key, value in packed:
                pipe.set(key, value, px=ttl_ms)
            pipe.set(epoch_key, mine, nx=True)  # the store's epoch: set once, by the first writer
            pipe.get(epoch_key)
            return await pipe.execute()

        try:
            results = await self.backend.call(op)
        except CacheBypass as exc:
            raise self._unavailable(exc, f"store {len(items)} handle(s)", len(items)) from None
        self._saw_epoch(results[-1])
        self._add(puts=len(items))
        metrics.handle_stores("ok", len(items))
        if self.local is not None:
            self.local.put_many(items)

    async def aget_many(self, handles: list[str]) -> list[tuple[np.ndarray, int]]:
        n = len(handles)
        self._add(gets=n)
        found = self.local.lookup(handles) if self.local is not None else [None] * n
        todo = [i for i, e in enumerate(found) if e is None]
        if n - len(todo):
            self._add(local_hits=n - len(todo))
            metrics.handle_lookups("local_hit", n - len(todo))
        if todo:
            keys = [self.prefix + "h:" + handles[i] for i in todo] + [self.prefix + "epoch"]
            try:
                values = await self.backend.call(lambda r: r.mget(keys))
            except CacheBypass as exc:
                raise self._unavailable(exc, f"resolve {len(todo)} handle(s)", len(todo)) from None
            reset = self._saw_epoch(values.pop())
            fetched = []
            for i, v in zip(todo, values):
                if v is None:
                    self._add(hits=len(fetched), misses=1)
                    metrics.handle_lookups("hit", len(fetched))
                    metrics.handle_lookups("miss")
                    raise self._missing(handles[i], reset)
                found[i] = unpack_latent(v)
                fetched.append((handles[i], found[i][0], found[i][1]))
            self._add(hits=len(fetched))
            metrics.handle_lookups("hit", len(fetched))
            if self.local is not None:
                self.local.put_many(fetched)
        return found  # type: ignore[return-value]

    def stats(self) -> dict:
        with self._lock:
            out = {"backend": self.kind, **self.counters}
        out["local_entries"] = len(self.local) if self.local is not None else 0
        out["redis"] = self.backend.stats()
        return out

    def __len__(self) -> int:
        """Handles held locally by this replica (Redis holds them all; see `stats()`)."""
        return len(self.local) if self.local is not None else 0


# ---------------------------------------------------------------------------------------------- caches
class RedisKV(KV):
    """Cache entries in Redis: MGET per batch; writes pipelined in background tasks with `SET ... PX ttl`."""

    kind = "redis"

    def __init__(self, backend: RedisBackend, ttl_s: float = 86_400.0, max_pending: int = MAX_PENDING_WRITES) -> None:
        if not ttl_s > 0:
            raise ValidationError(f"cache TTL must be > 0 s, got {ttl_s}")
        self.backend = backend
        self._ttl_ms = max(1, int(round(float(ttl_s) * 1000)))
        self.max_pending = max_pending
        self._pending: set[asyncio.Task] = set()  # strong refs: the loop keeps only weak ones

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self.backend.call(lambda r: r.mget(keys))

    def put_many(self, items: list[tuple[str, bytes]], on_drop: Callable[[int, bool], None]) -> None:
        if not self.backend.breaker.closed and self.backend.breaker.retry_in() > 0:
            on_drop(len(items), False)  # open breaker: do not even schedule
            return
        if len(self._pending) >= self.max_pending:
            on_drop(len(items), False)
            return
        ttl_ms = self._ttl_ms

        async def op(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, value, px=ttl_ms)
            return await pipe.execute()

        async def write() -> None:
            try:
                await self.backend.call(op)
            except CacheBypass as exc:
                on_drop(len(items), exc.error)

        task = asyncio.get_running_loop().create_task(write())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        mine = [t for t in list(self._pending) if t.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)

    def stats(self) -> dict:
        return {"pending_writes": len(self._pending), "redis": self.backend.stats()}


# ---------------------------------------------------------------------------------------------- start check
def check_redis(config: Any) -> list[str]:
    """Connect once to each configured Redis (for `latentserve serve` before Ray starts): ValidationError for
    wrong credentials / db; returns warning lines (unreachable, risky eviction policy), [] when all is well."""
    out = []
    if config.storage.redis_url:
        msg = RedisBackend(config.storage.redis_url, role="handles").check(handles=True)
        if msg:
            out.append(msg)
    if config.storage.redis_cache_url and config.storage.redis_cache_url != config.storage.redis_url and (config.storage.encode_cache or config.storage.result_cache):
        msg = RedisBackend(config.storage.redis_cache_url, role="cache").check(handles=False)
        if msg:
            out.append(msg)
    return out
