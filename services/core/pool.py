"""The model pool: which models and versions this server serves, what it knows about each (`ServedVersion`:
manifest facts, latent space, ModelInfo fields) and how a model is called (`ModelHandle`: encode, decode,
latent ops), in this process (`ModelRunner`) or behind a Ray Serve deployment handle.

Versions: the version the app was built with is a model's default (version 0 in a request); any other
version in the repository is loaded on demand, once. Only generative models (gan, vae, flow, ae, vector, sgan) are served; a
probe is the evaluator / guide of the others and is never served.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import numpy as np

from latentserve.errors import LatentServeError, NotFoundError, ValidationError
from latentserve.models import class_check, gates, texture_grid
from latentserve.models.latent import LatentSpace, default_sample_source
from latentserve.models.manifest import GENERATIVE, read_manifest
from latentserve.models.repository import ModelRecord, Repository
from latentserve.services.config import ServeConfig
from latentserve.services.core import class_factors
from latentserve.services.core import latent_ops as lops
from latentserve.services.core import output as outs
from latentserve.services.core.model_server import ModelRunner
from latentserve.services.observability import metrics


class ModelHandle(Protocol):
    """How the operations call one model (every version of it): ModelRunner's API, awaited."""

    async def encode(self, version: int, images: np.ndarray) -> dict[str, np.ndarray]: ...

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray, out: str = "float32",
                     size: int = 0, noise_seeds: np.ndarray | None = None) -> np.ndarray: ...

    async def stats(self) -> dict: ...

    async def latent_op(self, job: Any) -> Any: ...

    async def probe_factors(self, version: int) -> list[str]: ...

    def close(self) -> None: ...


class RemoteModel:
    """The ModelRunner API over a Serve deployment handle (a ModelServer replica)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def encode(self, version: int, images: np.ndarray) -> dict[str, np.ndarray]:
        return await self.handle.encode.remote(version, images)

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray, out: str = "float32",
                     size: int = 0, noise_seeds: np.ndarray | None = None) -> np.ndarray:
        return await self.handle.decode.remote(version, latents, labels, out, size, noise_seeds)

    async def stats(self) -> dict:
        return await self.handle.stats.remote()

    async def latent_op(self, job: Any) -> Any:
        # cancelling this await cancels the request on the model server, whose engine drops the job
        return await self.handle.latent_op.remote(job)

    async def probe_factors(self, version: int) -> list[str]:
        return await self.handle.probe_factors.remote(version)

    def close(self) -> None:
        pass


class LocalModel:
    """The ModelRunner API in this process (native frontend, co-located serve frontend)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    async def encode(self, version: int, images: np.ndarray) -> dict[str, np.ndarray]:
        return await self.runner.encode(version, images)

    async def decode(self, version: int, latents: np.ndarray, labels: np.ndarray, out: str = "float32",
                     size: int = 0, noise_seeds: np.ndarray | None = None) -> np.ndarray:
        return await self.runner.decode(version, latents, labels, out, size, noise_seeds)

    async def stats(self) -> dict:
        return self.runner.stats()

    async def latent_op(self, job: Any) -> Any:
        return await self.runner.latent_op(job)

    async def probe_factors(self, version: int) -> list[str]:
        return await self.runner.probe_factors(version)

    def close(self) -> None:
        self.runner.close()


@dataclass
class ServedVersion:
    """What the operations know about one model version: manifest facts and its latent space."""

    record: ModelRecord
    space: LatentSpace
    info: dict  # ModelInfo fields (without `versions`, which changes as versions appear)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def family(self) -> str:
        return self.record.family

    @property
    def dim(self) -> int:
        return int(self.record.latent_dim)

    @property
    def n_classes(self) -> int:
        return len(self.record.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.record.image_shape

    @property
    def reports_confidence(self) -> bool:
        return class_head_trusted(self.family, self.record.manifest.get("metrics") or {})


def _flatten_metrics(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten_metrics(v, f"{prefix}{k}." if prefix or k else ""))
    elif isinstance(d, bool):
        out[prefix.rstrip(".")] = float(d)
    elif isinstance(d, (int, float)) and math.isfinite(float(d)):
        out[prefix.rstrip(".")] = float(d)
    return out


def model_info(record: ModelRecord, config: ServeConfig) -> dict:
    """ModelInfo fields of one version, from its manifest."""
    m = record.manifest
    gmm = m.get("gmm") or {}
    prior = (m.get("prior") or {}).get("type", "")
    default_source = default_sample_source(record.family, bool(gmm.get("components")), gmm.get("kind", "em"))
    checks = class_check.default_thresholds(m, default_source)  # per sample source
    # gradient latent ops: torch installed and enabled, and a model whose decoder takes (latent, label) only (a
    # texture model's also takes its noise grid)
    texture = record.family == texture_grid.FAMILY
    grad_ops = not lops.availability_problem(config) and not texture
    knobs = [dict(k) for k in m.get("knobs") or []]
    gated = gates.compute_gates(record.family, m.get("metrics") or {}, gates.factor_knobs(m))
    for k in knobs:  # the judged figure of each factor knob (None: not judged, always usable)
        judged = gated["knobs"].get(k["name"]) or {}
        k["r2_judged"], k["usable"] = judged.get("r2"), judged.get("usable", True)
    return {
        "name": record.name,
        "version": record.version,
        "family": record.family,
        "image_shape": list(m["image_shape"]),
        "latent_shape": list(m.get("latent_shape") or []),
        "class_names": list(m["class_names"]),
        "factors": list(m["factors"]),
        "knobs": knobs,
        "gates": gated,
        "sample_sources": ["prior"] + (["latent_gmm"] if gmm.get("components") else [])
                          + (["guided"] if grad_ops and m.get("probe") else []),
        "default_sample_source": default_source,
        "default_class_checks": checks,
        "default_class_check": checks.get(default_source, 0.0),
        # a texture latent's phases are angles: Interpolate blends them the shorter way round (texture_grid.blend)
        "interpolation_methods": (["lerp"] if texture else ["lerp", "slerp"]) + (["geodesic"] if grad_ops else []),
        "output_sizes": outs.sizes(record.family, int(m["image_shape"][-1]), m),
        "metrics": _flatten_metrics(m.get("metrics") or {}),
        "backend": config.served.backend,
        "prior": prior,
        "limits": {"max_images_per_request": config.limits.max_images_per_request,
                   "max_interpolation_steps": config.limits.max_interpolation_steps,
                   "max_geodesic_iterations": config.latent_ops.max_geodesic_iterations if grad_ops else 0,
                   "max_guidance_steps": config.latent_ops.max_guidance_steps if grad_ops and m.get("probe") else 0,
                   "max_refine_steps": (config.latent_ops.max_refine_steps
                                        if grad_ops and record.family in lops.REFINABLE else 0),
                   "max_output_pixels": config.limits.max_output_pixels},
        "class_factors": [{"name": name, "classes": classes}
                          for name, classes in class_factors.of_manifest(m).items()],
    }


def class_head_trusted(family: str, metrics: dict) -> bool:
    """Whether Encode reports the class head's probability of each label (`label_confidence`; else none): for
    a head that evaluation found to classify at least class_check.MIN_HEAD_ACCURACY of the real test images
    (manifest metrics `encoder_accuracy`) or, not evaluated, a gan/vae head trained as a classifier. A flow's
    class posterior (Bayes rule over its class Gaussians) is near 1 for nearly every image, right or wrong,
    so it is reported only where evaluation found it accurate."""
    accuracy = metrics.get("encoder_accuracy")
    if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool):
        return accuracy >= class_check.MIN_HEAD_ACCURACY
    return family != "flow"


def not_served_error(repo: Repository, name: str, served: Iterable[str]) -> NotFoundError:
    """NOT_FOUND for a model this server does not serve, saying why when the repository has it: a probe is the
    evaluator / guide of the generative models (evaluation scores samples with it, guided sampling steers by
    it) and is never served; any other model was left out by the `models` setting."""
    listed = ", ".join(sorted(served))
    family = None
    if name in repo.names():  # only a name the repository lists: a request never chooses a path
        try:
            family = read_manifest(repo.resolve(name)[1], validate=False).get("family")
        except (LatentServeError, OSError):
            pass
    if family == "probe":
        return NotFoundError(f"model {name!r} is not served: it is a probe, the evaluator / guide model that scores "
                             f"the generative models and steers guided sampling; served models: {listed}")
    if family is not None:
        return NotFoundError(f"model {name!r} ({family}) is in the repository but not served here; served models: "
                             f"{listed}")
    return NotFoundError(f"unknown model {name!r}; served models: {listed}")


class ModelPool:
    """The served models: `default_versions` {name: default version}, `handles` {name: ModelHandle}, and the
    ServedVersion of every version used so far (`version()` loads one on first use)."""

    def __init__(self, config: ServeConfig, repo: Repository, default_versions: dict[str, int],
                 handles: dict[str, ModelHandle]) -> None:
        self.config = config
        self.repo = repo
        self.default_versions = {name: int(v) for name, v in default_versions.items()}
        self.handles = handles
        self._versions: dict[tuple[str, int], ServedVersion] = {}
        self._load_locks: dict[tuple[str, int], asyncio.Lock] = {}
        for name, v in self.default_versions.items():
            self._versions[(name, v)] = self._load_version(name, v)

    @classmethod
    def open(cls, config: ServeConfig, models: dict[str, int], remote: dict[str, Any] | None = None,
             device: str = "cpu") -> "ModelPool":
        """The pool of `models` {name: default version}: runners in this process (on `device`), or the Serve
        deployment handles in `remote` {name: handle}. Manifests are read first: a model that cannot be
        served fails before any session loads."""
        repo = Repository(config.repository_path())
        pool = cls(config, repo, models, {})
        if remote is None:
            pool.handles = {name: LocalModel(ModelRunner(config, name, v, device=device))
                            for name, v in pool.default_versions.items()}
        else:
            missing = set(pool.default_versions) - set(remote)
            if missing:
                raise ValidationError(f"ingress: no model server handle for {', '.join(sorted(missing))}")
            pool.handles = {name: RemoteModel(remote[name]) for name in pool.default_versions}
        return pool

    def __getitem__(self, name: str) -> ModelHandle:
        return self.handles[name]

    def _load_version(self, name: str, version: int) -> ServedVersion:
        record = self.repo.load(name, version, verify=self.config.served.verify_checksums)
        if record.family not in GENERATIVE:
            raise ValidationError(f"model {name!r} is a {record.family} model; only generative models "
                                  f"({', '.join(GENERATIVE)}) are served")
        space = self.repo.latent_space(record)
        return ServedVersion(record, space, model_info(record, self.config))

    async def version(self, name: str, version: int = 0) -> ServedVersion:
        """The served version of `name` (0 = default); NOT_FOUND for unknown models and versions."""
        if not name:
            raise ValidationError(f"model: required; served models: {', '.join(sorted(self.default_versions))}")
        if name not in self.default_versions:
            raise not_served_error(self.repo, name, self.default_versions)
        if version < 0:
            raise ValidationError(f"version must be >= 0 (0 = default), got {version}")
        key = (name, int(version) or self.default_versions[name])
        sv = self._versions.get(key)
        if sv is not None:
            metrics.note_model(name, key[1])
            return sv
        lock = self._load_locks.setdefault(key, asyncio.Lock())
        async with lock:
            sv = self._versions.get(key)
            if sv is None:
                versions = self.repo.versions(name)
                if key[1] not in versions:
                    raise NotFoundError(f"model {name!r} has no version {key[1]}; versions: {', '.join(map(str, versions))}")
                sv = await asyncio.get_running_loop().run_in_executor(None, self._load_version, *key)
                self._versions[key] = sv
        metrics.note_model(name, key[1])
        return sv

    async def stats(self) -> dict:
        out = {}
        for name, m in self.handles.items():
            try:
                out[name] = await m.stats()
            except Exception as exc:  # noqa: BLE001 - stats must not fail because one model is down
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    def close(self) -> None:
        for m in self.handles.values():
            m.close()
