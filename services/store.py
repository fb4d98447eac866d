"""Latent handles: content-addressed names for stored latents, and the store interface behind them.

A handle is `"<model>:<version>:<hex>"` where `<hex>` is the first 32 hex digits of sha256(latent float32
little-endian bytes + label int64 little-endian bytes), so the same latent of the same model version always
gets the same handle and a handle can never point at different content. The store is a small interface
(`put_many` / `get_many`) so a Redis-backed implementation (later issue, shared by every ingress replica) can
replace the in-process bounded LRU used now without touching the ingress.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from latentserve.errors import NotFoundError, ValidationError

DIGEST_HEX = 32  # 128 bits of sha256: collisions are not a practical concern for a cache


@dataclass(frozen=True)
class HandleRef:
    """A parsed handle."""

    model: str
    version: int
    digest: str

    def __str__(self) -> str:
        return f"{self.model}:{self.version}:{self.digest}"


def make_handle(model: str, version: int, latent: np.ndarray, label: int) -> str:
    """The content-addressed handle of one latent (D,) float32 with its class label."""
    z = np.ascontiguousarray(latent, dtype="<f4").reshape(-1)
    h = hashlib.sha256(z.tobytes())
    h.update(np.int64(label).astype("<i8").tobytes())
    return f"{model}:{int(version)}:{h.hexdigest()[:DIGEST_HEX]}"


def parse_handle(handle: str) -> HandleRef:
    """Split a handle; ValidationError (names the handle and the expected form) when it is malformed."""
    parts = handle.rsplit(":", 2) if isinstance(handle, str) else []
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or int(parts[1]) < 1 \
            or len(parts[2]) != DIGEST_HEX or any(c not in "0123456789abcdef" for c in parts[2]):
        raise ValidationError(
            f"malformed handle {handle!r:.80}: expected '<model>:<version>:<{DIGEST_HEX} hex digits>' as issued by the service"
        )
    return HandleRef(parts[0], int(parts[1]), parts[2])


class LatentStore:
    """Interface: maps handles to (latent float32 (D,), label). Implementations must be safe to call from
    the ingress event loop (the in-process one is O(1) and never blocks; a network store makes these async
    in its own subclass of the ingress wiring)."""

    def put_many(self, items: list[tuple[str, np.ndarray, int]]) -> None:
        """Store (handle, latent (D,), label) triples; re-putting a handle refreshes it."""
        raise NotImplementedError

    def get_many(self, handles: list[str]) -> list[tuple[np.ndarray, int]]:
        """(latent (D,) float32, label) per handle, in order; NotFoundError naming the first unknown handle."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class InProcessLatentStore(LatentStore):
    """A bounded LRU in the ingress process (handles are lost on restart and not shared across replicas)."""

    def __init__(self, max_entries: int = 100_000) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValidationError(f"handle store size must be an integer >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._lock = threading.Lock()  # Serve may run sync methods in a thread pool

    def put_many(self, items: list[tuple[str, np.ndarray, int]]) -> None:
        with self._lock:
            for handle, latent, label in items:
                # bytes, not the array: immutable, compact, and callers cannot mutate a stored latent.
                self._data[handle] = (np.ascontiguousarray(latent, dtype="<f4").reshape(-1).tobytes(), int(label))
                self._data.move_to_end(handle)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def get_many(self, handles: list[str]) -> list[tuple[np.ndarray, int]]:
        out = []
        with self._lock:
            for handle in handles:
                entry = self._data.get(handle)
                if entry is None:
                    raise NotFoundError(
                        f"unknown handle {handle!r:.80}: not issued by this server or evicted "
                        f"(the store keeps the {self.max_entries} most recent latents); send the latent values instead"
                    )
                self._data.move_to_end(handle)
                out.append((np.frombuffer(entry[0], dtype="<f4"), entry[1]))
        return out

    def __len__(self) -> int:
        return len(self._data)


def make_store(redis_url: str = "", max_entries: int = 100_000) -> LatentStore:
    """The configured store. Redis arrives in a later issue; until then a URL is a clear configuration error
    rather than a silent fallback to per-replica handles."""
    if redis_url:
        raise ValidationError(
            "serve config: redis_url is set but the Redis handle store is not part of this build; "
            "unset LATENTSERVE_REDIS_URL to use the in-process store"
        )
    return InProcessLatentStore(max_entries)
