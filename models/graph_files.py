"""Writing and checking graph files: ONNX and TorchScript export of one module, and their parity with it.

`export_onnx` uses the TorchScript-based exporter (`dynamo=False`) when this torch still has it, else (or if it
fails) the torch.export-based one; every input/output gets a dynamic batch axis 0 and the file is
self-contained (checked). `export_torchscript` traces. `check_parity` runs ONNX Runtime and the reloaded
TorchScript against the eager module and raises `ExportError` beyond atol + rtol*|eager|. Used by
`models.export`, which decides what graphs a family has and where they go.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from latentserve.errors import UnrecoverableError, ValidationError

_log = logging.getLogger(__name__)

EXPORTERS = ("auto", "legacy", "dynamo")


class ExportError(UnrecoverableError):
    """An exported graph does not match its eager module, or an exporter produced an unusable file."""


def as_tuple(out) -> tuple:
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, dict):
        return tuple(out.values())
    return tuple(out)


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # parity batches are tiny; do not fight other processes for cores
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------- graph export
def legacy_exporter_available() -> bool:
    """Whether this torch still ships the TorchScript-based ONNX exporter (`dynamo=False`)."""
    import inspect

    import torch

    try:
        params = inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):
        return False
    return "dynamo" in params and "dynamic_axes" in params


def export_onnx(module, inputs: tuple, input_names: list[str], output_names: list[str], path: Path,
                opset: int = 17, exporter: str = "auto", dynamic_axes: dict | None = None) -> str:
    """Write `module` as one self-contained ONNX file with a dynamic batch axis on every input and output,
    and the further dynamic axes `dynamic_axes` {tensor name: {axis: name}} names (a texture decoder's grid).

    Returns the exporter that produced the file ("legacy" | "dynamo"). Raises ExportError when neither works.
    """
    import onnx
    import torch

    if exporter not in EXPORTERS:
        raise ValidationError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    order = ["legacy", "dynamo"] if exporter == "auto" else [exporter]
    if "legacy" in order and not legacy_exporter_available():
        if exporter == "legacy":
            raise ExportError(f"torch {torch.__version__} no longer has the legacy (dynamo=False) ONNX exporter")
        order.remove("legacy")
    errors = []
    for which in order:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # Deprecation notices of the legacy exporter and tracer warnings about Python ints: parity
                # at two batch sizes below is the real check that nothing was specialised.
                warnings.simplefilter("ignore")
                if which == "legacy":
                    axes = {n: {0: "batch", **(dynamic_axes or {}).get(n, {})} for n in [*input_names, *output_names]}
                    kw = dict(input_names=input_names, output_names=output_names, dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
                    # The legacy exporter prints the whole TorchScript IR to stdout (from C++) when it
                    # gives up; the exception says what failed, so keep the console readable.
                    with _quiet_stdout():
                        torch.onnx.export(module, inputs, str(path), **kw)
                        if _onnx_input_names(path) != list(input_names):
                            # The TorchScript exporter drops inputs the graph never reads (the flow decoder's
                            # label); the contract needs them, so tie them in with an exact no-op and redo.
                            torch.onnx.export(_KeepInputs(module), inputs, str(path), **kw)
                else:
                    batch = torch.export.Dim("batch", min=1, max=1 << 16)
                    dims = {}  # one Dim per axis name, shared by the inputs that name it
                    shapes = tuple({0: batch, **{a: dims.setdefault(d, torch.export.Dim(d, min=1, max=1 << 12))
                                                 for a, d in (dynamic_axes or {}).get(n, {}).items() if a}}
                                   for n in input_names)
                    prog = torch.onnx.export(module, inputs, input_names=input_names, output_names=output_names,
                                             dynamic_shapes=shapes, opset_version=opset, dynamo=True,
                                             external_data=False, optimize=True, verbose=False)
                    prog.save(str(path), external_data=False)
            _check_onnx_file(path, input_names, output_names)
            return which
        except Exception as exc:  # try the next exporter; report all failures if none works
            errors.append(f"{which}: {type(exc).__name__}: {str(exc)[:400]}")
            if which != order[-1]:
                _log.warning("%s ONNX exporter failed for %s (%s); trying the next one", which, path.stem,
                             str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            for p in [path, *path.parent.glob(path.name + ".data")]:
                p.unlink(missing_ok=True)
    raise ExportError(f"ONNX export of {path.stem} failed: " + " | ".join(errors))


def _KeepInputs(module):  # noqa: N802  (a class factory: torch stays out of module import)
    """Wrap `module` so every input feeds the first output through an exact no-op.

    out0 + zeros shaped (B, 1, ..., 1) built from each input's *shape* (zeros_like: ONNX ConstantOfShape of
    Shape(input)), never from its values, so NaN/inf inputs cannot leak in; x + 0.0 == x exactly.
    """
    import torch
    from torch import nn

    class KeepInputs(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: torch.Tensor):
            out = self.inner(*args)
            single = isinstance(out, torch.Tensor)
            outs = [out] if single else list(out)
            first = outs[0]
            for t in args:
                z = torch.zeros_like(t).to(first.dtype)
                z = z.reshape(z.shape[0], -1)[:, :1].reshape([-1] + [1] * (first.dim() - 1))  # (B,1,..,1)
                first = first + z
            outs[0] = first
            return outs[0] if single else tuple(outs)

    return KeepInputs(module).eval()


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (C++ prints bypass sys.stdout) for the duration of the block."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def _onnx_input_names(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {x.name for x in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _check_onnx_file(path: Path, input_names: list[str], output_names: list[str]) -> None:
    """The file is a valid, self-contained model with the contract's names and a symbolic batch axis."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"{path.name}: initializer {init.name} is stored as external data")
    onnx.checker.check_model(model)
    got_in = _onnx_input_names(path)
    got_out = [o.name for o in model.graph.output]
    if got_in != list(input_names) or got_out != list(output_names):
        raise ExportError(f"{path.name}: names {got_in} -> {got_out}, expected {input_names} -> {output_names}")
    for v in [*model.graph.input, *model.graph.output]:
        if v.name not in got_in + got_out:
            continue
        dims = v.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value or not dims[0].dim_param:
            raise ExportError(f"{path.name}: {v.name} has no symbolic batch axis 0")


def export_torchscript(module, inputs: tuple, path: Path) -> None:
    """Trace `module` and save it (the file runs without the Python source of the nets)."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit deprecation + tracer warnings; parity checks the result
        traced = torch.jit.trace(module, inputs, check_trace=False)
    traced.save(str(path))


def onnx_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def check_parity(module, onnx_path: Path, ts_path: Path, batches: list[tuple], input_names: list[str],
                 output_names: list[str], atol: float = 1e-4, rtol: float = 1e-5) -> dict[str, float]:
    """Max abs difference of ONNX Runtime and reloaded TorchScript vs eager over `batches` of inputs.

    Returns {onnx_max_abs, torchscript_max_abs, outputs: {output: {onnx_max_abs, torchscript_max_abs}}}.

    Raises ExportError (naming graph, runtime, output and batch size) if any element differs by more than
    atol + rtol * |eager|.
    """
    import torch

    sess = _ort_session(onnx_path)
    ts = torch.jit.load(str(ts_path), map_location="cpu").eval()
    worst: dict[str, Any] = {"onnx_max_abs": 0.0, "torchscript_max_abs": 0.0,
                             "outputs": {n: {"onnx_max_abs": 0.0, "torchscript_max_abs": 0.0} for n in output_names}}
    for inputs in batches:
        b = int(inputs[0].shape[0])
        with torch.no_grad():
            ref = [o.detach().cpu().numpy() for o in as_tuple(module(*inputs))]
            try:
                ts_out = [o.detach().cpu().numpy() for o in as_tuple(ts(*inputs))]
            except Exception as exc:  # e.g. a shape traced as a constant
                raise ExportError(f"{ts_path.name} fails at batch {b}: {str(exc)[:300]}") from exc
        try:
            onnx_out = sess.run(output_names, {n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs)})
        except Exception as exc:
            raise ExportError(f"{onnx_path.name} fails at batch {b} in ONNX Runtime: {str(exc)[:300]}") from exc
        for runtime, outs in (("onnx", onnx_out), ("torchscript", ts_out)):
            if len(outs) != len(ref):
                raise ExportError(f"{onnx_path.stem}: {runtime} returned {len(outs)} outputs, eager {len(ref)}")
            for name, r, o in zip(output_names, ref, outs):
                if r.shape != o.shape:
                    raise ExportError(f"{onnx_path.stem}.{name} ({runtime}, batch {b}): shape {o.shape} != eager {r.shape}")
                diff = np.abs(o.astype(np.float64) - r.astype(np.float64))
                if not np.all(np.isfinite(diff)):
                    raise ExportError(f"{onnx_path.stem}.{name} ({runtime}, batch {b}): non-finite values")
                m = float(diff.max()) if diff.size else 0.0
                worst[f"{runtime}_max_abs"] = max(worst[f"{runtime}_max_abs"], m)
                per = worst["outputs"][name]
                per[f"{runtime}_max_abs"] = max(per[f"{runtime}_max_abs"], m)
                excess = diff - (atol + rtol * np.abs(r))
                if diff.size and float(excess.max()) > 0:
                    raise ExportError(
                        f"parity failed for {onnx_path.stem}.{name} ({runtime}, batch {b}): max abs diff {m:.3g} "
                        f"> {atol:g} + {rtol:g}*|eager| (a model trained far past its recipe can need a "
                        f"little more: `latentserve export --parity-atol`)"
                    )
    return worst


# --------------------------------------------------------------------------------------------- inputs
