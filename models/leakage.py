"""Leakage of knob moves on a model trained with correlated factors (issue #22, part 3), judged by geometry.

`leakage(repo, name, moved, other, ...)`: draws `n` latents from the model's default sample source, sets factor
`moved` to a low and a high target (the knob range's 25% and 75% points) along (a) the naive knob and (b) the
conditional direction holding `other` (models/conditional.py), decodes, and measures both factors with the
geometric judge (models/judges/geometric.judge_shapes). Per mode:
- leakage = median |change of `other`| / median |change of `moved`|, each divided by its factor's range
  (0 = the other factor stays put; 1 = it moves as far, relative to its range, as the moved one);
- r2 = R² of the judged `moved` against the requested targets (both ends pooled);
- kept = share of the moved images the judge still gives their class.
Rows the judge finds no shape in are left out of the medians and the R².
"""
from __future__ import annotations

from typing import Any

import numpy as np

from latentserve.models.conditional import set_factor_holding
from latentserve.models.latent import default_sample_source


def _judge(images_f: np.ndarray) -> Any:
    from latentserve.models.judges.geometric import judge_shapes

    u8 = np.clip(np.round((np.transpose(images_f, (0, 2, 3, 1)) + 1) * 127.5), 0, 255).astype(np.uint8)
    return judge_shapes(u8)


def leakage(repo: Any, name: str, moved: str = "scale", other: str = "hue", n: int = 200, seed: int = 0) -> dict:
    from latentserve.models.evaluate import OnnxGraph

    record = repo.load(name)
    space = repo.latent_space(record)
    decoder = OnnxGraph(record, "decoder")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(record.class_names), n).astype(np.int64)
    source = default_sample_source(record.family, space.gmm_weights is not None, space.gmm_kind)
    z = space.sample_gmm(labels, rng) if source == "latent_gmm" else space.sample_prior(labels, rng)
    km, ko = space.knobs[moved], space.knobs[other]
    lo_t, hi_t = km.low + 0.25 * (km.high - km.low), km.low + 0.75 * (km.high - km.low)
    names = None
    out: dict[str, Any] = {"model": name, "moved": moved, "other": other, "n": n, "source": source}
    for mode, hold in (("naive", []), ("conditional", [other])):
        judged = {}
        for end, target in (("low", lo_t), ("high", hi_t)):
            zz = set_factor_holding(space, z, moved, target, hold, labels)
            j = _judge(decoder(latent=zz, label=labels)["image"])
            names = j.factor_names
            judged[end] = j
        im, io = names.index(moved), names.index(other)
        lo_j, hi_j = judged["low"], judged["high"]
        dm = (hi_j.factors[:, im] - lo_j.factors[:, im]) / (km.high - km.low)
        do = (hi_j.factors[:, io] - lo_j.factors[:, io]) / (ko.high - ko.low)
        ok = np.isfinite(dm) & np.isfinite(do)
        got = np.concatenate([lo_j.factors[:, im], hi_j.factors[:, im]])
        want = np.concatenate([np.full(n, lo_t), np.full(n, hi_t)])
        fin = np.isfinite(got)
        r2 = 1.0 - np.sum((got[fin] - want[fin]) ** 2) / max(np.sum((want[fin] - want[fin].mean()) ** 2), 1e-12)
        kept = float(np.mean(np.concatenate([lo_j.labels == labels, hi_j.labels == labels])))
        out[mode] = {"leakage": float(np.median(np.abs(do[ok])) / max(np.median(np.abs(dm[ok])), 1e-12)) if ok.any()
                     else float("nan"), "r2": float(r2) if fin.any() else float("nan"), "kept": kept,
                     "measured": float(ok.mean())}
    return out


def format_leakage(rep: dict) -> str:
    lines = [f"{rep['model']}: move {rep['moved']} (25% -> 75% of its range), {rep['other']} should stay; "
             f"{rep['n']} {rep['source']} samples, judged by geometry",
             f"  {'mode':<12} {'leakage':>8} {'R2 ' + rep['moved']:>10} {'kept class':>11} {'measured':>9}"]
    for mode in ("naive", "conditional"):
        r = rep[mode]
        lines.append(f"  {mode:<12} {r['leakage']:>8.3f} {r['r2']:>10.3f} {r['kept']:>11.0%} {r['measured']:>9.0%}")
    return "\n".join(lines)
