"""The model manifest (`manifest.json`, schema_version 1) as code: validation, reading, writing, checksums.

Owns the schema of docs/architecture.md "Model repository". Imports only the standard library and numpy
(no torch, no onnx), because the serving side reads manifests too.

Conventions beyond the prose schema (decided here, relied on by export, eval and serving):
- A graph's tensor spec is `[dtype, shape]`: dtype is a numpy dtype name (`"float32"`, `"int64"`), shape a
  list whose first entry is the string `"batch"` (the dynamic axis 0) and the rest are ints. Because the
  file is written with sorted keys, each graph also lists `input_names` / `output_names` in positional
  order (the order of the ONNX graph and of TorchScript call arguments / returned tuple).
- `files` lists every file of the version directory except `manifest.json` itself (relative posix paths),
  each `{sha256: hex, bytes: int}`; every file a graph or the latent space names must be listed there.
- `metrics` is the only section rewritten after export (by `latentserve eval`); rewriting it never changes
  a listed file, so checksums stay valid.
- Generative manifests (gan / vae / flow / ae / vector / sgan) must carry `latent_shape`, `prior`, `knobs`, `gmm`
  and `probe`; probe manifests may leave them out (or null). A texture model (sgan) has no encoder, an empty
  probe and a `texture` block: the sizes it draws (models/texture_grid.texture_spec).
- `training.family_config` + `training.data` are enough to rebuild the torch modules of a version
  (`get_family(family).config_cls(**family_config)`), and the `.pt` TorchScript files run without Python
  source, so a version directory is self-contained without `checkpoint.pt`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from latentserve.errors import NotFoundError, ValidationError
from latentserve.models.families import EXPORTED, GENERATIVE

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
FAMILIES = EXPORTED  # the families a manifest may name (models/families: the one list)
PRIOR_TYPES = ("standard_normal", "class_gaussian", "texture")
KNOB_KINDS = ("factor", "pca")
GRAPH_FORMATS = ("onnx", "torchscript")
DTYPES = ("float32", "float16", "float64", "int64", "int32", "uint8", "bool")
BATCH = "batch"  # the name of the dynamic axis 0 in every tensor spec
# Graphs each family must export and the exact input/output names of the graph contract.
REQUIRED_GRAPHS = {
    "gan": ("encoder", "decoder"),
    "vae": ("encoder", "decoder"),
    "flow": ("encoder", "decoder"),
    "ae": ("encoder", "decoder"),
    "probe": ("probe",),
    "vector": ("encoder", "decoder"),  # the decoder also outputs layers + background (models/vector.py)
    "sgan": ("decoder",),  # textures: no encoder; the decoder also takes the noise grid (models/texture_grid.py)
}
# decoder inputs beyond the contract's, per family (in order after latent, label)
DECODER_EXTRA_INPUTS = {"sgan": ("noise",)}
GRAPH_INPUTS = {"encoder": ("image",), "decoder": ("latent", "label"), "probe": ("image",)}
GRAPH_OUTPUTS = {
    "encoder": ("latent", "logits"),  # vae adds logvar, flow adds logdet
    "decoder": ("image",),
    "probe": ("logits", "factors", "features"),
}


# ------------------------------------------------------------------------------------------- helpers
def _fail(key: str, msg: str) -> None:
    raise ValidationError(f"manifest: {key}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and not isinstance(v, bool)


def _req(d: dict, key: str, types: type | tuple, where: str = "") -> Any:
    path = f"{where}.{key}" if where else key
    if key not in d:
        _fail(path, "required key is missing")
    v = d[key]
    if types is int:
        ok = _is_int(v)
    elif types is float:
        ok = _is_num(v)
    else:
        ok = isinstance(v, types)
    if not ok:
        want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        _fail(path, f"expected {want}, got {type(v).__name__} ({v!r:.60})")
    return v


def _check_spec(spec: Any, where: str) -> None:
    if not (isinstance(spec, (list, tuple)) and len(spec) == 2):
        _fail(where, f"expected [dtype, shape], got {spec!r:.80}")
    dtype, shape = spec
    if dtype not in DTYPES:
        _fail(where, f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(shape, (list, tuple)) or not shape or shape[0] != BATCH:
        _fail(where, f"shape must be a list starting with {BATCH!r} (dynamic axis 0), got {shape!r}")
    for s in shape[1:]:
        # 0 is allowed: a probe of a data set without continuous factors (digits) outputs factors (batch, 0)
        if not (_is_int(s) and s >= 0):
            _fail(where, f"shape entries after {BATCH!r} must be ints >= 0, got {shape!r}")


def _check_texture(t: dict) -> None:
    """A texture model's sizes and latent layout (models/texture_grid.texture_spec)."""
    for k in ("cell_px", "min_output_px", "max_output_px", "global_dim", "local_dim", "periodic"):
        if not (_is_int(t.get(k)) and t[k] >= (1 if k in ("cell_px", "global_dim") else 0)):
            _fail(f"texture.{k}", f"must be an int >= {1 if k in ('cell_px', 'global_dim') else 0}, got {t.get(k)!r}")
    cell, lo, hi = t["cell_px"], t["min_output_px"], t["max_output_px"]
    if not (cell <= lo <= hi and lo % cell == 0 and hi % cell == 0):
        _fail("texture", f"min_output_px {lo} <= max_output_px {hi} must be multiples of cell_px {cell}")


def _check_shape(v: Any, key: str, n: int | None) -> None:
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n) or not all(_is_int(s) and s > 0 for s in v):
        _fail(key, f"expected a list of {n if n else 'some'} positive ints, got {v!r}")


# ------------------------------------------------------------------------------------------- validation
def validate_manifest(d: dict) -> dict:
    """Check `d` against schema_version 1; returns `d` unchanged, or raises ValidationError naming the key.

    Extra keys are allowed (forward compatible); required keys, their types and the cross references
    (graph files and latent space listed in `files`) are checked.
    """
    if not isinstance(d, dict):
        raise ValidationError(f"manifest: expected a JSON object, got {type(d).__name__}")
    sv = _req(d, "schema_version", int)
    if sv != SCHEMA_VERSION:
        _fail("schema_version", f"unsupported schema_version {sv} (this build reads {SCHEMA_VERSION})")
    name = _req(d, "name", str)
    if not name or "/" in name or name.startswith("."):
        _fail("name", f"must be a non-empty name without '/' or a leading '.', got {name!r}")
    version = _req(d, "version", int)
    if version < 1:
        _fail("version", f"must be >= 1, got {version}")
    family = _req(d, "family", str)
    if family not in FAMILIES:
        _fail("family", f"{family!r} is not one of {', '.join(FAMILIES)}")
    _req(d, "created", str)

    versions = _req(d, "versions", dict)
    for k in ("latentserve", "torch", "onnx", "onnxruntime"):
        _req(versions, k, str, "versions")
    _req(versions, "opset", int, "versions")

    _check_shape(_req(d, "image_shape", list), "image_shape", 3)
    if d["image_shape"][0] != 3:
        _fail("image_shape", f"expected [3, H, W] (RGB), got {d['image_shape']!r}")
    vr = _req(d, "value_range", list)
    if len(vr) != 2 or not all(_is_num(v) for v in vr) or not vr[0] < vr[1]:
        _fail("value_range", f"expected [low, high] with low < high, got {vr!r}")
    class_names = _req(d, "class_names", list)
    if not class_names or not all(isinstance(c, str) and c for c in class_names):
        _fail("class_names", "expected a non-empty list of non-empty strings")
    if len(set(class_names)) != len(class_names):
        _fail("class_names", f"duplicate class names in {class_names!r}")
    for i, f in enumerate(_req(d, "factors", list)):
        where = f"factors[{i}]"
        if not isinstance(f, dict):
            _fail(where, "expected an object {name, low, high, unit, doc}")
        _req(f, "name", str, where)
        lo, hi = _req(f, "low", float, where), _req(f, "high", float, where)
        if not lo < hi:
            _fail(where, f"low ({lo}) must be < high ({hi})")
        _req(f, "unit", str, where)
        _req(f, "doc", str, where)

    generative = family in GENERATIVE
    if generative or d.get("latent_shape") is not None:
        _check_shape(_req(d, "latent_shape", list), "latent_shape", 1)
    if generative or d.get("prior") is not None:
        prior = _req(d, "prior", dict)
        ptype = _req(prior, "type", str, "prior")
        if ptype not in PRIOR_TYPES:
            _fail("prior.type", f"{ptype!r} is not one of {', '.join(PRIOR_TYPES)}")
        if "sample_temperature" in prior:
            t = _req(prior, "sample_temperature", float, "prior")
            if not (0 < t <= 10):
                _fail("prior.sample_temperature", f"must be in (0, 10], got {t}")
    if generative or d.get("knobs") is not None:
        for i, k in enumerate(_req(d, "knobs", list)):
            where = f"knobs[{i}]"
            if not isinstance(k, dict):
                _fail(where, "expected an object {name, kind, unit, low, high, r2_fit}")
            _req(k, "name", str, where)
            kind = _req(k, "kind", str, where)
            if kind not in KNOB_KINDS:
                _fail(f"{where}.kind", f"{kind!r} is not one of {', '.join(KNOB_KINDS)}")
            _req(k, "unit", str, where)
            _req(k, "low", float, where)
            _req(k, "high", float, where)
            if k.get("r2_fit") is not None:
                _req(k, "r2_fit", float, where)
    if generative or d.get("gmm") is not None:
        gmm = _req(d, "gmm", dict)
        if gmm:  # {} = no GMM fitted (export with fit_latents=False)
            c = _req(gmm, "components", int, "gmm")
            if c < 1:
                _fail("gmm.components", f"must be >= 1, got {c}")
            cov = _req(gmm, "covariance", str, "gmm")
            if cov not in ("diag", "full"):
                _fail("gmm.covariance", f"must be 'diag' or 'full', got {cov!r}")
    if family == "sgan":
        _check_texture(_req(d, "texture", dict))
    if generative:
        _req(d, "probe", str)
    elif d.get("probe") is not None:
        _req(d, "probe", str)

    files = _req(d, "files", dict)
    for fname, entry in files.items():
        where = f"files.{fname}"
        if not isinstance(entry, dict):
            _fail(where, "expected {sha256, bytes}")
        sha = _req(entry, "sha256", str, where)
        if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
            _fail(f"{where}.sha256", f"expected 64 lowercase hex digits, got {sha!r}")
        if _req(entry, "bytes", int, where) < 0:
            _fail(f"{where}.bytes", "must be >= 0")
        if fname == MANIFEST_NAME or fname.startswith("/") or ".." in Path(fname).parts:
            _fail(where, "must be a relative path inside the version directory, not the manifest itself")

    graphs = _req(d, "graphs", dict)
    for g in REQUIRED_GRAPHS[family]:
        if g not in graphs:
            _fail("graphs", f"family {family!r} needs graph {g!r}; found {sorted(graphs)}")
    for g, spec in graphs.items():
        where = f"graphs.{g}"
        if not isinstance(spec, dict):
            _fail(where, "expected {onnx, torchscript, inputs, outputs}")
        for fmt in GRAPH_FORMATS:
            fname = _req(spec, fmt, str, where)
            if fname not in files:
                _fail(f"{where}.{fmt}", f"file {fname!r} is not listed in files")
        for io in ("inputs", "outputs"):
            tensors = _req(spec, io, dict, where)
            for tname, tspec in tensors.items():
                _check_spec(tspec, f"{where}.{io}.{tname}")
            order = spec.get(f"{io[:-1]}_names")  # optional positional order: input_names / output_names
            if order is not None and (not isinstance(order, list) or sorted(order) != sorted(tensors)):
                _fail(f"{where}.{io[:-1]}_names", f"must list exactly the names of {io} {sorted(tensors)}, got {order!r}")
            need = (GRAPH_INPUTS if io == "inputs" else GRAPH_OUTPUTS).get(g, ())
            missing = [t for t in need if t not in tensors]
            if missing:
                _fail(f"{where}.{io}", f"graph contract needs {list(need)}, missing {missing}")

    parity = _req(d, "parity", dict)
    for g, p in parity.items():
        where = f"parity.{g}"
        if not isinstance(p, dict):
            _fail(where, "expected {onnx_max_abs, torchscript_max_abs}")
        for k in ("onnx_max_abs", "torchscript_max_abs"):
            v = _req(p, k, float, where)
            if not math.isfinite(v) or v < 0:
                _fail(f"{where}.{k}", f"must be a finite number >= 0, got {v}")

    training = _req(d, "training", dict)
    tfam = _req(training, "family", str, "training")
    if tfam != family:
        _fail("training.family", f"{tfam!r} differs from family {family!r}")
    _req(training, "family_config", dict, "training")
    _req(training, "train_config", dict, "training")
    _req(training, "data", dict, "training")
    _req(training, "steps", int, "training")
    _req(training, "seconds", float, "training")
    _req(training, "final_losses", dict, "training")

    if d.get("latent_space") is not None:
        ls = _req(d, "latent_space", str)
        if ls not in files:
            _fail("latent_space", f"file {ls!r} is not listed in files")
    if "metrics" in d and d["metrics"] is not None:
        _req(d, "metrics", dict)
    return d


# ------------------------------------------------------------------------------------------- files
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (ONNX files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_entries(directory: str | os.PathLike) -> dict[str, dict]:
    """{relative posix path: {sha256, bytes}} for every regular file under `directory` except manifest.json.

    Hidden files (leading '.') are skipped: they are editor/OS litter, never artefacts.
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotFoundError(f"not a directory: {root}")
    out: dict[str, dict] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel == MANIFEST_NAME or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def _jsonable(o: Any) -> Any:
    """json.dump default: numpy scalars/arrays and paths become plain JSON values."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def dumps(d: dict) -> str:
    """The canonical manifest text: sorted keys, indent 2, trailing newline; NaN/inf are rejected."""
    return json.dumps(d, sort_keys=True, indent=2, default=_jsonable, allow_nan=False) + "\n"


def write_manifest(directory: str | os.PathLike, d: dict, validate: bool = True) -> Path:
    """Validate and write `<directory>/manifest.json` atomically (temp file + rename); returns its path."""
    if validate:
        validate_manifest(d)
    path = Path(directory) / MANIFEST_NAME
    try:
        text = dumps(d)
    except ValueError as exc:  # allow_nan=False: a NaN metric must not produce invalid JSON
        raise ValidationError(f"manifest: not valid JSON ({exc}); replace NaN/inf with null") from exc
    tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | os.PathLike, validate: bool = True) -> dict:
    """Read and (by default) validate `<directory>/manifest.json`."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise NotFoundError(f"no {MANIFEST_NAME} in {Path(directory)}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValidationError(f"manifest: {path} is not valid JSON: {exc}") from exc
    return validate_manifest(d) if validate else d
