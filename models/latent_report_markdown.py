"""The latent-ops report as markdown: the figures of models/latent_report.py as tables, plus PNG strips.

`path_strips(graphs, space, ...)` decodes lerp, slerp and pixel-space geodesic paths between a few random
same-class prior pairs (the geodesic starts from lerp, as the server's does); `write_strip` writes one pair's
paths as a PNG (one row per path kind, frames left to right); `write_markdown(out_dir, reports, strips,
holdout)` writes `out_dir/report.md` with every table and the strips (PNG files next to it, referenced by
relative path). `holdout` is the figures of models/disks_holdout.py, if that experiment was run.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from latentserve.models.data.base import to_uint8

PATH_KINDS = ("lerp", "slerp", "geodesic")


def path_strips(graphs: Any, space: Any, n_classes: int, temperature: float, pairs: int, frames: int,
                iterations: int, learning_rate: float, seed: int) -> list[dict]:
    """[{title, rows: {lerp|slerp|geodesic: images (S, 3, H, W) in [-1, 1]}}] for `pairs` random prior pairs."""
    from latentserve.models import latent_ops as lo
    from latentserve.models.latent import lerp, slerp

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(pairs):
        c = int(rng.integers(0, n_classes))
        labels = np.full(frames, c, np.int64)
        a, b = space.sample_prior(labels[:2], rng, temperature)
        line = lerp(a, b, frames)
        state = lo.init_path(graphs, line, labels, "pixel", learning_rate, iterations)
        lo.run_to_end(lo.geodesic_step, graphs, [state])
        rows = {"lerp": lo.path_result(graphs, line, labels)[1],
                "slerp": lo.path_result(graphs, slerp(a, b, frames), labels)[1],
                "geodesic": lo.path_result(graphs, state)[1]}
        out.append({"title": f"class {c}", "rows": rows})
    return out


def write_strip(rows: dict[str, np.ndarray], path: Path, scale: int | None = None, pad: int = 2) -> Path:
    """Paths {kind: (S, 3, H, W) in [-1, 1]} -> PNG, one row per kind (in dict order), upscaled `scale`x
    (None: to about 64 px frames, at most 4x)."""
    from PIL import Image

    arrs = [to_uint8(np.asarray(v, np.float32)) for v in rows.values()]  # (S, H, W, 3) each
    s, h, w, _ = arrs[0].shape
    if any(a.shape != arrs[0].shape for a in arrs):
        raise ValueError("every row of a strip needs the same number and size of frames")
    canvas = np.full((len(arrs) * (h + pad) + pad, s * (w + pad) + pad, 3), 96, np.uint8)  # grey gutters
    for r, a in enumerate(arrs):
        for i in range(s):
            canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + i * (w + pad):pad + i * (w + pad) + w] = a[i]
    img = Image.fromarray(canvas)
    scale = max(1, min(4, 64 // h)) if scale is None else scale
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)  # crisp pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _n(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def model_section(rep: dict) -> list[str]:
    s = rep["settings"]
    probe = rep["probe"] or f"none ({rep['probe_problem']})"
    lines = [f"## {rep['model']} v{rep['version']} ({rep['family']})", "", f"Probe: {probe}. {rep['seconds']} s.", "",
             "### Geodesic vs lerp", "",
             f"{s['pairs']} random same-class prior pairs, {s['steps']} frames, {s['geodesic_iterations']} "
             "iterations; length = sum of RMS step distances, CV = evenness of the steps (lower is more even).", ""]
    lines += _table(["space", "length lerp", "length geodesic", "ratio", "shorter", "CV lerp", "CV geodesic",
                     "more even"],
                    [[k, _n(g["length_lerp"]), _n(g["length_geodesic"]), _n(g["length_ratio"], 3),
                      f"{g['shorter_fraction']:.0%}", _n(g["cv_lerp"], 3), _n(g["cv_geodesic"], 3),
                      f"{g['more_even_fraction']:.0%}"] for k, g in rep["geodesic"].items()])
    if "guided_class" in rep:
        g = rep["guided_class"]
        lines += ["### Guided vs prior sampling", "",
                  f"Probe class accuracy of {g['n']} samples ({s['n_per_class']}/class, same seeds; {g['steps']} "
                  f"Langevin steps, class weight {g['class_weight']}).", ""]
        lines += _table(["prior", "guided", "Langevin without the class term"],
                        [[_n(g["accuracy_prior"], 3), _n(g["accuracy_guided"], 3),
                          _n(g["accuracy_langevin_no_class_term"], 3)]])
    if rep.get("guided_factors"):
        lines += ["### Factor targets: guided vs linear knob", "",
                  f"MAE of the probe's reading vs the target, {s['n_factor']} targets over each factor's range.", ""]
        lines += _table(["factor", "prior", "knob", "guided", "guided, no noise", "unit"],
                        [[k, _n(f["mae_prior"]), _n(f["mae_knob"]), _n(f["mae_guided"]),
                          _n(f["mae_guided_no_noise"]), f["unit"]] for k, f in rep["guided_factors"].items()])
    if "refine" in rep:
        r = rep["refine"]
        lines += ["### Refinement of encoded test images", ""]
        lines += _table(["images", "steps", "MSE encoder", "MSE refined", "PSNR encoder (dB)", "PSNR refined (dB)",
                         "improved"],
                        [[r["n"], r["steps"], _n(r["mse_before"], 5), _n(r["mse_after"], 5),
                          _n(r["psnr_before_db"], 2), _n(r["psnr_after_db"], 2), f"{r['improved_fraction']:.0%}"]])
    if rep.get("guided_class") or rep.get("guided_factors"):
        lines += ["The probe that guides is also the ruler: guided figures show how well the ops follow it.", ""]
    return lines


def _strip_lines(strips: list[dict], out_dir: Path, prefix: str) -> list[str]:
    lines = []
    for i, st in enumerate(strips):
        rel = Path("strips") / f"{prefix}-{i}.png"
        write_strip(st["rows"], out_dir / rel)
        lines += [f"{st['title']} (rows: {', '.join(st['rows'])})", "", f"![{prefix} {i}]({rel.as_posix()})", ""]
    return lines


def holdout_section(h: dict, out_dir: Path) -> list[str]:
    lo_, hi = h["band"]
    lines = ["## Generalisation into a held-out band: disks", "",
             f"A VAE trained on `disks` ({h['settings']['image_size']}x{h['settings']['image_size']}) with radii in "
             f"[{lo_}, {hi}) removed from its training split ({h['train_radius_in_band']} of {h['n_train']} "
             f"training radii in the band); a probe trained on all radii (MAE on real test disks "
             f"{h['probe_mae_real']:.4f}) reads the radius of decoded images. {h['seconds']} s.", "",
             f"Reconstructions of real test disks: radius MAE {h['recon_mae_in_band']:.4f} inside the band "
             f"({h['n_recon_in_band']} disks) vs {h['recon_mae_out_of_band']:.4f} outside.", "",
             "Midpoints (t = 0.5) of encoded real pairs, one end in each window on either side of a gap as wide as "
             "the band; for *in band* the gap is the held-out band, the controls' gaps were seen in training. "
             "Radii are probe readings; *in gap* is the fraction of midpoints whose radius falls in the gap.", ""]
    lines += _table(["group", "gap", "ends (mean)", "target", "lerp mid", "geodesic mid", "MAE lerp",
                     "MAE geodesic", "in gap, lerp", "in gap, geodesic"],
                    [[g, f"[{r['gap'][0]:.3f}, {r['gap'][1]:.3f})", f"{r['end_low']:.3f} / {r['end_high']:.3f}",
                      f"{r['target']:.3f}", f"{r['mid_lerp']:.3f}", f"{r['mid_geodesic']:.3f}",
                      _n(r["mae_lerp"]), _n(r["mae_geodesic"]), f"{r['in_gap_lerp']:.0%}",
                      f"{r['in_gap_geodesic']:.0%}"] for g, r in h["groups"].items()])
    if h.get("strips"):
        lines += ["### Paths between real disks", ""] + _strip_lines(h["strips"], out_dir, "disks-holdout")
    return lines


def write_markdown(out_dir: str | Path, reports: list[dict], strips: dict[str, list[dict]],
                   holdout: dict | None = None, command: str = "") -> Path:
    """Write out_dir/report.md (+ out_dir/strips/*.png); returns the markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "strips").glob("*.png"):  # strips of an earlier run with other models/pairs
        old.unlink()
    lines = ["# Latent-ops report", "",
             "What the gradient-based latent ops buy, each next to its baseline (models/latent_report.py, the "
             "server's math and default settings).", ""]
    if command:
        lines += [f"Generated by `{command}`.", ""]
    for rep in reports:
        lines += model_section(rep)
        if strips.get(rep["model"]):
            lines += ["### Paths: lerp, slerp, geodesic (pixel space)", ""]
            lines += _strip_lines(strips[rep["model"]], out_dir, _slug(rep["model"]))
    if holdout is not None:
        lines += holdout_section(holdout, out_dir)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
