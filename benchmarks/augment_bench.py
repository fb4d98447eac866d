"""Augmentation throughput: images/s of `latentserve augment` to disk next to the serving benchmark's bulk
decode figures, in one run on the same server and model.

Rows (each printed with images/s, the ratio to the raw ceiling and to bulk decode, and the server's CPU ms per
image when its pid is known):
- raw:           in-process ONNX Runtime, batches of 64, 1 intra-op thread (latentserve/tools/bench.py run_raw: the
                 serving benchmark's ceiling), run before and after the server rows (the better pass counts);
- bulk decode:   Decode requests of 64 latents, raw uint8 back, 2 in flight (the serving benchmark's bulk mode,
                 same harness: latentserve/tools/bench.py drive);
- augment raw:   the Augment stream alone, uint8 images, nothing written (the RPC's own rate);
- augment disk:  `AugmentJob` (what `latentserve augment` runs): PNG files + labels.csv in a temp folder,
                 handles on (the default), progress bar off.
The server rows run in `--rounds` interleaved rounds and the best pass of each counts (this machine is shared:
throughput moves with other people's load, CPU per image much less).
By default it starts a serving process (services/frontends/grpc/native.py ServingProcess: what each native replica runs)
on a free port for `--model` from `--repo`; `-t HOST:PORT [--server-pid PID]` measures a running server.

    python benchmarks/dev_repo.py --repo /tmp/bench-repo      # until models/repository/shapes-gan exists
    python benchmarks/augment_bench.py --repo /tmp/bench-repo --count 8000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_augment(target: str, spec: dict, out: Path | None, server_cpu) -> dict:
    """One augment job: to `out` (AugmentJob) or, with out=None, the stream alone."""
    from latentserve.client.augment_job import AugmentJob
    from latentserve.services.augment.spec import parse_spec
    from latentserve.client import LatentClient

    s0, c0, t0 = server_cpu(), time.process_time(), time.perf_counter()
    with LatentClient(target) as client:
        if out is None:
            n = sum(len(chunk.labels) for chunk in client.augment(spec))
        else:
            n = AugmentJob(client, parse_spec(spec), out).run().written
    seconds = time.perf_counter() - t0
    s1 = server_cpu()
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1),
            "server_cpu_ms_per_image": round((s1 - s0) * 1e3 / n, 4) if s0 is not None and s1 is not None else None,
            "client_cpu_ms_per_image": round((time.process_time() - c0) * 1e3 / n, 4)}


def run_bulk_decode(target: str, model: str, info, duration: float, warmup: float, server_cpu) -> dict:
    from latentserve.tools.bench import RunStats, drive, latentserve_parser, latentserve_requests

    async def main() -> RunStats:
        import grpc

        from latentserve.client import CHANNEL_OPTIONS

        async with grpc.aio.insecure_channel(target, options=list(CHANNEL_OPTIONS)) as channel:
            call = channel.unary_unary("/latentserve.v1.LatentService/Decode")
            stats = RunStats("latentserve", "bulk", 2, 64)
            return await drive(call, latentserve_requests(model, info.version, info.latent_dim,
                                                          len(info.class_names), 64, 0),
                               latentserve_parser(64, info.image_size), 2, duration, warmup, stats,
                               server_cpu=server_cpu)

    s = asyncio.run(main()).summary()
    return {k: s[k] for k in ("images", "seconds", "images_per_s", "server_cpu_ms_per_image", "client_cpu_ms_per_image")}


def run_raw_ceiling(onnx: Path, info, duration: float, warmup: float) -> dict:
    import onnxruntime as ort

    from latentserve.tools.bench import run_raw

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    s = run_raw(sess, info.latent_dim, len(info.class_names), 64, duration, warmup, 0).summary()
    return {k: s[k] for k in ("images", "seconds", "images_per_s", "server_cpu_ms_per_image")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent / "models" / "repository"))
    p.add_argument("--model", default="shapes-gan")
    p.add_argument("-t", "--target", default=None, help="a running server (default: start a serving process)")
    p.add_argument("--server-pid", type=int, default=None, help="with --target: its pid, for CPU per image")
    p.add_argument("--grpc-transport", choices=("auto", "cxx", "grpcio"), default="auto",
                   help="transport of the started serving process (services/frontends/grpc/transport.py)")
    p.add_argument("--count", type=int, default=8000, help="images per augment job (default 8000)")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per raw / bulk decode run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the server rows (best counts)")
    p.add_argument("--json", default="runs/bench/augment.json", help="where to write the figures")
    a = p.parse_args()

    from latentserve.models.repository import Repository
    from latentserve.tools.bench import free_port, process_tree_cpu
    from latentserve.client import LatentClient

    server = None
    pid = a.server_pid
    if a.target is None:
        from latentserve.services.config import load_config
        from latentserve.services.frontends.grpc.native import ServingProcess

        repo = Repository(a.repo)
        version = repo.versions(a.model)[-1]
        port = free_port()
        server = ServingProcess(load_config({"repository": a.repo, "grpc_port": port,
                                            "grpc_transport": a.grpc_transport}, use_env=False),
                                {a.model: version})
        server.start()
        a.target, pid = f"127.0.0.1:{port}", server.proc.pid
        _log(f"started a serving process (pid {pid}) for {a.model} v{version} on {a.target}")
    cpu = (lambda: process_tree_cpu(pid)) if pid else (lambda: None)
    work = Path(tempfile.mkdtemp(prefix="augment-bench-"))
    try:
        with LatentClient(a.target) as client:
            info = client.get_model(a.model)
        onnx = Path(a.repo) / a.model / str(info.version) / "decoder.onnx"
        spec = {"model": a.model, "count": a.count, "seed": 1, "shard_size": a.shard_size}
        _log(f"raw ceiling ({onnx}) ...")
        raw = [run_raw_ceiling(onnx, info, a.duration, a.warmup)]
        run_augment(a.target, {**spec, "count": min(a.count, 1024), "format": "uint8", "handles": False}, None, cpu)
        names = ("bulk decode (64/request, 2 in flight)", "augment stream (uint8, no disk)",
                 "augment to disk (png + labels.csv)")
        passes: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(a.rounds):  # interleaved rounds: background load hits every row alike; best pass counts
            _log(f"round {r + 1}/{a.rounds}: bulk decode, augment stream, augment to disk ...")
            passes[names[0]].append(run_bulk_decode(a.target, a.model, info, a.duration, a.warmup, cpu))
            passes[names[1]].append(run_augment(a.target, {**spec, "format": "uint8", "handles": False}, None, cpu))
            shutil.rmtree(work / "out", ignore_errors=True)
            passes[names[2]].append(run_augment(a.target, {**spec, "format": "png"}, work / "out", cpu))
            _log("  " + ", ".join(f"{p[-1]['images_per_s']:.0f}" for p in passes.values()) + " img/s")
        rows = {name: dict(max(p, key=lambda r: r["images_per_s"]), passes=[r["images_per_s"] for r in p])
                for name, p in passes.items()}
        if server is not None:
            server.stop(5.0)
            server = None
        raw.append(run_raw_ceiling(onnx, info, a.duration, a.warmup))
        ceiling = max(raw, key=lambda r: r["images_per_s"])
        bulk = rows["bulk decode (64/request, 2 in flight)"]["images_per_s"]
        table = {"raw ORT ceiling (batch 64, 1 thread)": ceiling, **rows}
        print(f"{a.model} v{info.version} ({info.image_size[0]}x{info.image_size[1]}, D={info.latent_dim}), "
              f"{a.count} images per augment job, {os.cpu_count()} cores (shared)")
        print(f"{'':<40} {'img/s':>9} {'x raw':>6} {'x bulk':>7} {'server cpu ms/img':>18}")
        for name, r in table.items():
            r["x_raw"] = round(r["images_per_s"] / ceiling["images_per_s"], 3)
            r["x_bulk_decode"] = round(r["images_per_s"] / bulk, 3) if bulk else None
            print(f"{name:<40} {r['images_per_s']:>9.1f} {r['x_raw']:>6.2f} {r['x_bulk_decode'] or 0:>7.2f} "
                  f"{r.get('server_cpu_ms_per_image') or float('nan'):>18.3f}")
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps({"model": a.model, "version": info.version, "count": a.count,
                                                "raw_passes": raw, "rows": table}, indent=2))
            _log(f"wrote {a.json}")
    finally:
        if server is not None:
            server.stop(5.0)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
