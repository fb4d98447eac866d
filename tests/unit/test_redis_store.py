"""Redis store, caches and circuit breaker without a server: an in-memory fake stands in for redis.asyncio
(the real redis-server tests are in tests/integration/test_redis.py)."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from redis import exceptions as rex

from latentserve.errors import NotFoundError, UnavailableError, ValidationError
from latentserve.services.storage.cache import MemoryKV, ServingCache, pack_row, unpack_row
from latentserve.services.config import load_config
from latentserve.services.storage.redis_store import CircuitBreaker, RedisBackend, RedisKV, RedisLatentStore, redact_url
from latentserve.services.storage.handles import latent_digests, make_handle
from latentserve.v1 import latent_pb2 as pb


# ---------------------------------------------------------------------------------------------- fakes
class FakeRedis:
    """The few redis.asyncio calls the store makes, over a dict. `fail` = exception to raise per call."""

    def __init__(self, data: dict | None = None) -> None:
        self.data = {} if data is None else data
        self.fail: BaseException | None = None
        self.delay = 0.0
        self.calls = 0

    async def _io(self) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail

    async def mget(self, keys):
        await self._io()
        return [self.data.get(k) for k in keys]

    def pipeline(self, transaction=False):
        return FakePipeline(self)


class FakePipeline:
    def __init__(self, r: FakeRedis) -> None:
        self.r, self.ops = r, []

    def set(self, key, value, px=None, nx=False):
        self.ops.append(("set", key, value, nx))

    def get(self, key):
        self.ops.append(("get", key, None, False))

    async def execute(self):
        await self.r._io()
        out = []
        for op, key, value, nx in self.ops:
            if op == "get":
                out.append(self.r.data.get(key))
            elif nx and key in self.r.data:
                out.append(None)
            else:
                self.r.data[key] = value
                out.append(True)
        return out


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def backend_with(fake: FakeRedis, clock=None, **kw) -> RedisBackend:
    b = RedisBackend("redis://:pw@127.0.0.1:6390/0", clock=clock or time.monotonic, **kw)
    b._make_client = lambda timeout_s, sync=False: fake  # never opens a socket
    return b


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------- breaker
def test_breaker_backoff_grows_to_cap_and_probes_once():
    clock = Clock()
    br = CircuitBreaker(0.5, 2.0, clock=clock, rand=lambda: 0.5)  # rand 0.5 = no jitter
    assert br.allow() and br.snapshot()["state"] == "closed"
    br.failure(ConnectionError("down"), probe=False)
    assert not br.allow() and br.retry_in() == pytest.approx(0.5)
    br.failure(ConnectionError("straggler"), probe=False)  # in flight before it opened: no longer window
    assert br.retry_in() == pytest.approx(0.5)
    windows = []
    for _ in range(4):
        clock.t += br.retry_in() + 1e-6
        assert br.allow()  # the probe
        assert not br.allow()  # everyone else keeps skipping while it runs
        br.failure("still down", probe=True)
        windows.append(round(br.retry_in(), 6))
    assert windows == [1.0, 2.0, 2.0, 2.0]
    clock.t += 2.1
    assert br.allow()
    br.success()
    assert br.closed and br.allow() and br.snapshot()["backoff_s"] == 0.0
    assert br.opened == 5


def test_breaker_jitter_and_abandoned_probe():
    clock = Clock()
    br = CircuitBreaker(1.0, 8.0, clock=clock, rand=lambda: 1.0)
    br.failure("x", probe=False)
    assert br.retry_in() == pytest.approx(1.2)  # +20%
    clock.t += 1.3
    assert br.allow()
    br.abandon_probe()  # the probe was cancelled: the next call may probe
    assert br.allow()
    with pytest.raises(ValidationError):
        CircuitBreaker(2.0, 1.0)


def test_backend_bypasses_while_open_and_recovers():
    fake, clock = FakeRedis({"k": b"v"}), Clock()
    b = backend_with(fake, clock, backoff_s=0.5, backoff_max_s=4.0)

    async def go():
        assert await b.call(lambda r: r.mget(["k"])) == [b"v"]
        fake.fail = rex.ConnectionError("Connection refused")
        with pytest.raises(Exception) as ei:
            await b.call(lambda r: r.mget(["k"]))
        assert ei.value.error and "refused" in str(ei.value)
        calls = fake.calls
        for _ in range(50):  # breaker open: no call reaches Redis
            with pytest.raises(Exception) as ei:
                await b.call(lambda r: r.mget(["k"]))
            assert not ei.value.error and "unavailable" in str(ei.value)
        assert fake.calls == calls
        fake.fail = None
        clock.t += 10
        assert await b.call(lambda r: r.mget(["k"])) == [b"v"]  # the probe succeeds: closed again
        assert b.breaker.closed and b.stats()["opened"] == 1

    run(go())


def test_server_error_replies_do_not_open_the_breaker():
    fake = FakeRedis()
    b = backend_with(fake)

    async def go():
        fake.fail = rex.ResponseError("OOM command not allowed when used memory > 'maxmemory'")
        with pytest.raises(Exception) as ei:
            await b.call(lambda r: r.mget(["k"]))
        assert ei.value.error and "OOM" in str(ei.value)
        assert b.breaker.closed

    run(go())


def test_each_event_loop_gets_its_own_client():
    b = RedisBackend("redis://127.0.0.1:6390/0")

    async def get():
        return b.client()

    c1, c2 = run(get()), run(get())
    assert c1 is not c2  # a redis.asyncio connection cannot move between loops


def test_redact_url():
    assert redact_url("redis://user:secret@host:6380/2?ssl_cert_reqs=none") == "redis://host:6380/2"
    assert "secret" not in redact_url("rediss://:secret@h/0")
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"


# ---------------------------------------------------------------------------------------------- handles
def _latents(n=3, d=4, seed=0):
    z = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    labels = np.arange(n) % 2
    return z, labels, [make_handle("m", 1, z[i], int(labels[i])) for i in range(n)]


def test_two_replicas_share_handles_through_redis():
    shared = {}
    a = RedisLatentStore(backend_with(FakeRedis(shared)), ttl_s=60, local_entries=8)
    b = RedisLatentStore(backend_with(FakeRedis(shared)), ttl_s=60, local_entries=8)
    z, labels, hs = _latents()

    async def go():
        await a.aput_many([(h, z[i], int(labels[i])) for i, h in enumerate(hs)])
        got = await b.aget_many(hs[::-1])
        for (vec, lab), i in zip(got, [2, 1, 0]):
            np.testing.assert_array_equal(vec, z[i])
            assert lab == labels[i]
        await b.aget_many(hs)  # now from b's local copy
        with pytest.raises(NotFoundError, match="expired .* or never issued"):
            await b.aget_many([make_handle("m", 1, np.zeros(4, np.float32), 0)])

    run(go())
    assert all(k.startswith("ls:h:m:1:") for k in shared if k != "ls:epoch")  # + the store's epoch key
    assert b.stats()["hits"] == 3 and b.stats()["local_hits"] == 3 and b.stats()["misses"] == 1
    assert a.stats()["puts"] == 3


def test_handles_unavailable_fast_when_redis_is_down():
    fake = FakeRedis()
    s = RedisLatentStore(backend_with(fake, backoff_s=5.0, backoff_max_s=5.0), local_entries=0)
    z, labels, hs = _latents(1)

    async def go():
        fake.fail = rex.ConnectionError("Connection refused")
        with pytest.raises(UnavailableError, match="cannot store 1 handle"):
            await s.aput_many([(hs[0], z[0], 0)])
        t = time.perf_counter()
        with pytest.raises(UnavailableError, match="send latent values instead"):
            await s.aget_many(hs)
        return time.perf_counter() - t

    assert run(go()) < 0.05  # breaker open: no wait at all
    st = s.stats()
    assert st["bypasses"] == 2 and st["errors"] == 1 and st["redis"]["state"] == "open"


def test_slow_redis_times_out_into_unavailable():
    fake = FakeRedis()
    s = RedisLatentStore(backend_with(fake), local_entries=0)
    _, _, hs = _latents(1)
    fake.delay, fake.fail = 0.02, rex.TimeoutError("Timeout reading from socket")
    with pytest.raises(UnavailableError, match="TimeoutError"):
        run(s.aget_many(hs))


def test_sync_api_is_refused_on_the_redis_store():
    s = RedisLatentStore(backend_with(FakeRedis()))
    with pytest.raises(Exception, match="async-only"):
        s.get_many(["m:1:" + "0" * 32])


# ---------------------------------------------------------------------------------------------- caches
def _encoder(calls: list):
    async def run_(x):
        calls.append(len(x))
        flat = x.reshape(len(x), -1)
        return {"latent": flat[:, :4] * 2, "logits": flat[:, :3].copy(), "logdet": flat.sum(1)}
    return run_


def test_pack_row_roundtrip():
    row = {"latent": np.arange(4, dtype=np.float32), "logdet": np.float32(2.5) * np.ones((), np.float32),
           "logits": np.array([[1, 2]], np.float64)}
    got = unpack_row(pack_row(row))
    assert set(got) == set(row)
    for k in row:
        np.testing.assert_array_equal(got[k], row[k])
        assert got[k].shape == row[k].shape and got[k].dtype == row[k].dtype
    with pytest.raises(ValueError):
        unpack_row(b"nope")


def test_encode_cache_hits_partial_batches_and_versions():
    cache = ServingCache(MemoryKV(1 << 20))
    x = np.random.default_rng(1).uniform(-1, 1, (4, 3, 2, 2)).astype(np.float32)
    calls: list = []

    async def go():
        full = await cache.encoder_outputs("m", 1, x[:2], _encoder(calls))
        out = await cache.encoder_outputs("m", 1, x, _encoder(calls))  # rows 0, 1 cached; 2, 3 computed
        ref = await _encoder([])(x)
        for k in ref:
            np.testing.assert_allclose(out[k], ref[k], rtol=0, atol=0)
        np.testing.assert_array_equal(full["latent"], ref["latent"][:2])
        again = await cache.encoder_outputs("m", 1, x[[3, 0]], _encoder(calls))  # all hits
        np.testing.assert_array_equal(again["logdet"], ref["logdet"][[3, 0]])
        await cache.encoder_outputs("m", 2, x[:1], _encoder(calls))  # a new version never reads v1's entries
        await cache.encoder_outputs("m", 1, x[:1], _encoder(calls), options="preprocess=v2")

    run(go())
    assert calls == [2, 2, 1, 1]
    st = cache.stats()["encode"]
    assert (st["hits"], st["misses"], st["bypasses"]) == (4, 6, 0)
    assert st["writes"] == 6 and st["hit_rate"] == 0.4


def test_result_cache_by_digest_and_latents():
    cache = ServingCache(MemoryKV(1 << 20), image_codec=(pb.Image.SerializeToString, pb.Image.FromString))
    z, labels, hs = _latents(3)
    calls: list = []

    def decoder(rows_of_request):  # the request's rows are rows_of_request of z
        async def decode(rows):
            calls.append(rows)
            idx = rows_of_request if rows is None else [rows_of_request[i] for i in rows]
            return [pb.Image(encoded=f"img{i}".encode()) for i in idx]
        return decode

    async def go():
        first = await cache.images("m", 1, "png", decoder([0, 1, 2]), latents=(z, labels))
        digests = [h.rsplit(":", 1)[1] for h in hs]
        second = await cache.images("m", 1, "png", decoder([0, 1, 2]), digests=digests)  # handle digest = latent digest
        assert [i.encoded for i in second] == [i.encoded for i in first]
        await cache.images("m", 1, "jpeg", decoder([0]), digests=digests[:1])  # format is part of the key
        await cache.images("m", 2, "png", decoder([1, 2]), digests=digests[1:])  # and the version
        mixed = await cache.images("m", 1, "jpeg", decoder([0, 1, 2]), latents=(z, labels))
        assert [i.encoded for i in mixed] == [b"img0", b"img1", b"img2"]
        await cache.images("m", 1, "png", decoder([0, 1, 2]), latents=(z, labels), cacheable=False)  # random Sample

    run(go())
    assert calls == [None, None, None, [1, 2], None]
    st = cache.stats()["result"]
    assert (st["hits"], st["misses"]) == (3 + 1, 3 + 1 + 2 + 2)
    assert latent_digests(z, labels) == [h.rsplit(":", 1)[1] for h in hs]


def test_disabled_caches_do_no_lookup_and_big_entries_are_skipped():
    class Exploding(MemoryKV):
        async def get_many(self, keys):
            raise AssertionError("no lookup expected")

    off = ServingCache(Exploding(1 << 20), encode=False, result=False)
    x = np.zeros((1, 3, 2, 2), np.float32)
    run(off.encoder_outputs("m", 1, x, _encoder([])))
    run(off.images("m", 1, "png", lambda rows: _images(1), digests=["0" * 32]))

    small = ServingCache(MemoryKV(1 << 20), max_entry_bytes=8,
                         image_codec=(pb.Image.SerializeToString, pb.Image.FromString))
    run(small.images("m", 1, "png", lambda rows: _images(1), digests=["0" * 32]))
    assert small.stats()["result"]["too_large"] == 1 and small.stats()["result"]["writes"] == 0


async def _images(n):
    return [pb.Image(encoded=b"x" * 64) for _ in range(n)]


def test_memory_kv_is_bounded_by_bytes():
    kv = MemoryKV(2000)
    kv.put_many([(f"k{i}", b"v" * 300) for i in range(20)])
    st = kv.stats()
    assert st["bytes"] <= 2000 and st["entries"] == 5 and st["evictions"] == 15  # ~400 bytes each
    assert kv.get_many_sync(["k19", "k0"]) == [b"v" * 300, None]
    ttl = MemoryKV(2000, ttl_s=0.02)
    ttl.put_many([("a", b"1")])
    time.sleep(0.04)
    assert ttl.get_many_sync(["a"]) == [None]


def test_redis_cache_bypass_and_background_writes():
    fake = FakeRedis()
    cache = ServingCache(RedisKV(backend_with(fake, backoff_s=5.0, backoff_max_s=5.0), ttl_s=60))
    x = np.random.default_rng(2).uniform(-1, 1, (3, 3, 2, 2)).astype(np.float32)
    calls: list = []

    async def go():
        await cache.encoder_outputs("m", 1, x, _encoder(calls))
        await cache.flush()  # writes run in the background
        assert len(fake.data) == 3
        await cache.encoder_outputs("m", 1, x, _encoder(calls))  # 3 hits
        fake.fail = rex.ConnectionError("Connection reset by peer")  # Redis dies
        out = await cache.encoder_outputs("m", 1, x, _encoder(calls))  # still answered, by the encoder
        assert out["latent"].shape == (3, 4)
        for _ in range(5):  # breaker open: bypassed without touching Redis
            await cache.encoder_outputs("m", 1, x, _encoder(calls))
        await cache.flush()

    run(go())
    assert calls == [3, 3, 3, 3, 3, 3, 3]
    st = cache.stats()["encode"]
    assert (st["hits"], st["misses"], st["bypasses"], st["errors"]) == (3, 3, 18, 1)
    assert fake.calls == 4  # miss lookup, the write, the hit lookup, the failed lookup
    assert cache.stats()["kv"]["redis"]["state"] == "open"


def test_config_fields_env_and_redaction():
    cfg = load_config(environ={"LATENTSERVE_REDIS_URL": "rediss://:s3cret@redis:6380/1",
                               "LATENTSERVE_HANDLE_TTL_S": "3600", "LATENTSERVE_RESULT_CACHE": "0"})
    assert cfg.storage.redis_url.startswith("rediss://") and cfg.storage.handle_ttl_s == 3600.0 and not cfg.storage.result_cache
    assert cfg.redacted()["redis_url"] == "rediss://:***@redis:6380/1"
    for bad, needle in (("redis://:pw@h:6379/abc", "db number"), ("http://h", "redis://"),
                        ("redis://:pw@/0", "needs a host")):
        with pytest.raises(ValidationError, match=needle) as ei:
            load_config({"redis_cache_url": bad}, use_env=False)
        assert "pw" not in str(ei.value)
    with pytest.raises(ValidationError, match="redis_backoff_max_s"):
        load_config({"redis_backoff_s": 2.0, "redis_backoff_max_s": 1.0}, use_env=False)
