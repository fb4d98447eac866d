"""A bounded mixed soak of a running server: does the serving process's memory stay flat?

For `--minutes` (10 by default; `--seconds` for a short run), `--workers` asyncio workers send a mix of valid
and hostile calls through the Python client and raw stubs: Decode (1-64 rows), Sample (prior), guided Sample
of the largest size the server allows (ModelInfo limits; `--guided-steps` iterations), Encode of PNGs,
geodesic Interpolate, and bad input (a 30000x30000 PNG header, a truncated PNG, latents of 3e38, random
bytes). The first `--warmup` seconds are warm-up (torch and the graphs load on the first gradient op);
after that it samples the serving process's RSS every 10 s and reports the drift: last / first sample after
warm-up, the max, and the medians and minima of 2-minute windows (RSS swings with the passes in flight). Every status code seen is counted; INTERNAL or UNKNOWN fail the run.

    latentserve serve --port 9100 &
    python benchmarks/soak.py -t 127.0.0.1:9100 --server-pid $(pgrep -of "grpc.native --control-fd") --seconds 180
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


async def main(a: argparse.Namespace) -> int:
    from latentserve.client import AsyncLatentClient

    async with AsyncLatentClient(a.target, timeout=60) as c:
        info = await c.get_model(a.model)
    seconds = a.seconds if a.seconds else a.minutes * 60
    print(f"soak {seconds:.0f} s of {a.target} (model {a.model}, {a.workers} workers), server pid {a.server_pid}: "
          f"RSS {rss_mb(a.server_pid)} MB at start; warm-up {a.warmup:.0f} s", flush=True)
    stop, counts = asyncio.Event(), collections.Counter()
    tasks = [asyncio.create_task(worker(a, info, stop, counts)) for _ in range(a.workers)]
    t0, samples = time.monotonic(), []
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(min(10.0, max(0.1, seconds - (time.monotonic() - t0))))
        t, r = time.monotonic() - t0, rss_mb(a.server_pid)
        if t >= a.warmup:
            samples.append(r)
        print(f"t={t:5.0f}s  RSS {r:6d} MB  {'(warm-up) ' if t < a.warmup else ''}{dict(counts)}", flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    bad = counts["INTERNAL"] + counts["UNKNOWN"]
    if len(samples) < 2:
        print("too short to measure drift: run longer than the warm-up + 20 s")
        return 1
    drift = (samples[-1] - samples[0]) / samples[0] * 100
    print(f"RSS after warm-up: first {samples[0]:.0f} MB, last {samples[-1]:.0f} MB, max {max(samples):.0f} MB; "
          f"drift {drift:+.1f}% (last/first), max {(max(samples) - samples[0]) / samples[0] * 100:+.1f}%; "
          f"calls {sum(counts.values())}, INTERNAL/UNKNOWN {bad}")
    # RSS swings with the gradient passes in flight: medians and minima of 2-minute windows show the trend
    windows = [samples[i:i + 12] for i in range(0, len(samples), 12) if len(samples[i:i + 12]) >= 6]
    if len(windows) >= 2:
        med = [sorted(w)[len(w) // 2] for w in windows]
        low = [min(w) for w in windows]
        print(f"2-minute windows: medians {' / '.join(map(str, med))} MB ({(med[-1] - med[0]) / med[0] * 100:+.1f}%), "
              f"minima {' / '.join(map(str, low))} MB ({(low[-1] - low[0]) / low[0] * 100:+.1f}%)")
    return 1 if bad else 0


if __name__ == "__main__":
    p = server_parser(__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=0.0, help="run this long instead of --minutes")
    p.add_argument("--warmup", type=float, default=60.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--guided-rows", type=int, default=64, help="rows of the guided Sample (capped by the server)")
    p.add_argument("--guided-steps", type=int, default=50)
    raise SystemExit(asyncio.run(main(p.parse_args())))
