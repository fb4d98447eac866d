"""Latent handles: content-addressed names for stored latents, and the store interface behind them (the
configured store is built by services/storage/factory.py).

A handle is `"<model>:<version>:<hex>"` where `<hex>` is the first 32 hex digits of sha256(latent float32
little-endian bytes + label int64 little-endian bytes) (`latent_digest`), so the same latent of the same model
version always gets the same handle and a handle can never point at different content. The same digest keys
the result cache (services/storage/cache.py), so a Decode by handle can be answered from the cache without fetching
the latent.

Stores (`LatentStore`):
- `InProcessLatentStore`: a bounded LRU (+ TTL) in the ingress process. The default without Redis; handles
  are lost on restart and NOT shared between replicas or processes (single-process deployments only).
- `RedisLatentStore` (services/storage/redis_store.py): shared by every replica and node, survives restarts of the
  service (and of Redis with AOF); selected by `ServeConfig.redis_url` (LATENTSERVE_REDIS_URL).

The ingress uses the async methods (`aput_many` / `aget_many`): a network store must not block the event loop.
The in-process store also keeps sync `put_many` / `get_many` (O(1), never blocks).
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from latentserve.errors import NotFoundError, UnrecoverableError, ValidationError
from latentserve.services.observability import metrics

DIGEST_HEX = 32  # 128 bits of sha256: collisions are not a practical concern for a cache
DEFAULT_HANDLE_TTL_S = 7 * 86_400.0


@dataclass(frozen=True)
class HandleRef:
    """A parsed handle."""

    model: str
    version: int
    digest: str

    def __str__(self) -> str:
        return f"{self.model}:{self.version}:{self.digest}"


def latent_digest(latent: np.ndarray, label: int) -> str:
    """Content digest of one latent (D,) with its class label: 32 hex digits of sha256(f32 LE bytes + i64 LE)."""
    z = np.ascontiguousarray(latent, dtype="<f4").reshape(-1)
    h = hashlib.sha256(z.tobytes())
    h.update(int(label).to_bytes(8, "little", signed=True))
    return h.hexdigest()[:DIGEST_HEX]


def latent_digests(latents: np.ndarray, labels: np.ndarray) -> list[str]:
    """`latent_digest` of every row: latents (N, D), labels (N,); one conversion, then slices of the bytes."""
    n = len(latents)
    zb = memoryview(np.ascontiguousarray(latents, dtype="<f4").reshape(n, -1).tobytes())  # (N, D) f32 LE
    lb = memoryview(np.asarray(labels, dtype="<i8").reshape(n).tobytes())  # (N,) i64 LE
    row = len(zb) // n if n else 0
    sha = hashlib.sha256
    out = []
    for i in range(n):
        h = sha(zb[i * row:(i + 1) * row])
        h.update(lb[i * 8:(i + 1) * 8])
        out.append(h.hexdigest()[:DIGEST_HEX])
    return out


def make_handle(model: str, version: int, latent: np.ndarray, label: int) -> str:
    """The content-addressed handle of one latent (D,) float32 with its class label."""
    return f"{model}:{int(version)}:{latent_digest(latent, label)}"


def parse_handle(handle: str) -> HandleRef:
    """Split a handle; ValidationError (names the handle and the expected form) when it is malformed."""
    parts = handle.rsplit(":", 2) if isinstance(handle, str) else []
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or int(parts[1]) < 1 \
            or len(parts[2]) != DIGEST_HEX or any(c not in "0123456789abcdef" for c in parts[2]):
        raise ValidationError(
            f"malformed handle {handle!r:.80}: expected '<model>:<version>:<{DIGEST_HEX} hex digits>' as issued by the service"
        )
    return HandleRef(parts[0], int(parts[1]), parts[2])


def pack_latent(latent: np.ndarray, label: int) -> bytes:
    """Wire form of a stored latent: label int64 LE (8 bytes) + latent float32 LE (4 * D bytes)."""
    return int(label).to_bytes(8, "little", signed=True) + np.ascontiguousarray(latent, dtype="<f4").reshape(-1).tobytes()


def unpack_latent(data: bytes) -> tuple[np.ndarray, int]:
    """Inverse of `pack_latent`: (latent (D,) float32, read-only view of `data`, label)."""
    if len(data) < 8 or (len(data) - 8) % 4:
        raise UnrecoverableError(f"stored latent has a corrupt length of {len(data)} bytes (expected 8 + 4 * D)")
    return np.frombuffer(data, dtype="<f4", offset=8), int.from_bytes(data[:8], "little", signed=True)


class LatentStore:
    """Interface: maps handles to (latent float32 (D,), label).

    `aput_many` / `aget_many` are what the ingress awaits (safe on any event loop). `stats()` returns counters
    (the metrics exporter reads them). Errors: NotFoundError naming the first unknown handle; UnavailableError
    when a backing service cannot be reached (never a hang)."""

    kind = "abstract"

    def describe(self) -> dict:
        """What callers are told about the store (ModelInfo.handle_store): backend, durable (issued handles
        survive a restart of the store), detail (why not; never an address)."""
        return {"backend": self.kind, "durable": False,
                "detail": "handles live in the serving process (no redis_url): lost when it restarts and unknown "
                          "to other replicas"}

    def check_available(self, what: str) -> None:
        """UnavailableError at once when storing handles is known to fail now (a store whose backing service
        is down), so a call that would end by storing some fails before doing its work; else nothing."""

    async def aput_many(self, items: list[tuple[str, np.ndarray, int]]) -> None:
        """Store (handle, latent (D,), label) triples; re-putting a handle refreshes it (LRU position, TTL)."""
        raise NotImplementedError

    async def aget_many(self, handles: list[str]) -> list[tuple[np.ndarray, int]]:
        """(latent (D,) float32, label) per handle, in order."""
        raise NotImplementedError

    def put_many(self, items: list[tuple[str, np.ndarray, int]]) -> None:
        raise UnrecoverableError(f"the {self.kind} handle store is async-only: await aput_many()")

    def get_many(self, handles: list[str]) -> list[tuple[np.ndarray, int]]:
        raise UnrecoverableError(f"the {self.kind} handle store is async-only: await aget_many()")

    def stats(self) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


def check_size_ttl(max_entries: int, ttl_s: float | None) -> None:
    """ValidationError unless the entry bound is an int >= 1 and the TTL > 0 seconds or None."""
    if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1:
        raise ValidationError(f"handle store size must be an integer >= 1, got {max_entries!r}")
    if ttl_s is not None and not (isinstance(ttl_s, (int, float)) and ttl_s > 0):
        raise ValidationError(f"handle TTL must be > 0 seconds (or None for no expiry), got {ttl_s!r}")


class SyncLatentStore(LatentStore):
    """A store whose calls never wait on the network (this process's memory, a node-local file): the async API
    runs the sync one inline. Subclasses give `put_many`, `lookup` (None per unknown handle) and
    `missing_because`."""

    def unknown(self, handle: str) -> str:
        """The NOT_FOUND message for `handle`: the store's `missing_because()`, and what to do instead."""
        return f"unknown handle {handle!r:.80}: {self.missing_because()}; send the latent values instead"

    def missing_because(self) -> str:
        """Why a handle may be unknown to this store (its reach, bound and expiry)."""
        raise NotImplementedError

    def lookup(self, handles: list[str]) -> list[tuple[np.ndarray, int] | None]:
        raise NotImplementedError

    def get_many(self, handles: list[str]) -> list[tuple[np.ndarray, int]]:
        return self._checked(handles, self.lookup(handles))

    def _count(self, out: list) -> None:
        """Hits and misses of one `lookup` into `self.counters`."""
        hits = sum(e is not None for e in out)
        self.counters["hits"] += hits
        self.counters["misses"] += len(out) - hits

    def _checked(self, handles: list[str], out: list) -> list[tuple[np.ndarray, int]]:
        """`out` (from `lookup`) or NotFoundError naming the first unknown handle."""
        for handle, entry in zip(handles, out):
            if entry is None:
                raise NotFoundError(self.unknown(handle))
        return out  # type: ignore[return-value]

    async def aput_many(self, items: list[tuple[str, np.ndarray, int]]) -> None:
        self.put_many(items)
        metrics.handle_stores("ok", len(items))

    async def aget_many(self, handles: list[str]) -> list[tuple[np.ndarray, int]]:
        out = self.lookup(handles)
        found = sum(e is not None for e in out)
        metrics.handle_lookups("hit", found)
        metrics.handle_lookups("miss", len(out) - found)
        return self._checked(handles, out)


class InProcessLatentStore(SyncLatentStore):
    """A bounded LRU in this process, with an optional TTL per entry.

    Without Redis it is THE handle store (single-process only: handles are lost on restart and unknown to
    other replicas). With Redis it is each replica's read-through copy of recently used handles."""

    kind = "memory"

    def __init__(self, max_entries: int = 100_000, ttl_s: float | None = None, max_bytes: int | None = None) -> None:
        check_size_ttl(max_entries, ttl_s)
        if max_bytes is not None and not (isinstance(max_bytes, int) and max_bytes >= 1):
            raise ValidationError(f"handle store byte budget must be an integer >= 1 (or None), got {max_bytes!r}")
        self.max_entries = max_entries
        self.ttl_s = float(ttl_s) if ttl_s is not None else None
        self.max_bytes = max_bytes  # optional bound on the packed latents' bytes (flow latents are large)
        self._bytes = 0
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # handle -> (packed latent, deadline)
        self._lock = threading.Lock()  # the ingress may call from several threads / event loops
        self.counters = {"puts": 0, "hits": 0, "misses": 0}

    def put_many(self, items: list[tuple[str, np.ndarray, int]]) -> None:
        deadline = time.monotonic() + self.ttl_s if self.ttl_s else float("inf")
        # bytes, not the array: immutable, compact, and callers cannot mutate a stored latent.
        packed = [(h, pack_latent(z, label)) for h, z, label in items]
        with self._lock:
            for handle, data in packed:
                old = self._data.pop(handle, None)
                if old is not None:
                    self._bytes -= len(old[0])
                self._data[handle] = (data, deadline)
                self._bytes += len(data)
            while len(self._data) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes
                                                         and len(self._data) > 1):
                self._bytes -= len(self._data.popitem(last=False)[1][0])
            self.counters["puts"] += len(packed)

    def lookup(self, handles: list[str]) -> list[tuple[np.ndarray, int] | None]:
        """Like get_many, but None for unknown or expired handles instead of raising."""
        now = time.monotonic()
        out: list[tuple[np.ndarray, int] | None] = []
        with self._lock:
            for handle in handles:
                entry = self._data.get(handle)
                if entry is not None and entry[1] <= now:
                    del self._data[handle]
                    self._bytes -= len(entry[0])
                    entry = None
                if entry is None:
                    out.append(None)
                    continue
                self._data.move_to_end(handle)
                out.append(unpack_latent(entry[0]))
            self._count(out)
        return out

    def missing_because(self) -> str:
        ttl = f", expire after {self.ttl_s:g} s" if self.ttl_s else ""
        return (f"not issued by this server process, expired or evicted (the in-process store keeps the "
                f"{self.max_entries} most recent latents{ttl}; set LATENTSERVE_REDIS_URL to share handles between "
                f"replicas)")

    def stats(self) -> dict:
        with self._lock:
            return {"backend": self.kind, "entries": len(self._data), "bytes": self._bytes, **self.counters}

    def __len__(self) -> int:
        return len(self._data)
