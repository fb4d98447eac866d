"""Abuse a running server and watch its memory: the leak check of the serving process.

For `--seconds`, 48 asyncio workers on 4 connections send a mix of: Decode calls with deadlines of 1 ms - 1 s
(many expire inside the batcher), Decode calls the client cancels after 0-10 ms, random bytes to Decode,
calls to a method that does not exist, and Interpolate streams the client leaves after 0-5 frames. Every
10 s it prints the server's RSS and the status codes seen; at the end one valid ListModels must answer.
A server that leaks per call grows steadily here (the compiled transport's first version: +2 MB/s); a sound
one levels off within seconds.

    latentserve serve --port 9100 &
    python benchmarks/abuse.py -t 127.0.0.1:9100 --server-pid $(pgrep -of "grpc.native --control-fd")
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import time

import grpc
import numpy as np


def server_parser(doc: str) -> argparse.ArgumentParser:
    """The options every watch-a-running-server script shares (this one, soak.py): target, pid, model."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("-t", "--target", default="127.0.0.1:9000")
    p.add_argument("--server-pid", type=int, required=True,
                   help="the serving process whose RSS is watched (soak.py: or the server's pid, every serving "
                        "process below it)")
    p.add_argument("--model", default="shapes-gan")
    return p


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) // 1024


async def worker(ch: grpc.aio.Channel, model: str, dim: int, stop: asyncio.Event, counts: collections.Counter) -> None:
    from latentserve.client import latents_to_protos
    from latentserve.v1 import latent_pb2 as pb

    decode = ch.unary_unary("/latentserve.v1.LatentService/Decode", request_serializer=pb.DecodeRequest.SerializeToString,
                            response_deserializer=pb.DecodeResponse.FromString)
    raw = ch.unary_unary("/latentserve.v1.LatentService/Decode")
    missing = ch.unary_unary("/latentserve.v1.LatentService/NoSuchMethod")
    interpolate = ch.unary_stream("/latentserve.v1.LatentService/Interpolate",
                                  request_serializer=pb.InterpolateRequest.SerializeToString,
                                  response_deserializer=pb.InterpolateFrame.FromString)
    rng = random.Random()
    while not stop.is_set():
        k, n = rng.random(), rng.choice([1, 1, 1, 8, 64])
        z = np.random.randn(n, dim).astype(np.float32)
        req = pb.DecodeRequest(model=model, latents=latents_to_protos(z, np.zeros(n, np.int64)),
                               format=pb.IMAGE_FORMAT_RAW_UINT8)
        try:
            if k < 0.5:
                await decode(req, timeout=rng.choice([0.001, 0.005, 0.02, 1.0]))
            elif k < 0.65:
                call = decode(req, timeout=5)
                await asyncio.sleep(rng.random() * 0.01)
                call.cancel()
                await call
            elif k < 0.75:
                await raw(os.urandom(rng.randint(0, 200)), timeout=1)
            elif k < 0.8:
                await missing(b"", timeout=1)
            else:
                ends = latents_to_protos(np.random.randn(2, dim).astype(np.float32), np.zeros(2, np.int64))
                ireq = pb.InterpolateRequest(model=model, steps=16)
                ireq.a.latent.CopyFrom(ends[0])
                ireq.b.latent.CopyFrom(ends[1])
                call, frames, leave = interpolate(ireq, timeout=5), 0, rng.randint(0, 5)
                async for _ in call:
                    frames += 1
                    if frames >= leave:
                        call.cancel()
                        break
            counts["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            counts[exc.code().name] += 1
        except asyncio.CancelledError:
            counts["cancelled by the client"] += 1


async def main(a: argparse.Namespace) -> int:
    from latentserve.v1 import latent_pb2 as pb

    rss0 = rss_mb(a.server_pid)
    print(f"server pid {a.server_pid}: RSS {rss0} MB before", flush=True)
    stop, counts = asyncio.Event(), collections.Counter()
    channels = [grpc.aio.insecure_channel(a.target) for _ in range(4)]
    tasks = [asyncio.create_task(worker(channels[i % 4], a.model, a.latent_dim, stop, counts)) for i in range(48)]
    t0 = time.monotonic()
    while time.monotonic() - t0 < a.seconds:
        await asyncio.sleep(10)
        print(f"t={time.monotonic() - t0:4.0f}s  RSS {rss_mb(a.server_pid)} MB  {dict(counts)}", flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    async with grpc.aio.insecure_channel(a.target) as ch:
        models = await ch.unary_unary("/latentserve.v1.LatentService/ListModels",
                                      request_serializer=pb.ListModelsRequest.SerializeToString,
                                      response_deserializer=pb.ListModelsResponse.FromString)(pb.ListModelsRequest(), timeout=10)
    for ch in channels:
        await ch.close()
    print(f"after: ListModels answers {[m.name for m in models.models]}; RSS {rss0} -> {rss_mb(a.server_pid)} MB")
    return 0


if __name__ == "__main__":
    p = server_parser(__doc__)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60.0)
    raise SystemExit(asyncio.run(main(p.parse_args())))
