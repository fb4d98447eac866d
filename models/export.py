"""Export a trained run into the model repository: ONNX + TorchScript graphs, parity checks, latent space, manifest.

Owns `export_run` (checkpoint -> `<repo>/<name>/<version>/`) and the pieces it is made of (writing and checking
one graph file is `models.graph_files`):
- ONNX: the TorchScript-based exporter (`dynamo=False`) when this torch still has it — on torch 2.13 it
  exists (deprecated, with a warning) and exports these small conv nets in well under a second, directly at
  the requested opset; otherwise (or if it fails) the torch.export-based exporter (`dynamo=True`, which
  natively targets opset >= 18 and down-converts). Every input/output gets a dynamic batch axis 0 named
  "batch"; the model is one self-contained file (no external data: checked after export).
- TorchScript: `torch.jit.trace` (also deprecated on 2.13 but working; the graphs have no data-dependent
  control flow, so tracing is exact) with an example batch of 3, so no shape is specialised to 1 or 7.
- Parity: ONNX Runtime and the reloaded TorchScript vs the eager module on real test images (and, for the
  decoder, their encoded latents and true labels) at batch 1 and 7; the manifest records the max abs
  differences and export fails if an element differs by more than atol + rtol*|eager| (atol=1e-4, rtol=1e-5:
  the rtol term only matters for large outputs such as a flow's log-determinant, a sum over 3*H*W terms
  whose float32 rounding alone is ~1e-4 at magnitudes in the thousands).
- Latent space (generative families): the training set (at most `max_latent_fit` images, a fixed-seed
  subset) is encoded with the eager encoder and `models.latent.fit_latent_space` fits knobs, PCA and the
  per-class GMM; flow passes its class-conditional prior (`prior_mean`, `prior_logstd`) from
  `family.manifest_extra()`. A family without an encoder (sgan: textures) ships its prior only, and its
  graphs' further dynamic axes (`ExportGraph.extra["dynamic_axes"]`: the texture decoder's grid) are kept.

Rebuilding torch modules from a version directory alone (no checkpoint.pt, no training run):
`rebuild_graph_modules(record)` constructs the family from `training.family_config` + `training.data` in the
manifest, takes its `graphs()` modules and loads the weights stored in the TorchScript files into them
(tracing keeps the module hierarchy, so the state-dict keys match). The `.pt` files themselves are also
directly runnable (`torch.jit.load`) and differentiable, without any Python source of the nets.

A version directory is written under a hidden temp name in `<repo>/<name>/` and renamed into place when
complete, so the repository never shows a half-written version (Repository ignores non-integer names).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latentserve.errors import IntegrityError, NotFoundError, ValidationError
from latentserve.models.latent import GMM_COVARIANCES, KNOB_MOVES, MAX_ANCHORS, latents_under_labels, restrict_knobs
from latentserve.models.manifest import SCHEMA_VERSION, file_entries, validate_manifest, write_manifest
from latentserve.models.graph_files import EXPORTERS, as_tuple, check_parity, export_onnx, export_torchscript, onnx_opset
from latentserve.models.repository import ModelRecord, Repository

_log = logging.getLogger(__name__)
GRAPH_FILES = {"onnx": "{graph}.onnx", "torchscript": "{graph}.pt"}
LATENT_SPACE_FILE = "latent_space.npz"
TRACE_BATCH = 3  # example batch for tracing/export: neither of the parity batches, and > 1
PARITY_BATCHES = (1, 7)


KNOB_SOURCES = ("auto", "encoded", "samples")


@dataclass
class ExportConfig:
    """Knobs of one export. All have defaults that suit the bundled models."""

    opset: int = 17  # ONNX opset of the written graphs. 13..23 (the dynamo exporter may write >= 18)
    fit_latents: bool = True  # fit knobs/PCA/GMM on encoded training images (generative families)
    # 12000, not 5000: a full-covariance component has D(D+3)/2 parameters (560 at D=32)
    max_latent_fit: int = 12000  # most training images encoded for the latent fit. 100..1_000_000
    n_pca: int = 8  # PCA directions stored in the latent space. 0..64
    # 10 full components, not a few diagonal ones: a class's codes lie on a curved, correlated set
    gmm_components: int = 10  # GMM components per class. 1..64
    # "full" | "diag" | "auto" (full up to latent size 256, so not for flows) | "anchors": gmm_components
    # encoded training images per class as components sized by their neighbours (latent.anchor_mixture)
    gmm_covariance: str = "auto"
    gmm_bandwidth: float = 0.5  # "anchors" only: component std per local spacing of the anchors. (0, 10]
    knob_moves: str = "ridge"  # "anchors" only: how knobs move codes, "ridge" | "local" (LatentSpace.knob_moves)
    exporter: str = "auto"  # "auto" (legacy TorchScript-based, else dynamo) | "legacy" | "dynamo"
    parity_atol: float = 1e-4  # parity tolerance, absolute part. (0, 1e-2]
    parity_rtol: float = 1e-5  # parity tolerance, relative to |eager| (large outputs like log-dets). [0, 1e-3]
    seed: int = 0  # seeds the latent-fit subset, the GMM init and parity-input selection. >= 0
    batch_size: int = 256  # encoder batch while fitting the latent space. 1..4096
    # Where the factor knobs are fitted: "encoded" = encoded training images with their true factors;
    # "samples" = prior samples labelled by the probe (InterFaceGAN's recipe: the directions are calibrated
    # where Sample draws from, which matters when the encoder's codes and the prior occupy different regions,
    # as for the GAN; the VAE asks for latent-GMM samples); "auto" = "samples" for families that ask for it
    # (`Family.knobs_from_samples`, which also names the sample source) when the
    # probe is in the repository, else "encoded".
    knob_source: str = "auto"
    # a small MLP per knob that reads the factor's current value from (latent, class), for latents up to 256
    # values (models/knob_readout.py): set_factor solves with it
    knob_readouts: bool = True
    # probe-read samples the knobs (and read-outs) are fitted on when they come from samples; 0 = twice
    # max_latent_fit (24,000 at the defaults). 0 or 100..1_000_000
    # (shapes-gan, scale knob R² by set_factor: 12,000 samples 0.87, 24,000 0.91)
    knob_samples: int = 0

    def __post_init__(self) -> None:
        def ck(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValidationError(f"ExportConfig.{name}={getattr(self, name)!r}: must be {allowed}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        ck("opset", is_int(self.opset) and 13 <= self.opset <= 23, "an int in 13..23")
        ck("max_latent_fit", is_int(self.max_latent_fit) and 100 <= self.max_latent_fit <= 1_000_000,
           "an int in 100..1000000")
        ck("n_pca", is_int(self.n_pca) and 0 <= self.n_pca <= 64, "an int in 0..64")
        top = MAX_ANCHORS if self.gmm_covariance == "anchors" else 64
        ck("gmm_components", is_int(self.gmm_components) and 1 <= self.gmm_components <= top, f"an int in 1..{top}")
        ck("gmm_bandwidth", isinstance(self.gmm_bandwidth, (int, float)) and 0 < self.gmm_bandwidth <= 10, "in (0, 10]")
        ck("knob_moves", self.knob_moves in KNOB_MOVES, f"one of {', '.join(KNOB_MOVES)}")
        ck("gmm_covariance", self.gmm_covariance in GMM_COVARIANCES, f"one of {', '.join(GMM_COVARIANCES)}")
        ck("exporter", self.exporter in EXPORTERS, f"one of {', '.join(EXPORTERS)}")
        ck("parity_atol", isinstance(self.parity_atol, (int, float)) and 0 < self.parity_atol <= 1e-2, "in (0, 1e-2]")
        ck("parity_rtol", isinstance(self.parity_rtol, (int, float)) and 0 <= self.parity_rtol <= 1e-3, "in [0, 1e-3]")
        ck("seed", is_int(self.seed) and self.seed >= 0, "an int >= 0")
        ck("batch_size", is_int(self.batch_size) and 1 <= self.batch_size <= 4096, "an int in 1..4096")
        ck("knob_source", self.knob_source in KNOB_SOURCES, f"one of {', '.join(KNOB_SOURCES)}")
        ck("knob_samples", is_int(self.knob_samples) and (self.knob_samples == 0 or 100 <= self.knob_samples <= 1_000_000),
           "0 or an int in 100..1000000")
        ck("knob_readouts", isinstance(self.knob_readouts, bool), "true or false")
        self.fit_latents = bool(self.fit_latents)


# --------------------------------------------------------------------------------------------- small helpers
def _to_numpy(v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return v


def _jsonable(v: Any) -> Any:
    """Config/extra values -> JSON values (dataclasses, tuples, numpy scalars, paths); arrays are refused."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    raise ValidationError(f"value of type {type(v).__name__} cannot go into a manifest")


def _is_array(v: Any) -> bool:
    import torch

    return isinstance(v, (np.ndarray, torch.Tensor))


def config_dict(config: Any) -> dict:
    """A family config object -> plain JSON dict (to_dict() when the config has one, else dataclasses.asdict)."""
    if hasattr(config, "to_dict"):
        return _jsonable(config.to_dict())
    if dataclasses.is_dataclass(config):
        return _jsonable(dataclasses.asdict(config))
    if isinstance(config, dict):
        return _jsonable(config)
    raise ValidationError(f"family config of type {type(config).__name__} is not a dataclass or dict")


def _dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _spec(t) -> list:
    """Tensor -> [dtype, ["batch", *shape[1:]]] (the manifest's tensor spec)."""
    return [_dtype_name(t), ["batch", *[int(s) for s in t.shape[1:]]]]


def _graph_batch(name: str, eg, images: np.ndarray, labels: np.ndarray, latents: np.ndarray | None,
                 n_classes: int, gen: np.random.Generator) -> tuple:
    """Real-looking inputs for graph `name` from test images (N,3,H,W) [-1,1], labels (N,), encoded latents."""
    import torch

    n = len(images)
    out = []
    for iname, ex in zip(eg.input_names, eg.example_inputs):
        shape = (n, *ex.shape[1:])
        if iname == "image" and tuple(images.shape[1:]) == tuple(ex.shape[1:]):
            out.append(torch.from_numpy(images.astype(np.float32)))
        elif iname == "label":
            out.append(torch.from_numpy(labels.astype(np.int64)))
        elif iname == "latent" and latents is not None and latents.shape[1:] == tuple(ex.shape[1:]):
            out.append(torch.from_numpy(latents.astype(np.float32)))
        elif ex.dtype in (torch.int64, torch.int32):
            out.append(torch.from_numpy(gen.integers(0, n_classes, size=shape)).to(ex.dtype))
        else:
            out.append(torch.from_numpy(gen.standard_normal(shape).astype(np.float32)).to(ex.dtype))
    return tuple(t.to(ex.device) for t, ex in zip(out, eg.example_inputs))


def _encode(module, images_u8: np.ndarray, output_names: list[str], batch_size: int) -> dict[str, np.ndarray]:
    """Eager encoder over uint8 (N,H,W,3) images in batches -> {output name: (N, ...) float32}."""
    import torch

    from latentserve.models.data.base import to_model

    parts: dict[str, list[np.ndarray]] = {n: [] for n in output_names}
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.no_grad():
        for i in range(0, len(images_u8), batch_size):
            x = torch.from_numpy(to_model(images_u8[i:i + batch_size])).to(device)  # (b,3,H,W) in [-1,1]
            for n, o in zip(output_names, as_tuple(module(x))):
                parts[n].append(o.detach().cpu().numpy())
    return {n: np.concatenate(v) for n, v in parts.items()}


def fit_space(graphs: dict, data, n_classes: int, prior_type: str, prior_arrays: dict, cfg: ExportConfig,
              knob_readouts: bool = False):
    """Encode (a fixed-seed subset of) the training split and fit the latent space -> (LatentSpace, fit meta)."""
    from latentserve.models.latent import fit_latent_space

    enc = graphs["encoder"]
    split = data.train
    n = len(split)
    rng = np.random.default_rng(cfg.seed)
    idx = np.sort(rng.choice(n, size=cfg.max_latent_fit, replace=False)) if n > cfg.max_latent_fit else np.arange(n)
    t0 = time.time()
    out = _encode(enc.module, split.images[idx], enc.output_names, cfg.batch_size)
    latents = latents_under_labels(out, split.labels[idx])  # (N, D), under the true class's map
    space = fit_latent_space(
        latents, split.labels[idx], split.factors[idx], [f for f in data.factors], n_classes, prior_type,
        prior_mean=prior_arrays.get("prior_mean"), prior_logstd=prior_arrays.get("prior_logstd"),
        n_pca=cfg.n_pca, gmm_components=cfg.gmm_components, gmm_covariance=cfg.gmm_covariance, seed=cfg.seed,
        anchor_bandwidth=cfg.gmm_bandwidth,
        knob_readouts=knob_readouts,
    )
    space.knob_moves = cfg.knob_moves
    meta = {"n_images": int(len(idx)), "seconds": round(time.time() - t0, 3), "seed": cfg.seed,
            "latent_rms": float(np.sqrt(np.mean(latents.astype(np.float64) ** 2)))}
    return space, meta


def _probe_record(repo: Repository, probe: str, required: bool):
    try:
        return repo.load(probe)
    except NotFoundError:
        if required:
            raise NotFoundError(f"knob_source 'samples' needs the probe {probe!r} in {repo.root}; export it first")
        return None


def fit_knobs_on_samples(decoder, space, probe_record, data, cfg: ExportConfig,
                         source: str = "prior") -> tuple[dict, dict]:
    """InterFaceGAN's recipe: decode `max_latent_fit` samples of `source` ("prior" | "latent_gmm", balanced
    classes), measure their factors with the probe, fit the knobs on (z, measured factor) -> ({name: Knob}, meta)."""
    import torch

    from latentserve.models.evaluate import OnnxGraph, probe_factor_names
    from latentserve.models.latent import fit_knobs

    t0 = time.time()
    n = cfg.knob_samples or 2 * cfg.max_latent_fit
    labels = np.arange(n, dtype=np.int64) % space.n_classes  # (N,)
    rng = np.random.default_rng(cfg.seed)
    if source not in ("prior", "latent_gmm"):
        raise ValidationError(f"knob samples come from 'prior' or 'latent_gmm', not {source!r}")
    z = (space.sample_prior(labels, rng) if source == "prior" else space.sample_gmm(labels, rng)).astype(np.float32)
    images = []
    with torch.no_grad():
        for i in range(0, n, cfg.batch_size):
            out = decoder(torch.from_numpy(z[i:i + cfg.batch_size]), torch.from_numpy(labels[i:i + cfg.batch_size]))
            images.append((out[0] if isinstance(out, (tuple, list)) else out).cpu().numpy())  # (b,3,H,W)
    measured = OnnxGraph(probe_record, "probe", threads=None)(image=np.concatenate(images))["factors"]  # (N, Kp)
    names = probe_factor_names(probe_record)
    factors = np.full((n, len(data.factors)), np.nan)  # (N, K) in the dataset's factor order; NaN = unmeasured
    for k, fac in enumerate(data.factors):
        if fac.name in names:
            factors[:, k] = measured[:, names.index(fac.name)]
    knobs = fit_knobs(z, factors, list(data.factors), cfg.seed, labels=labels if cfg.knob_readouts else None,
                      n_classes=space.n_classes)
    meta = {"source": f"{source}_samples", "probe": {"name": probe_record.name, "version": probe_record.version},
            "n_samples": n, "seconds": round(time.time() - t0, 3)}
    return knobs, meta


# --------------------------------------------------------------------------------------------- export
def _versions(opset: int, exporter: str) -> dict:
    import onnx
    import onnxruntime
    import torch

    import latentserve

    return {"latentserve": latentserve.__version__, "torch": str(torch.__version__), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": int(opset), "onnx_exporter": exporter}


def _split_extra(extra: dict) -> tuple[dict, dict]:
    """family.manifest_extra() -> (JSON part, arrays part). Arrays (flow prior) go to the latent space."""
    json_part, arrays = {}, {}
    for k, v in (extra or {}).items():
        if _is_array(v):
            arrays[k] = np.asarray(_to_numpy(v), dtype=np.float32)
        elif isinstance(v, dict):
            sub_json, sub_arr = _split_extra(v)
            json_part[k] = sub_json
            arrays.update(sub_arr)
        else:
            json_part[k] = _jsonable(v)
    return json_part, arrays


def _remove_stale_temp_dirs(model_dir: Path) -> None:
    """Delete `.export-<version>-<pid>-<token>` folders left by exports that were killed (their pid is gone)."""
    if not model_dir.is_dir():
        return
    for p in model_dir.glob(".export-*-*-*"):
        try:
            pid = int(p.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)  # signal 0: existence check only
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:  # alive, owned by someone else
            pass


def export_family(family, name: str, data, training: dict, repo_root: str | os.PathLike | None = None,
                  version: int | None = None, probe: str | None = None,
                  config: ExportConfig | None = None) -> ModelRecord:
    """Export a Family (trained, in memory) as `<repo>/<name>/<version>/` and return the verified record.

    `data` is the Dataset the family was trained on (train split for the latent fit, test split for parity
    inputs); `training` holds train_config, steps, seconds, final_losses (family, family_config and data
    meta are taken from `family`).
    """
    import torch

    from latentserve.models.manifest import GENERATIVE

    cfg = config or ExportConfig()
    repo = Repository(repo_root)
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise ValidationError(f"model name {name!r} must be non-empty, without '/', spaces at the ends or a leading '.'")
    fam = family.name
    generative = fam in GENERATIVE
    if version is None:
        version = repo.next_version(name)
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValidationError(f"version must be an int >= 1, got {version!r}")
    final = repo.root / name / str(version)
    if final.exists():
        raise ValidationError(f"{name} v{version} already exists at {final}; pick another --version or omit it")
    meta = dict(family.data_meta)
    n_classes = len(meta["class_names"])
    if data.n_classes != n_classes or data.image_size != int(meta["image_size"]):
        raise ValidationError(f"dataset {data.name} ({data.n_classes} classes, {data.image_size}px) does not match "
                              f"the run's data ({n_classes} classes, {meta['image_size']}px)")
    extra_json, extra_arrays = _split_extra(family.manifest_extra())

    _remove_stale_temp_dirs(repo.root / name)
    tmp = repo.root / name / f".export-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        graphs = family.graphs()
        for g in graphs.values():
            g.module.eval()
        # Parity inputs: real test images (distinct ones for batch 1 and 7, and the trace batch).
        from latentserve.models.data.base import to_model

        gen = np.random.default_rng(cfg.seed)
        test = data.test if len(data.test) >= 11 else data.train
        pick = gen.choice(len(test), size=TRACE_BATCH + sum(PARITY_BATCHES), replace=len(test) < 11)
        images, labels = to_model(test.images[pick]), test.labels[pick].astype(np.int64)
        latents = None
        if "encoder" in graphs:
            enc = graphs["encoder"]
            with torch.no_grad():
                x = torch.from_numpy(images).to(enc.example_inputs[0].device)
                outs = dict(zip(enc.output_names, (o.cpu().numpy() for o in as_tuple(enc.module(x)))))
                latents = latents_under_labels(outs, labels)
        cuts = np.cumsum([0, TRACE_BATCH, *PARITY_BATCHES])
        sel = [slice(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)]

        def batch(gname: str, s: slice) -> tuple:
            return _graph_batch(gname, graphs[gname], images[s], labels[s],
                                None if latents is None else latents[s], n_classes, gen)

        graph_specs, parity, exporters = {}, {}, set()
        for gname, eg in graphs.items():
            onnx_file = GRAPH_FILES["onnx"].format(graph=gname)
            ts_file = GRAPH_FILES["torchscript"].format(graph=gname)
            trace_inputs = batch(gname, sel[0])
            exporters.add(export_onnx(eg.module, trace_inputs, eg.input_names, eg.output_names, tmp / onnx_file,
                                      opset=cfg.opset, exporter=cfg.exporter,
                                      dynamic_axes=(eg.extra or {}).get("dynamic_axes")))
            export_torchscript(eg.module, trace_inputs, tmp / ts_file)
            parity_batches = [batch(gname, s) for s in sel[1:]]
            parity[gname] = check_parity(eg.module, tmp / onnx_file, tmp / ts_file, parity_batches, eg.input_names,
                                         eg.output_names, cfg.parity_atol, cfg.parity_rtol)
            with torch.no_grad():
                outs = as_tuple(eg.module(*parity_batches[-1]))
            graph_specs[gname] = {
                "onnx": onnx_file, "torchscript": ts_file, "doc": eg.doc,
                # positional order (TorchScript calls are positional; the dicts below get sorted in JSON)
                "input_names": list(eg.input_names), "output_names": list(eg.output_names),
                "inputs": {n: _spec(t) for n, t in zip(eg.input_names, parity_batches[-1])},
                "outputs": {n: _spec(t) for n, t in zip(eg.output_names, outs)},
            }
        opset = min(onnx_opset(tmp / GRAPH_FILES["onnx"].format(graph=g)) for g in graphs)

        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "version": int(version),
            "family": fam,
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
            "versions": _versions(opset, "+".join(sorted(exporters))),
            "image_shape": [3, int(meta["image_size"]), int(meta["image_size"])],
            "value_range": [-1.0, 1.0],
            "class_names": list(meta["class_names"]),
            "factors": [{"name": f["name"], "low": float(f["low"]), "high": float(f["high"]),
                         "unit": str(f.get("unit", "")), "doc": str(f.get("doc", ""))} for f in meta.get("factors", [])],
            "graphs": graph_specs,
            "parity": parity,
            # classes that are combinations, {factor: names} (label = mixed-radix index in this order), e.g. textured
            **({"class_factors": meta["info"]["class_factors"]} if (meta.get("info") or {}).get("class_factors") else {}),
            "training": {
                "family": fam,
                "family_config": config_dict(family.config),
                "train_config": _jsonable(training.get("train_config", {})),
                "data": _jsonable(meta),
                "steps": int(training.get("steps", 0)),
                "seconds": float(training.get("seconds", 0.0)),
                "final_losses": _jsonable(training.get("final_losses", {})),
                **{k: _jsonable(v) for k, v in training.items()
                   if k not in ("train_config", "steps", "seconds", "final_losses", "family", "family_config", "data")},
            },
            "export": {"parity_batches": list(PARITY_BATCHES), "parity_atol": cfg.parity_atol,
                       "parity_rtol": cfg.parity_rtol, "parity_inputs": "test images; decoder: their encoded latents"},
        }
        if generative:
            prior = dict(extra_json.pop("prior", {"type": "standard_normal"}))
            if "sample_temperature" in extra_json:  # flow: its sampling temperature belongs to the prior
                prior.setdefault("sample_temperature", float(extra_json["sample_temperature"]))
            encoder = "encoder" in graph_specs  # a texture GAN has none: nothing to fit the latent space on
            latent_dim = int(graph_specs["encoder"]["outputs"]["latent"][1][1] if encoder
                             else graph_specs["decoder"]["inputs"]["latent"][1][1])
            manifest["latent_shape"] = [latent_dim]
            manifest["prior"] = prior
            # without an encoder there is no probe-guided sampling or knob fit either (the probe judges images
            # of the training size; a texture model draws any size)
            manifest["probe"] = probe or (f"{meta['name']}-probe" if encoder else "")
            if cfg.fit_latents and encoder:
                sample_source = getattr(family, "knobs_from_samples", None)
                wants_samples = cfg.knob_source == "samples" or (cfg.knob_source == "auto" and sample_source)
                probe_record = (_probe_record(repo, manifest["probe"], required=cfg.knob_source == "samples")
                                if wants_samples else None)
                # read-outs for the knobs that are kept: on probe-read samples when a probe takes over
                space, fit_meta = fit_space(graphs, data, n_classes, prior["type"], extra_arrays, cfg,
                                            knob_readouts=cfg.knob_readouts and probe_record is None)
                fit_meta["knobs"] = {"source": "encoded_training_images"}
                if sample_source == "latent_gmm" and space.gmm_weights is None:
                    sample_source = "prior"
                if space.gmm_kind == "anchors" and sample_source:  # knobs are calibrated where Sample draws
                    sample_source = "latent_gmm"
                if probe_record is not None:
                    space.knobs, fit_meta["knobs"] = fit_knobs_on_samples(graphs["decoder"].module, space,
                                                                          probe_record, data, cfg,
                                                                          sample_source or "prior")
                if extra_json.get("latent_branches"):  # a decoupled generator: each knob moves its own branch
                    space.knobs = restrict_knobs(space.knobs, extra_json["latent_branches"])
                    fit_meta["knobs"]["restricted_to_branches"] = True
                manifest["latent_fit"] = fit_meta
            else:
                # Prior only (no knobs / PCA / GMM), so a flow's class-conditional prior is still shipped.
                from latentserve.models.latent import LatentSpace

                space = LatentSpace(prior_type=prior["type"], latent_dim=latent_dim, n_classes=n_classes,
                                    prior_mean=extra_arrays.get("prior_mean"),
                                    prior_logstd=extra_arrays.get("prior_logstd"), periodic=prior.get("periodic", 0))
            space.save(tmp / LATENT_SPACE_FILE)
            smeta = space.meta()
            manifest["knobs"], manifest["pca"] = smeta["knobs"], smeta["pca"]
            manifest["gmm"] = smeta["gmm"] if smeta["gmm"]["components"] else {}  # {} = no GMM fitted
            manifest["latent_space"] = LATENT_SPACE_FILE
            extra_json.pop("latent_shape", None)
        # Remaining family-specific JSON fields (e.g. sample temperature) ride along under their own keys.
        for k, v in extra_json.items():
            manifest.setdefault(k, v)
        manifest["files"] = file_entries(tmp)
        validate_manifest(manifest)
        write_manifest(tmp, manifest)
        if final.exists():  # someone exported the same version meanwhile; never replace it
            raise ValidationError(f"{name} v{version} appeared at {final} during export")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return repo.load(name, version)


def export_run(run_dir_or_checkpoint: str | os.PathLike, name: str, repo_root: str | os.PathLike | None = None,
               version: int | None = None, opset: int = 17, fit_latents: bool = True, max_latent_fit: int = 12000,
               probe: str | None = None, exporter: str = "auto", seed: int = 0, data=None,
               device: str = "cpu", knob_source: str = "auto", gmm_components: int = 10,
               gmm_covariance: str = "auto", knob_readouts: bool = True, parity_atol: float = 1e-4,
               gmm_bandwidth: float = 0.5, knob_moves: str = "ridge") -> ModelRecord:
    """Export a training run (its checkpoint.pt, or a checkpoint file) as `<repo>/<name>/<version>/`.

    version None = next free version; probe = the probe model named in a generative manifest (default
    "<data>-probe"); `data` overrides rebuilding the run's dataset from its checkpoint (tests, notebooks).
    Returns the verified ModelRecord. See the module doc for what is written.
    """
    from latentserve.models.train import load_checkpoint

    cfg = ExportConfig(opset=opset, fit_latents=fit_latents, max_latent_fit=max_latent_fit, exporter=exporter,
                       seed=seed, knob_source=knob_source, gmm_components=gmm_components,
                       gmm_covariance=gmm_covariance, knob_readouts=knob_readouts, parity_atol=parity_atol,
                       gmm_bandwidth=gmm_bandwidth, knob_moves=knob_moves)
    path = Path(run_dir_or_checkpoint)
    if not path.exists():
        raise NotFoundError(f"no training run or checkpoint at {path}")
    family, ckpt = load_checkpoint(path, device=device)
    if data is None:
        from latentserve.models.data import load_from_meta

        data = load_from_meta(ckpt["data_meta"])
    training = {
        "train_config": ckpt.get("train_config", {}),
        "steps": int(ckpt.get("step", 0)),
        "seconds": round(float(ckpt.get("elapsed_seconds", 0.0)), 3),
        "final_losses": ckpt.get("last_losses", {}),
        "checkpoint": {"path": str(path.resolve()), "format": ckpt.get("format")},
    }
    return export_family(family, name, data, training, repo_root=repo_root, version=version, probe=probe,
                         config=cfg)


def rebuild_graph_modules(record: ModelRecord, device: str = "cpu") -> dict:
    """Eager torch modules of a version, rebuilt from its manifest and TorchScript files alone.

    The family is constructed from training.family_config + training.data (no checkpoint, no dataset), its
    `graphs()` modules get the weights and buffers stored in `<graph>.pt` (strict key match), and are
    returned in eval mode as {graph: nn.Module}.
    """
    import torch

    from latentserve.models.families import get_family
    from latentserve.models.train import build_family_config

    training = record.manifest["training"]
    family_cls = get_family(record.family)
    family = family_cls(build_family_config(family_cls, dict(training["family_config"])), training["data"],
                        torch.device(device))
    out = {}
    for gname, eg in family.graphs().items():
        ts = torch.jit.load(str(record.graph_path(gname, "torchscript")), map_location=device)
        # Tracing keeps the module hierarchy, so the keys match; a traced module also carries non-persistent
        # buffers (derived from the config, e.g. coordinate planes), which the rebuilt module already has.
        state = ts.state_dict()
        wanted = eg.module.state_dict().keys()
        derived = {n for n, _ in eg.module.named_buffers()} - set(wanted)
        missing, unexpected = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted) - derived)
        if missing or unexpected:
            raise IntegrityError(f"{record.name} v{record.version} {gname}.pt does not match the family config: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        eg.module.load_state_dict({k: state[k] for k in wanted}, strict=True)
        out[gname] = eg.module.eval()
    return out
