"""The operations of latentserve (list/get models, encode, decode, sample, interpolate, edit, augment) as plain
Python over a model pool, a handle store and the serving caches. Knows no transport: requests and answers are
services/core/calls.py dataclasses, errors are latentserve.errors classes (each frontend maps them to its
status codes in one place). Every frontend is an adapter over one `LatentOperations`.

Semantics decided here (documented for clients in the proto):
- version 0 = the model's default version (newest at deploy time); a pinned version is served on demand.
  Handles carry their version: a request that pins a different version than its handles is rejected.
- Sample: seed 0 = a fresh random seed; any other seed gives the same images for the same options.
  Labels: `label`/`class_name` for all images, `class_weights` drawn with the seed, none = uniform;
  `factor_classes` by class factor on a model whose classes are combinations (core/class_factors.py).
  Knob targets must lie in the factor's range (rejected, not clamped). temperature 0 = model default.
- Edit: `factor_classes` replaces those class factors of each input's label, latent kept, before the moves.
  Knob names: factor names as listed, PCA directions as `pca_<i>` (also accepted: `pc<i>`).
- Quality gates (models/gates.py): a factor knob the gate judged unusable is refused in Sample knobs, Edit
  moves and Augment factors (naming the knob, its judged R² and the judge) unless the request sets
  `allow_weak_knobs`. A knob without a judged figure is never refused.
- Interpolate: the label switches from a's to b's at t = 0.5 (labels are discrete); step_distance is the
  RMS distance of consecutive decoded frames on the [-1, 1] scale, before 8-bit quantisation.
- Cancellation: cancelling an operation's task cancels the model call it awaits; a request still waiting in
  a batch queue is dropped before it runs.
- Augment (services/augment/): the request is checked completely before the first image is generated;
  images flow at the consumer's pace (bounded prefetch); the result cache is bypassed.
- Texture models (family sgan, models/texture_grid.py): no encoder, so Encode, image refs and the label check
  are INVALID_ARGUMENT naming the family; Sample / Decode draw any size of ModelInfo.output_sizes (the noise
  grid from each row's digest, so a latent decodes alike everywhere); Interpolate (lerp) blends the global
  codes, the phases the shorter way round, over one shared noise grid (the first end's: frame 0 = Decode(a));
  Edit changes the class with factor_classes {"texture": name} (same latent, same noise).
- Images: 8-bit output formats ask the model for uint8 images (converted once per batch in the model's worker
  thread); only raw_float32 and Interpolate's step distances use float32.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import numpy as np

from latentserve.errors import LatentServeError, ValidationError
from latentserve.models import class_check, gates, texture_grid
from latentserve.models.conditional import move_holding, set_factor_holding
from latentserve.models.latent import PCA_KNOB_PREFIX, latents_under_labels, lerp, slerp
from latentserve.services.augment import spec as augment_spec
from latentserve.services.augment import stream as augment_stream
from latentserve.services.access import Access
from latentserve.services.config import ServeConfig
from latentserve.services.core import class_factors
from latentserve.services.core import images as imgs
from latentserve.services.core import latent_ops as lops
from latentserve.services.core import latent_ops_settings as lreq
from latentserve.services.core import output as outs
from latentserve.services.core.calls import (AugmentCall, AugmentRun, DecodeCall, EditCall, EncodeCall, Encoded,
                                             Generated, InterpolateCall, Path, Ref, RefineReport, SampleCall,
                                             check_method, check_source)
from latentserve.services.core.pool import ModelPool, ServedVersion
from latentserve.services.observability import metrics
from latentserve.services.storage.factory import open_stores
from latentserve.services.storage.handles import LatentStore, make_handle, parse_handle

logger = logging.getLogger("ray.serve")
# images as the spec names them -> output formats
AUGMENT_FORMATS = {"png": imgs.PNG, "jpeg": imgs.JPEG, "uint8": imgs.RAW_UINT8, "float32": imgs.RAW_FLOAT32}
AUGMENT_PLANS_KEPT = 8


def _knob_name(name: str) -> str:
    """Accept `pc3` as well as the manifest's `pca_3`."""
    if name.startswith("pc") and not name.startswith(PCA_KNOB_PREFIX) and name[2:].isdigit():
        return f"{PCA_KNOB_PREFIX}{int(name[2:])}"
    return name


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def _rng(seed: int) -> np.random.Generator:
    """seed 0 = fresh entropy; otherwise deterministic."""
    return np.random.default_rng(int(seed) if seed else None)


class LatentOperations:
    """The operations over `pool` (models), `store` (latent handles) and `cache` (encode + result caches).
    Use from one event loop (the model runners' batchers live on it)."""

    def __init__(self, config: ServeConfig, pool: ModelPool, store: LatentStore, cache: Any) -> None:
        self.config = config
        self.access = Access.from_config(config)  # the doors' per-call token / client-certificate check
        self.pool = pool
        self.store = store
        self.cache = cache
        self.requests: dict[str, int] = {}  # calls per RPC name, counted by the frontends
        self.augment_stats = augment_stream.AugmentStats()
        self._augment_plans: dict[tuple, augment_spec.AugmentPlan] = {}  # a few recent jobs (resumes, workers)
        self._started = time.time()
        self._closed = False

    @classmethod
    def open(cls, config: ServeConfig, models: dict[str, int], remote: dict[str, Any] | None = None,
             device: str = "cpu") -> "LatentOperations":
        """Operations for `models` {name: default version} as `config` says: metrics set up for this process,
        handle store + caches opened (in-process, or Redis shared by every replica; a wrong Redis password
        fails here), then the model pool (runners in this process, or the deployment handles in `remote`)."""
        metrics.setup(config)  # before the stores and runners: they record into it too
        store, cache = open_stores(config, image_codec=(imgs.Image.to_bytes, imgs.Image.from_bytes))
        return cls(config, ModelPool.open(config, models, remote, device), store, cache)

    def close(self) -> None:
        """Stop the model runners (idempotent)."""
        if not self._closed:
            self._closed = True
            self.pool.close()

    def count(self, rpc: str) -> None:
        self.requests[rpc] = self.requests.get(rpc, 0) + 1

    # -- models -------------------------------------------------------------------------------------------
    def _info(self, sv: ServedVersion) -> dict:
        return {**sv.info, "versions": self.pool.repo.versions(sv.name), "handle_store": self.store.describe()}

    async def list_models(self, all_versions: bool = False) -> list[dict]:
        """ModelInfo fields of every served model (default version, or every version in the repository)."""
        out = []
        for name in sorted(self.pool.default_versions):
            if all_versions:
                for v in self.pool.repo.versions(name):
                    try:
                        out.append(self._info(await self.pool.version(name, v)))
                    except LatentServeError as exc:  # a broken old version must not hide the others
                        logger.warning("ListModels: skipping %s v%d: %s", name, v, exc)
            else:
                out.append(self._info(await self.pool.version(name)))
        metrics.clear_model()
        return out

    async def get_model(self, name: str, version: int = 0) -> dict:
        return self._info(await self.pool.version(name, version))

    # -- Encode / Decode ----------------------------------------------------------------------------------
    async def encode(self, call: EncodeCall) -> Encoded:
        sv = await self.pool.version(call.model, call.version)
        _require_encoder(sv, "Encode")
        self._handles_writable(call.return_handles)
        n = len(call.images)
        self._count(n, "images")
        labels = np.full((n,), -1, dtype=np.int64)
        if len(call.labels):
            if len(call.labels) != n:
                raise ValidationError(f"labels: {len(call.labels)} labels for {n} images; send one per image or none")
            for i, lab in enumerate(call.labels):
                if lab != -1:
                    imgs.check_label(lab, sv.n_classes, f"labels[{i}]")
                labels[i] = lab
        if call.sample_posterior and sv.family != "vae":
            raise ValidationError(f"sample_posterior is only for vae models; {sv.name} is a {sv.family} model")
        if call.refine_steps:
            lreq.require_available(self.config, "refine_steps")
            refine = lreq.refine_settings(self.config, sv.family, call.refine_steps, call.refine)
        x = imgs.decode_images(call.images, sv.image_shape, self.config.limits.max_image_bytes)
        z, chosen, conf = await self._encode(sv, x, labels, call.sample_posterior, call.seed)
        report = None
        if call.refine_steps:  # warm-started from the encoder's latents (after sample_posterior)
            res = await self.pool[sv.name].latent_op(lops.RefineJob(
                version=sv.version, z0=z, labels=chosen, images=x, deadline=call.deadline, **refine))
            z = res.latents
            report = RefineReport(mse_before=res.mse_before, mse_after=res.mse_after, steps=res.steps)
        handles = await self._handles_for(sv, z, chosen) if call.return_handles else []
        return Encoded(model=sv.name, version=sv.version, latents=z, labels=chosen,
                       confidence=conf if sv.reports_confidence else None, refine=report, handles=handles)

    async def decode(self, call: DecodeCall) -> Generated:
        fmt = imgs.check_format(call.format)
        if len(call.latents) and len(call.handles):
            raise ValidationError("send either latents or handles, not both")
        if len(call.handles):
            self._count(len(call.handles), "handles")
            sv = await self._model_for_handles(call.model, call.version, list(call.handles), "handles")
            out = self._output(sv, fmt, call.output_size, len(call.handles))
            images = await self._decoded_images(sv, out, handles=list(call.handles))
        else:
            sv = await self.pool.version(call.model, call.version)
            self._count(len(call.latents), "latents")
            out = self._output(sv, fmt, call.output_size, len(call.latents))
            z, labels = imgs.latents_array(call.latents, sv.dim, sv.n_classes)
            images = await self._decoded_images(sv, out, z, labels)
        return Generated(model=sv.name, version=sv.version, images=images)

    # -- Sample -------------------------------------------------------------------------------------------
    async def sample(self, call: SampleCall) -> Generated:
        sv = await self.pool.version(call.model, call.version)
        self._handles_writable(call.return_handles)
        fmt = imgs.check_format(call.format)
        source = check_source(call.source) or sv.info["default_sample_source"]
        guided = source == "guided"
        if guided:
            lreq.require_available(self.config, "source GUIDED")
            settings = lreq.guidance_settings(self.config, call.guidance)
            source = check_source(call.guidance.start) or sv.info["default_sample_source"]
            if source == "guided":
                raise ValidationError("guidance.start: chains start from PRIOR or LATENT_GMM")
        self._count(call.n, "n")
        out = self._output(sv, fmt, call.output_size, call.n)
        temperature = float(call.temperature)
        if not math.isfinite(temperature) or temperature < 0 or temperature > 10:
            raise ValidationError(f"temperature must be in [0, 10] (0 = model default), got {call.temperature}")
        if temperature == 0:
            temperature = float((sv.record.manifest.get("prior") or {}).get("sample_temperature", 1.0))
        if guided and "guided" not in sv.info["sample_sources"]:
            raise ValidationError(f"source: GUIDED needs a model with a probe; {sv.name} is a {sv.family} model "
                                  f"(sources: {', '.join(s.upper() for s in sv.info['sample_sources'])})")
        if source == "latent_gmm" and sv.space.gmm_weights is None:
            raise ValidationError(f"model {sv.name} v{sv.version} has no latent GMM; use source PRIOR")
        targets = self._knob_targets(sv, dict(call.knobs), call.allow_weak_knobs)
        hold = _hold(sv, list(call.hold), [name for name, _ in targets])
        threshold = self._class_check(sv, call.class_check, "guided" if guided else source)
        rng = _rng(call.seed)
        labels = self._sample_labels(sv, call, rng)

        def draw(rows: np.ndarray, round_: int = 0) -> np.ndarray:  # latents of labels[rows], knobs applied
            y = labels[rows]
            z = (sv.space.sample_gmm(y, rng, temperature) if source == "latent_gmm"
                 else sv.space.sample_prior(y, rng, temperature))
            for name, target in targets:
                z = (set_factor_holding(sv.space, z, name, target, hold, y) if hold
                     else sv.space.set_factor(z, name, target, y))
            return z

        confidence = None
        if threshold > 0:
            checked = await self._checked(sv, class_check.check_loop(draw, labels, threshold,
                                                                    self.config.limits.class_check_rounds))
            z, confidence = checked.latents, checked.confidence
            images = (await self._images_out(checked.images, fmt) if out.native
                      else await self._decoded_images(sv, out, z, labels, cacheable=call.seed != 0))
        else:
            z = draw(np.arange(len(labels)))
            if guided:
                z = await self._guided(sv, call, settings, z, labels)
            images = await self._decoded_images(sv, out, z, labels, cacheable=call.seed != 0)  # seed 0: random
        handles = await self._handles_for(sv, z, labels) if call.return_handles else []
        return Generated(model=sv.name, version=sv.version, images=images, latents=z, labels=labels,
                         confidence=confidence, handles=handles)

    def _class_check(self, sv: ServedVersion, value: float, source: str) -> float:
        """A request's label-check threshold for samples from `source`: 0 -> the model's default for that source
        (none for guided chains, which the probe already steers to their class), < 0 -> 0 (off), else it must
        lie in (0, 1)."""
        value = class_check.requested_threshold(value)
        if value < 0:
            return 0.0
        if value == 0:
            return sv.info["default_class_checks"].get(source, 0.0)
        _require_encoder(sv, "class_check")
        if source == "guided":
            raise ValidationError("class_check applies to PRIOR and LATENT_GMM samples; guided chains are "
                                  "steered to their class by the probe (use guidance.class_weight)")
        return value

    async def _checked(self, sv: ServedVersion, loop: Any, offload: bool = False) -> class_check.Checked:
        """Run a label check (models/class_check.py) through this model's batched decode and encode
        (`offload`: its draws off the event loop)."""
        model = self.pool[sv.name]

        async def decode(z: np.ndarray, y: np.ndarray) -> np.ndarray:
            return await model.decode(sv.version, z.astype(np.float32), y, "float32")

        async def classify(x: np.ndarray) -> np.ndarray:
            return (await model.encode(sv.version, x))["logits"]

        return await class_check.run_async(loop, decode, classify, offload)

    async def _guided(self, sv: ServedVersion, call: SampleCall, settings: dict, z: np.ndarray,
                      labels: np.ndarray) -> np.ndarray:
        """Guided Langevin chains from the start latents z (N, D) (services/core/latent_ops_settings.py)."""
        model = self.pool[sv.name]
        targets, ranges = {}, {}
        if len(call.guidance.factor_targets):
            targets, ranges = lreq.factor_targets(dict(call.guidance.factor_targets), sv.record.factors,
                                                  await model.probe_factors(sv.version), sv.name)
        for name, value in targets.items():  # the knob's estimate as the starting point
            if name in sv.space.knobs:
                z = sv.space.set_factor(z, name, value, labels)
        # chains get their own seed stream: the same request seed gives the same samples
        seed = int(call.seed) if call.seed else int(np.random.default_rng().integers(1, 2**62))
        job = lops.GuidedJob(version=sv.version, z0=z, labels=labels, factor_targets=targets, factor_ranges=ranges,
                             seed=seed, deadline=call.deadline, **settings)
        return (await model.latent_op(job)).latents

    def _sample_labels(self, sv: ServedVersion, call: SampleCall, rng: np.random.Generator) -> np.ndarray:
        n, names = call.n, sv.record.class_names
        kind, value = call.classes if call.classes is not None else (None, None)
        if call.factor_classes:
            if kind is not None:
                raise ValidationError(f"factor_classes: give the classes by factor or by {kind}, not both")
            return class_factors.sample_labels(class_factors.of_manifest(sv.record.manifest), call.factor_classes, n,
                                               rng, f"{sv.name} v{sv.version}")
        if kind == "label":
            return np.full((n,), imgs.check_label(value, sv.n_classes, "label"), dtype=np.int64)
        if kind == "class_name":
            if value not in names:
                raise ValidationError(f"class_name: unknown class {value!r}; classes: {', '.join(names)}")
            return np.full((n,), names.index(value), dtype=np.int64)
        if kind == "class_weights":
            weights = dict(value)
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValidationError(f"class_weights: unknown class(es) {', '.join(map(repr, unknown))}; classes: {', '.join(names)}")
            p = np.array([weights.get(c, 0.0) for c in names], dtype=np.float64)
            if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
                raise ValidationError("class_weights: weights must be finite, >= 0 and not all zero")
            return rng.choice(len(names), size=n, p=p / p.sum()).astype(np.int64)
        return rng.integers(0, sv.n_classes, size=n).astype(np.int64)

    def _knob_targets(self, sv: ServedVersion, knobs: dict[str, float], allow_weak: bool) -> list[tuple[str, float]]:
        """Sample knobs {factor: target} -> checked (name, target) pairs; targets must lie in the factor range,
        knobs below their quality gate need `allow_weak`."""
        out = []
        for raw_name, target in knobs.items():
            name = _knob_name(raw_name)
            if name.startswith(PCA_KNOB_PREFIX):
                raise ValidationError(
                    f"knobs: {raw_name!r} is a principal direction; Sample knobs take factor targets "
                    f"({', '.join(sv.space.knobs) or 'none'}); move principal directions with Edit"
                )
            knob = sv.space.knobs.get(name)
            if knob is None:
                raise ValidationError(f"knobs: unknown factor {raw_name!r}; factor knobs: {', '.join(sv.space.knobs) or '(none)'}")
            self._check_target(knob, target, f"knobs[{raw_name!r}]")
            self._check_gate(sv, name, allow_weak)
            out.append((name, float(target)))
        return out

    @staticmethod
    def _check_gate(sv: ServedVersion, knob: str, allow_weak: bool) -> None:
        """INVALID_ARGUMENT for a factor knob the quality gate judged unusable, unless the request opts in."""
        gates.refuse_weak_knob(sv.name, sv.version, knob, sv.info["gates"]["knobs"], allow_weak)

    @staticmethod
    def _check_target(knob: Any, target: float, where: str) -> None:
        if not math.isfinite(target) or not (knob.low <= target <= knob.high):
            unit = f" {knob.unit}" if knob.unit else ""
            raise ValidationError(f"{where}: target {target} is outside the factor range [{knob.low}, {knob.high}]{unit}")

    # -- Interpolate --------------------------------------------------------------------------------------
    async def interpolate(self, call: InterpolateCall) -> Path:
        a, b = call.a or Ref(), call.b or Ref()
        sv = await self._model_for_refs(call.model, call.version, [a, b], "ends")
        self._handles_writable(call.return_handles)
        fmt = imgs.check_format(call.format)
        if fmt == imgs.SVG:
            raise ValidationError("format: SVG is answered by Sample, Decode and Edit; Interpolate sends raster frames")
        method = check_method(call.method)
        if method not in sv.info["interpolation_methods"] and (method != "geodesic" or outs.is_texture(sv)):
            raise ValidationError(f"method: {method.upper()} is not offered by {sv.name} (a {sv.family} model); "
                                  f"methods: {', '.join(m.upper() for m in sv.info['interpolation_methods'])}")
        if method == "geodesic":
            lreq.require_available(self.config, "method GEODESIC")
        steps, cap = int(call.steps), self.config.limits.max_interpolation_steps
        if not 2 <= steps <= cap:
            raise ValidationError(f"steps: {steps} is outside [2, {cap}] (frames including both ends; Limits.max_interpolation_steps)")
        if call.a is None or call.b is None:
            raise ValidationError("a and b are required (each a latent, a handle or an image)")
        out = self._output(sv, fmt, call.output_size, steps)
        if not out.native and not outs.is_texture(sv):
            raise ValidationError(f"output_size: Interpolate draws {sv.name}'s frames at its native "
                                  f"{sv.image_shape[-1]} px only (texture models draw frames at other sizes)")
        t = np.linspace(0.0, 1.0, steps)
        if method == "geodesic":  # options are checked before the ends are encoded or fetched
            settings = lreq.geodesic_settings(self.config, call.geodesic)
        ends, end_labels = await self._refs(sv, [a, b], "ends")
        labels = np.where(t < 0.5, end_labels[0], end_labels[1]).astype(np.int64)
        if method == "geodesic":
            job = lreq.geodesic_job(sv.version, settings, ends, labels, call.deadline)
            res = await self.pool[sv.name].latent_op(job)
            path, x, diffs = res.latents, res.images, res.steps
            summary = lreq.path_summary(diffs, res.reference_steps, job.space, res.iterations)
        else:
            if outs.is_texture(sv):  # one noise grid for every frame: the first end's
                path = texture_grid.blend(ends[0], ends[1], steps, sv.space.periodic)
                seeds = np.repeat(texture_grid.row_seeds(ends[:1]), steps)
                x = await self.pool[sv.name].decode(sv.version, path, labels, "float32", size=out.size,
                                                    noise_seeds=seeds)
            else:
                path = (slerp if method == "slerp" else lerp)(ends[0], ends[1], steps)  # (S, D)
                x = await self._decode(sv, path, labels)  # (S, 3, H, W)
            diffs = np.sqrt(np.mean((x[1:].astype(np.float64) - x[:-1]) ** 2, axis=(1, 2, 3)))  # (S-1,)
            summary = lreq.path_summary(diffs, None, "pixel")
        dist = np.concatenate([[0.0], diffs])
        images = await self._images_out(x, fmt)
        handles = await self._handles_for(sv, path, labels) if call.return_handles else None
        return Path(model=sv.name, version=sv.version, t=t, images=images, latents=path, labels=labels,
                    step_distance=dist, summary=summary, handles=handles)

    # -- Edit ---------------------------------------------------------------------------------------------
    async def edit(self, call: EditCall) -> Generated:
        sv = await self._model_for_refs(call.model, call.version, list(call.inputs), "inputs")
        self._handles_writable(call.return_handles)
        fmt = imgs.check_format(call.format)
        self._count(len(call.inputs), "inputs")
        out = self._output(sv, fmt, call.output_size, len(call.inputs))
        if not len(call.moves) and not call.factor_classes:
            raise ValidationError("moves: at least one move (knob + amount or target) or factor_classes required")
        moves = []
        known = sv.space.knob_names()
        for i, mv in enumerate(call.moves):
            name = _knob_name(mv.knob)
            if name not in known:
                raise ValidationError(f"moves[{i}].knob: unknown knob {mv.knob!r}; knobs: {', '.join(known) or '(none)'}")
            self._check_gate(sv, name, call.allow_weak_knobs)
            how = mv.how
            if how is None:
                raise ValidationError(f"moves[{i}]: set amount (change) or target (value)")
            value = float(mv.value)
            if not math.isfinite(value):
                raise ValidationError(f"moves[{i}].{how}: must be a finite number, got {value}")
            if how == "target":
                if name.startswith(PCA_KNOB_PREFIX):
                    raise ValidationError(f"moves[{i}]: principal direction {mv.knob!r} takes an amount in std units, not a target")
                self._check_target(sv.space.knobs[name], value, f"moves[{i}].target")
            moves.append((name, how, value))
        hold = _hold(sv, list(call.hold), [name for name, _, _ in moves])
        factors = class_factors.of_manifest(sv.record.manifest)
        if call.factor_classes:  # checked before any input is encoded
            class_factors.relabel(factors, np.zeros(1, np.int64), call.factor_classes, f"{sv.name} v{sv.version}")
        z, labels = await self._refs(sv, list(call.inputs), "inputs")
        if call.factor_classes:
            labels = class_factors.relabel(factors, labels, call.factor_classes, f"{sv.name} v{sv.version}")
        for name, how, value in moves:
            if hold:
                z = (set_factor_holding(sv.space, z, name, value, hold, labels) if how == "target"
                     else move_holding(sv.space, z, name, value, hold))
                continue
            z = sv.space.set_factor(z, name, value, labels) if how == "target" else sv.space.move(z, name, value)
        images = await self._decoded_images(sv, out, z, labels)
        handles = await self._handles_for(sv, z, labels) if call.return_handles else []
        return Generated(model=sv.name, version=sv.version, images=images, latents=z, labels=labels, handles=handles)

    # -- Augment ------------------------------------------------------------------------------------------
    async def _augment_plan(self, spec: augment_spec.AugmentSpec, sv: ServedVersion) -> augment_spec.AugmentPlan:
        """The job's plan (O(count) to build: off the event loop), kept for a few recent jobs (resumes and
        dataset workers ask for the same job again). The cache is only touched on the event loop."""
        key = (sv.name, sv.version, spec.digest())
        plan = self._augment_plans.pop(key, None)
        if plan is None:
            plan = await asyncio.get_running_loop().run_in_executor(
                None, augment_spec.AugmentPlan, spec, sv.record.class_names)
        self._augment_plans[key] = plan  # most recent last
        while len(self._augment_plans) > AUGMENT_PLANS_KEPT:
            self._augment_plans.pop(next(iter(self._augment_plans)))
        return plan

    @staticmethod
    def augment_facts(sv: ServedVersion) -> augment_spec.ModelFacts:
        return augment_spec.ModelFacts(
            name=sv.name, version=sv.version, class_names=tuple(sv.record.class_names),
            knobs={k.name: (k.low, k.high, k.unit) for k in sv.space.knobs.values()},
            sources=tuple(s for s in sv.info["sample_sources"] if s in augment_spec.SOURCES),
            judged_knobs=sv.info["gates"]["knobs"])

    async def augment(self, call: AugmentCall) -> AugmentRun:
        """Check the job completely, then return its run: `batches` generates the requested shards in order,
        only as fast as they are consumed (services/augment/stream.py); close it to stop."""
        spec = call.spec
        sv = await self.pool.version(spec.model, spec.version)
        augment_spec.check_spec(spec, self.augment_facts(sv), allow_weak_knobs=call.allow_weak_knobs)
        shards = augment_spec.check_shards(list(call.shards), spec.num_shards)
        fmt = AUGMENT_FORMATS[spec.format]
        temperature = spec.temperature or float((sv.record.manifest.get("prior") or {}).get("sample_temperature", 1.0))
        threshold = self._class_check(sv, spec.class_check, spec.source)
        plan = await self._augment_plan(spec, sv)

        async def render(z: np.ndarray, labels: np.ndarray) -> list:
            return await self._images_out(await self._decode(sv, z, labels, fmt), fmt)

        async def store(z: np.ndarray, labels: np.ndarray) -> list[str]:
            return await self._handles_for(sv, z, labels)

        async def check(draw: Any, labels: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
            loop = class_check.check_loop(draw, labels, threshold, self.config.limits.class_check_rounds)
            c = await self._checked(sv, loop, offload=True)  # per-image draws: cheap per batch
            return c.latents, await self._images_out(c.images, fmt), c.confidence

        batch_size = max(1, min(spec.shard_size, self.config.batching.max_batch_size))
        batches = augment_stream.generate(spec, plan, shards, sv.space, temperature, render, batch_size,
                                          store if spec.handles else None, self.augment_stats,
                                          check=check if threshold > 0 else None)
        return AugmentRun(model=sv.name, version=sv.version, factor_names=[f.name for f in spec.factors],
                          num_shards=spec.num_shards, count=spec.count, batches=batches)

    # -- state --------------------------------------------------------------------------------------------
    async def stats(self) -> dict:
        """Request counts, handle store size, caches, augment jobs and every model's batch statistics."""
        return {"uptime_s": round(time.time() - self._started, 3), "requests": dict(self.requests),
                "handles": self.store.stats(), "cache": self.cache.stats(), "frontend": self.config.frontend.grpc_frontend,
                "models": await self.pool.stats(), "augment": self.augment_stats.snapshot()}

    # -- plumbing -----------------------------------------------------------------------------------------
    def _count(self, n: int, what: str) -> None:
        cap = self.config.limits.max_images_per_request
        if n < 1:
            raise ValidationError(f"{what}: at least 1 required, got {n}")
        if n > cap:
            raise ValidationError(f"{what}: {n} is over the limit of {cap} per request (Limits.max_images_per_request)")

    def _handles_writable(self, wanted: bool) -> None:
        """A call that will store handles fails at once, before its work, while the store is known down."""
        if wanted:
            self.store.check_available("store handles")

    async def _handles_for(self, sv: ServedVersion, z: np.ndarray, labels: np.ndarray) -> list[str]:
        hs = [make_handle(sv.name, sv.version, z[i], int(labels[i])) for i in range(len(z))]
        await self.store.aput_many([(h, z[i], int(labels[i])) for i, h in enumerate(hs)])
        return hs

    async def _model_for_handles(self, name: str, version: int, handles: list[str], where: str) -> ServedVersion:
        """Handles fix the model version: all must agree with each other and with a pinned version."""
        refs = [parse_handle(h) for h in handles]
        for i, r in enumerate(refs):
            if r.model != name:
                raise ValidationError(f"{where}[{i}]: handle belongs to model {r.model!r}, the request is for {name!r}")
        versions = sorted({r.version for r in refs})
        if len(versions) > 1:
            raise ValidationError(f"{where}: handles come from different versions {versions}; use one version per request")
        if version and versions[0] != version:
            raise ValidationError(f"{where}: handles belong to version {versions[0]}, the request pins version {version}")
        return await self.pool.version(name, versions[0])

    async def _get_handles(self, sv: ServedVersion, handles: list[str]) -> tuple[np.ndarray, np.ndarray]:
        items = await self.store.aget_many(list(handles))
        z = np.stack([it[0] for it in items]).astype(np.float32, copy=False) if items else np.zeros((0, sv.dim), np.float32)
        labels = np.array([it[1] for it in items], dtype=np.int64)
        if z.shape[1] != sv.dim:
            raise ValidationError(f"handles hold latents of size {z.shape[1]}, model {sv.name} v{sv.version} needs {sv.dim}")
        return z, labels

    async def _encode(self, sv: ServedVersion, x: np.ndarray, labels: np.ndarray | None = None,
                      sample_posterior: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images (N,3,H,W) -> (latents (N,D), labels (N,), confidence of each label (N,)).
        `labels` (N,) with -1 = predict."""
        _require_encoder(sv, "images")
        # Encode cache (services/storage/cache.py): the encoder runs only for images it has not seen.
        model = self.pool[sv.name]
        out = await self.cache.encoder_outputs(sv.name, sv.version, x, lambda xs: model.encode(sv.version, xs))
        z = np.asarray(out["latent"], dtype=np.float32)
        if sample_posterior:
            if "logvar" not in out:
                raise ValidationError(f"sample_posterior is only for vae models; {sv.name} is a {sv.family} model")
            eps = _rng(seed).standard_normal(z.shape, dtype=np.float32)
            z = (z + np.exp(0.5 * np.asarray(out["logvar"], dtype=np.float32)) * eps).astype(np.float32)
        probs = _softmax(np.asarray(out["logits"]))  # (N, C)
        chosen = probs.argmax(axis=1).astype(np.int64)
        if labels is not None:
            chosen = np.where(labels >= 0, labels, chosen)
            if "class_latents" in out:  # a class-conditional flow: z under the requested class's map
                z = latents_under_labels(out, chosen).astype(np.float32)
        conf = probs[np.arange(len(chosen)), chosen].astype(np.float32)
        return z, chosen, conf

    async def _decode(self, sv: ServedVersion, z: np.ndarray, labels: np.ndarray, fmt: str = imgs.RAW_FLOAT32) -> np.ndarray:
        """latents (N, D) + labels (N,) -> float32 (N, 3, H, W) for raw_float32, else uint8 (N, H, W, 3)."""
        out = "float32" if fmt == imgs.RAW_FLOAT32 else "uint8"
        return await self.pool[sv.name].decode(sv.version, z, labels, out)

    def _output(self, sv: ServedVersion, fmt: str, output_size: int, n: int) -> outs.Output:
        return outs.resolve(sv, fmt, output_size, n, self.config.limits.max_output_pixels)

    async def _decoded_images(self, sv: ServedVersion, out: outs.Output, z: np.ndarray | None = None,
                              labels: np.ndarray | None = None, handles: list[str] | None = None,
                              cacheable: bool = True) -> list[imgs.Image]:
        """Output images of latents z (N, D) + labels (N,), or of handles, through the result cache
        (services/storage/cache.py): only the rows it misses are fetched (handles), decoded and encoded."""
        async def run(rows: list[int] | None) -> list:
            if handles is not None:
                zz, ll = await self._get_handles(sv, handles if rows is None else [handles[i] for i in rows])
            else:
                zz, ll = (z, labels) if rows is None else (z[rows], labels[rows])
            if not out.native:
                return await self._drawn(sv, zz, ll, out)
            return await self._images_out(await self._decode(sv, zz, ll, out.fmt), out.fmt)

        key = out.cache_format
        if handles is not None:  # a handle's digest is its latent's digest: no fetch needed for a hit
            digests = [h.rsplit(":", 1)[1] for h in handles] if self.cache.result_enabled else None
            return await self.cache.images(sv.name, sv.version, key, run, digests=digests, cacheable=cacheable)
        return await self.cache.images(sv.name, sv.version, key, run, latents=(z, labels), cacheable=cacheable)

    async def _drawn(self, sv: ServedVersion, z: np.ndarray, labels: np.ndarray, out: outs.Output) -> list[imgs.Image]:
        """A texture model's images at `out.size` (its own decoder, batched by size), or a vector model's at
        `out.size` or as SVG (outs.resolve admits no other model here): its decoder's layers, drawn off the event
        loop (services/core/output.py)."""
        if outs.is_texture(sv):
            kind = "float32" if out.fmt == imgs.RAW_FLOAT32 else "uint8"
            x = await self.pool[sv.name].decode(sv.version, z, labels, kind, size=out.size)
            return await self._images_out(x, out.fmt)
        flat = await self.pool[sv.name].decode(sv.version, z, labels, "vector")
        return await asyncio.get_running_loop().run_in_executor(None, outs.draw, sv, flat, out)

    async def _images_out(self, x: np.ndarray, fmt: str) -> list[imgs.Image]:
        # Big PNG/JPEG batches are encoded off the event loop (PIL releases the GIL while compressing).
        if fmt in (imgs.PNG, imgs.JPEG) and len(x) >= 16:
            return await asyncio.get_running_loop().run_in_executor(None, imgs.encode_images, x, fmt)
        return imgs.encode_images(x, fmt)

    async def _model_for_refs(self, name: str, version: int, refs: list[Ref], where: str) -> ServedVersion:
        """Like `pool.version`, but an unpinned request whose refs include handles uses the handles' version."""
        handles = [r.handle for r in refs if r.kind == "handle"]
        if handles:
            return await self._model_for_handles(name, version, handles, where)
        return await self.pool.version(name, version)

    async def _refs(self, sv: ServedVersion, refs: list[Ref], where: str) -> tuple[np.ndarray, np.ndarray]:
        """Refs -> (latents (N, D), labels (N,)); image refs are encoded together in one call."""
        n = len(refs)
        z = np.empty((n, sv.dim), dtype=np.float32)
        labels = np.empty((n,), dtype=np.int64)
        image_idx, images, image_labels = [], [], []
        handle_idx, handles = [], []
        for i, ref in enumerate(refs):
            kind = ref.kind
            given = int(ref.label) if ref.label is not None else -1
            if given >= 0:
                imgs.check_label(given, sv.n_classes, f"{where}[{i}].label")
            elif given < -1:
                raise ValidationError(f"{where}[{i}].label: {given} is not a class; use -1 (or leave it unset) to predict it")
            if kind == "latent":
                z[i] = imgs.latent_values(ref.latent, sv.dim, f"{where}[{i}].latent")
                labels[i] = given if given >= 0 else imgs.check_label(ref.latent.label, sv.n_classes, f"{where}[{i}].latent.label")
            elif kind == "handle":
                ref_h = parse_handle(ref.handle)
                if ref_h.model != sv.name or ref_h.version != sv.version:
                    raise ValidationError(
                        f"{where}[{i}].handle: belongs to {ref_h.model} v{ref_h.version}, the request uses {sv.name} v{sv.version}"
                    )
                handle_idx.append(i)
                handles.append((ref.handle, given))
            elif kind == "image":
                _require_encoder(sv, f"{where}[{i}].image")
                image_idx.append(i)
                images.append(imgs.decode_image(ref.image, sv.image_shape, self.config.limits.max_image_bytes, f"{where}[{i}].image"))
                image_labels.append(given)
            else:
                raise ValidationError(f"{where}[{i}]: empty LatentRef; set latent, handle or image")
        if handles:
            got = await self.store.aget_many([h for h, _ in handles])
            for i, (_, given), (vec, lab) in zip(handle_idx, handles, got):
                z[i] = vec
                labels[i] = given if given >= 0 else lab
        if images:
            ez, elab, _ = await self._encode(sv, np.stack(images), np.array(image_labels, dtype=np.int64))
            z[image_idx] = ez
            labels[image_idx] = elab
        return z, labels


def _require_encoder(sv: Any, what: str) -> None:
    """INVALID_ARGUMENT naming `what` and the model's family when the model has no encoder (a texture model)."""
    if "encoder" not in sv.record.manifest["graphs"]:
        raise ValidationError(f"{what}: model {sv.name} is a {sv.family} model (textures of any size) and has no "
                              f"encoder; it cannot encode images or check labels (use Sample, Decode, Interpolate "
                              f"and Edit on latents or handles)")


def _hold(sv: Any, hold: list[str], moved: list[str]) -> list[str]:
    """The request's `hold` factors, checked: factor knobs of the model, none of them moved, every move a factor
    knob (a principal direction has no read-out to hold against). Moves with `hold` go along conditional
    directions (models/conditional.py), without the anchor-mixture projection of LatentSpace.set_factor."""
    if not hold:
        return []
    for name in hold:
        if name not in sv.space.knobs:
            raise ValidationError(f"hold: unknown factor {name!r}; factors: {', '.join(sv.space.knobs) or '(none)'}")
        if name in moved:
            raise ValidationError(f"hold: {name!r} is also moved; a factor is either moved or held")
    for name in moved:
        if name not in sv.space.knobs:
            raise ValidationError(f"hold: applies to factor knobs; {name!r} is a principal direction")
    return list(dict.fromkeys(hold))
