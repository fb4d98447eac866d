"""Latent handles and serving caches against a REAL redis-server (tests/integration/redis_fixture.py).

Store level (fast, no Ray): two store instances = two replicas, AUTH, TTL expiry, version invalidation,
hit/miss counters, one MGET per batch, kill -9 / restart mid-stream, AOF persistence, a paused ("slow") Redis.
Service level: two latentserve Serve apps (each its own ingress replica and models) sharing one Redis: a
handle issued by one resolves on the other; kill -9 of Redis during a stream of requests fails none of them;
after the restart cache hits resume by themselves.
"""
from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from latentserve.errors import NotFoundError, UnavailableError, ValidationError
from latentserve.services.storage.cache import image_digest
from latentserve.services.config import load_config
from latentserve.services.storage.redis_store import RedisBackend, RedisLatentStore, check_redis
from latentserve.services.storage.factory import open_stores
from latentserve.services.storage.handles import make_handle
from latentserve.v1 import latent_pb2 as pb

_name = "latentserve_tests_redis_fixture"
if _name not in sys.modules:  # tests/integration is not a package: load the fixture module by path, once
    _spec = importlib.util.spec_from_file_location(_name, Path(__file__).with_name("redis_fixture.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[_name] = _mod
    _spec.loader.exec_module(_mod)
_fx = sys.modules[_name]
redis_factory, redis_server, PASSWORD = _fx.redis_factory, _fx.redis_server, _fx.PASSWORD

PB_IMAGES = (pb.Image.SerializeToString, pb.Image.FromString)  # result-cache values in these tests
FAST_BREAKER = {"redis_backoff_s": 0.05, "redis_backoff_max_s": 0.3}


def cfg_for(url: str, **kw):
    return load_config({"redis_url": url, **FAST_BREAKER, **kw}, use_env=False)


def latents(n: int, d: int = 8, seed: int = 0):
    z = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    labels = (np.arange(n) % 3).astype(np.int64)
    return z, labels, [make_handle("tiny-gan", 1, z[i], int(labels[i])) for i in range(n)]


def encoder(calls: list):
    async def run(x):
        calls.append(len(x))
        flat = x.reshape(len(x), -1)
        return {"latent": flat[:, :8] * 2.0, "logits": flat[:, :3].copy()}
    return run


def decoder(calls: list, n: int):
    async def run(rows):
        calls.append(rows)
        idx = range(n) if rows is None else rows
        return [pb.Image(encoded=f"png-{i}".encode()) for i in idx]
    return run


def mget_calls(server) -> int:
    with server.client() as c:
        return int(c.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


# ---------------------------------------------------------------------------------------------- store level
def test_handles_resolve_on_another_replica_one_mget_per_batch(redis_server):
    cfg = cfg_for(redis_server.url())
    store_a, _ = open_stores(cfg)
    store_b, _ = open_stores(cfg)  # another replica: its own connections, breaker and local copy
    assert isinstance(store_a, RedisLatentStore)
    z, labels, hs = latents(16)

    async def go():
        await store_a.aput_many([(h, z[i], int(labels[i])) for i, h in enumerate(hs)])
        before = mget_calls(redis_server)
        got = await store_b.aget_many(hs)
        assert mget_calls(redis_server) - before == 1  # one round trip for the whole batch
        for i, (vec, lab) in enumerate(got):
            np.testing.assert_array_equal(vec, z[i])
            assert lab == labels[i]
        with pytest.raises(NotFoundError, match="expired .* or never issued"):
            await store_b.aget_many([make_handle("tiny-gan", 1, np.ones(8, np.float32), 0)])

    asyncio.run(go())
    with redis_server.client() as c:
        ttl_ms = c.pttl(f"ls:h:{hs[0]}")
    assert 0.99 * cfg.storage.handle_ttl_s * 1000 < ttl_ms <= cfg.storage.handle_ttl_s * 1000  # days, not seconds


def test_auth_wrong_password_fails_at_start_with_one_line(redis_server):
    for url in (redis_server.url(password="wrong"), redis_server.url(password=None)):
        cfg = cfg_for(url)
        with pytest.raises(ValidationError, match="rejected the credentials") as ei:
            open_stores(cfg)
        assert "\n" not in str(ei.value) and "wrong" not in str(ei.value)  # one line, password not echoed
        with pytest.raises(ValidationError, match="rejected the credentials"):
            check_redis(cfg)
    assert check_redis(cfg_for(redis_server.url())) == []
    with pytest.raises(ValidationError, match="DB index is out of range"):
        open_stores(cfg_for(redis_server.url(db=999)))


def test_ttl_expiry(redis_server):
    cfg = cfg_for(redis_server.url(), handle_ttl_s=1.0, cache_ttl_s=1.0, handle_store_size=1)
    store, cache = open_stores(cfg)
    z, labels, hs = latents(2, seed=1)
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    calls: list = []

    async def put():
        await store.aput_many([(h, z[i], int(labels[i])) for i, h in enumerate(hs)])
        await cache.encoder_outputs("tiny-gan", 1, x, encoder(calls))
        await cache.flush()

    async def get_fresh():
        fresh_store, fresh_cache = open_stores(cfg)
        await fresh_cache.encoder_outputs("tiny-gan", 1, x, encoder(calls))
        return await fresh_store.aget_many(hs)

    asyncio.run(put())
    assert len(asyncio.run(get_fresh())) == 2 and calls == [2]  # before the TTL: handle and cache entry live
    time.sleep(1.3)
    with pytest.raises(NotFoundError):
        asyncio.run(get_fresh())
    assert calls == [2, 2]  # the cache entry expired too


def test_cache_hits_misses_and_version_invalidation(redis_server):
    # caches in their own db: the documented two-role layout (handles db 0, caches elsewhere)
    cfg = cfg_for(redis_server.url(), redis_cache_url=redis_server.url(db=1))
    _, cache = open_stores(cfg, image_codec=PB_IMAGES)
    _, other_replica = open_stores(cfg, image_codec=PB_IMAGES)
    x = np.random.default_rng(3).uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)
    z, labels, hs = latents(4, seed=3)
    enc_calls: list = []
    dec_calls: list = []

    async def go():
        await cache.encoder_outputs("tiny-gan", 1, x, encoder(enc_calls))  # 4 misses
        await cache.images("tiny-gan", 1, "png", decoder(dec_calls, 4), latents=(z, labels))  # 4 misses
        await cache.flush()
        out = await other_replica.encoder_outputs("tiny-gan", 1, x[[2, 0]], encoder(enc_calls))  # 2 hits
        np.testing.assert_array_equal(out["latent"], (x[[2, 0]].reshape(2, -1)[:, :8] * 2.0))
        digests = [h.rsplit(":", 1)[1] for h in hs]
        imgs = await other_replica.images("tiny-gan", 1, "png", decoder(dec_calls, 4), digests=digests)  # 4 hits
        assert [i.encoded for i in imgs] == [f"png-{i}".encode() for i in range(4)]
        await other_replica.encoder_outputs("tiny-gan", 2, x[:1], encoder(enc_calls))  # version 2: miss
        await other_replica.images("tiny-gan", 2, "png", decoder(dec_calls, 1), digests=digests[:1])  # miss

    asyncio.run(go())
    assert enc_calls == [4, 1] and dec_calls == [None, None]
    s1, s2 = cache.stats(), other_replica.stats()
    assert (s1["encode"]["misses"], s1["result"]["misses"], s1["encode"]["writes"]) == (4, 4, 4)
    assert (s2["encode"]["hits"], s2["encode"]["misses"], s2["result"]["hits"], s2["result"]["misses"]) == (2, 1, 4, 1)
    with redis_server.client(db=1) as c1, redis_server.client(db=0) as c0:
        result_keys = [f"ls:r:tiny-gan:1:png:{h.rsplit(':', 1)[1]}" for h in hs]
        encode_keys = [f"ls:e:tiny-gan:1:{image_digest(x[i])}" for i in range(4)]
        assert c1.exists(*result_keys) == 4 and c1.exists(*encode_keys) == 4
        assert c0.exists(*result_keys, *encode_keys) == 0


def test_kill9_mid_stream_restart_and_aof(redis_factory):
    server = redis_factory(aof=True)
    cfg = cfg_for(server.url())
    store, cache = open_stores(cfg, image_codec=PB_IMAGES)
    z, labels, hs = latents(4, seed=4)
    x = np.random.default_rng(5).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    phases: dict[str, dict] = {}

    async def stream(n: int, tag: str) -> None:
        """n cache-using requests; none may fail whatever Redis does."""
        calls: list = []
        for i in range(n):
            out = await cache.encoder_outputs("tiny-gan", 1, x, encoder(calls))
            assert out["latent"].shape == (2, 8)
            imgs = await cache.images("tiny-gan", 1, "png", decoder([], 4), latents=(z, labels))
            assert len(imgs) == 4
            await asyncio.sleep(0.005)
        await cache.flush()
        phases[tag] = {c: dict(v) for c, v in cache.stats().items() if c in ("encode", "result")}

    async def go():
        await store.aput_many([(h, z[i], int(labels[i])) for i, h in enumerate(hs)])
        await stream(20, "up")
        server.kill()  # kill -9 mid-stream
        await stream(40, "down")
        with pytest.raises(UnavailableError, match="latent handle store unavailable"):
            await open_stores(cfg, check=False)[0].aget_many(hs)  # a fresh replica cannot resolve: UNAVAILABLE
        server.start()  # same port and dir: AOF reloads the data
        deadline = time.time() + 10
        while time.time() < deadline:  # hits resume by themselves once the breaker lets a probe through
            before = cache.stats()["encode"]["hits"]
            await stream(5, "after")
            if cache.stats()["encode"]["hits"] > before:
                break
        # the handle issued before kill -9 resolves after the restart, on a replica that never saw it
        got = await open_stores(cfg)[0].aget_many(hs)
        np.testing.assert_array_equal(np.stack([g[0] for g in got]), z)

    asyncio.run(go())
    up, down, after = phases["up"], phases["down"], phases["after"]
    assert down["encode"]["bypasses"] - up["encode"]["bypasses"] >= 2 * 30  # bypassed while Redis was dead
    assert down["encode"]["errors"] >= 1
    assert after["encode"]["hits"] > down["encode"]["hits"] and after["result"]["hits"] > down["result"]["hits"]
    assert store.stats()["redis"]["state"] in ("closed", "open")


def test_paused_redis_bypasses_quickly_and_handles_are_unavailable_not_hung(redis_factory):
    server = redis_factory()
    cfg = cfg_for(server.url(), redis_timeout_s=0.05, redis_handle_timeout_s=0.3)
    store, cache = open_stores(cfg)
    z, labels, hs = latents(2, seed=6)
    x = np.zeros((1, 3, 8, 8), np.float32)

    async def go():
        await store.aput_many([(h, z[i], int(labels[i])) for i, h in enumerate(hs)])
        fresh_store, _ = open_stores(cfg)
        await fresh_store.aget_many(hs[:1])  # opens a pooled connection before the pause
        server.pause()
        try:
            t = time.perf_counter()
            out = await cache.encoder_outputs("tiny-gan", 1, x, encoder([]))  # times out, then computes
            cache_wait = time.perf_counter() - t
            t = time.perf_counter()
            with pytest.raises(UnavailableError):
                await fresh_store.aget_many(hs[1:])  # not in its local copy: needs Redis
            handle_wait = time.perf_counter() - t
        finally:
            server.resume()
        return out, cache_wait, handle_wait

    out, cache_wait, handle_wait = asyncio.run(go())
    assert out["latent"].shape == (1, 8)
    assert cache_wait < 1.0 and handle_wait < 2.0, (cache_wait, handle_wait)
    assert cache.stats()["encode"]["bypasses"] == 1 and cache.stats()["encode"]["errors"] == 1


# ---------------------------------------------------------------------------------------------- service level
@pytest.fixture
def two_apps(serve_app, redis_factory, wait_serving):
    """Two latentserve apps (tiny-gan, models in the ingress replica) on the running Serve instance, sharing
    one Redis. Yields (server, [(target, metadata, app name)] * 2)."""
    from ray import serve

    from latentserve.services.app import build_app

    if getattr(serve_app.config, "direct_ingress", False):
        pytest.skip("extra apps need Serve's proxy or the native frontend (direct ingress serves one app per port)")
    server = redis_factory(aof=True)
    base = serve_app.config
    native = base.frontend.grpc_frontend == "native"
    apps = []
    try:
        for name in ("redis-a", "redis-b"):
            port = _fx._free_port() if native else base.frontend.grpc_port
            cfg = base.with_overrides(
                app_name=name, models=["tiny-gan"], colocate=True, num_cpus=0.25, ingress_num_cpus=0.25,
                ingress_replicas=1, grpc_port=port, redis_url=server.url(), **FAST_BREAKER)
            serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
            md = () if native else (("application", name),)
            target = f"127.0.0.1:{port}"
            wait_serving(target, metadata=md or None)
            apps.append((target, md, name))
        yield server, apps
    finally:
        for name in ("redis-a", "redis-b"):
            try:
                serve.delete(name)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass


def _app_stats(name: str) -> dict:
    from ray import serve

    return serve.get_app_handle(name).stats.remote().result(timeout_s=30)


def _bypasses(stats_a: dict, stats_b: dict) -> int:
    return stats_a["cache"]["result"]["bypasses"] + stats_b["cache"]["result"]["bypasses"]


def test_service_handles_shared_and_redis_kill_fails_no_request(two_apps, serve_app):
    import grpc

    from latentserve.services.observability.exporter import snapshot, total
    from latentserve.v1 import latent_pb2_grpc as pb_grpc

    server, ((ta, mda, name_a), (tb, mdb, name_b)) = two_apps
    metrics_dir = serve_app.config.observability.metrics_dir  # the apps' replicas record their metrics there (services/observability/metrics.py)
    z, labels, _ = latents(3, seed=7)
    lat = [pb.Latent(values=z[i].tolist(), label=int(labels[i])) for i in range(3)]
    with grpc.insecure_channel(ta) as cha, grpc.insecure_channel(tb) as chb:
        a, b = pb_grpc.LatentServiceStub(cha), pb_grpc.LatentServiceStub(chb)
        # a handle issued by app A resolves on app B (another replica and process)
        enc = a.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=11, return_handles=True,
                                        format=pb.IMAGE_FORMAT_RAW_UINT8), metadata=mda, timeout=30)
        dec = b.Decode(pb.DecodeRequest(model="tiny-gan", handles=list(enc.handles), format=pb.IMAGE_FORMAT_RAW_UINT8),
                       metadata=mdb, timeout=30)
        assert [i.tensor.data for i in dec.images] == [i.tensor.data for i in enc.images]

        req = pb.DecodeRequest(model="tiny-gan", latents=lat, format=pb.IMAGE_FORMAT_PNG)
        first = a.Decode(req, metadata=mda, timeout=30)
        m0, s0 = snapshot(metrics_dir), _bypasses(_app_stats(name_a), _app_stats(name_b))
        failures: list = []
        done = threading.Event()
        sent = [0]

        def stream():
            while not done.is_set():
                try:
                    r = a.Decode(req, metadata=mda, timeout=30)
                    assert [i.encoded for i in r.images] == [i.encoded for i in first.images]
                except Exception as exc:  # noqa: BLE001
                    failures.append(exc)
                sent[0] += 1
                time.sleep(0.01)

        t = threading.Thread(target=stream)
        t.start()
        try:
            time.sleep(1.0)
            server.kill()  # kill -9 under load
            time.sleep(1.5)
            down = _app_stats(name_a)["cache"]["result"]
            server.start()
            deadline = time.time() + 15
            while time.time() < deadline:
                hits = _app_stats(name_a)["cache"]["result"]["hits"]
                time.sleep(0.5)
                if _app_stats(name_a)["cache"]["result"]["hits"] > hits:
                    break
        finally:
            done.set()
            t.join(30)
        after = _app_stats(name_a)["cache"]["result"]
        print(f"\nredis kill -9 under load: {sent[0]} requests, {len(failures)} failed; result cache while down "
              f"{down}; after restart {after}")
        assert not failures, failures[:3]
        assert sent[0] > 20
        assert down["bypasses"] > 0 and after["hits"] > down["hits"], (down, after)
        # the same bypasses, exactly, through the Prometheus metrics of the node (what dashboards and alerts see)
        m1, s1 = snapshot(metrics_dir), _bypasses(_app_stats(name_a), _app_stats(name_b))
        grew = lambda name, **lab: total(m1, name, **lab) - total(m0, name, **lab)  # noqa: E731
        assert grew("latentserve_cache_bypasses_total", cache="result", model="tiny-gan") == s1 - s0 > 0
        assert grew("latentserve_redis_errors_total", role="cache") >= 1
        assert grew("latentserve_redis_skipped_total", role="cache") >= 1  # the breaker kept requests off Redis
        assert grew("latentserve_cache_hits_total", cache="result", model="tiny-gan") > 0  # hits resumed
        # handles issued before the kill -9 still work on the other app (persistence itself: the store-level test)
        dec2 = b.Decode(pb.DecodeRequest(model="tiny-gan", handles=list(enc.handles), format=pb.IMAGE_FORMAT_RAW_UINT8),
                        metadata=mdb, timeout=30)
        assert len(dec2.images) == 2


def test_handle_round_trip_through_two_replicas_of_one_app(serve_app, redis_server, extra_app):
    """Issue #4: a handle issued by one ingress replica of an app resolves on the other replica of the SAME
    app (Redis shared by both). The replica that answered each call is read from the `latentserve-replica`
    trailing metadata; ClientPool retries on fresh connections until the wanted replica answers."""
    from latentserve.tools.local_cluster import ClientPool, resolve, sample_issue

    target, md, _ = extra_app("two-replicas", models=["tiny-gan"], colocate=True, ingress_replicas=2,
                              num_cpus=0.25, ingress_num_cpus=0.25, redis_url=redis_server.url(), **FAST_BREAKER)
    pool = ClientPool(target, app_name=dict(md).get("application"))
    try:
        seen: set[str] = set()
        for _ in range(64):  # new connections until both replicas answered one
            client = pool.new_client()
            client.list_models()
            seen.add(client.last_server.replica)
            if len(seen) == 2:
                break
        assert len(seen) == 2, seen
        first, second = sorted(seen)
        for seed, (src, dst) in enumerate([(first, second), (second, first)], start=31):
            item = pool.call_on(src, lambda c, s=seed: sample_issue(c, "tiny-gan", s), by="replica")
            diff = pool.call_on(dst, lambda c, it=item: resolve(c, "tiny-gan", it), by="replica")
            assert diff <= 2.0, (src, dst, diff)
    finally:
        pool.close()


def test_unreachable_redis_at_start_is_a_warning_not_an_error():
    msg = RedisBackend("redis://127.0.0.1:1/0", role="handles").check(timeout_s=0.5)  # nothing listens on port 1
    assert "not reachable" in msg and "127.0.0.1:1" in msg


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-persistence"])
def test_handles_across_a_redis_restart_survive_or_are_reported_lost(redis_factory, aof):
    """A real redis-server restarted (kill -9): with AOF every replica still resolves the handles; without
    persistence the store says so at start (metric + log), keeps no per-replica copy (so replicas cannot answer
    differently), and a handle issued before the restart is reported lost, not expired."""
    from latentserve.errors import NotFoundError

    server = redis_factory(aof=aof)
    cfg = cfg_for(server.url())
    a, b = open_stores(cfg)[0], open_stores(cfg)[0]
    assert a.durable is aof and (a.local is not None) is aof
    z, labels, hs = latents(3, seed=7)

    async def resolve(store, handles):
        deadline = time.time() + 10
        while True:  # the breaker opens on the first call to the restarted server; retry until it answers
            try:
                return await store.aget_many(handles)
            except UnavailableError:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def go():
        await a.aput_many([(h, z[i], int(labels[i])) for i, h in enumerate(hs)])
        for store in (a, b):  # both replicas resolve (and, with AOF, keep a local copy)
            np.testing.assert_array_equal(np.stack([g[0] for g in await store.aget_many(hs)]), z)
        server.restart()
        if aof:
            for store in (a, b, open_stores(cfg)[0]):
                np.testing.assert_array_equal(np.stack([g[0] for g in await resolve(store, hs)]), z)
            return
        for store in (a, b):
            with pytest.raises(NotFoundError, match="was lost: the handle store was reset"):
                await resolve(store, hs[:1])
        fresh = open_stores(cfg)[0]
        with pytest.raises(NotFoundError, match=r"expired .* or never issued .*\(or lost: the handle store has issued no handle since it last started"):
            await resolve(fresh, hs[1:2])

    asyncio.run(go())
