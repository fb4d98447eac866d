"""The operations' side of the gradient-based latent ops: request options -> checked jobs, results -> answers.

Called by the operations (services/core/operations.py) for Interpolate(method=GEODESIC),
Sample(source=GUIDED) and Encode(refine_steps > 0). Every option is checked here, so a bad request fails with
INVALID_ARGUMENT before any model work: 0 / unset means the server default (ServeConfig), step counts are
capped by `max_geodesic_iterations` / `max_guidance_steps` / `max_refine_steps`, float options by the
bounds in services/core/latent_ops.py. The jobs (plain dataclasses + numpy) run on the model's engine
(services/core/latent_ops.py), in-process or behind a model-server handle.

Guided sampling semantics: chains start from `guidance.start` (PRIOR default, or LATENT_GMM) at the request's
temperature, after the request's knobs; a factor target that also has a linear knob first moves the start
along that knob (the linear estimate), then the Langevin steps correct it through the probe's regressor.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from latentserve.errors import UnsupportedError, ValidationError
from latentserve.models.latent import lerp, slerp
from latentserve.services.core import latent_ops as lops
from latentserve.services.core.calls import check_method
from latentserve.services.config import ServeConfig


def require_available(config: ServeConfig, what: str) -> None:
    problem = lops.availability_problem(config)
    if problem:
        raise UnsupportedError(f"{what}: {problem}")


def _count(value: int, default: int, cap: int, where: str, cap_name: str) -> int:
    v = int(value)
    if v == 0:
        return default
    if not 1 <= v <= cap:
        raise ValidationError(f"{where}: {v} is outside [1, {cap}] (0 = server default {default}; Limits.{cap_name})")
    return v


def _number(value: float, default: float, hi: float, where: str, allow_off: bool = False) -> float:
    """0 = default; (0, hi]; with allow_off a negative value means 0 (switched off)."""
    v = float(value)
    if not math.isfinite(v):
        raise ValidationError(f"{where}: must be a finite number, got {value}")
    if v == 0:
        return default
    if v < 0:
        if allow_off:
            return 0.0
        raise ValidationError(f"{where}: must be > 0 (0 = server default {default}), got {v}")
    if v > hi:
        raise ValidationError(f"{where}: {v} is over the limit of {hi}")
    return v


# ------------------------------------------------------------------------------------------- geodesic
def geodesic_settings(config: ServeConfig, options: Any) -> dict:
    """GeodesicOptions -> checked {iterations, learning_rate, space, init}."""
    iterations = _count(options.iterations, config.latent_ops.geodesic_iterations, config.latent_ops.max_geodesic_iterations,
                        "geodesic.iterations", "max_geodesic_iterations")
    lr = _number(options.learning_rate, config.latent_ops.geodesic_learning_rate, lops.MAX_LEARNING_RATE,
                 "geodesic.learning_rate")
    space = options.space or "pixel"
    if space not in ("pixel", "probe"):
        raise ValidationError(f"geodesic.space: {space!r} is not one of pixel, probe")
    init = check_method(options.init)
    if init not in ("lerp", "slerp"):
        raise ValidationError(f"geodesic.init: {init.upper()} cannot start a path; use LERP or SLERP")
    return {"iterations": iterations, "learning_rate": lr, "space": space, "init": init}


def geodesic_job(version: int, settings: dict, ends: np.ndarray, labels: np.ndarray, end_time: float) -> lops.GeodesicJob:
    """Checked settings + ends (2, D) + frame labels (S,) -> a job starting on the lerp or slerp path."""
    steps = len(labels)
    reference = lerp(ends[0], ends[1], steps)
    path = reference if settings["init"] == "lerp" else slerp(ends[0], ends[1], steps)
    return lops.GeodesicJob(version=version, path=path, labels=labels, reference=reference, space=settings["space"],
                            iterations=settings["iterations"], learning_rate=settings["learning_rate"],
                            deadline=end_time)


def path_figures(steps: np.ndarray) -> tuple[float, float]:
    """(length, coefficient of variation) of step distances (S-1,)."""
    d = np.asarray(steps, dtype=np.float64)
    if d.size == 0:
        return 0.0, 0.0
    mean = float(d.mean())
    return float(d.sum()), float(d.std() / mean) if mean > 0 else 0.0


def path_summary(steps: np.ndarray, reference_steps: np.ndarray | None, space: str, iterations: int = 0) -> dict:
    """PathSummary fields of a path (and of the lerp path between the same ends, for geodesics)."""
    length, cv = path_figures(steps)
    out = {"path_length": length, "evenness_cv": cv, "space": space, "iterations": int(iterations)}
    if reference_steps is not None:
        out["lerp_path_length"], out["lerp_evenness_cv"] = path_figures(reference_steps)
    return out


# ------------------------------------------------------------------------------------------- guided sampling
def guidance_settings(config: ServeConfig, options: Any) -> dict:
    """GuidanceOptions -> checked {steps, step_size, class_weight, noise, factor_weight}."""
    return {
        "steps": _count(options.steps, config.latent_ops.guidance_steps, config.latent_ops.max_guidance_steps, "guidance.steps",
                        "max_guidance_steps"),
        "step_size": _number(options.step_size, config.latent_ops.guidance_step_size, lops.MAX_STEP_SIZE, "guidance.step_size"),
        "class_weight": _number(options.class_weight, config.latent_ops.guidance_class_weight, lops.MAX_CLASS_WEIGHT,
                                "guidance.class_weight", allow_off=True),
        "noise": _number(options.noise, config.latent_ops.guidance_noise, lops.MAX_NOISE, "guidance.noise", allow_off=True),
        "factor_weight": _number(options.factor_weight, config.latent_ops.guidance_factor_weight, lops.MAX_FACTOR_WEIGHT,
                                 "guidance.factor_weight"),
    }


def factor_targets(targets: dict[str, float], model_factors: list[dict], probe_factors: list[str],
                   model: str) -> tuple[dict[str, float], dict[str, float]]:
    """guidance.factor_targets -> ({name: target}, {name: range}); each must be a factor of the model that the
    probe's regressor reads, and lie in the factor's range."""
    by_name = {f["name"]: f for f in model_factors}
    out, ranges = {}, {}
    for name, value in targets.items():
        f = by_name.get(name)
        if f is None:
            raise ValidationError(f"guidance.factor_targets: {model} has no factor {name!r}; factors: "
                                  f"{', '.join(by_name) or '(none)'}")
        if name not in probe_factors:
            raise ValidationError(f"guidance.factor_targets: the probe's regressor does not read {name!r}; it reads "
                                  f"{', '.join(probe_factors) or 'nothing'}")
        lo_, hi = float(f["low"]), float(f["high"])
        if not math.isfinite(value) or not lo_ <= value <= hi:
            raise ValidationError(f"guidance.factor_targets[{name!r}]: target {value} is outside the factor range "
                                  f"[{lo_}, {hi}]")
        out[name], ranges[name] = float(value), hi - lo_
    return out, ranges


# ------------------------------------------------------------------------------------------- refinement
def refine_settings(config: ServeConfig, family: str, steps: int, options: Any) -> dict:
    """Encode refine_steps + RefineOptions -> checked {steps, learning_rate, feature_weight} (RefineJob fields)."""
    if family not in lops.REFINABLE:
        raise ValidationError(f"refine_steps: only {' and '.join(lops.REFINABLE)} encoders are refined; a {family} "
                              f"encoder is already exact")
    n = _count(steps, 0, config.latent_ops.max_refine_steps, "refine_steps", "max_refine_steps")
    lr = _number(options.learning_rate, config.latent_ops.refine_learning_rate, lops.MAX_LEARNING_RATE, "refine.learning_rate")
    fw = float(options.feature_weight)
    if not math.isfinite(fw) or not 0 <= fw <= lops.MAX_FEATURE_WEIGHT:
        raise ValidationError(f"refine.feature_weight: must be in [0, {lops.MAX_FEATURE_WEIGHT}], got {options.feature_weight}")
    return {"steps": n, "learning_rate": lr, "feature_weight": fw}
