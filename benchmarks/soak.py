"""A bounded mixed soak of a running server: does the serving processes' memory stay flat?

For `--minutes` (10 by default; `--seconds` for a short run), `--workers` asyncio workers send a mix of valid
and hostile calls through the Python client and raw stubs: Decode (1-64 rows), Sample (prior), guided Sample
of the largest size the server allows (ModelInfo limits; `--guided-steps` iterations), Encode of PNGs,
geodesic Interpolate, and bad input (a 30000x30000 PNG header, a truncated PNG, latents of 3e38, random
bytes). Every status code seen is counted; INTERNAL or UNKNOWN fail the run. Before it, the serving processes'
byte-bounded in-process caches are filled to their budget (`--fill-cache-mb`), so the soak watches memory that
should be flat, not bounded caches filling.

Memory: `--server-pid` is the server (`latentserve serve`'s pid: every serving process below it is watched) or
one serving process. RSS is sampled every 5 s. The first `--warmup` seconds are warm-up (torch and the graphs
load on the first gradient op; the caches start filling). The reported figure, per serving process: the median
RSS of the last minute against the median of the first minute after warm-up (medians, because RSS swings
with the gradient passes in flight; a minute each, so one sample cannot decide it); the run's drift is the
largest of the processes' (signed). Also printed: the floor (minimum) of the same two minutes, which a gradient
pass in flight cannot lift, so a leak shows there first; each process's minimum and maximum after warm-up, and the medians of
2-minute windows (the trend in between). A serving process that was restarted (new pid) is reported as such.

    latentserve serve --port 9100 --models shapes-gan &
    python benchmarks/soak.py -t 127.0.0.1:9100 --server-pid $! --minutes 10 --warmup 120
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import random
import struct
import time
import zlib

import grpc
import numpy as np

from abuse import rss_mb, server_parser  # benchmarks/abuse.py, beside this script


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


BOMB = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\0" * 200_000, 9)) + _chunk(b"IEND", b""))


def _png(u8: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, "PNG")
    return buf.getvalue()


async def worker(a: argparse.Namespace, info, stop: asyncio.Event, counts: collections.Counter) -> None:
    from latentserve.client import AsyncLatentClient, latents_to_protos
    from latentserve.errors import LatentServeError
    from latentserve.v1 import latent_pb2 as pb

    rng = random.Random()
    dim, (_, h, w) = info.latent_dim, info.image_shape
    png = _png(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    guided_rows = min(info.max_images_per_request, a.guided_rows)
    async with AsyncLatentClient(a.target, timeout=120) as client:
        raw_encode = client._channel.unary_unary(
            "/latentserve.v1.LatentService/Encode", request_serializer=pb.EncodeRequest.SerializeToString,
            response_deserializer=pb.EncodeResponse.FromString)
        raw_decode = client._channel.unary_unary(
            "/latentserve.v1.LatentService/Decode", request_serializer=pb.DecodeRequest.SerializeToString,
            response_deserializer=pb.DecodeResponse.FromString)
        junk = client._channel.unary_unary("/latentserve.v1.LatentService/Decode")
        while not stop.is_set():
            k = rng.random()
            try:
                if k < 0.30:
                    n = rng.choice([1, 8, 64])
                    await client.decode(a.model, np.random.randn(n, dim).astype(np.float32), np.zeros(n, np.int64))
                elif k < 0.45:
                    await client.sample(a.model, rng.choice([1, 16]), format="png")
                elif k < 0.55:
                    await client.encode(a.model, [png] * rng.choice([1, 8]))
                elif k < 0.62:
                    await client.sample(a.model, guided_rows, source="guided", guidance={"steps": a.guided_steps})
                elif k < 0.67:
                    ends = np.random.randn(2, dim).astype(np.float32)
                    [f async for f in client.interpolate(a.model, (ends[0], 0), (ends[1], 0), steps=8,
                                                          method="geodesic", geodesic={"iterations": 20})]
                elif k < 0.75:
                    await raw_encode(pb.EncodeRequest(model=a.model, images=[pb.Image(encoded=BOMB)]), timeout=10)
                elif k < 0.83:
                    await raw_encode(pb.EncodeRequest(model=a.model, images=[pb.Image(encoded=png[:-20])]), timeout=10)
                elif k < 0.91:
                    z = np.full((1, dim), 3e38, np.float32)
                    await raw_decode(pb.DecodeRequest(model=a.model, latents=latents_to_protos(z, np.zeros(1, np.int64))),
                                     timeout=10)
                else:
                    await junk(os.urandom(rng.randint(0, 300)), timeout=10)
                counts["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                counts[exc.code().name] += 1
            except LatentServeError as exc:
                counts[type(exc).__name__] += 1


def serving_pids(root: int) -> list[int]:
    """The serving processes below `root` (or `root` itself when it is one)."""
    from latentserve.tools.fault_bench import SERVING_MARK, serving_pids as below

    with open(f"/proc/{root}/cmdline", "rb") as f:
        if SERVING_MARK.encode() in f.read():
            return [root]
    return below(root)


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def drift_report(samples: dict[int, list[tuple[float, int]]], t_from: float, t_to: float) -> tuple[float, list[str]]:
    """(the largest per-process drift in %, lines): per process, the median RSS of the last minute against the
    median of the first minute after warm-up (`t_from`), over samples (t, MB)."""
    lines, worst = [], float("-inf")
    for pid, pts in sorted(samples.items()):
        pts = [(t, r) for t, r in pts if t >= t_from]
        first = [r for t, r in pts if t < t_from + 60]
        last = [r for t, r in pts if t >= t_to - 60]
        if len(first) < 3 or len(last) < 3 or pts[-1][0] < t_to - 30:
            lines.append(f"  pid {pid}: not watched through the run (restarted or gone): {len(pts)} samples")
            continue
        d = (_median(last) - _median(first)) / _median(first) * 100
        worst = max(worst, d)  # the largest growth (a shrinking process counts with its negative figure)
        floor = (min(last) - min(first)) / min(first) * 100
        rss = [r for _, r in pts]
        windows = [[r for t, r in pts if t_from + k * 120 <= t < t_from + (k + 1) * 120]
                   for k in range(int((t_to - t_from) // 120))]
        lines.append(f"  pid {pid}: first minute median {_median(first):.0f} MB -> last minute median "
                     f"{_median(last):.0f} MB ({d:+.1f}%); floor (minimum of the minute) {min(first)} -> "
                     f"{min(last)} MB ({floor:+.1f}%); min {min(rss)} / max {max(rss)} MB; 2-minute window "
                     f"medians {' / '.join(f'{_median(w):.0f}' for w in windows if w)} MB")
    return worst, lines


async def fill_caches(a: argparse.Namespace, info, processes: int) -> tuple[int, float]:
    """Fill the serving processes' in-process caches (byte-bounded LRUs of `--fill-cache-mb`, serve's
    cache_memory_bytes) before the warm-up ends: Decode calls of 64 new latents on several connections (the
    kernel spreads them over the processes) until the images returned add up to 1.5 x the budget of every
    process. Bounded caches filling are not a leak; without this the first minutes of the soak measure them.
    Returns (bytes returned, seconds)."""
    from latentserve.client import AsyncLatentClient

    goal, got, t0 = int(1.5 * a.fill_cache_mb * (1 << 20) * processes), [0], time.monotonic()

    async def one() -> None:
        async with AsyncLatentClient(a.target, timeout=120) as c:
            while got[0] < goal:
                out = await c.decode(a.model, np.random.randn(64, info.latent_dim).astype(np.float32),
                                     np.zeros(64, np.int64))  # uint8 pixels, as the soak's Decode calls
                got[0] += np.asarray(out).nbytes

    await asyncio.gather(*(one() for _ in range(4 * processes)))
    return got[0], time.monotonic() - t0


async def main(a: argparse.Namespace) -> int:
    from latentserve.client import AsyncLatentClient

    async with AsyncLatentClient(a.target, timeout=60) as c:
        info = await c.get_model(a.model)
    seconds = a.seconds if a.seconds else a.minutes * 60
    pids = serving_pids(a.server_pid)
    if not pids:
        print(f"no serving process at or below pid {a.server_pid}")
        return 2
    print(f"soak {seconds:.0f} s of {a.target} (model {a.model}, {a.workers} workers), serving processes {pids}: "
          f"RSS {[rss_mb(p) for p in pids]} MB at start; warm-up {a.warmup:.0f} s", flush=True)
    if a.fill_cache_mb > 0:
        filled, took = await fill_caches(a, info, len(pids))
        print(f"caches filled: {filled / (1 << 20):.0f} MB of images decoded in {took:.0f} s; RSS "
              f"{[rss_mb(p) for p in pids]} MB", flush=True)
    stop, counts = asyncio.Event(), collections.Counter()
    tasks = [asyncio.create_task(worker(a, info, stop, counts)) for _ in range(a.workers)]
    t0, samples, last_print = time.monotonic(), collections.defaultdict(list), 0.0
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(min(5.0, max(0.1, seconds - (time.monotonic() - t0))))
        t = time.monotonic() - t0
        now = {}
        for pid in serving_pids(a.server_pid):
            try:
                now[pid] = rss_mb(pid)
            except OSError:
                continue
            samples[pid].append((t, now[pid]))
        if t - last_print >= 30 or t >= seconds:
            last_print = t
            print(f"t={t:5.0f}s  RSS {now} MB  {'(warm-up) ' if t < a.warmup else ''}{dict(counts)}", flush=True)
    t_end = time.monotonic() - t0
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    bad = counts["INTERNAL"] + counts["UNKNOWN"]
    if seconds < a.warmup + 120:
        print("too short to measure drift: run at least the warm-up + 2 minutes")
        return 1
    worst, lines = drift_report(samples, a.warmup, t_end)
    print(f"calls {sum(counts.values())}, INTERNAL/UNKNOWN {bad}; RSS after warm-up, per serving process "
          f"(last-minute median vs first-minute median):")
    print("\n".join(lines))
    print(f"drift (largest of the processes): {worst:+.1f}%" if worst > float("-inf") else "drift: not measured")
    return 1 if bad else 0


if __name__ == "__main__":
    p = server_parser(__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=0.0, help="run this long instead of --minutes")
    p.add_argument("--warmup", type=float, default=120.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--guided-rows", type=int, default=64, help="rows of the guided Sample (capped by the server)")
    p.add_argument("--guided-steps", type=int, default=50)
    p.add_argument("--fill-cache-mb", type=float, default=64.0,
                   help="before the soak, fill each serving process's in-process caches of this budget (serve's "
                        "cache_memory_bytes, default 64 MiB); 0 = do not")
    raise SystemExit(asyncio.run(main(p.parse_args())))
