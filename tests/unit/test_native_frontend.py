"""The native gRPC frontend's logic without servers: the dynamic `Batcher` (services/core/model_server.py),
`Admission` control (services/frontends/grpc/native.py), the uint8 conversion of decoded images (services/frontends/grpc/codec.py) and
the bench's cache-proof requests. The server itself: tests/integration/test_native_frontend.py."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from latentserve.errors import OverloadedError, ValidationError
from latentserve.services.frontends.grpc.native import Admission
from latentserve.services.core.model_server import Batcher, _Item
from latentserve.v1 import latent_pb2 as pb


class _Loaded:
    """Stands in for LoadedVersion: only `.record.version` is read by _Item."""

    def __init__(self, version: int = 1) -> None:
        self.record = type("R", (), {"version": version})()


def _item(rows: int) -> _Item:
    return _Item(_Loaded(), (np.zeros((rows, 2), np.float32),))


# ------------------------------------------------------------------------------------------------ Batcher
def test_batcher_merges_concurrent_requests_up_to_max_rows():
    calls: list[list[int]] = []

    async def run(items):
        calls.append([it.rows for it in items])
        return [it.rows * 10 for it in items]

    async def main():
        b = Batcher(run, max_rows=8, wait_s=0.05, max_concurrent=1)
        return await asyncio.gather(*(b.submit(_item(r)) for r in (1, 2, 3, 4, 1)))

    assert asyncio.run(main()) == [10, 20, 30, 40, 10]
    assert calls[0] == [1, 2, 3] and sum(sum(c) for c in calls) == 11  # 1+2+3 fit 8 rows, 4 does not
    assert all(sum(c) <= 8 for c in calls)


def test_batcher_does_not_wait_when_the_batch_is_full():
    async def run(items):
        return [None] * len(items)

    async def main():
        b = Batcher(run, max_rows=4, wait_s=5.0, max_concurrent=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(b.submit(_item(1)) for _ in range(4)))
        return loop.time() - t0

    assert asyncio.run(main()) < 1.0


def test_batcher_runs_at_preferred_rows_and_combines_no_more():
    calls: list[list[int]] = []

    async def run(items):
        calls.append([it.rows for it in items])
        await asyncio.sleep(0.05)  # the next requests queue up behind this batch
        return [None] * len(items)

    async def main():
        b = Batcher(run, max_rows=8, preferred_rows=2, wait_s=5.0, max_concurrent=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = [asyncio.ensure_future(b.submit(_item(1))) for _ in range(2)]
        await asyncio.sleep(0.01)  # the first batch (2 rows = preferred) runs without waiting for company
        later = [asyncio.ensure_future(b.submit(_item(r))) for r in (1, 1, 1, 6, 1, 1)]
        await asyncio.gather(*first, *later)
        return loop.time() - t0

    assert asyncio.run(main()) < 1.0  # never waited out wait_s
    # the backlog is not merged into one batch: requests combine up to 2 rows, a 6-row request runs alone
    assert calls == [[1, 1], [1, 1], [1], [6], [1, 1]]


def test_batcher_closes_when_arrivals_reach_preferred_rows_below_the_parallel_threshold():
    # preferred_rows (2) < max_rows // 2 (4): the batch must close when the second row arrives, not on its timers
    calls: list[int] = []

    async def run(items):
        calls.append(len(items))
        return [None] * len(items)

    async def main():
        b = Batcher(run, max_rows=8, preferred_rows=2, wait_s=5.0, max_concurrent=1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        first = asyncio.ensure_future(b.submit(_item(1)))
        await asyncio.sleep(0.05)  # the batcher is now waiting for company with one row
        await asyncio.gather(first, b.submit(_item(1)))
        return loop.time() - t0

    assert asyncio.run(main()) < 1.0
    assert calls == [2]


def test_batcher_drops_cancelled_requests_before_running_them():
    ran: list[int] = []

    async def run(items):
        ran.extend(it.rows for it in items)
        return [it.rows for it in items]

    async def main():
        b = Batcher(run, max_rows=16, wait_s=0.2, max_concurrent=1)
        doomed = [asyncio.ensure_future(b.submit(_item(5))) for _ in range(2)]
        kept = asyncio.ensure_future(b.submit(_item(3)))
        await asyncio.sleep(0)  # all three are queued; the batch forms >= 1 ms later
        for t in doomed:
            t.cancel()
        return await kept

    assert asyncio.run(main()) == 3
    assert ran == [3]


def test_batcher_failure_fails_its_batch_only():
    async def run(items):
        if any(it.rows == 2 for it in items):
            raise ValidationError("bad batch")
        return [it.rows for it in items]

    async def main():
        b = Batcher(run, max_rows=4, wait_s=0.0, max_concurrent=1)
        with pytest.raises(ValidationError):
            await b.submit(_item(2))
        return await b.submit(_item(1))

    assert asyncio.run(main()) == 1


def test_batcher_limits_batches_in_flight():
    in_flight, peak = 0, 0

    async def run(items):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return [None] * len(items)

    async def main():
        b = Batcher(run, max_rows=1, wait_s=0.0, max_concurrent=2)
        await asyncio.gather(*(b.submit(_item(1)) for _ in range(8)))

    asyncio.run(main())
    assert peak == 2


# ------------------------------------------------------------------------------------------------ Admission
def test_admission_runs_queues_then_rejects_and_hands_slots_over():
    async def main():
        a = Admission(max_ongoing=1, max_queued=1)
        await a.acquire()  # runs
        waiter = asyncio.ensure_future(a.acquire())  # queued
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError, match="at capacity"):
            await a.acquire()  # neither a slot nor a queue place
        assert (a.ongoing, a.queued, a.rejected) == (1, 1, 1)
        a.release()  # the slot goes to the waiter
        await waiter
        assert (a.ongoing, a.queued) == (1, 0)
        a.release()
        assert a.ongoing == 0

    asyncio.run(main())


def test_admission_cancelled_waiter_leaves_the_queue():
    async def main():
        a = Admission(max_ongoing=1, max_queued=-1)
        await a.acquire()
        waiters = [asyncio.ensure_future(a.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        waiters[0].cancel()
        await asyncio.sleep(0)
        assert a.queued == 2
        a.release()
        await waiters[1]
        a.release()
        await waiters[2]
        a.release()
        assert (a.ongoing, a.queued) == (0, 0)

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------ images
def test_float_images_to_uint8_matches_the_reference_and_in_place():
    from latentserve.models.data.base import to_uint8
    from latentserve.services.core.images import float_images_to_uint8
    from latentserve.services.frontends.grpc.codec import images_to_pb

    x = np.random.default_rng(0).uniform(-1.3, 1.3, (3, 3, 4, 5)).astype(np.float32)  # (N, 3, H, W)
    ref = to_uint8(x)  # (N, H, W, 3)
    out = float_images_to_uint8(x)
    assert out.shape == (3, 4, 5, 3) and out.flags.c_contiguous and np.array_equal(out, ref)
    scratch = x.copy()
    assert np.array_equal(float_images_to_uint8(scratch, inplace=True), ref)
    # the server may hand the codec floats or already-converted uint8: same bytes on the wire
    assert images_to_pb(x, "raw_uint8") == images_to_pb(out, "raw_uint8")
    with pytest.raises(ValidationError):
        images_to_pb(out, "raw_float32")


def test_bench_requests_are_unique_per_call():
    from latentserve.tools.bench import latentserve_requests

    reqs = latentserve_requests("m", None, 8, 3, 4, seed=0, count=2)
    a, b, c = (pb.DecodeRequest.FromString(reqs[i]) for i in (0, 1, 2))
    assert a.latents[1].values[1:] == c.latents[1].values[1:]  # same template ...
    assert a.latents[1].values[0] != c.latents[1].values[0]  # ... made unique
    assert len({reqs[i] for i in range(50)}) == 50 and b.latents[0].values[0] != a.latents[0].values[0]


def test_bench_config_checks_its_connection_count():
    from latentserve.tools.bench import BenchConfig

    BenchConfig(connections=4).validate()
    for bad in (0, 65):
        with pytest.raises(ValidationError, match="--connections must be in 1..64"):
            BenchConfig(connections=bad).validate()
