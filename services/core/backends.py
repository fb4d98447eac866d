"""Inference session wrappers: ONNX Runtime (default) and TorchScript behind one small interface.

`open_session(backend, path, ...)` returns an object with `input_names`, `output_names` and
`run(feeds: dict[name, ndarray]) -> dict[name, ndarray]`, thread-safe for concurrent calls (the model server
runs batches on a small thread pool). Threads are always set explicitly: Ray sets OMP_NUM_THREADS=1 inside
actors, and an implicit default would either oversubscribe the CPUs Ray reserved or silently run 1 thread.
torch is imported only when the TorchScript backend is chosen (serving needs no PyTorch otherwise).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from latentserve.errors import IntegrityError, UnrecoverableError, ValidationError

BACKENDS = ("onnxruntime", "torchscript")


class Session(Protocol):
    backend: str
    device: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def resolve_providers(requested: Sequence[str] = (), want_gpu: bool = False) -> list[str]:
    """ORT execution providers to use: the requested ones (checked against what this onnxruntime build has),
    else CUDA first when the build has it (onnxruntime-gpu) and the replica reserved a GPU, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValidationError(
                f"execution provider(s) {', '.join(missing)} not available in this onnxruntime build "
                f"(available: {', '.join(available)}); install onnxruntime-gpu for CUDA"
            )
        out = list(requested)
    else:
        # A replica gets a GPU from Ray only when it asked for one (num_gpus > 0): that is the signal.
        out = ["CUDAExecutionProvider"] if ("CUDAExecutionProvider" in available and want_gpu) else []
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")  # fallback for ops a GPU provider does not implement
    return out


class OrtSession:
    """One ONNX Runtime InferenceSession with explicit threading."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, intra_op_threads: int = 1, inter_op_threads: int = 1,
                 providers: Sequence[str] = ()) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(intra_op_threads)
        so.inter_op_num_threads = int(inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Busy-waiting worker threads would steal CPU from the proxy and ingress sharing the node.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3  # errors only; ORT warns about unused initializers on every load
        self.path = Path(path)
        self.providers = resolve_providers(providers)
        try:
            self._sess = ort.InferenceSession(str(self.path), so, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
            raise IntegrityError(f"cannot load ONNX graph {self.path}: {exc}") from exc
        self.device = "cuda" if self._sess.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))


class TorchScriptSession:
    """A TorchScript module (`torch.jit.load`) with the graph contract's input/output names."""

    backend = "torchscript"

    def __init__(self, path: str | os.PathLike, input_names: Sequence[str], output_names: Sequence[str],
                 threads: int = 1, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError as exc:
            raise UnrecoverableError("backend 'torchscript' needs PyTorch: pip install 'latentserve[train]'") from exc
        # torch's intra-op pool is process-wide: the model server owns its process, so setting it is safe.
        torch.set_num_threads(int(threads))
        self._torch = torch
        self.path = Path(path)
        self.device = device
        try:
            self._module = torch.jit.load(str(self.path), map_location=device).eval()
        except Exception as exc:
            raise IntegrityError(f"cannot load TorchScript graph {self.path}: {exc}") from exc
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._lock = threading.Lock() if device != "cpu" else None  # one CUDA stream: serialise GPU calls

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names]
        with torch.inference_mode():
            if self._lock is not None:
                with self._lock:
                    out = self._module(*args)
            else:
                out = self._module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        if len(out) != len(self.output_names):
            raise IntegrityError(
                f"{self.path.name} returned {len(out)} outputs, the graph contract names {self.output_names}"
            )
        return {n: t.detach().cpu().numpy() for n, t in zip(self.output_names, out)}


def open_session(backend: str, path: str | os.PathLike, input_names: Sequence[str] = (),
                 output_names: Sequence[str] = (), intra_op_threads: int = 1, inter_op_threads: int = 1,
                 providers: Sequence[str] = (), device: str = "cpu") -> Session:
    """Open `path` with `backend`. TorchScript needs the graph contract's input/output names in order;
    `device` 'cuda' asks ORT for the CUDA provider (when built with it) and moves TorchScript to the GPU."""
    if backend == "onnxruntime":
        if not providers:
            providers = resolve_providers((), want_gpu=device.startswith("cuda"))
        return OrtSession(path, intra_op_threads, inter_op_threads, providers)
    if backend == "torchscript":
        return TorchScriptSession(path, input_names, output_names, intra_op_threads, device)
    raise ValidationError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
