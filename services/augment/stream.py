"""Server side of the Augment RPC: a job's images generated batch by batch, only as fast as they are sent.

The ingress handler (services/core/operations.py `Augment`) checks the request (services/augment/spec.py) and
iterates `generate(...)`, turning each `GeneratedBatch` into a protobuf message. Generation runs in a
producer task ahead of the sender: it computes the batch's latents (one image at a time, off the
event loop: `augment_spec.sample_latent`), decodes them through the model's batcher (so concurrent jobs and
ordinary requests share model batches) and renders the output images, then waits for room in a queue of
`prefetch` batches; `parallel` batches are made at once (in index order into the queue), so one job keeps
two cores busy. The handler takes a batch from the queue only after gRPC accepted the previous message, and
grpc.aio accepts a message only when HTTP/2 flow control lets it go out, i.e. when the client reads. So at
most `prefetch` + `parallel` batches exist per stream beyond what the client has read (+ the transport's
flow-control window, a few MB): a slow consumer slows generation down, nothing buffers without bound.
`AugmentStats` counts streams and generated batches (part of the ingress's stats) so tests and operators
can see it.

Batches never straddle shards: each shard is cut into batches of `batch_size` from its own start, so a
resumed job (a subset of the shards) produces exactly the rows of an uninterrupted run.
"""
from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import numpy as np

from latentserve.services.augment.spec import AugmentPlan, AugmentSpec, sample_latent

AUGMENT_PREFETCH = 2  # finished batches waiting to be sent, per stream
# Batches being made at once per stream: two full batches run side by side in the model's batcher (it runs a
# second batch beside the first when it is at least half full), so one job uses two cores like bulk Decode.
AUGMENT_PARALLEL = 2


@dataclass
class AugmentStats:
    """Counters of one ingress's Augment streams."""

    streams_active: int = 0
    streams_total: int = 0
    batches: int = 0
    images: int = 0
    max_queued: int = 0  # most batches ever waiting in one stream's queue (<= prefetch)

    def snapshot(self) -> dict:
        return dict(self.__dict__)


@dataclass
class GeneratedBatch:
    """Images start..start+n-1 of one shard (images are the renderer's objects, e.g. Image protos)."""

    shard: int
    start: int
    images: list
    labels: np.ndarray  # int32 (n,)
    seeds: np.ndarray  # uint64 (n,)
    factors: dict[str, np.ndarray]  # requested value per factor, float64 (n,)
    handles: list[str] = field(default_factory=list)
    shard_end: bool = False
    confidence: np.ndarray | None = None  # float32 (n,) with the label check: the class head's p(label)


def latents_for(space: Any, spec: AugmentSpec, labels: np.ndarray, seeds: np.ndarray,
                factors: dict[str, np.ndarray], temperature: float, attempt: int = 0) -> np.ndarray:
    """(n, D) float32 latents of a batch, row by row (see augment_spec.sample_latent)."""
    rows = [sample_latent(space, spec.source, int(labels[i]), int(seeds[i]), temperature,
                          {name: values[i] for name, values in factors.items()}, attempt)
            for i in range(len(labels))]
    return np.stack(rows).astype(np.float32, copy=False)


# check(draw, labels) -> (latents (n, D), rendered images, confidence (n,)): a label check of one batch, where
# draw(rows, attempt) gives the latents of those rows' attempt-th candidates (services/core/operations.py runs it)
Check = Callable[[Callable[[np.ndarray, int], np.ndarray], np.ndarray], Awaitable[tuple[np.ndarray, list, np.ndarray]]]


async def generate(spec: AugmentSpec, plan: AugmentPlan, shards: Sequence[int], space: Any, temperature: float,
                   render: Callable[[np.ndarray, np.ndarray], Awaitable[list]], batch_size: int,
                   store: Callable[[np.ndarray, np.ndarray], Awaitable[list[str]]] | None = None,
                   stats: AugmentStats | None = None, prefetch: int = AUGMENT_PREFETCH,
                   parallel: int = AUGMENT_PARALLEL, check: Check | None = None) -> AsyncIterator[GeneratedBatch]:
    """The batches of `shards` in order. `render(latents, labels)` decodes and returns output images;
    `store(latents, labels)` returns handles (None: no handles); `check` (None: no label check) makes a batch
    instead of `render`. At most `parallel` batches are being made at once and `prefetch` wait to be sent.
    Closing the iterator (client gone, deadline) cancels the producer and whatever model calls it awaits."""
    stats = stats or AugmentStats()
    queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, prefetch))
    loop = asyncio.get_running_loop()

    async def make(shard: int, b: int, e: int, stop: int) -> GeneratedBatch:
        labels, seeds, factors = plan.images(b, e)
        y = labels.astype(np.int64)
        confidence = None
        if check is None:
            z = await loop.run_in_executor(None, latents_for, space, spec, labels, seeds, factors, temperature)
            images = await render(z, y)
        else:
            def draw(rows: np.ndarray, attempt: int) -> np.ndarray:
                return latents_for(space, spec, labels[rows], seeds[rows],
                                   {name: values[rows] for name, values in factors.items()}, temperature, attempt)

            z, images, confidence = await check(draw, y)
        handles = await store(z, y) if store is not None else []
        stats.batches += 1
        stats.images += e - b
        return GeneratedBatch(shard, b, images, labels, seeds, factors, handles, e == stop, confidence)

    async def produce() -> None:
        pending: collections.deque[asyncio.Task] = collections.deque()
        try:
            for shard in shards:
                start, stop = spec.shard_range(shard)
                for b in range(start, stop, batch_size):
                    pending.append(loop.create_task(make(shard, b, min(b + batch_size, stop), stop)))
                    if len(pending) >= parallel:
                        await queue.put(await pending.popleft())  # in order; waits while the queue is full
                        stats.max_queued = max(stats.max_queued, queue.qsize())
            while pending:
                await queue.put(await pending.popleft())
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the sender, which maps it to a status
            await queue.put(exc)
        finally:
            for task in pending:
                task.cancel()

    stats.streams_active += 1
    stats.streams_total += 1
    task = loop.create_task(produce(), name="augment-producer")
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stats.streams_active -= 1
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - cancelled on purpose, or already reported through the queue
            pass
