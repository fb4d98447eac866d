"""`AugmentDataset`: a `torch.utils.data.IterableDataset` that streams an augmentation job from the service,
for training loops that consume synthetic data directly (torch optional: without it the class is a plain
iterable with the same behaviour).

    from latentserve.client.dataset import AugmentDataset
    ds = AugmentDataset("127.0.0.1:9000", {"model": "shapes-gan", "count": 10000, "seed": 7,
                                            "format": "float32", "handles": False})
    loader = torch.utils.data.DataLoader(ds, batch_size=128, num_workers=2, multiprocessing_context="spawn")
    for x, y in loader: ...     # x float32 (B, 3, H, W) in [-1, 1], y int64 (B,)

Worker sharding: the job's shards (services/augment/spec.py) are dealt round-robin over `world_size`
processes (`rank`: distributed training) times the DataLoader's workers, so together they see every image of
the job exactly once; each worker opens its own gRPC channel inside the worker process (use the "spawn"
start method, or "forkserver": a gRPC channel must not be inherited through fork). Bounded prefetch: a
reader thread per worker keeps at most `prefetch` chunks (batches of the server's size) ahead of the
training loop, and the server generates only as fast as they are read. A server that restarts mid-stream is
reconnected to with backoff; the stream resumes at the first image not yet yielded.

Items: `(image, label)`, or `(image, label, info)` with `with_info=True` (info: index, seed, factor values,
class_confidence (with the label check, else None),
handle). Images by the spec's format: float32 (3, H, W) in [-1, 1] for "float32", uint8 (H, W, 3) otherwise
(PNG / JPEG are decoded); `transform(image)` is applied to that array; with torch installed and no
transform, arrays become tensors.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator

from latentserve.client.calls import LatentClient
from latentserve.client.messages import decode_image_bytes
from latentserve.errors import DeadlineExceededError, OverloadedError, UnavailableError
from latentserve.services.augment.spec import AugmentSpec, parse_spec

try:  # torch is optional: the class works as a plain iterable without it
    import torch
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - exercised only where torch is missing
    torch = None
    _Base = object

# server restarting / draining / overloaded, or its request_timeout_s cut a long stream: resume where it stopped
RETRYABLE = (UnavailableError, OverloadedError, DeadlineExceededError)
_END = object()


class AugmentDataset(_Base):
    """See the module docstring. `spec`: an AugmentSpec or its dict form (checked at construction)."""

    def __init__(self, target: str, spec: Any, token: str | None = None, app_name: str | None = None,
                 prefetch: int = 4, rank: int = 0, world_size: int = 1, transform: Callable | None = None,
                 with_info: bool = False, retry_s: float = 120.0, allow_weak_knobs: bool = False) -> None:
        self.target, self.token, self.app_name = target, token, app_name
        self.allow_weak_knobs = bool(allow_weak_knobs)  # use factor knobs below their quality gate
        self.spec: AugmentSpec = spec if isinstance(spec, AugmentSpec) else parse_spec(spec)
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.prefetch, self.rank, self.world_size = int(prefetch), int(rank), int(world_size)
        self.transform, self.with_info, self.retry_s = transform, with_info, float(retry_s)

    def shards(self, worker: int = 0, num_workers: int = 1) -> list[int]:
        """The shard indices one worker of one rank streams."""
        slots = self.world_size * num_workers
        slot = self.rank * num_workers + worker
        return list(range(slot, self.spec.num_shards, slots))

    def __iter__(self) -> Iterator[Any]:
        worker, num_workers = 0, 1
        if torch is not None:
            info = torch.utils.data.get_worker_info()
            if info is not None:
                worker, num_workers = info.id, info.num_workers
        shards = self.shards(worker, num_workers)
        if not shards:
            return
        chunks: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(shards, chunks, stop), daemon=True,
                                  name=f"augment-reader-{worker}")
        reader.start()
        try:
            while True:
                chunk = chunks.get()
                if chunk is _END:
                    return
                if isinstance(chunk, BaseException):
                    raise chunk
                yield from self._items(chunk)
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting for room, then let it cancel its stream
                try:
                    chunks.get_nowait()
                except queue.Empty:
                    reader.join(0.05)

    def _read(self, shards: list[int], chunks: queue.Queue, stop: threading.Event) -> None:
        """Reader thread: stream `shards` into `chunks`, reconnecting after retryable errors and skipping
        images already delivered."""

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    chunks.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        remaining, next_index = list(shards), self.spec.shard_range(shards[0])[0]
        wait, last_progress = 0.25, time.monotonic()
        try:
            with LatentClient(self.target, token=self.token, app_name=self.app_name) as client:
                while remaining and not stop.is_set():
                    stream = client.augment(self.spec, shards=remaining, allow_weak_knobs=self.allow_weak_knobs)
                    try:
                        for chunk in stream:
                            end = chunk.start + len(chunk.labels)
                            if end > next_index:  # images before next_index were delivered before a reconnect
                                if chunk.start < next_index:
                                    chunk = _tail(chunk, next_index - chunk.start)
                                if not put(chunk):
                                    return
                            if chunk.shard_end:
                                remaining.pop(0)
                                if remaining:
                                    next_index = self.spec.shard_range(remaining[0])[0]
                                wait, last_progress = 0.25, time.monotonic()
                            else:
                                next_index = max(next_index, end)
                    except RETRYABLE:
                        if time.monotonic() - last_progress > self.retry_s:
                            raise
                        time.sleep(wait)
                        wait = min(2 * wait, 8.0)
                    finally:
                        stream.close()
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
            put(exc)

    def _items(self, chunk: Any) -> Iterator[Any]:

        encoded = self.spec.format in ("png", "jpeg")
        for j, index in enumerate(chunk.indices):
            image = chunk.images[j]
            if encoded:
                image = decode_image_bytes(image)
            if self.transform is not None:
                image = self.transform(image)
            elif torch is not None:
                image = torch.from_numpy(image.copy())  # the chunk's arrays are read-only views
            label = int(chunk.labels[j])
            if self.with_info:
                info = {"index": index, "seed": int(chunk.seeds[j]),
                        "factors": {k: float(v[j]) for k, v in chunk.factors.items()},
                        "handle": chunk.handles[j] if chunk.handles else "",
                        # the model's own p(label) when the label check ran (services/augment/spec.py), else None
                        "class_confidence": (None if chunk.class_confidence is None
                                             else float(chunk.class_confidence[j]))}
                yield image, label, info
            else:
                yield image, label


def _tail(chunk: Any, skip: int) -> Any:
    """The chunk without its first `skip` images."""
    from dataclasses import replace

    return replace(chunk, start=chunk.start + skip, images=chunk.images[skip:], labels=chunk.labels[skip:],
                   seeds=chunk.seeds[skip:], factors={k: v[skip:] for k, v in chunk.factors.items()},
                   handles=chunk.handles[skip:],
                   class_confidence=None if chunk.class_confidence is None else chunk.class_confidence[skip:])
