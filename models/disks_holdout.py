"""Does a generative model generalise into a held-out factor band? The disks experiment of the latent-ops report.

`disks_holdout(runs_dir, settings)`:
1. trains (or reuses, when its run directory already holds a checkpoint of the same config) a small VAE on
   `disks` (one centred disk, factor radius in [0.1, 0.35]) with the radius band `band` removed from the
   training split, and a probe (radius regressor) on all radii;
2. exports both into a scratch repository `<runs_dir>/repo` (rebuilt on every run; the runs are reused);
3. encodes real test disks (the test split keeps every radius) and forms pairs of groups:
   - "in band": one end just below the band, the other just above, so lerp midpoints aim inside the band;
   - controls "below" / "above": the same window layout shifted to one side of the band, so their
     midpoints aim at an equally wide gap whose radii the model *did* see in training;
4. computes the lerp midpoint and the pixel-space geodesic midpoint (models/latent_ops.py, the server's
   math) of each pair, decodes them and reads their radius with the probe.
Figures per group: the ends' radius (probe on the real images), the target (mean of the ends), the measured
midpoint radius, the MAE to the target, and the fraction of midpoints whose radius lies in the group's gap
(the band for "in band"). Also the probe's reading of reconstructions of real test disks inside vs outside
the band. The probe was trained on all radii, so it is a fair ruler inside the band (its test MAE is printed).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentserve.errors import ValidationError
from latentserve.models import latent_ops as lo
from latentserve.models.latent import lerp, slerp

MODEL_NAME = "disks-holdout-vae"
PROBE_NAME = "disks-probe"


@dataclass
class HoldoutSettings:
    band: tuple[float, float] = (0.2, 0.25)  # held-out radius band (fraction of the image side)
    window: float = 0.02  # pair ends are drawn within this distance outside the gap's edges
    pairs: int = 24  # pairs per group
    image_size: int = 16
    n_train: int = 4000
    n_test: int = 1000
    vae_steps: int = 1000
    probe_steps: int = 600
    frames: int = 9  # odd: the middle frame is t = 0.5
    geodesic_iterations: int = 100
    geodesic_learning_rate: float = 0.05
    seed: int = 0
    # small nets: 16x16 disks with one factor, so the study runs in seconds on one thread
    vae_args: tuple = (("z_dim", 8), ("widths", [16, 32]), ("hidden", 64), ("embed_dim", 4))
    probe_args: tuple = (("width", 8), ("depth", 2), ("head_channels", 8), ("feature_dim", 32),
                         ("lr_schedule_steps", 600))


def _data_args(s: HoldoutSettings, holdout: bool) -> dict:
    out: dict[str, Any] = {"image_size": s.image_size, "n_train": s.n_train, "n_test": s.n_test, "seed": s.seed}
    if holdout:
        out["holdout"] = {"radius": [float(s.band[0]), float(s.band[1])]}
    return out


def train_models(runs_dir: Path, s: HoldoutSettings, threads: int = 1, say=print) -> dict[str, Path]:
    """Train (or reuse) the probe (all radii) and the VAE (band held out); export both into runs_dir/repo."""
    from latentserve.models.export import export_run
    from latentserve.models.train import TrainConfig, train

    runs_dir = Path(runs_dir)
    runs = {}
    for fam, steps, args, holdout in (("probe", s.probe_steps, s.probe_args, False),
                                      ("vae", s.vae_steps, s.vae_args, True)):
        cfg = TrainConfig(family=fam, data="disks", data_args=_data_args(s, holdout), steps=steps,
                          out=str(runs_dir / fam), ckpt_every=steps, grid_every=steps, threads=threads,
                          device="cpu", family_args=dict(args), seed=s.seed)
        t0 = time.time()
        runs[fam] = train(cfg, progress=False)
        say(f"{fam}: {runs[fam]} ({time.time() - t0:.0f} s)")
    repo = runs_dir / "repo"
    shutil.rmtree(repo, ignore_errors=True)  # ours alone: the exports are cheap, the runs are what is reused
    export_run(runs["probe"], PROBE_NAME, repo_root=repo, version=1)
    export_run(runs["vae"], MODEL_NAME, repo_root=repo, version=1, probe=PROBE_NAME)
    return {"repo": repo, **runs}


def pair_groups(lo_: float, hi: float, w: float, low: float, high: float) -> dict[str, tuple]:
    """{group: (window of the low end, window of the high end, gap)}: the gap lies between the windows and is
    as wide as the band; controls shift the layout to one side of the band (dropped if outside [low, high])."""
    span = (hi - lo_) + 2 * w
    groups = {
        "below band": ((lo_ - span, lo_ - span + w), (lo_ - w, lo_), (lo_ - span + w, lo_ - w)),
        "in band": ((lo_ - w, lo_), (hi, hi + w), (lo_, hi)),
        "above band": ((hi, hi + w), (hi + span - w, hi + span), (hi + w, hi + span - w)),
    }
    return {k: g for k, g in groups.items() if g[0][0] >= low - 1e-9 and g[1][1] <= high + 1e-9}


def _pick(radius: np.ndarray, win: tuple[float, float]) -> np.ndarray:
    return np.flatnonzero((radius >= win[0]) & (radius < win[1]))


def measure(repo: Any, s: HoldoutSettings, strip_pairs: int = 2) -> dict:
    """The figures (see the module doc) on an exported model + probe; `repo` is a Repository."""
    from latentserve.models.data import load_dataset
    from latentserve.models.evaluate import OnnxGraph, _images

    record = repo.load(MODEL_NAME)
    graphs, problem = lo.graphs_for_record(repo, record)
    if graphs.probe is None:
        raise ValidationError(problem)
    k = graphs.factor_names.index("radius")
    data = load_dataset("disks", **_data_args(s, holdout=True))  # the test split is the same with or without
    x = _images(data.test)
    true_r = data.test.factors[:, 0].astype(np.float64)
    z = OnnxGraph(record, "encoder")(image=x)["latent"]
    y = np.zeros(len(x), np.int64)

    def read(images: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return graphs.probe_outputs(images)[1][:, k].numpy().astype(np.float64)

    with torch.no_grad():
        probe_r = read(torch.as_tensor(x))
        recon_r = read(graphs.decode(torch.as_tensor(z), torch.as_tensor(y)))
    lo_, hi = s.band
    inside = (true_r >= lo_) & (true_r < hi)
    out: dict[str, Any] = {
        "band": list(s.band), "settings": asdict(s), "n_train": len(data.train),
        "train_radius_in_band": int(np.sum((data.train.factors[:, 0] >= lo_) & (data.train.factors[:, 0] < hi))),
        "probe_mae_real": float(np.mean(np.abs(probe_r - true_r))),
        "recon_mae_in_band": float(np.mean(np.abs(recon_r[inside] - true_r[inside]))),
        "recon_mae_out_of_band": float(np.mean(np.abs(recon_r[~inside] - true_r[~inside]))),
        "n_recon_in_band": int(inside.sum()), "groups": {}, "strips": [],
    }
    rng = np.random.default_rng(s.seed)
    mid = s.frames // 2
    low, high = float(data.factors[0].low), float(data.factors[0].high)
    for gname, (wa, wb, gap) in pair_groups(lo_, hi, s.window, low, high).items():
        ia, ib = _pick(true_r, wa), _pick(true_r, wb)
        if len(ia) == 0 or len(ib) == 0:
            continue
        a, b = rng.choice(ia, s.pairs), rng.choice(ib, s.pairs)
        paths = [lerp(z[i], z[j], s.frames) for i, j in zip(a, b)]
        labels = np.zeros(s.frames, np.int64)
        states = [lo.init_path(graphs, p, labels, "pixel", s.geodesic_learning_rate, s.geodesic_iterations)
                  for p in paths]
        lo.run_to_end(lo.geodesic_step, graphs, states)
        geo = np.stack([st.path().numpy() for st in states])  # (P, S, D)
        lerp_mid = np.stack([p[mid] for p in paths])
        with torch.no_grad():
            yy = torch.zeros(s.pairs, dtype=torch.int64)
            r_lerp = read(graphs.decode(torch.as_tensor(lerp_mid, dtype=torch.float32), yy))
            r_geo = read(graphs.decode(torch.as_tensor(geo[:, mid], dtype=torch.float32), yy))
        target = (probe_r[a] + probe_r[b]) / 2
        in_gap = lambda r: float(np.mean((r >= gap[0]) & (r < gap[1])))  # noqa: E731
        out["groups"][gname] = {
            "pairs": s.pairs, "gap": list(gap),
            "end_low": float(probe_r[a].mean()), "end_high": float(probe_r[b].mean()),
            "target": float(target.mean()), "mid_lerp": float(r_lerp.mean()), "mid_geodesic": float(r_geo.mean()),
            "mae_lerp": float(np.mean(np.abs(r_lerp - target))), "mae_geodesic": float(np.mean(np.abs(r_geo - target))),
            "in_gap_lerp": in_gap(r_lerp), "in_gap_geodesic": in_gap(r_geo),
        }
        for p in range(min(strip_pairs, s.pairs)):  # decoded paths for the markdown strips
            with torch.no_grad():
                rows = {"lerp": paths[p], "slerp": slerp(z[a[p]], z[b[p]], s.frames), "geodesic": geo[p]}
                out["strips"].append({
                    "title": f"{gname}: radius {true_r[a[p]]:.3f} -> {true_r[b[p]]:.3f}",
                    "rows": {name: graphs.decode(torch.as_tensor(np.asarray(v, np.float32)),
                                                 torch.as_tensor(labels)).numpy() for name, v in rows.items()}})
    return out


def disks_holdout(runs_dir: str | Path, s: HoldoutSettings, threads: int = 1, say=print) -> dict:
    """Train/reuse, export, measure (see the module doc); returns the figures (strips hold decoded images)."""
    from latentserve.models.repository import Repository

    from latentserve.models.data.disks import RADIUS_RANGE

    if "in band" not in pair_groups(s.band[0], s.band[1], s.window, *RADIUS_RANGE):
        raise ValidationError(f"radius band {s.band[0]}:{s.band[1]} leaves no room for pair ends on both sides "
                              f"(radii are in [{RADIUS_RANGE[0]}, {RADIUS_RANGE[1]}], ends within {s.window} of the "
                              f"band)")
    t0 = time.time()
    paths = train_models(Path(runs_dir), s, threads, say)
    rep = measure(Repository(paths["repo"]), s)
    rep["seconds"] = round(time.time() - t0, 1)
    return rep


def format_holdout(rep: dict) -> str:
    lo_, hi = rep["band"]
    lines = [f"disks, radius band [{lo_}, {hi}) held out of the VAE's training split "
             f"({rep['train_radius_in_band']} of {rep['n_train']} training radii in it); probe trained on all radii "
             f"(MAE on real test disks {rep['probe_mae_real']:.4f})",
             f"  reconstructions of real test disks: radius MAE in band {rep['recon_mae_in_band']:.4f} "
             f"({rep['n_recon_in_band']} disks), out of band {rep['recon_mae_out_of_band']:.4f}",
             "  midpoints of pairs (probe readings; 'in gap' = midpoint radius inside the gap between the group's "
             "end windows, the held-out band for 'in band')",
             f"    {'group':<11} {'gap':>13} {'ends':>13} {'target':>7} {'lerp':>7} {'geodesic':>9} "
             f"{'MAE lerp':>9} {'geodesic':>9} {'in gap lerp':>12} {'geodesic':>9}"]
    for g, r in rep["groups"].items():
        gap = f"[{r['gap'][0]:.3f},{r['gap'][1]:.3f})"
        ends = f"{r['end_low']:.3f}/{r['end_high']:.3f}"
        lines.append(f"    {g:<11} {gap:>13} {ends:>13} {r['target']:>7.3f} {r['mid_lerp']:>7.3f} "
                     f"{r['mid_geodesic']:>9.3f} {r['mae_lerp']:>9.4f} {r['mae_geodesic']:>9.4f} "
                     f"{r['in_gap_lerp']:>11.0%} {r['in_gap_geodesic']:>9.0%}")
    lines.append(f"  {rep['seconds']} s")
    return "\n".join(lines)
