"""Leakage of knob moves on a model trained with correlated factors (issue #22, part 3), judged by geometry.

`leakage(repo, name, moved, other, ...)`: draws `n` latents from the model's default sample source, sets factor
`moved` to a low and a high target (the knob range's 25% and 75% points) along (a) the naive knob and (b) the
conditional direction holding `other` (models/conditional.py), decodes, and measures both factors classically
(`moved`, `other` in scale | hue: see `_measure`; the class by the geometric judge). Per mode:
- leakage = median |change of `other`| / median |change of `moved`|, each divided by its factor's range
  (0 = the other factor stays put; 1 = it moves as far, relative to its range, as the moved one);
- r2 = R² of the judged `moved` against the requested targets (both ends pooled);
- kept = share of the moved images the judge still gives their class.
Rows the judge finds no shape in are left out of the medians and the R².

`main` (`python -m latentserve.models.leakage RUNS_DIR`) trains two AEs on the correlated shapes at the same
budget, one plain and one with training-time decorrelation (`AEConfig.decorrelate`, models/nets/ae_factors.py),
and tabulates naive and conditional moves on the plain one ("naive", "conditional") and on the trained one
("trained", "trained + hold").
"""
from __future__ import annotations

from typing import Any

import numpy as np

from latentserve.models.conditional import set_factor_holding
from latentserve.models.latent import default_sample_source


def _measure(images_f: np.ndarray, labels: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({scale, hue} measured classically, NaN without a blob; the judge's class per image). Scale comes from the
    blob's area and the requested class's area coefficient (shapes.AREA_COEF), so a blurred shape the judge would
    not call a clean square still has a size; hue is the judge's (mean hue of the core pixels)."""
    from latentserve.models.data.shapes import AREA_COEF
    from latentserve.models.judges.geometric import judge_shapes
    from latentserve.models.judges.measure import coverage_of, find_blobs
    from latentserve.models.judges.scoring import to_u8

    u8 = to_u8(images_f)
    j = judge_shapes(u8)
    blobs = find_blobs(coverage_of(u8))
    scale = np.sqrt(blobs.area / AREA_COEF[labels]) / u8.shape[1]
    scale[~blobs.present] = np.nan
    return {"scale": scale, "hue": j.factors[:, j.factor_names.index("hue")].astype(np.float64)}, j.labels


# the trained variant's options: scale and hue each own 2 of the 16 code units (models/nets/ae_factors.py)
DECORRELATE = {"decorrelate": ["scale", "hue"], "factor_dims": 2, "factor_weight": 1.0, "swap_weight": 1.0}
MODES = {"naive": False, "conditional": True}  # mode -> hold `other`


def leakage(repo: Any, name: str, moved: str = "scale", other: str = "hue", n: int = 200, seed: int = 0,
            modes: dict[str, bool] | None = None) -> dict:
    """The figures of the module doc for model `name` of a Repository (factors scale and hue of shapes), one
    entry per mode of `modes` (name -> whether `other` is held; default MODES)."""
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
    out: dict[str, Any] = {"model": name, "moved": moved, "other": other, "n": n, "source": source}
    out["modes"] = list((modes or MODES))
    for mode, held in (modes or MODES).items():
        hold = [other] if held else []
        judged = {}
        for end, target in (("low", lo_t), ("high", hi_t)):
            zz = set_factor_holding(space, z, moved, target, hold, labels)
            judged[end] = _measure(decoder(latent=zz, label=labels)["image"], labels)
        (lo_f, lo_y), (hi_f, hi_y) = judged["low"], judged["high"]
        dm = (hi_f[moved] - lo_f[moved]) / (km.high - km.low)
        do = (hi_f[other] - lo_f[other]) / (ko.high - ko.low)
        ok = np.isfinite(dm) & np.isfinite(do)
        got = np.concatenate([lo_f[moved], hi_f[moved]])
        want = np.concatenate([np.full(n, lo_t), np.full(n, hi_t)])
        fin = np.isfinite(got)
        r2 = 1.0 - np.sum((got[fin] - want[fin]) ** 2) / max(np.sum((want[fin] - want[fin].mean()) ** 2), 1e-12)
        kept = float(np.mean(np.concatenate([lo_y == labels, hi_y == labels])))
        out[mode] = {"leakage": float(np.median(np.abs(do[ok])) / max(np.median(np.abs(dm[ok])), 1e-12)) if ok.any()
                     else float("nan"), "r2": float(r2) if fin.any() else float("nan"), "kept": kept,
                     "measured": float(ok.mean())}
    return out


def format_leakage(*reps: dict) -> str:
    """One table over the modes of one or more `leakage` reports (same factors and n)."""
    rep = reps[0]
    lines = [f"{', '.join(r['model'] for r in reps)}: move {rep['moved']} (25% -> 75% of its range), {rep['other']} "
             f"should stay; {rep['n']} {rep['source']} samples per model, judged by geometry",
             f"  {'mode':<15} {'model':<22} {'leakage':>8} {'R2 ' + rep['moved']:>10} {'kept class':>11} {'measured':>9}"]
    for r in reps:
        for mode in r["modes"]:
            m = r[mode]
            lines.append(f"  {mode:<15} {r['model']:<22} {m['leakage']:>8.3f} {m['r2']:>10.3f} {m['kept']:>11.0%} "
                         f"{m['measured']:>9.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m latentserve.models.leakage RUNS_DIR [--steps N] [--n N]`: train a plain AE and a decorrelated
    AE (same data, nets, seed and steps) on shapes with hue correlated to scale, export both with knobs fitted
    on encoded training images, print one leakage table and each training's seconds."""
    import argparse
    import json
    import time

    import torch

    from latentserve.models.export import export_run
    from latentserve.models.repository import Repository
    from latentserve.models.train import TrainConfig, train

    p = argparse.ArgumentParser(prog="python -m latentserve.models.leakage")
    p.add_argument("runs_dir")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--json", default="", help="also write the reports to this file")
    p.add_argument("--variants", default="shapes-corr-ae,shapes-corr-ae-decor",
                   help="which of the two to train and measure (comma-separated; a finished run is not retrained, "
                        "so two processes can train one each and a third measures both)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = {"image_size": 32, "n_train": 6000, "n_test": 500, "seed": 0, "correlate": {"hue": "scale"}}
    fam = {"z_dim": 16, "widths": [32, 64, 128], "hidden": 128, "embed_dim": 16}
    variants = {"shapes-corr-ae": ({}, MODES),
                "shapes-corr-ae-decor": (DECORRELATE, {"trained": False, "trained + hold": True})}
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not chosen or set(chosen) - set(variants):
        p.error(f"--variants: choose from {', '.join(variants)}")
    reports, seconds = [], {}
    for name, (extra, modes) in ((k, variants[k]) for k in chosen):
        t0 = time.time()
        run = train(TrainConfig(family="ae", data="shapes", data_args=data, steps=args.steps, batch_size=64,
                                out=f"{args.runs_dir}/{name}", ckpt_every=args.steps, grid_every=args.steps,
                                threads=args.threads, device="cpu", family_args={**fam, **extra}, seed=0), progress=False)
        seconds[name] = time.time() - t0
        export_run(run, name, repo_root=f"{args.runs_dir}/repo", knob_source="encoded", max_latent_fit=6000)
        reports.append(leakage(Repository(f"{args.runs_dir}/repo"), name, n=args.n, modes=modes))
    print(format_leakage(*reports))
    print("training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"reports": reports, "train_seconds": seconds, "steps": args.steps}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
