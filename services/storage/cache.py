"""The serving caches: encode cache and result cache, over an in-process LRU or Redis (`ServingCache`).

- Encode cache: (model, version, sha256 of the decoded image pixels + encode options) -> the encoder's raw
  outputs for that image (`latent`, `logits`, and `logvar` / `logdet` where the family has them). A hit skips
  the encoder. Raw outputs, not the final latent: what the request does with them afterwards (caller-given
  labels, VAE posterior sampling with a seed) is applied after the cache, so one entry serves every such
  option and a batch-position-dependent draw can never be cached by mistake. Keying on the decoded pixels
  (not the PNG bytes) means PNG, JPEG-identical and raw tensors of the same pixels share an entry, and the
  one lookup point also covers image refs of Edit and Interpolate. Anything that changes the encoder's
  output for the same pixels must go into `options`.
- Result cache: (model, version, output format, latent digest) -> the output image's bytes (the image codec
  the operations give: services/core/images.py `Image.to_bytes`). The
  digest is the handle digest (services/storage/handles.py: sha256 of latent + label), so Decode by handle is served
  without fetching the latent; deterministic Sample (seed != 0) and Edit compute their latents (cheap) and
  are served from the same entries. Random Sample (seed 0) never touches the cache.

Keys carry the model name and version, so a new version never serves an entry of an old one:
`<prefix>e:<model>:<version>:<digest>` and `<prefix>r:<model>:<version>:<format>:<digest>`.

Backends (`KV`): `MemoryKV` (default: a byte-bounded LRU in the ingress process; single-process only, every
replica has its own) and `storage.redis_store.RedisKV` (shared; one MGET per batch, writes pipelined in
the background). Entries above `max_entry_bytes` are not cached. When Redis is down or slow the lookup is
bypassed (the request computes everything) and counted; see services/storage/redis_store.py for the circuit breaker.

Counters (`stats()`), per cache, counted per image: hits, misses, bypasses (lookup skipped or failed), errors
(failed Redis calls), writes, write_drops (not written: Redis unavailable, too many pending writes), too_large.
The same increments go to the Prometheus counters `latentserve_cache_<counter>_total{cache, model}`
(services/observability/metrics.py), so hit ratios and bypasses are visible per model on the node's /metrics.
"""
from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from latentserve.errors import ValidationError
from latentserve.services.observability import metrics
from latentserve.services.storage.handles import latent_digests

logger = logging.getLogger("ray.serve")
CACHES = ("encode", "result")
COUNTERS = ("hits", "misses", "bypasses", "errors", "writes", "write_drops", "too_large")
_ROW_MAGIC = b"LSE1"
ENTRY_OVERHEAD = 96  # bytes charged per in-process entry on top of key + value (dict slot, tuple, bytes headers)


class CacheBypass(Exception):
    """A KV could not serve a call (Redis circuit open, or the call failed): the caller computes instead.
    `error` is True when a Redis call actually failed (counted as an error as well as a bypass)."""

    def __init__(self, reason: str, error: bool, cause: str = "") -> None:
        super().__init__(reason)
        self.error = error
        self.cause = cause  # what went wrong, without where (an exception type name, "circuit open"): for callers


# ---------------------------------------------------------------------------------------------- backends
class KV:
    """Byte-string key/value store used by ServingCache. `get_many` may raise CacheBypass; `put_many` never
    raises (a write that cannot be made is dropped and reported through `on_drop`)."""

    kind = "abstract"

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        raise NotImplementedError

    def put_many(self, items: list[tuple[str, bytes]], on_drop: Callable[[int, bool], None]) -> None:
        raise NotImplementedError

    async def flush(self) -> None:
        """Wait for background writes issued from this event loop (tests, shutdown)."""

    def stats(self) -> dict:
        return {}


class MemoryKV(KV):
    """A byte-bounded LRU with a TTL, in this process (thread-safe). Single-process only."""

    kind = "memory"

    def __init__(self, max_bytes: int = 64 << 20, ttl_s: float | None = None) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ValidationError(f"cache memory must be an integer number of bytes >= 1, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.ttl_s = float(ttl_s) if ttl_s else None
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return self.get_many_sync(keys)

    def get_many_sync(self, keys: list[str]) -> list[bytes | None]:
        now = time.monotonic() if self.ttl_s else 0.0
        out: list[bytes | None] = []
        with self._lock:
            for key in keys:
                entry = self._data.get(key)
                if entry is None:
                    out.append(None)
                elif self.ttl_s and entry[1] <= now:
                    self._bytes -= self._cost(key, entry[0])
                    del self._data[key]
                    out.append(None)
                else:
                    self._data.move_to_end(key)
                    out.append(entry[0])
        return out

    def put_many(self, items: list[tuple[str, bytes]], on_drop: Callable[[int, bool], None] | None = None) -> None:
        deadline = time.monotonic() + self.ttl_s if self.ttl_s else 0.0
        with self._lock:
            for key, value in items:
                cost = self._cost(key, value)
                if cost > self.max_bytes:
                    continue  # ServingCache caps entries far below this; never flush the whole cache for one
                old = self._data.pop(key, None)
                if old is not None:
                    self._bytes -= self._cost(key, old[0])
                self._data[key] = (value, deadline)
                self._bytes += cost
            while self._bytes > self.max_bytes and self._data:
                key, (value, _) = self._data.popitem(last=False)
                self._bytes -= self._cost(key, value)
                self.evictions += 1

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._data), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "evictions": self.evictions}


# ---------------------------------------------------------------------------------------------- rows
_HEADERS: dict[tuple, bytes] = {}  # (name, dtype, shape) layout -> packed header; a handful per model


def pack_row(arrays: dict[str, np.ndarray]) -> bytes:
    """One image's encoder outputs {name: array (any shape)} -> bytes: magic, header length, JSON header
    [[name, dtype, shape], ...] (names sorted), then each array's raw little-endian bytes."""
    names = sorted(arrays)
    parts = [np.asarray(arrays[n], order="C") for n in names]  # not ascontiguousarray: it makes 0-d arrays 1-d
    parts = [p.astype(p.dtype.newbyteorder("<"), copy=False) for p in parts]
    layout = tuple((n, p.dtype.str, p.shape) for n, p in zip(names, parts))
    header = _HEADERS.get(layout)
    if header is None:
        text = json.dumps([[n, d, list(s)] for n, d, s in layout]).encode()
        header = _HEADERS.setdefault(layout, _ROW_MAGIC + struct.pack("<I", len(text)) + text)
    return header + b"".join(p.tobytes() for p in parts)


def unpack_row(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of `pack_row` (arrays are read-only views of `data`); ValueError when corrupt."""
    if data[:4] != _ROW_MAGIC:
        raise ValueError("not an encode-cache row")
    (n,) = struct.unpack_from("<I", data, 4)
    offset = 8 + n
    out = {}
    for name, dtype, shape in json.loads(data[8:offset]):
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(tuple(shape))
        offset += count * dt.itemsize
    if offset != len(data):
        raise ValueError(f"encode-cache row has {len(data) - offset} trailing bytes")
    return out


def image_digest(pixels: np.ndarray, options: str = "") -> str:
    """Digest of one decoded image (3, H, W) float32 (+ encode options): the encode cache's content key."""
    h = hashlib.sha256(options.encode())
    h.update(np.ascontiguousarray(pixels, dtype="<f4").data)
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------- the caches
class ServingCache:
    """Encode and result caches over one KV. All methods are safe on any event loop; with both caches off
    (or for uncacheable requests) they add no lookup at all."""

    def __init__(self, kv: KV, encode: bool = True, result: bool = True, max_entry_bytes: int = 1 << 20,
                 prefix: str = "ls:", image_codec: tuple[Callable[[Any], bytes], Callable[[bytes], Any]] | None = None) -> None:
        if not isinstance(max_entry_bytes, int) or max_entry_bytes < 1:
            raise ValidationError(f"cache max entry size must be an integer >= 1 byte, got {max_entry_bytes!r}")
        self.kv = kv
        self.encode_enabled = bool(encode)
        self.result_enabled = bool(result)
        self.max_entry_bytes = max_entry_bytes
        self.prefix = prefix
        # result-cache values <-> bytes (the core's Image.to_bytes / from_bytes); None: values are bytes
        self._dumps, self._loads = image_codec or (bytes, bytes)
        self.counters: dict[str, dict[str, int]] = {c: dict.fromkeys(COUNTERS, 0) for c in CACHES}
        self._lock = threading.Lock()

    # -- counters ---------------------------------------------------------------------------------------------
    def _add(self, cache: str, model: str, **deltas: int) -> None:
        with self._lock:  # several event loops (threads) may share one cache object
            c = self.counters[cache]
            for k, v in deltas.items():
                c[k] += v
        metrics.cache(cache, model, deltas)

    def stats(self) -> dict:
        with self._lock:
            out = {c: dict(v) for c, v in self.counters.items()}
        for c in CACHES:
            looked = out[c]["hits"] + out[c]["misses"]
            out[c]["hit_rate"] = round(out[c]["hits"] / looked, 4) if looked else 0.0
            out[c]["enabled"] = self.encode_enabled if c == "encode" else self.result_enabled
        out["backend"] = self.kv.kind
        out["kv"] = self.kv.stats()
        return out

    # -- plumbing -------------------------------------------------------------------------------------------------
    async def _lookup(self, cache: str, model: str, keys: list[str]) -> tuple[list[bytes | None], bool]:
        """(values, bypassed). A bypass counts every key as bypassed (and one error if a call failed)."""
        try:
            values = await self.kv.get_many(keys)
        except CacheBypass as exc:
            self._add(cache, model, bypasses=len(keys), errors=int(exc.error))
            return [None] * len(keys), True
        hits = sum(v is not None for v in values)
        self._add(cache, model, hits=hits, misses=len(keys) - hits)
        return values, False

    def _write(self, cache: str, model: str, items: list[tuple[str, bytes]]) -> None:
        small = [(k, v) for k, v in items if len(v) <= self.max_entry_bytes]
        if len(small) < len(items):
            self._add(cache, model, too_large=len(items) - len(small))
        if not small:
            return

        def on_drop(n: int, error: bool) -> None:
            self._add(cache, model, write_drops=n, errors=int(error), writes=-n)

        self._add(cache, model, writes=len(small))
        self.kv.put_many(small, on_drop)

    async def flush(self) -> None:
        await self.kv.flush()

    # -- encode cache ---------------------------------------------------------------------------------------------
    async def encoder_outputs(self, model: str, version: int, x: np.ndarray,
                              run: Callable[[np.ndarray], Awaitable[dict[str, np.ndarray]]],
                              options: str = "") -> dict[str, np.ndarray]:
        """The encoder's outputs {name: (N, ...)} for images x (N, 3, H, W) float32; `run(images)` calls the
        encoder, for the cache misses only."""
        n = len(x)
        if not self.encode_enabled or n == 0:
            return await run(x)
        digests = [image_digest(x[i], options) for i in range(n)]
        base = f"{self.prefix}e:{model}:{int(version)}:"
        keys = [base + d for d in digests]
        values, bypassed = await self._lookup("encode", model, keys)
        rows: list[dict[str, np.ndarray] | None] = []
        for v in values:
            try:
                rows.append(unpack_row(v) if v is not None else None)
            except (ValueError, KeyError, TypeError, struct.error) as exc:  # corrupt entry: recompute it
                logger.warning("encode cache: ignoring a corrupt entry (%s)", exc)
                self._add("encode", model, errors=1)
                rows.append(None)
        miss = [i for i, r in enumerate(rows) if r is None]
        if not miss:
            first = rows[0]
            if all(_same_row_layout(first, r) for r in rows[1:]):  # type: ignore[arg-type]
                return {k: np.stack([r[k] for r in rows]) for k in first}  # type: ignore[index]
            miss = list(range(n))  # entries disagree (cannot happen for one version): recompute them all
        out_m = await run(x if len(miss) == n else x[miss])
        if not bypassed:
            self._write("encode", model, [(keys[i], pack_row({k: a[j] for k, a in out_m.items()})) for j, i in enumerate(miss)])
        if len(miss) == n:
            return out_m
        hit_rows = [r for r in rows if r is not None]
        if not all(_same_layout(r, out_m) for r in hit_rows):  # cannot happen for one version; stay correct anyway
            logger.warning("encode cache: cached outputs of %s v%d do not match the encoder's; recomputing", model, version)
            return await run(x)
        out = {k: np.empty((n, *a.shape[1:]), dtype=a.dtype) for k, a in out_m.items()}
        for k, a in out.items():
            a[miss] = out_m[k]
            for i, r in enumerate(rows):
                if r is not None:
                    a[i] = r[k]
        return out

    # -- result cache ---------------------------------------------------------------------------------------------
    async def images(self, model: str, version: int, fmt: str,
                     run: Callable[[list[int] | None], Awaitable[list]],
                     latents: tuple[np.ndarray, np.ndarray] | None = None, digests: Sequence[str] | None = None,
                     cacheable: bool = True) -> list:
        """The output images (one per row, values of the image codec) in format `fmt`.

        `run(rows)` decodes and encodes the given row indices (None = every row) and returns their images.
        Rows are identified by `digests` (e.g. handle digests) or by `latents` = (z (N, D), labels (N,)).
        `cacheable=False` (random Sample) calls `run(None)` without any lookup."""
        if not (self.result_enabled and cacheable):
            return await run(None)
        if digests is None:
            if latents is None:
                raise ValueError("ServingCache.images needs digests or latents")
            digests = latent_digests(*latents)
        n = len(digests)
        base = f"{self.prefix}r:{model}:{int(version)}:{fmt}:"
        keys = [base + d for d in digests]
        values, bypassed = await self._lookup("result", model, keys)
        miss = [i for i, v in enumerate(values) if v is None]
        if not miss:
            return [self._loads(v) for v in values]
        got = list(await run(None if len(miss) == n else miss))
        if len(got) != len(miss):
            raise ValueError(f"result cache: run() returned {len(got)} images for {len(miss)} rows")
        if not bypassed:
            self._write("result", model, [(keys[i], self._dumps(img)) for i, img in zip(miss, got)])
        if len(miss) == n:
            return got
        out = [self._loads(v) if v is not None else None for v in values]
        for i, img in zip(miss, got):
            out[i] = img
        return out


def _same_layout(row: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> bool:
    return set(row) == set(batch) and all(row[k].shape == batch[k].shape[1:] and row[k].dtype == batch[k].dtype
                                          for k in row)


def _same_row_layout(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
