"""Builds the configured handle store and serving caches (`open_stores`): the one place storage is chosen.

Handles: Redis, shared by every replica, with a Redis URL; without one, the node's store shared by the serving
processes of a native replica (services/storage/node_store.py), or in-process LRUs (one process's). Caches:
Redis, or in-process.
"""
from __future__ import annotations

from typing import Any, Callable

from latentserve.services.config import ServeConfig
from latentserve.services.observability import metrics
from latentserve.services.storage.cache import MemoryKV, ServingCache
from latentserve.services.storage.handles import InProcessLatentStore, LatentStore
from latentserve.services.storage.node_store import NodeLatentStore, node_store_path
from latentserve.services.storage.redis_store import RedisBackend, RedisKV, RedisLatentStore


def handle_store_kind(config: ServeConfig) -> str:
    """Where this config keeps handles: "redis" (redis_url), else `handle_store` with "auto" resolved: "node"
    for the native frontend (its serving processes share the node's store), "memory" otherwise."""
    if config.storage.redis_url:
        return "redis"
    if config.storage.handle_store != "auto":
        return config.storage.handle_store
    return "node" if config.frontend.grpc_frontend == "native" else "memory"


def make_store(redis_url: str = "", max_entries: int = 100_000) -> LatentStore:
    """A handle store from a URL and size (in-process without a URL), the other settings at their defaults (see
    `open_stores`)."""
    return open_stores(ServeConfig.from_dict({"redis_url": redis_url, "handle_store_size": max_entries,
                                              "handle_store": "memory"}),
                       check=bool(redis_url))[0]


def open_stores(config: ServeConfig, check: bool = True,
                image_codec: tuple[Callable[[Any], bytes], Callable[[bytes], Any]] | None = None,
                ) -> tuple[LatentStore, ServingCache]:
    """THE place that builds the handle store and the encode/result caches from the serve config.

    No Redis URL: handles in the node's store or in-process (`handle_store_kind`), caches in-process. `redis_url`: handles in Redis (each replica keeps a
    read-through copy of `handle_store_size` recent handles); caches in `redis_cache_url`, or in the same Redis
    when that is empty. `check=True` (the ingress constructor) connects once to each Redis: a wrong password
    or db raises ValidationError right away (one line); an unreachable Redis only logs a warning, because the
    service must come up and serve (caches bypassed, handles UNAVAILABLE) until Redis is back.
    `image_codec`: how the result cache turns output images into bytes and back (see ServingCache)."""
    storage = config.storage
    if storage.redis_url:
        backend = RedisBackend(storage.redis_url, role="handles", timeout_s=storage.redis_handle_timeout_s,
                               backoff_s=storage.redis_backoff_s, backoff_max_s=storage.redis_backoff_max_s)
        why_not = ""
        if check:
            backend.check(handles=True)
            why_not = backend.persistence()  # unknown (CONFIG disabled, unreachable): '', assumed durable
            metrics.handle_store_durable(not why_not)
        store: LatentStore = RedisLatentStore(backend, ttl_s=storage.handle_ttl_s, prefix=storage.redis_key_prefix,
                                              local_entries=storage.handle_store_size, durable=not why_not,
                                              detail=why_not)
    elif handle_store_kind(config) == "node":
        store = NodeLatentStore(node_store_path(config.frontend.grpc_port), config.storage.handle_store_size,
                                ttl_s=config.storage.handle_ttl_s)
    else:
        store = InProcessLatentStore(config.storage.handle_store_size, ttl_s=config.storage.handle_ttl_s)

    cache_url = config.storage.redis_cache_url or config.storage.redis_url
    enabled = config.storage.encode_cache or config.storage.result_cache
    if cache_url and enabled:
        cache_backend = RedisBackend(cache_url, role="cache", timeout_s=config.storage.redis_timeout_s,
                                     backoff_s=config.storage.redis_backoff_s, backoff_max_s=config.storage.redis_backoff_max_s)
        if check and cache_url != config.storage.redis_url:  # same URL: already checked above
            cache_backend.check(handles=False)
        kv = RedisKV(cache_backend, ttl_s=config.storage.cache_ttl_s)
    else:
        kv = MemoryKV(config.storage.cache_memory_bytes, ttl_s=config.storage.cache_ttl_s)
    cache = ServingCache(kv, encode=config.storage.encode_cache, result=config.storage.result_cache,
                         max_entry_bytes=config.storage.cache_max_entry_bytes, prefix=config.storage.redis_key_prefix,
                         image_codec=image_codec)
    return store, cache
