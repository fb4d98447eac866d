"""A minimal native-gRPC baseline for the serving benchmark: LatentService.Decode for one decoder.onnx on a
plain grpc.aio server, with an asyncio micro-batcher and ONNX Runtime in one worker thread. No Ray.

It answers "what would the same decode cost without Ray Serve's proxy and replica machinery?", so the server
can be measured against a floor that speaks the real latentserve.v1 protocol:

    python benchmarks/grpc_baseline.py /tmp/bench-repo/shapes-gan/1/decoder.onnx --port 9477 &
    latentserve bench --repo /tmp/bench-repo -t 127.0.0.1:9477 --server-pid $!

Only Decode (latents in, RAW_UINT8 or RAW_FLOAT32 images out), GetModel/ListModels (from the manifest next to
the ONNX file) and grpc.health.v1 are served; the other RPCs answer UNIMPLEMENTED. Runs until Ctrl-C.

`--no-model` answers every Decode with ready-made black images (no batcher, no ONNX Runtime): the CPU a
single-image request costs the Python gRPC stack itself (grpc.aio, protobuf, the event loop; `--uvloop` as
in latentserve's native frontend), i.e. what no change to our handlers can remove.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc


class MicroBatcher:
    """Collects (latents, labels) rows from concurrent requests into batches of at most `max_batch` rows,
    waiting at most `wait_s` for company, and runs them one at a time on a single inference thread."""

    def __init__(self, session: ort.InferenceSession, max_batch: int, wait_s: float) -> None:
        self.session, self.max_batch, self.wait_s = session, max_batch, wait_s
        self.queue: list[tuple[np.ndarray, np.ndarray, asyncio.Future]] = []
        self.ready = asyncio.Event()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        """z (N, D) float32, y (N,) int64 -> images float32 (N, 3, H, W)."""
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((z, y, fut))
        self.ready.set()
        return await fut

    def _run(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"latent": z, "label": y})[0]

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.ready.wait()
            if sum(len(q[0]) for q in self.queue) < self.max_batch:
                await asyncio.sleep(self.wait_s)
            batch, rows = [], 0
            while self.queue and (not batch or rows + len(self.queue[0][0]) <= self.max_batch):
                item = self.queue.pop(0)
                batch.append(item)
                rows += len(item[0])
            if not self.queue:
                self.ready.clear()
            z = np.concatenate([b[0] for b in batch])  # (B, D)
            y = np.concatenate([b[1] for b in batch])  # (B,)
            try:
                out = await loop.run_in_executor(self.pool, self._run, z, y)  # (B, 3, H, W)
            except Exception as exc:  # one bad batch fails its requests, not the server
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            i = 0
            for zz, _, fut in batch:
                if not fut.done():  # the caller may have been cancelled meanwhile
                    fut.set_result(out[i:i + len(zz)])
                i += len(zz)


class Baseline(pb_grpc.LatentServiceServicer):
    def __init__(self, batcher: MicroBatcher | None, info: pb.ModelInfo) -> None:
        self.batcher, self.info = batcher, info
        # --no-model: one black RAW_UINT8 image, serialised once, returned for every latent
        h, w = info.image_shape[1:]
        self.black = pb.Image(tensor=pb.Tensor(shape=[h, w, 3], dtype=pb.DTYPE_UINT8, data=bytes(h * w * 3)))

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[self.info])

    async def GetModel(self, request, context):
        if request.model != self.info.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {request.model!r}")
        return self.info

    async def Decode(self, request, context):
        if request.model != self.info.name or not request.latents or request.handles:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "baseline: Decode with latents of the served model")
        z = np.array([lat.values for lat in request.latents], dtype=np.float32)  # (N, D)
        y = np.array([lat.label for lat in request.latents], dtype=np.int64)  # (N,)
        if z.ndim != 2 or z.shape[1] != self.info.latent_shape[0]:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"latents must be (N, {self.info.latent_shape[0]})")
        if self.batcher is None:  # --no-model: the protocol floor
            return pb.DecodeResponse(model=self.info.name, version=self.info.version, images=[self.black] * len(z))
        x = await self.batcher.submit(z, y)  # (N, 3, H, W) in [-1, 1]
        if request.format == pb.IMAGE_FORMAT_RAW_FLOAT32:
            images = [pb.Image(tensor=pb.Tensor(shape=im.shape, dtype=pb.DTYPE_FLOAT32, data=im.tobytes())) for im in x]
        elif request.format == pb.IMAGE_FORMAT_RAW_UINT8:
            u8 = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)  # (N, H, W, 3)
            images = [pb.Image(tensor=pb.Tensor(shape=im.shape, dtype=pb.DTYPE_UINT8, data=im.tobytes())) for im in u8]
        else:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "baseline: only RAW_UINT8 / RAW_FLOAT32 output")
        return pb.DecodeResponse(model=self.info.name, version=self.info.version, images=images)


def model_info(onnx_path: Path, session: ort.InferenceSession, name: str | None) -> pb.ModelInfo:
    latent_dim = int(next(i for i in session.get_inputs() if i.name == "latent").shape[1])
    probe = session.run(None, {"latent": np.zeros((1, latent_dim), np.float32), "label": np.zeros((1,), np.int64)})
    manifest = {}
    if (onnx_path.parent / "manifest.json").is_file():
        manifest = json.loads((onnx_path.parent / "manifest.json").read_text())
    return pb.ModelInfo(name=name or manifest.get("name", "model"), version=int(manifest.get("version", 1)),
                        versions=[int(manifest.get("version", 1))], family=manifest.get("family", ""),
                        image_shape=list(probe[0].shape[1:]), latent_shape=[latent_dim],
                        class_names=manifest.get("class_names", ["0"]), backend="onnxruntime")


async def serve(args: argparse.Namespace) -> None:
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    path = Path(args.onnx)
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    info = model_info(path, session, args.name)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20)])
    batcher = None if args.no_model else MicroBatcher(session, args.max_batch, args.wait_ms / 1e3)
    pb_grpc.add_LatentServiceServicer_to_server(Baseline(batcher, info), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"{args.host}:{args.port}")
    await server.start()
    what = ("no model: fixed black images" if args.no_model else
            f"max batch {args.max_batch}, wait {args.wait_ms} ms, {args.threads} ORT thread(s)")
    print(f"baseline: {info.name} v{info.version} on {args.host}:{args.port} ({what})", flush=True)
    await server.wait_for_termination()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx", help="decoder.onnx (graph contract: latent, label -> image)")
    p.add_argument("--port", type=int, default=9477)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--name", default=None, help="model name (default: from manifest.json beside the file)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--wait-ms", type=float, default=2.0, help="how long a batch waits for company")
    p.add_argument("--no-model", action="store_true",
                   help="answer Decode with fixed black images: no batcher, no ONNX Runtime (the gRPC floor)")
    p.add_argument("--uvloop", action="store_true", help="serve on uvloop's event loop (as latentserve does)")
    args = p.parse_args()
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(serve(args))
        else:
            asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
