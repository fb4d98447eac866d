"""Decode throughput of a VAE with an autoregressive (PixelCNN) decoder, beside its feed-forward head.

Two parts, both on the exported ONNX graphs with ONNX Runtime on one intra-op thread (as served):
1. the pixel loop alone (models/pixel_ar.ar_decode) for batches of B rows: images/s, and the same batch through
   the model's feed-forward `decoder` graph (what a plain VAE decodes in), side by side with the ratio;
2. the model server's batcher (services/core/model_server.ModelRunner, in process, no network): C concurrent
   one-image Decode requests, images/s and how many rows the batcher put in each pixel loop.

    python benchmarks/ar_decode_bench.py --repo runs/tradeoff/repo --model shapes-vae-ar-s0
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time

import numpy as np


def _sessions(record):
    from latentserve.services.core.backends import open_session
    from latentserve.services.core.model_server import graph_io

    out = {}
    for g in ("decoder", "ar_context", "ar_step"):
        ins, outs = graph_io(record, g)
        out[g] = open_session("onnxruntime", record.graph_path(g, "onnx"), ins, outs)
    return out


def loop_figures(record, batches: list[int], seconds: float) -> list[dict]:
    from latentserve.models.pixel_ar import ar_decode, ar_settings

    s, ar = _sessions(record), ar_settings(record.manifest)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        z = rng.standard_normal((b, record.latent_dim)).astype(np.float32)
        y = (np.arange(b) % len(record.class_names)).astype(np.int64)
        figs = {}
        for kind in ("autoregressive", "feed-forward"):
            n, t0 = 0, time.perf_counter()
            while True:
                if kind == "autoregressive":
                    ar_decode(s["ar_context"].run, s["ar_step"].run, z, y, ar["margin"], ar["temperature"])
                else:
                    s["decoder"].run({"latent": z, "label": y})
                n += b
                if time.perf_counter() - t0 >= seconds and n >= b:
                    break
            figs[kind] = n / (time.perf_counter() - t0)
        rows.append({"batch": b, "ar_images_per_s": figs["autoregressive"], "ff_images_per_s": figs["feed-forward"]})
    return rows


async def batcher_figures(repo: str, model: str, concurrency: list[int], requests: int) -> list[dict]:
    from latentserve.services.config import load_config
    from latentserve.services.core.model_server import ModelRunner

    rows = []
    for c in concurrency:
        cfg = load_config({"repository": repo, "models": [model], "max_batch_size": 64, "preferred_batch_size": 32},
                          use_env=False)
        runner = ModelRunner(cfg, model)
        d = runner.default_version
        rng = np.random.default_rng(c)
        z = rng.standard_normal((requests, runner.repo.load(model, d).latent_dim)).astype(np.float32)
        queue = list(range(requests))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                await runner.decode(0, z[i:i + 1], np.zeros(1, np.int64))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        seconds = time.perf_counter() - t0
        stats = runner.stats()["methods"]["decode"]
        rows.append({"concurrency": c, "images_per_s": requests / seconds,
                     "rows_per_batch": requests / max(stats["batches"], 1), "batches": stats["batches"]})
        runner.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64, help="one-image requests per concurrency level")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum time per loop measurement")
    a = ap.parse_args()
    from latentserve.models.repository import Repository

    record = Repository(a.repo).load(a.model)
    print(f"{a.model} v{record.version}: {record.manifest['image_shape']} images, autoregressive "
          f"{record.manifest.get('autoregressive')}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>6} {'AR images/s':>12} {'feed-forward':>13} {'ratio':>8}")
    for r in loop_figures(record, [int(v) for v in a.batches.split(",")], a.seconds):
        print(f"{r['batch']:>6} {r['ar_images_per_s']:>12.1f} {r['ff_images_per_s']:>13.0f} "
              f"{r['ar_images_per_s'] / r['ff_images_per_s']:>8.4f}")
    print(f"{'concurrent 1-image decodes':>28} {'images/s':>9} {'rows per pixel loop':>20}")
    for r in asyncio.run(batcher_figures(a.repo, a.model, [int(v) for v in a.concurrency.split(",")], a.requests)):
        print(f"{r['concurrency']:>28} {r['images_per_s']:>9.1f} {r['rows_per_batch']:>20.1f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
