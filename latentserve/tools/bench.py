"""The serving benchmark behind `latentserve bench`: decode throughput and latency of latentserve over gRPC,
side by side in one run with (1) raw in-process ONNX Runtime batched inference of the same decoder.onnx (the
ceiling) and (2) NVIDIA Triton (PyTriton peer, dynamic batcher) serving the same ONNX file.

What is measured (images/s, p50/p99 request latency):
- raw:     `InferenceSession.run` on batches of `bulk_size` in this process, `threads` intra-op threads.
- bulk:    requests of `bulk_size` latents each, raw uint8 images back, `bulk_concurrency` requests in flight.
- single:  one-latent requests at each concurrency (8/32/64): what the server's batcher has to merge.
latentserve and Triton are driven by the same harness (`drive`): asyncio + grpc.aio, N workers on one channel
(or spread over `connections` channels, each its own TCP connection),
pre-serialised requests (so request building costs neither side), a warm-up, then a fixed measuring window;
every request is unique (`UniqueRequests` stamps a counter and a per-run random value into the first two
values of every latent row of the pre-serialised bytes), so a server-side result cache can never answer from
memory what the bench means to measure, decoding, not even across modes or repeated runs;
every response is parsed into a uint8 (N, H, W, 3) array (Triton returns float32 (N, 3, H, W), which the
harness converts the same way the latentserve server does) so both sides deliver the same thing. The two
systems are interleaved mode by mode, and raw runs once before the servers start and once after they stop (the
ceiling is the better pass), so background load on a shared machine hits every side alike.

Targets (printed and written to the JSON): bulk >= 0.85x raw; single at concurrency 32 >= 0.3x raw; each
latentserve ratio >= 1.3x Triton's ratio.

The Triton peer is started with `bash shared/peers/triton/run.sh MODEL.onnx PORT MAX_BATCH DELAY_US` and
PEER_THREADS = `threads`. Its model config needs every input to have a non-batch dimension, so it is given a
copy of decoder.onnx whose `label` input is (B, 1) and reshaped to (B,) inside the graph (one Reshape node, no
change to the computation). The KServe v2 messages are built here from a minimal descriptor (the fields of
inference.GRPCInferenceService that ModelInfer/ServerReady use) instead of depending on tritonclient, whose
protobuf pin conflicts with the generated latentserve.v1 code.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from latentserve.errors import NotFoundError, UnavailableError, ValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPO = REPO_ROOT / "models" / "repository"
TARGETS = {"bulk_vs_raw": 0.85, "single32_vs_raw": 0.3, "vs_triton": 1.3}


# ------------------------------------------------------------------------------------------------ config
@dataclass
class BenchConfig:
    """Options of one benchmark run (the `latentserve bench` flags)."""

    model: str = "shapes-gan"  # model name on the server and folder in the repository
    repo: str = str(DEFAULT_REPO)  # model repository: <repo>/<model>/<version>/decoder.onnx
    onnx: str | None = None  # decoder.onnx for raw + Triton; default: newest version of `model` in `repo`
    version: int | None = None  # model version (default newest)
    target: str | None = None  # a running latentserve server (host:port)
    start: bool = False  # start `latentserve serve` on a free port instead
    serve_args: tuple[str, ...] = ()  # extra `latentserve serve` flags for --start (e.g. --colocate)
    server_pid: int | None = None  # with --target: root pid of the server's process tree, for CPU accounting
    label: str = "latentserve"  # the name the target gets in the table (e.g. "baseline" for grpc_baseline.py)
    duration: float = 10.0  # measuring window per run, seconds (> 0)
    warmup: float = 2.0  # warm-up per run before measuring, seconds (>= 0)
    concurrency: tuple[int, ...] = (8, 32, 64)  # single-image request concurrencies (each >= 1)
    bulk_size: int = 64  # images per bulk request (>= 1)
    bulk_concurrency: int = 2  # bulk requests in flight (>= 1): keeps the server busy between requests
    # client connections per system (1..64): each its own channel and TCP connection, the workers spread over
    # them round robin. 1 = every request on one connection; more = many clients, whose connections the kernel
    # spreads over serving processes that share a port (`latentserve serve --ingress-replicas N`)
    connections: int = 1
    threads: int = 1  # ONNX Runtime intra-op threads for raw, Triton and a started server (serve's default: 1)
    triton: bool = True  # include Triton
    triton_target: str | None = None  # a running Triton (host:port, model "model") instead of starting one
    triton_port: int = 0  # port for the started Triton (0 = a free port)
    triton_script: str | None = None  # run.sh of the Triton peer (default: shared/peers/triton/run.sh)
    triton_max_batch: int = 64
    triton_delay_us: int = 2000  # dynamic batcher max queue delay
    startup_timeout: float = 900.0  # seconds to wait for started servers (Triton's first start builds a venv)
    settle_s: float = 60.0  # after starting servers: wait at most this long for the machine to go quiet (0 = no)
    token: str | None = None
    app_name: str | None = None
    tls: Any = None  # a client.ClientTls for a --target serving TLS (None: plaintext)
    json_out: str | None = "runs/bench/serving.json"
    seed: int = 0

    def validate(self) -> None:
        if self.duration <= 0 or self.warmup < 0:
            raise ValidationError("--duration must be > 0 and --warmup >= 0 seconds")
        if not self.concurrency or any(c < 1 or c > 1024 for c in self.concurrency):
            raise ValidationError(f"--concurrency values must be in 1..1024, got {self.concurrency}")
        if not 1 <= self.bulk_size <= 4096 or not 1 <= self.bulk_concurrency <= 64:
            raise ValidationError("--bulk-size must be in 1..4096 and --bulk-concurrency in 1..64")
        if not 1 <= self.connections <= 64:
            raise ValidationError(f"--connections must be in 1..64, got {self.connections}")
        if not self.label or self.label in ("raw", "triton"):
            raise ValidationError(f"--label must be a name other than raw/triton, got {self.label!r}")
        if not 1 <= self.threads <= 256:
            raise ValidationError(f"--threads must be in 1..256, got {self.threads}")
        if not 0 <= self.settle_s <= 3600:
            raise ValidationError(f"--settle must be in 0..3600 seconds, got {self.settle_s}")
        if self.target and self.start:
            raise ValidationError("give --target (a running server) or --start, not both")
        if self.serve_args and not self.start:
            raise ValidationError("--serve-args only applies with --start")
        if self.server_pid is not None and (self.start or self.server_pid < 1):
            raise ValidationError("--server-pid is the pid of a running server given with --target (not --start)")
        if not (0 <= self.triton_port < 65536):
            raise ValidationError("--triton-port must be a port number")
        if self.tls is not None and not self.target:
            raise ValidationError("--tls-* options are for a --target serving TLS (a --start server is plaintext)")


# ------------------------------------------------------------------------------------------------ stats
@dataclass
class RunStats:
    system: str  # raw | latentserve | triton
    mode: str  # bulk | single | batch1
    concurrency: int
    batch: int  # images per request
    requests: int = 0
    images: int = 0
    seconds: float = 0.0
    errors: int = 0
    first_error: str = ""
    server_cpu_s: float | None = None  # CPU time of the server's process tree in the window (None: unknown)
    client_cpu_s: float | None = None  # CPU time of this (client) process in the window
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        return {"system": self.system, "mode": self.mode, "concurrency": self.concurrency, "batch": self.batch,
                "requests": self.requests, "images": self.images, "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 1),
                "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
                "p50_ms": round(self.percentile(50), 3), "p99_ms": round(self.percentile(99), 3),
                "server_cpu_ms_per_image": self._per_image(self.server_cpu_s),
                "client_cpu_ms_per_image": self._per_image(self.client_cpu_s),
                "errors": self.errors, "first_error": self.first_error}

    def _per_image(self, cpu_s: float | None) -> float | None:
        return round(cpu_s * 1e3 / self.images, 4) if cpu_s is not None and self.images else None


# ------------------------------------------------------------------------------------------- CPU accounting
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_tree_cpu(root_pid: int) -> float | None:
    """utime + stime (seconds) of `root_pid` and all its live descendants, from /proc (Linux); None elsewhere.

    CPU time per image is the figure that survives a shared, loaded machine: throughput drops when other
    processes take the cores, the work each image costs does not. Ray actors and Triton's stubs are
    descendants of the server process we start, so the whole serving stack is counted."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        pid = int(d.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    if root_pid not in cpu:
        return None
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


# ------------------------------------------------------------------------------------------ the harness
STAMP_SENTINEL = -1.2345e-29  # the first value of latent row r is STAMP_SENTINEL * (r + 1) until stamped


class UniqueRequests:
    """Pre-serialised requests made unique per call: `requests[i]` (i = a running counter) is template
    i % len(templates) with, in every latent row, the first value replaced by a value derived from i (in
    [-2, 2), unique for 2**20 consecutive calls) and the second by a random value drawn once per instance (so
    separate modes and runs never repeat each other), written into a copy of the bytes: no protobuf work per
    call.

    Built from templates whose row r starts with STAMP_SENTINEL * (r + 1) and, second, its negation
    (`sentinel_latents`); the byte offsets of those floats are found once. Works for any message that carries
    the latents as packed little-endian float32 (latentserve.v1 Latent.values, KServe raw_input_contents)."""

    def __init__(self, templates: list[bytes], rows: int) -> None:
        import struct

        self._pack = struct.Struct("<f").pack_into
        nonce = float(np.random.default_rng().uniform(-2.0, 2.0))
        self.templates: list[bytes] = []
        self.offsets: list[list[int]] = []
        marks = _sentinels(rows)
        for t in templates:
            buf = bytearray(t)
            offs = []
            for r in range(rows):
                first, second = (self._find(t, v.tobytes(), r) for v in (marks[r], -marks[r]))
                self._pack(buf, second, nonce)
                offs.append(first)
            self.templates.append(bytes(buf))
            self.offsets.append(offs)

    @staticmethod
    def _find(data: bytes, needle: bytes, row: int) -> int:
        at = data.find(needle)
        if at < 0 or data.find(needle, at + 1) >= 0:
            raise ValidationError(f"bench: cannot locate latent row {row} in a serialised request")
        return at

    def __len__(self) -> int:
        return len(self.templates)

    def __getitem__(self, i: int) -> bytes:
        k = i % len(self.templates)
        buf = bytearray(self.templates[k])
        value = (i % (1 << 20)) * (4.0 / (1 << 20)) - 2.0  # exact in float32: 2**-18 steps
        for off in self.offsets[k]:
            self._pack(buf, off, value)
        return bytes(buf)


def _sentinels(rows: int) -> np.ndarray:
    return (STAMP_SENTINEL * np.arange(1, rows + 1, dtype=np.float64)).astype(np.float32)  # (rows,)


def sentinel_latents(rng: np.random.Generator, batch: int, latent_dim: int) -> np.ndarray:
    """(batch, latent_dim) standard normal float32 whose row r starts with STAMP_SENTINEL * (r + 1) and its
    negation (latent_dim >= 2)."""
    if latent_dim < 2:
        raise ValidationError(f"bench: latents need at least 2 values to be stamped unique, got {latent_dim}")
    z = rng.standard_normal((batch, latent_dim), dtype=np.float32)
    z[:, 0] = _sentinels(batch)
    z[:, 1] = -_sentinels(batch)
    return z


async def drive(call: "Callable | list[Callable]", requests: "list[bytes] | UniqueRequests", parse: Callable[[bytes], int],
                concurrency: int, duration: float, warmup: float, stats: RunStats, timeout: float = 30.0,
                metadata: tuple = (), server_cpu: Callable[[], float | None] | None = None) -> RunStats:
    """N workers send pre-serialised `requests` (round robin) through `call` (a grpc.aio unary-unary callable
    with bytes in and out; a list of them, one per connection: worker k uses call k mod len) for `warmup` +
    `duration` seconds. Responses completed inside the measuring window
    count (throughput = completions / window; latency of those requests). `parse(response) -> images` turns a
    response into images and counts them. `server_cpu()` (CPU seconds of the server, e.g. process_tree_cpu)
    and this process's CPU time are sampled at both ends of the window."""
    loop = asyncio.get_running_loop()
    t_measure = loop.time() + warmup
    t_end = t_measure + duration
    counter = iter(range(1 << 62))

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, t_measure - loop.time()))
        s0, c0 = (server_cpu() if server_cpu else None), time.process_time()
        await asyncio.sleep(max(0.0, t_end - loop.time()))
        s1, c1 = (server_cpu() if server_cpu else None), time.process_time()
        stats.client_cpu_s = c1 - c0
        if s0 is not None and s1 is not None:
            stats.server_cpu_s = s1 - s0

    calls = call if isinstance(call, list) else [call]

    async def worker(k: int) -> None:
        call = calls[k % len(calls)]
        while True:
            t0 = loop.time()
            if t0 >= t_end:
                return
            i = next(counter)
            req = requests[i] if isinstance(requests, UniqueRequests) else requests[i % len(requests)]
            try:
                resp = await call(req, timeout=timeout, metadata=metadata)
                n = parse(resp)
            except Exception as exc:  # counted, reported; a broken server must not hang the bench
                stats.errors += 1
                if not stats.first_error:
                    code = getattr(exc, "code", None)
                    details = getattr(exc, "details", None)
                    stats.first_error = (f"{code().name}: {details()}" if callable(code) and callable(details)
                                         else f"{type(exc).__name__}: {exc}")[:300]
                if stats.errors > 20 and stats.errors > stats.requests:
                    return  # mostly failing: stop early, the report says why
                await asyncio.sleep(0.01)
                continue
            t1 = loop.time()
            if t_measure <= t1 <= t_end:
                stats.requests += 1
                stats.images += n
                stats.latencies_ms.append((t1 - t0) * 1e3)

    await asyncio.gather(sample_cpu(), *(worker(k) for k in range(concurrency)))
    stats.seconds = duration
    return stats


def run_raw(sess, latent_dim: int, n_classes: int, batch: int, duration: float, warmup: float, seed: int,
            mode: str = "bulk") -> RunStats:
    """In-process ONNX Runtime: back-to-back `sess.run` on batches of `batch` for `duration` seconds."""
    rng = np.random.default_rng(seed)
    feeds = [{"latent": rng.standard_normal((batch, latent_dim), dtype=np.float32),  # (B, D)
              "label": rng.integers(0, n_classes, size=(batch,), dtype=np.int64)}  # (B,)
             for _ in range(8)]
    stats = RunStats("raw", mode, 1, batch)
    t_end_warm = time.perf_counter() + warmup
    i = 0
    while time.perf_counter() < t_end_warm or i == 0:
        sess.run(None, feeds[i % len(feeds)])
        i += 1
    t_start = time.perf_counter()
    c_start = time.process_time()
    t_end = t_start + duration
    while True:
        t0 = time.perf_counter()
        if t0 >= t_end:
            break
        sess.run(None, feeds[i % len(feeds)])
        i += 1
        stats.latencies_ms.append((time.perf_counter() - t0) * 1e3)
        stats.requests += 1
        stats.images += batch
    stats.seconds = time.perf_counter() - t_start
    stats.server_cpu_s = time.process_time() - c_start  # the "server" here is ONNX Runtime in this process
    return stats


# ------------------------------------------------------------------------------- latentserve requests
def latentserve_requests(model: str, version: int | None, latent_dim: int, n_classes: int, batch: int, seed: int,
                         count: int = 16) -> UniqueRequests:
    from latentserve.v1 import latent_pb2 as pb
    from latentserve.client import latents_to_protos

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        z = sentinel_latents(rng, batch, latent_dim)
        y = rng.integers(0, n_classes, size=(batch,))
        req = pb.DecodeRequest(model=model, version=version or 0, latents=latents_to_protos(z, y),
                               format=pb.IMAGE_FORMAT_RAW_UINT8)
        out.append(req.SerializeToString())
    return UniqueRequests(out, batch)


def latentserve_parser(expect: int, image_hw: tuple[int, int]) -> Callable[[bytes], int]:
    from latentserve.v1 import latent_pb2 as pb
    from latentserve.client import images_from_protos

    def parse(data: bytes) -> int:
        images = images_from_protos(pb.DecodeResponse.FromString(data).images, "uint8")  # (N, H, W, 3)
        if images.shape[0] != expect or images.shape[1:3] != image_hw:
            raise ValueError(f"expected {expect} images of {image_hw}, got {images.shape}")
        return images.shape[0]

    return parse


# ----------------------------------------------------------------------------- Triton (KServe v2) side
_KSERVE: dict[str, Any] = {}


def kserve_messages() -> dict[str, Any]:
    """Message classes for the part of KServe v2 (package `inference`) the bench uses, from a minimal
    descriptor with the upstream field numbers (fields not listed are skipped as unknown by protobuf)."""
    if _KSERVE:
        return _KSERVE
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="latentserve_bench_kserve_v2.proto", package="inference",
                                             syntax="proto3")

    def msg(name: str, fields: list[tuple[str, int, int, int, str]], parent=None):
        m = (parent.nested_type if parent is not None else fdp.message_type).add(name=name)
        for fname, num, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    req = msg("ModelInferRequest", [
        ("model_name", 1, F.TYPE_STRING, OPT, ""), ("model_version", 2, F.TYPE_STRING, OPT, ""),
        ("id", 3, F.TYPE_STRING, OPT, ""),
        ("inputs", 5, F.TYPE_MESSAGE, REP, ".inference.ModelInferRequest.InferInputTensor"),
        ("outputs", 6, F.TYPE_MESSAGE, REP, ".inference.ModelInferRequest.InferRequestedOutputTensor"),
        ("raw_input_contents", 7, F.TYPE_BYTES, REP, "")])
    msg("InferInputTensor", [("name", 1, F.TYPE_STRING, OPT, ""), ("datatype", 2, F.TYPE_STRING, OPT, ""),
                             ("shape", 3, F.TYPE_INT64, REP, "")], req)
    msg("InferRequestedOutputTensor", [("name", 1, F.TYPE_STRING, OPT, "")], req)
    resp = msg("ModelInferResponse", [
        ("model_name", 1, F.TYPE_STRING, OPT, ""), ("model_version", 2, F.TYPE_STRING, OPT, ""),
        ("id", 3, F.TYPE_STRING, OPT, ""),
        ("outputs", 5, F.TYPE_MESSAGE, REP, ".inference.ModelInferResponse.InferOutputTensor"),
        ("raw_output_contents", 6, F.TYPE_BYTES, REP, "")])
    msg("InferOutputTensor", [("name", 1, F.TYPE_STRING, OPT, ""), ("datatype", 2, F.TYPE_STRING, OPT, ""),
                              ("shape", 3, F.TYPE_INT64, REP, "")], resp)
    msg("ServerReadyRequest", [])
    msg("ServerReadyResponse", [("ready", 1, F.TYPE_BOOL, OPT, "")])
    msg("ModelReadyRequest", [("name", 1, F.TYPE_STRING, OPT, ""), ("version", 2, F.TYPE_STRING, OPT, "")])
    msg("ModelReadyResponse", [("ready", 1, F.TYPE_BOOL, OPT, "")])
    pool = descriptor_pool.DescriptorPool()  # private pool: never clashes with another `inference` package
    pool.Add(fdp)
    for name in ("ModelInferRequest", "ModelInferResponse", "ServerReadyRequest", "ServerReadyResponse",
                 "ModelReadyRequest", "ModelReadyResponse"):
        _KSERVE[name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
    return _KSERVE


TRITON_INFER = "/inference.GRPCInferenceService/ModelInfer"
TRITON_MODEL_READY = "/inference.GRPCInferenceService/ModelReady"


def triton_requests(latent_dim: int, n_classes: int, batch: int, seed: int, count: int = 16) -> UniqueRequests:
    M = kserve_messages()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        z = sentinel_latents(rng, batch, latent_dim)  # (B, D)
        y = rng.integers(0, n_classes, size=(batch, 1), dtype=np.int64)  # (B, 1): see triton_onnx
        req = M["ModelInferRequest"](model_name="model")
        req.inputs.add(name="latent", datatype="FP32", shape=[batch, latent_dim])
        req.inputs.add(name="label", datatype="INT64", shape=[batch, 1])
        req.outputs.add(name="image")
        req.raw_input_contents.extend([z.tobytes(), y.tobytes()])
        out.append(req.SerializeToString())
    return UniqueRequests(out, batch)  # same per-call work as latentserve's requests


def to_uint8_nhwc(x: np.ndarray) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3): the conversion the latentserve server does."""
    return np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def triton_parser(expect: int, image_chw: tuple[int, int, int]) -> Callable[[bytes], int]:
    M = kserve_messages()

    def parse(data: bytes) -> int:
        resp = M["ModelInferResponse"].FromString(data)
        x = np.frombuffer(resp.raw_output_contents[0], dtype=np.float32).reshape((-1, *image_chw))
        images = to_uint8_nhwc(x)  # (N, H, W, 3)
        if images.shape[0] != expect:
            raise ValueError(f"expected {expect} images, got {images.shape[0]}")
        return images.shape[0]

    return parse


def triton_onnx(src: str, dst: str) -> str:
    """A copy of decoder.onnx whose rank-1 (batch-only) inputs become (B, 1) and are reshaped back to (B,)
    inside the graph: PyTriton's model config needs a non-batch dimension on every input."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise UnavailableError("the Triton comparison needs the onnx package (pip install onnx)") from None
    m = onnx.load(src)
    g = m.graph
    for inp in g.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 1:
            continue
        inner = f"{inp.name}__flat"
        for node in g.node:
            for k, name in enumerate(node.input):
                if name == inp.name:
                    node.input[k] = inner
        dims.add().dim_value = 1
        shape_name = f"{inp.name}__flat_shape"
        g.initializer.append(helper.make_tensor(shape_name, TensorProto.INT64, [1], [-1]))
        g.node.insert(0, helper.make_node("Reshape", [inp.name, shape_name], [inner], name=f"{inp.name}__flatten"))
    onnx.save(m, dst)
    return dst


# ------------------------------------------------------------------------------------ processes we start
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server process this benchmark started, in its own session so it can be stopped as a group."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, log: str | None = None) -> None:
        self.name = name
        self.log_path = log or tempfile.mktemp(prefix=f"latentserve-bench-{name}-", suffix=".log")
        self.keep_log = log is not None
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_has(self, text: str) -> bool:
        try:
            return text in Path(self.log_path).read_text(errors="replace")
        except OSError:
            return False

    def stop(self, keep_log: bool = False) -> None:
        """SIGINT (graceful: lets Ray / PyTriton shut down their children), then SIGTERM, then SIGKILL, each
        to this process group only. The log is removed unless `keep_log` (e.g. the run failed)."""
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if not self.alive():
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
        if not (self.keep_log or keep_log):
            Path(self.log_path).unlink(missing_ok=True)


def find_triton_script(explicit: str | None) -> Path:
    candidates = [explicit, os.environ.get("LATENTSERVE_TRITON_PEER"),
                  REPO_ROOT.parent / "shared" / "peers" / "triton" / "run.sh",
                  Path("/work/shared/peers/triton/run.sh")]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise NotFoundError("Triton peer script not found (shared/peers/triton/run.sh); pass --triton-script or "
                        "--no-triton")


def resolve_onnx(cfg: BenchConfig) -> Path:
    if cfg.onnx:
        p = Path(cfg.onnx)
        if not p.is_file():
            raise NotFoundError(f"no such ONNX file {p}")
        return p
    root = Path(cfg.repo) / cfg.model
    if not root.is_dir():
        raise NotFoundError(f"model {cfg.model!r} not found in repository {cfg.repo} (pass --onnx FILE)")
    versions = sorted(int(d.name) for d in root.iterdir() if d.is_dir() and d.name.isdigit())
    if cfg.version is not None:
        versions = [v for v in versions if v == cfg.version]
    if not versions:
        raise NotFoundError(f"no version{'' if cfg.version is None else f' {cfg.version}'} of {cfg.model} in {root}")
    p = root / str(versions[-1]) / "decoder.onnx"
    if not p.is_file():
        raise NotFoundError(f"{p} does not exist")
    return p


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise UnavailableError(f"{what} exited during start-up (log {proc.log_path}):\n{proc.tail()}")
        time.sleep(0.5)
    raise UnavailableError(f"{what} not ready after {timeout:.0f}s" + (f" (log {proc.log_path})" if proc else ""))


def machine_busy(window_s: float = 2.0) -> float | None:
    """Fraction of all cores busy over the next `window_s` seconds (/proc/stat; None elsewhere)."""
    def snap() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        return sum(vals), idle

    a = snap()
    time.sleep(window_s)
    b = snap()
    if a is None or b is None or b[0] == a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


QUIET_BUSY = 0.15  # the machine counts as quiet below this fraction of its cores busy


def wait_quiet(max_s: float, busy_below: float = QUIET_BUSY, window_s: float = 2.0) -> tuple[float, float | None]:
    """Wait until the machine is quiet (< `busy_below` of its cores busy over `window_s`), at most `max_s`.

    A server that just answered its health check is not idle yet: Ray's dashboard, agents and metrics keep the
    cores busy for tens of seconds after start, and a benchmark run then measures their start-up as well.
    Returns (seconds waited, the last busy fraction)."""
    t0 = time.monotonic()
    busy = None
    while time.monotonic() - t0 < max_s:
        busy = machine_busy(window_s)
        if busy is None or busy < busy_below:
            break
    return time.monotonic() - t0, busy


def triton_ready(target: str) -> bool:
    import grpc

    M = kserve_messages()
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(TRITON_MODEL_READY, request_serializer=M["ModelReadyRequest"].SerializeToString,
                              response_deserializer=M["ModelReadyResponse"].FromString)
        try:
            return bool(call(M["ModelReadyRequest"](name="model"), timeout=2).ready)
        except grpc.RpcError:
            return False


# ------------------------------------------------------------------------------------------- the bench
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class System:
    """One served system driven by the harness: where it is and how its requests/responses look."""

    name: str
    target: str
    method: str  # full gRPC method path
    make_requests: Callable[[int], "UniqueRequests | list[bytes]"]  # batch size -> pre-serialised requests
    make_parser: Callable[[int], Callable[[bytes], int]]  # batch size -> response parser (returns images)
    metadata: tuple = ()
    pid: int | None = None  # root of the server's process tree when we started it (for CPU accounting)
    tls: Any = None  # client.ClientTls, None = plaintext


def open_channels(target: str, connections: int, tls: Any = None) -> list:
    """`connections` grpc.aio channels to `target` (TLS with a ClientTls), each on its own TCP connection (a
    local subchannel pool per channel: without one, channels to the same target share a connection)."""
    from latentserve.client import CHANNEL_OPTIONS
    from latentserve.client.connection import make_channel

    options = list(CHANNEL_OPTIONS) + ([("grpc.use_local_subchannel_pool", 1)] if connections > 1 else [])
    return [make_channel(target, options, tls, aio=True) for _ in range(connections)]


async def _drive_systems(systems: list[System], cfg: BenchConfig) -> list[RunStats]:
    """Every mode (bulk, then single at each concurrency) for every system, interleaved per mode so the
    systems see the same background load on a shared machine."""
    channels = [open_channels(s.target, cfg.connections, s.tls) for s in systems]
    results = []
    try:
        plan = [("bulk", cfg.bulk_concurrency, cfg.bulk_size)] + [("single", c, 1) for c in cfg.concurrency]
        for mode, conc, batch in plan:
            for system, chans in zip(systems, channels):
                call = [ch.unary_unary(system.method) for ch in chans]  # bytes in, bytes out
                stats = RunStats(system.name, mode, conc, batch)
                cpu = (lambda pid=system.pid: process_tree_cpu(pid)) if system.pid else None
                await drive(call, system.make_requests(batch), system.make_parser(batch), conc, cfg.duration,
                            cfg.warmup, stats, metadata=system.metadata, server_cpu=cpu)
                s = stats.summary()
                _log(f"  {system.name:<11} {mode:<6} c={conc:<3} {s['images_per_s']:>9.1f} img/s  "
                     f"p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  "
                     f"server cpu {s['server_cpu_ms_per_image']} ms/img"
                     + (f"  errors {stats.errors}: {stats.first_error}" if stats.errors else ""))
                results.append(stats)
    finally:
        for ch in (c for chans in channels for c in chans):
            await ch.close()
    return results


def _classes_beside(onnx_path: Path) -> int:
    """Number of classes from the manifest next to decoder.onnx (1 when there is none)."""
    try:
        return max(1, len(json.loads((onnx_path.parent / "manifest.json").read_text())["class_names"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def _raw_pass(sess, latent_dim: int, n_classes: int, cfg: BenchConfig) -> list[RunStats]:
    _log(f"raw onnxruntime: batch {cfg.bulk_size} and batch 1, {cfg.threads} thread(s), no servers of ours running")
    out = [run_raw(sess, latent_dim, n_classes, cfg.bulk_size, cfg.duration, cfg.warmup, cfg.seed),
           run_raw(sess, latent_dim, n_classes, 1, min(cfg.duration, 3.0), min(cfg.warmup, 1.0), cfg.seed,
                   mode="batch1")]
    for r in out:
        s = r.summary()
        _log(f"  raw         {r.mode:<6} batch={r.batch:<3} {s['images_per_s']:>9.1f} img/s  p50 {s['p50_ms']:.2f} ms")
    return out


def run_bench(cfg: BenchConfig) -> dict:
    """Runs the whole comparison; returns the report dict (also written to cfg.json_out).

    Order: raw ONNX Runtime (before any server of ours starts) -> start Triton / latentserve -> every mode for
    both systems, interleaved -> stop the servers -> raw again. The ceiling is the better of the two raw
    passes, so background load from other processes during one pass does not flatter the servers."""
    import onnxruntime as ort

    cfg.validate()
    onnx_path = resolve_onnx(cfg)
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    names = sorted(i.name for i in sess.get_inputs())
    if names != ["label", "latent"]:
        raise ValidationError(f"{onnx_path}: inputs {names} do not follow the decoder contract (latent, label)")
    latent_dim = int(next(i for i in sess.get_inputs() if i.name == "latent").shape[1])
    probe = sess.run(None, {"latent": np.zeros((1, latent_dim), np.float32), "label": np.zeros((1,), np.int64)})[0]
    image_chw = tuple(int(s) for s in probe.shape[1:])  # (3, H, W)
    n_classes = _classes_beside(onnx_path)
    procs: list[Proc] = []
    tmp = tempfile.mkdtemp(prefix="latentserve-bench-")
    report: dict[str, Any] = {"config": {**asdict(cfg), "concurrency": list(cfg.concurrency), "token": None,
                                         "tls": cfg.tls is not None, "serve_args": list(cfg.serve_args)},
                              "onnx": str(onnx_path), "image_shape": list(image_chw), "latent_dim": latent_dim,
                              "machine": {"cpus": os.cpu_count(), "loadavg_before": list(os.getloadavg())},
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    failed = True
    if cfg.target:  # a running server that cannot be reached (address, TLS handshake, token) fails now, not later
        from latentserve.client import LatentClient

        with LatentClient(cfg.target, token=cfg.token, app_name=cfg.app_name, timeout=30, tls=cfg.tls) as c:
            c.get_model(cfg.model, cfg.version)
    try:
        # 1) the ceiling, first pass: raw ONNX Runtime in this process
        results = _raw_pass(sess, latent_dim, n_classes, cfg)

        # 2) start what we need (Triton's first start can take minutes: it builds its venv)
        triton_target = cfg.triton_target
        triton_proc = None
        if cfg.triton and not triton_target:
            script = find_triton_script(cfg.triton_script)
            port = cfg.triton_port or free_port()
            triton_target = f"127.0.0.1:{port}"
            model_copy = triton_onnx(str(onnx_path), os.path.join(tmp, "decoder_triton.onnx"))
            _log(f"starting Triton peer on {triton_target} ({script})")
            triton_proc = Proc("triton", ["bash", str(script), model_copy, str(port), str(cfg.triton_max_batch),
                                          str(cfg.triton_delay_us)], env={"PEER_THREADS": str(cfg.threads)})
            procs.append(triton_proc)
        target = cfg.target
        ls_proc = None
        if cfg.start:
            port = free_port()
            target = f"127.0.0.1:{port}"
            _log(f"starting latentserve on {target} (repo {cfg.repo})")
            # --http-port: Serve always starts an HTTP proxy; a free port avoids clashing with other servers
            # its metrics endpoint on a free port too (metrics stay on: they are part of the measured cost)
            ls_proc = Proc("latentserve", [sys.executable, "-m", "latentserve", "serve", "--port", str(port),
                                           "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                                           "--repo", str(cfg.repo),
                                           "--models", cfg.model, "--threads", str(cfg.threads), *cfg.serve_args])
            procs.append(ls_proc)
        if not target:
            raise ValidationError("give --target HOST:PORT of a running latentserve server, or --start")

        from latentserve.client import LatentClient

        client = LatentClient(target, token=cfg.token, app_name=cfg.app_name, timeout=30, tls=cfg.tls)
        if ls_proc is not None:
            _log(f"waiting for latentserve at {target} ...")
            wait_until(client.health, cfg.startup_timeout, f"latentserve at {target}", ls_proc)
        info = client.get_model(cfg.model, cfg.version)  # a --target that fails says why (e.g. the TLS handshake)
        client.close()
        if info.latent_dim != latent_dim or tuple(info.image_shape) != image_chw:
            raise ValidationError(f"server model {info.name} v{info.version} (D={info.latent_dim}, image "
                                  f"{info.image_shape}) differs from {onnx_path} (D={latent_dim}, image {image_chw})")
        n_classes = max(1, len(info.class_names))
        report["model"] = {"name": info.name, "version": info.version, "family": info.family,
                           "backend": info.backend, "classes": n_classes}
        if triton_target:
            _log(f"waiting for Triton at {triton_target} ...")
            wait_until(lambda: (triton_proc is None or triton_proc.log_has("READY")) and triton_ready(triton_target),
                       cfg.startup_timeout, f"Triton at {triton_target}", triton_proc)

        if procs and cfg.settle_s > 0:  # servers we started: let their start-up activity end first
            waited, busy = wait_quiet(cfg.settle_s)
            report["machine"]["settle"] = {"seconds": round(waited, 1), "busy": None if busy is None else round(busy, 3)}
            _log(f"machine {'quiet' if busy is None or busy < QUIET_BUSY else 'still busy'} after {waited:.0f}s "
                 f"({'?' if busy is None else f'{100 * busy:.0f}%'} of the cores busy)")

        # 3) latentserve and Triton through the same harness, interleaved per mode
        md = tuple(x for x in ((("authorization", f"Bearer {cfg.token}") if cfg.token else None),
                               (("application", cfg.app_name) if cfg.app_name else None)) if x)
        hw = (image_chw[1], image_chw[2])
        systems = [System(cfg.label, target, "/latentserve.v1.LatentService/Decode",
                          lambda b: latentserve_requests(cfg.model, cfg.version, latent_dim, n_classes, b, cfg.seed),
                          lambda b: latentserve_parser(b, hw), md, ls_proc.proc.pid if ls_proc else cfg.server_pid,
                          cfg.tls)]
        if triton_target:
            systems.append(System("triton", triton_target, TRITON_INFER,
                                  lambda b: triton_requests(latent_dim, n_classes, b, cfg.seed),
                                  lambda b: triton_parser(b, image_chw), (),
                                  triton_proc.proc.pid if triton_proc else None))
        results += asyncio.run(_drive_systems(systems, cfg))

        # 4) stop what we started, then the ceiling's second pass
        for p in reversed(procs):
            p.stop()
        procs.clear()
        results += _raw_pass(sess, latent_dim, n_classes, cfg)
        report.update(analyse(results, cfg))
        failed = False
    finally:
        for p in reversed(procs):
            p.stop(keep_log=failed)
        shutil.rmtree(tmp, ignore_errors=True)
    report["machine"]["loadavg_after"] = list(os.getloadavg())
    if cfg.json_out:
        out = Path(cfg.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        report["json_out"] = str(out)
    return report


def analyse(results: list[RunStats], cfg: BenchConfig) -> dict:
    """Ratios vs raw and vs Triton, and the target checks (for the system named cfg.label)."""
    rows = [r.summary() for r in results]
    # the ceiling: the best raw bulk pass (there are two, one before and one after the servers ran)
    raw = max((r for r in rows if r["system"] == "raw" and r["mode"] == "bulk"), key=lambda r: r["images_per_s"])
    by_key = {(r["system"], r["mode"], r["concurrency"]): r for r in rows}
    raw_cpu = min((r["server_cpu_ms_per_image"] for r in rows if r["system"] == "raw" and r["mode"] == "bulk"
                   and r["server_cpu_ms_per_image"]), default=None)
    for r in rows:
        r["vs_raw"] = round(r["images_per_s"] / raw["images_per_s"], 3) if raw["images_per_s"] else None
        # CPU efficiency: the ceiling's CPU per image over this system's (1.0 = no overhead); load-independent
        cpu = r["server_cpu_ms_per_image"]
        r["cpu_efficiency_vs_raw"] = round(raw_cpu / cpu, 3) if raw_cpu and cpu else None
        tr = by_key.get(("triton", r["mode"], r["concurrency"]))
        r["vs_triton"] = (round(r["images_per_s"] / tr["images_per_s"], 3)
                          if r["system"] == cfg.label and tr and tr["images_per_s"] > 0 else None)
    checks = []
    ls_bulk = by_key.get((cfg.label, "bulk", cfg.bulk_concurrency))
    ls_32 = by_key.get((cfg.label, "single", 32))
    who = cfg.label
    if ls_bulk:
        checks.append({"check": f"{who} bulk >= {TARGETS['bulk_vs_raw']}x raw", "value": ls_bulk["vs_raw"],
                       "pass": (ls_bulk["vs_raw"] or 0) >= TARGETS["bulk_vs_raw"]})
        if ls_bulk["vs_triton"] is not None:
            checks.append({"check": f"{who} bulk >= {TARGETS['vs_triton']}x Triton",
                           "value": ls_bulk["vs_triton"],
                           "pass": ls_bulk["vs_triton"] >= TARGETS["vs_triton"]})
    if ls_32:
        checks.append({"check": f"{who} single c=32 >= {TARGETS['single32_vs_raw']}x raw",
                       "value": ls_32["vs_raw"], "pass": (ls_32["vs_raw"] or 0) >= TARGETS["single32_vs_raw"]})
        if ls_32["vs_triton"] is not None:
            checks.append({"check": f"{who} single c=32 >= {TARGETS['vs_triton']}x Triton",
                           "value": ls_32["vs_triton"], "pass": ls_32["vs_triton"] >= TARGETS["vs_triton"]})
    return {"results": rows, "checks": checks}


def format_table(report: dict) -> str:
    """The human-readable table of a report."""
    head = ["system", "mode", "conc", "batch", "img/s", "req/s", "p50 ms", "p99 ms", "x raw", "x triton",
            "srv cpu ms/img", "cpu eff x raw", "errors"]

    def opt(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = []
    for r in report.get("results", []):
        rows.append([r["system"], r["mode"], str(r["concurrency"]), str(r["batch"]), f"{r['images_per_s']:.1f}",
                     f"{r['requests_per_s']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                     opt(r.get("vs_raw"), ".3f"), opt(r.get("vs_triton"), ".2f"),
                     opt(r.get("server_cpu_ms_per_image"), ".3f"), opt(r.get("cpu_efficiency_vs_raw"), ".3f"),
                     str(r["errors"])])
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    model = report.get("model", {})
    lines.insert(0, f"decoder {report.get('onnx')}  image {report.get('image_shape')}  D={report.get('latent_dim')}  "
                    f"model {model.get('name')} v{model.get('version')}  threads {report['config']['threads']}  "
                    f"window {report['config']['duration']}s (+{report['config']['warmup']}s warm-up)  "
                    f"client connections {report['config'].get('connections', 1)}")
    lines.append("x raw / x triton: throughput ratios (raw = the better raw bulk pass). srv cpu ms/img: CPU time of "
                 "the server's whole process tree per image; cpu eff x raw = raw's CPU per image / this one's "
                 "(1.0 = no serving overhead; independent of other load on the machine).")
    for c in report.get("checks", []):
        lines.append(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['value']}")
    return "\n".join(lines)


__all__ = ["BenchConfig", "RunStats", "drive", "open_channels", "run_raw", "run_bench", "analyse", "format_table", "triton_onnx",
           "kserve_messages", "to_uint8_nhwc", "TARGETS"]
