"""The latent-ops report: what the gradient-based latent ops buy on exported models, figures side by side.

`latent_report(repo, names, settings)` measures, per generative model, with the same math the server runs
(models/latent_ops.py on the TorchScript artefacts, the settings defaulting to the server's):
- geodesic vs lerp: `pairs` random same-class prior pairs, `steps`-frame paths; total path length and
  evenness (CV of step lengths) of the geodesic and of lerp, in pixel space and (with a probe) probe space;
- guided vs prior sampling: the probe's class accuracy on `n_per_class` samples per class from the prior and
  from guided chains started at the same latents (same seeds), plus a control without the class term;
- guided factor targets vs linear knobs: for every factor with a probe regressor, targets spread over its
  range; MAE of the probe's reading vs the target for the knob (LatentSpace.set_factor) and for guided
  chains started at the knob's latent (as the server does), with the server's defaults and without noise;
- refinement (gan, vae): reconstruction MSE / PSNR of `refine_images` test images, encoder alone (ONNX, as
  served) vs refined.
Caveat printed with the figures: the probe that guides is also the ruler, so guided figures measure how well
the ops follow the probe; the probe's own test accuracy / R2 (manifest metrics) say how far to trust it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from latentserve.errors import ValidationError
from latentserve.models import latent_ops as lo
from latentserve.models.latent import lerp
from latentserve.models.repository import Repository


@dataclass
class ReportSettings:
    pairs: int = 20
    steps: int = 8
    geodesic_iterations: int = 100
    geodesic_learning_rate: float = 0.05
    n_per_class: int = 50
    n_factor: int = 60
    guidance_steps: int = 50
    guidance_step_size: float = 0.02
    guidance_class_weight: float = 10.0
    guidance_noise: float = 1.0
    guidance_factor_weight: float = 200.0
    refine_images: int = 64
    refine_steps: int = 100
    refine_learning_rate: float = 0.05
    seed: int = 0


def _decode_probe(graphs: lo.Graphs, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes (N,), factor readings (N, K)) of decode(z, y)."""
    with torch.no_grad():
        logits, factors, _ = graphs.probe_outputs(graphs.decode(torch.as_tensor(z), torch.as_tensor(y)))
    return logits.argmax(1).numpy(), factors.numpy()


def _temperature(record: Any) -> float:
    return float((record.manifest.get("prior") or {}).get("sample_temperature", 1.0))


# ------------------------------------------------------------------------------------------- geodesic
def geodesic_figures(graphs: lo.Graphs, space: Any, n_classes: int, temperature: float, spaces: list[str],
                     s: ReportSettings, rng: np.random.Generator) -> dict:
    labels_pair = rng.integers(0, n_classes, size=s.pairs)
    out = {}
    for metric in spaces:
        lengths = {"lerp": [], "geodesic": []}
        cvs = {"lerp": [], "geodesic": []}
        states, frame_labels = [], []
        for i in range(s.pairs):
            y = np.full(2, labels_pair[i], np.int64)
            a, b = space.sample_prior(y, rng, temperature)
            path, fl = lerp(a, b, s.steps), np.full(s.steps, labels_pair[i], np.int64)
            _, _, d = lo.path_result(graphs, path, fl, metric)
            length, cv = lo.path_figures(d)
            lengths["lerp"].append(length)
            cvs["lerp"].append(cv)
            states.append(lo.init_path(graphs, path, fl, metric, s.geodesic_learning_rate, s.geodesic_iterations))
            frame_labels.append(fl)
        lo.run_to_end(lo.geodesic_step, graphs, states)  # all pairs share each pass, as concurrent requests do
        for st in states:
            length, cv = lo.path_figures(lo.path_result(graphs, st)[2])
            lengths["geodesic"].append(length)
            cvs["geodesic"].append(cv)
        L, C = {k: np.array(v) for k, v in lengths.items()}, {k: np.array(v) for k, v in cvs.items()}
        out[metric] = {
            "pairs": s.pairs,
            "length_lerp": float(L["lerp"].mean()), "length_geodesic": float(L["geodesic"].mean()),
            "length_ratio": float(np.mean(L["geodesic"] / L["lerp"])),
            "shorter_fraction": float(np.mean(L["geodesic"] < L["lerp"])),
            "cv_lerp": float(C["lerp"].mean()), "cv_geodesic": float(C["geodesic"].mean()),
            "more_even_fraction": float(np.mean(C["geodesic"] < C["lerp"])),
        }
    return out


# ------------------------------------------------------------------------------------------- guided
def _chains(graphs: lo.Graphs, z0: np.ndarray, y: np.ndarray, s: ReportSettings, class_weight: float,
            noise: float, seed: int, targets: list[dict] | None = None, ranges: dict | None = None) -> np.ndarray:
    """Guided chains for rows z0 (N, D): one state per row when each row has its own factor target."""
    if targets is None:
        states = [lo.init_chains(graphs, z0, y, s.guidance_steps, s.guidance_step_size, class_weight, noise,
                                 seed=seed)]
    else:
        states = [lo.init_chains(graphs, z0[i:i + 1], y[i:i + 1], s.guidance_steps, s.guidance_step_size,
                                 class_weight, noise, targets[i], ranges, s.guidance_factor_weight, seed + i)
                  for i in range(len(z0))]
    lo.run_to_end(lo.guided_step, graphs, states)
    return np.concatenate([st.z.numpy() for st in states])


def guided_class_figures(graphs: lo.Graphs, space: Any, n_classes: int, temperature: float, s: ReportSettings,
                         rng: np.random.Generator) -> dict:
    y = np.repeat(np.arange(n_classes, dtype=np.int64), s.n_per_class)
    z0 = space.sample_prior(y, rng, temperature)
    acc = lambda z: float((_decode_probe(graphs, z, y)[0] == y).mean())  # noqa: E731
    return {
        "n": int(len(y)),
        "accuracy_prior": acc(z0),
        "accuracy_guided": acc(_chains(graphs, z0, y, s, s.guidance_class_weight, s.guidance_noise, s.seed + 1)),
        "accuracy_langevin_no_class_term": acc(_chains(graphs, z0, y, s, 0.0, s.guidance_noise, s.seed + 1)),
        "class_weight": s.guidance_class_weight, "steps": s.guidance_steps,
    }


def guided_factor_figures(graphs: lo.Graphs, space: Any, record: Any, temperature: float, s: ReportSettings,
                          rng: np.random.Generator) -> dict:
    n_classes = len(record.class_names)
    out = {}
    for f in record.factors:
        name = f["name"]
        if name not in graphs.factor_names:
            continue
        k = graphs.factor_names.index(name)
        y = rng.integers(0, n_classes, size=s.n_factor).astype(np.int64)
        t = rng.permutation(np.linspace(f["low"], f["high"], s.n_factor)).astype(np.float32)
        z0 = space.sample_prior(y, rng, temperature)
        has_knob = name in space.knobs
        z_knob = space.set_factor(z0, name, t, y) if has_knob else z0
        mae = lambda z: float(np.mean(np.abs(_decode_probe(graphs, z, y)[1][:, k] - t)))  # noqa: E731
        targets = [{name: float(v)} for v in t]
        ranges = {name: float(f["high"]) - float(f["low"])}
        row = {"n": s.n_factor, "unit": f.get("unit", ""), "range": [f["low"], f["high"]],
               "mae_prior": mae(z0), "mae_knob": mae(z_knob) if has_knob else None,
               "mae_guided": mae(_chains(graphs, z_knob, y, s, s.guidance_class_weight, s.guidance_noise,
                                         s.seed + 2, targets, ranges)),
               "mae_guided_no_noise": mae(_chains(graphs, z_knob, y, s, s.guidance_class_weight, 0.0, s.seed + 2,
                                                  targets, ranges))}
        out[name] = row
    return out


# ------------------------------------------------------------------------------------------- refinement
def refine_figures(record: Any, graphs: lo.Graphs, s: ReportSettings, data: Any = None) -> dict:
    from latentserve.models.evaluate import OnnxGraph, _images, load_test_data

    split = (data if data is not None else load_test_data(record)).test
    n = min(s.refine_images, len(split))
    if n == 0:
        raise ValidationError(f"{record.name}: the test split is empty")
    x = _images(split)[:n].astype(np.float32)
    y = split.labels[:n].astype(np.int64)
    z = OnnxGraph(record, "encoder")(image=x)["latent"]  # what Encode serves
    state = lo.init_refine(graphs, z, y, x, s.refine_steps, s.refine_learning_rate)
    lo.run_to_end(lo.refine_step, graphs, [state])
    before, after = state.mse_before.numpy().astype(np.float64), state.best_mse.numpy().astype(np.float64)
    psnr = lambda mse: float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-10))))  # noqa: E731  [-1,1] -> [0,1]
    return {"n": n, "steps": s.refine_steps, "mse_before": float(before.mean()), "mse_after": float(after.mean()),
            "psnr_before_db": psnr(before), "psnr_after_db": psnr(after),
            "improved_fraction": float(np.mean(after < before))}


# ------------------------------------------------------------------------------------------- report
def model_report(repo: Repository, name: str, s: ReportSettings, version: int | None = None, data: Any = None) -> dict:
    record = repo.load(name, version)
    if record.family not in ("gan", "vae", "flow"):
        raise ValidationError(f"{name} is a {record.family} model; the latent-ops report needs a generative model")
    torch.manual_seed(s.seed)
    t0 = time.time()
    graphs, problem = lo.graphs_for_record(repo, record)
    space = repo.latent_space(record)
    rng = np.random.default_rng(s.seed)
    temperature = _temperature(record)
    n_classes = len(record.class_names)
    spaces = ["pixel"] + (["probe"] if graphs.probe is not None else [])
    rep: dict[str, Any] = {"model": name, "version": record.version, "family": record.family,
                           "probe": record.manifest.get("probe") if graphs.probe is not None else None,
                           "probe_problem": problem or None, "settings": asdict(s)}
    rep["geodesic"] = geodesic_figures(graphs, space, n_classes, temperature, spaces, s, rng)
    if graphs.probe is not None:
        rep["guided_class"] = guided_class_figures(graphs, space, n_classes, temperature, s, rng)
        rep["guided_factors"] = guided_factor_figures(graphs, space, record, temperature, s, rng)
    if record.family in ("gan", "vae"):
        rep["refine"] = refine_figures(record, graphs, s, data)
    rep["seconds"] = round(time.time() - t0, 1)
    return rep


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def format_report(rep: dict) -> str:
    """The figures of one model as aligned text, each comparison side by side."""
    lines = [f"{rep['model']} v{rep['version']} ({rep['family']}), probe: {rep['probe'] or 'none (' + str(rep['probe_problem']) + ')'}"]
    s = rep["settings"]
    lines.append(f"  geodesic vs lerp ({s['pairs']} random same-class prior pairs, {s['steps']} frames, "
                 f"{s['geodesic_iterations']} iterations)")
    lines.append(f"    {'space':<6} {'length lerp':>12} {'geodesic':>10} {'ratio':>7} {'shorter':>8} "
                 f"{'CV lerp':>9} {'geodesic':>9} {'more even':>10}")
    for space, g in rep["geodesic"].items():
        lines.append(f"    {space:<6} {_f(g['length_lerp']):>12} {_f(g['length_geodesic']):>10} {_f(g['length_ratio'], 3):>7} "
                     f"{g['shorter_fraction']:>7.0%} {_f(g['cv_lerp'], 3):>9} {_f(g['cv_geodesic'], 3):>9} "
                     f"{g['more_even_fraction']:>9.0%}")
    if "guided_class" in rep:
        g = rep["guided_class"]
        lines.append(f"  probe class accuracy of samples ({g['n']} = {s['n_per_class']}/class, same seeds; "
                     f"{g['steps']} Langevin steps, class weight {g['class_weight']})")
        lines.append(f"    prior {_f(g['accuracy_prior'], 3)}   guided {_f(g['accuracy_guided'], 3)}   "
                     f"(Langevin without the class term {_f(g['accuracy_langevin_no_class_term'], 3)})")
    if rep.get("guided_factors"):
        lines.append(f"  factor targets: MAE of the probe's reading vs the target ({s['n_factor']} targets over each "
                     f"factor's range)")
        lines.append(f"    {'factor':<12} {'prior':>8} {'knob':>8} {'guided':>8} {'guided, no noise':>17}")
        for name, f in rep["guided_factors"].items():
            lines.append(f"    {name:<12} {_f(f['mae_prior']):>8} {_f(f['mae_knob']):>8} {_f(f['mae_guided']):>8} "
                         f"{_f(f['mae_guided_no_noise']):>17}   {f['unit']}")
    if "refine" in rep:
        r = rep["refine"]
        lines.append(f"  refinement of {r['n']} test images ({r['steps']} steps): reconstruction MSE "
                     f"{_f(r['mse_before'], 5)} -> {_f(r['mse_after'], 5)}, PSNR {_f(r['psnr_before_db'], 2)} -> "
                     f"{_f(r['psnr_after_db'], 2)} dB ({r['improved_fraction']:.0%} of images improved)")
    if rep.get("guided_class") or rep.get("guided_factors"):
        lines.append("  (the probe that guides is also the ruler: guided figures show how well the ops follow it)")
    lines.append(f"  {rep['seconds']} s")
    return "\n".join(lines)
