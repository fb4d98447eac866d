"""Latent handles: content addressing, parsing, packing, the bounded in-process LRU store, `open_stores`."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from latentserve.errors import NotFoundError, UnrecoverableError, ValidationError
from latentserve.services.storage.cache import MemoryKV, ServingCache
from latentserve.services.config import load_config
from latentserve.services.storage.factory import make_store, open_stores
from latentserve.services.storage.handles import (InProcessLatentStore, latent_digest, latent_digests, make_handle,
                                                  pack_latent, parse_handle, unpack_latent)


def test_handles_are_content_addressed():
    z = np.arange(4, dtype=np.float32)
    h = make_handle("m", 2, z, 1)
    assert h == make_handle("m", 2, z.astype(np.float64), 1)  # same float32 content, same handle
    assert h != make_handle("m", 2, z, 0)  # the label is part of the content
    assert h != make_handle("m", 3, z, 1) and h != make_handle("n", 2, z, 1)
    assert h != make_handle("m", 2, z + 1e-6, 1)
    ref = parse_handle(h)
    assert (ref.model, ref.version, str(ref)) == ("m", 2, h)
    assert ref.digest == latent_digest(z, 1)  # the result cache keys on the same digest


def test_handle_digest_is_stable():
    # Pinned: handles are stored in Redis across restarts and releases, so the digest must never change.
    assert latent_digest(np.array([0.0, 1.0, -2.5], np.float32), 3) == "8acf339a938f097c9c9ec54866cbec66"
    z = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    labels = np.arange(5)
    assert latent_digests(z, labels) == [latent_digest(z[i], i) for i in range(5)]


def test_model_names_with_colons_parse():
    h = make_handle("team:model", 1, np.zeros(2, np.float32), 0)
    assert parse_handle(h).model == "team:model"


@pytest.mark.parametrize("bad", ["", "nohandle", "m:1:xyz", "m:0:" + "0" * 32, "m:v1:" + "0" * 32, ":1:" + "0" * 32,
                                 "m:1:" + "G" * 32])
def test_malformed_handles_are_validation_errors(bad):
    with pytest.raises(ValidationError, match="malformed handle"):
        parse_handle(bad)


def test_pack_roundtrip_and_corruption():
    z = np.array([1.5, -2.0, 3.25], np.float32)
    got, label = unpack_latent(pack_latent(z, 7))
    assert label == 7 and got.dtype == np.float32
    np.testing.assert_array_equal(got, z)
    assert unpack_latent(pack_latent(z, -1))[1] == -1
    with pytest.raises(UnrecoverableError, match="corrupt length"):
        unpack_latent(b"\x00" * 10)


def test_store_roundtrip_lru_and_not_found():
    s = InProcessLatentStore(max_entries=2)
    za, zb, zc = (np.full(3, v, np.float32) for v in (1, 2, 3))
    ha, hb, hc = (make_handle("m", 1, z, i) for i, z in enumerate((za, zb, zc)))
    s.put_many([(ha, za, 0), (hb, zb, 1)])
    (got_b, lab_b), (got_a, lab_a) = s.get_many([hb, ha])  # touching a makes b the least recent
    np.testing.assert_array_equal(got_a, za)
    assert (lab_a, lab_b) == (0, 1) and got_a.dtype == np.float32
    s.put_many([(hc, zc, 2)])
    assert len(s) == 2
    with pytest.raises(NotFoundError, match="unknown handle"):
        s.get_many([hb])
    assert s.get_many([ha, hc])[1][1] == 2
    st = s.stats()
    assert st["backend"] == "memory" and st["entries"] == 2 and st["puts"] == 3 and st["misses"] == 1


def test_store_ttl_expires_entries():
    s = InProcessLatentStore(max_entries=10, ttl_s=0.05)
    z = np.ones(2, np.float32)
    h = make_handle("m", 1, z, 0)
    s.put_many([(h, z, 0)])
    assert s.lookup([h])[0] is not None
    time.sleep(0.08)
    assert s.lookup([h]) == [None]
    with pytest.raises(ValidationError):
        InProcessLatentStore(10, ttl_s=0)


def test_async_api_matches_sync():
    s = InProcessLatentStore()
    z = np.arange(3, dtype=np.float32)
    h = make_handle("m", 1, z, 2)

    async def go():
        await s.aput_many([(h, z, 2)])
        return await s.aget_many([h])

    (got, label), = asyncio.run(go())
    assert label == 2 and got.tolist() == [0.0, 1.0, 2.0]


def test_stored_latents_are_immutable_copies():
    s = InProcessLatentStore()
    z = np.ones(3, np.float32)
    h = make_handle("m", 1, z, 0)
    s.put_many([(h, z, 0)])
    z[:] = 5  # the caller mutates its array afterwards
    assert s.get_many([h])[0][0].tolist() == [1.0, 1.0, 1.0]


def test_make_store_and_open_stores_without_redis():
    assert isinstance(make_store("", 10), InProcessLatentStore)
    with pytest.raises(ValidationError):
        InProcessLatentStore(0)
    cfg = load_config({"handle_store_size": 5, "cache_memory_bytes": 2 << 20, "result_cache": False,
                       "handle_store": "memory"}, use_env=False)
    store, cache = open_stores(cfg)
    assert isinstance(store, InProcessLatentStore) and store.max_entries == 5 and store.ttl_s == cfg.storage.handle_ttl_s
    assert isinstance(cache, ServingCache) and isinstance(cache.kv, MemoryKV) and cache.kv.max_bytes == 2 << 20
    assert cache.encode_enabled and not cache.result_enabled


def test_store_byte_budget():
    s = InProcessLatentStore(max_entries=100, max_bytes=3 * (8 + 4 * 10))  # room for three (10,) latents
    zs = [np.full(10, i, np.float32) for i in range(5)]
    hs = [make_handle("m", 1, z, 0) for z in zs]
    s.put_many([(h, z, 0) for h, z in zip(hs, zs)])
    s.put_many([(hs[4], zs[4], 0)])  # re-putting does not double-count
    assert len(s) == 3 and s.stats()["bytes"] == 3 * 48
    assert [e is not None for e in s.lookup(hs)] == [False, False, True, True, True]
