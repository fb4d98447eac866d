"""Which latent models generalise into a factor band they never saw? The multi-family disks study (issue #22).

`generalisation(runs_dir, settings)` trains (or reuses) GAN, VAE, AE, contractive AE and smooth AE on `disks`
with the radius band `band` removed from the training split, all with the same step budget and batch size, exports
them into `<runs_dir>/repo` beside a probe (export needs one for the knobs; no figure below uses it), and
measures per family, with the geometric judge (models/judges/geometric.judge_disks: radius from the blob's area,
no network):
- reconstruction: |judged radius of decode(encode(x)) - true radius| of real test disks inside vs outside the band;
- midpoints: pairs of real test disks with one radius just below the band and one just above
  (models/disks_holdout.pair_groups, "in band"); the midpoint of lerp, slerp and the server's pixel-space geodesic
  (models/latent_ops.py) is decoded and judged; error = |radius - mean of the ends' true radii|, and the share of
  midpoints whose radius lands in the band;
- samples: `n_samples` draws of the per-class latent GMM (Sample's default for VAE/AE) - the GAN's prior - judged;
  the share inside the band (the true share of radii there is band width / radius range) and the share of the
  band's `coverage_bins` equal bins that hold at least one sample.
The radius is the blob's (area -> radius) even when the judge would not call the blob a clean disk (the share it
does is reported: `recon_disk`, `sample_disk`); an image without any blob counts as a miss (error = the band's
width: no credit).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentserve.models import latent_ops as lo
from latentserve.models.disks_holdout import PROBE_NAME, HoldoutSettings, _data_args, _pick, pair_groups
from latentserve.models.latent import lerp, slerp

# variant name -> (family, family args beyond the shared net sizes)
VARIANTS = {
    "gan": ("gan", {}),
    "vae": ("vae", {}),
    "ae": ("ae", {"reg": "none"}),
    "ae-contractive": ("ae", {"reg": "contractive"}),  # Hutchinson, AEConfig.jacobian_projections
    "ae-smooth": ("ae", {"reg": "smooth"}),
}
# small nets: 16x16 disks with one factor
NETS = {
    "gan": {"z_dim": 8, "g_width": 16, "d_width": 16, "e_width": 16, "e_hidden": 64},
    "vae": {"z_dim": 8, "widths": [16, 32], "hidden": 64, "embed_dim": 4},
    "ae": {"z_dim": 8, "widths": [16, 32], "hidden": 64, "embed_dim": 4},
}


@dataclass
class StudySettings(HoldoutSettings):
    """The VAE-only experiment's settings (band, pair windows, data sizes, probe, geodesic, seed) plus the study's
    own; its `vae_steps` / `vae_args` are not used (every variant trains `steps` steps with the NETS sizes)."""

    steps: int = 1500  # the same budget for every family
    batch_size: int = 64
    n_samples: int = 400  # samples judged per variant
    coverage_bins: int = 5  # equal bins of the band a sample can cover
    reg_weights: dict = field(default_factory=lambda: {"ae-contractive": 30.0, "ae-smooth": 0.3})
    variants: tuple = tuple(VARIANTS)


def train_all(runs_dir: Path, s: StudySettings, threads: int = 1, say=print) -> Path:
    """Train (or reuse: the loop resumes a finished run) every variant and the probe; export into runs_dir/repo."""
    import shutil

    from latentserve.models.export import export_run
    from latentserve.models.train import TrainConfig, train

    jobs = [("probe", "probe", dict(s.probe_args), s.probe_steps, False)]
    for v in s.variants:
        fam, extra = VARIANTS[v]
        args = {**NETS[fam], **extra, **({"reg_weight": s.reg_weights[v]} if v in s.reg_weights else {})}
        jobs.append((v, fam, args, s.steps, True))
    repo = runs_dir / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    for name, fam, args, steps, holdout in jobs:
        cfg = TrainConfig(family=fam, data="disks", data_args=_data_args(s, holdout), steps=steps,
                          batch_size=s.batch_size, out=str(runs_dir / name), ckpt_every=steps, grid_every=steps,
                          threads=threads, device="cpu", family_args=args, seed=s.seed)
        t0 = time.time()
        run = train(cfg, progress=False)
        say(f"{name}: {run} ({time.time() - t0:.0f} s)")
        export_run(run, PROBE_NAME if fam == "probe" else f"disks-{name}", repo_root=repo, version=1,
                   probe=None if fam == "probe" else PROBE_NAME, max_latent_fit=4000)
    return repo


def _radius(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(radius measured from the blob's area, NaN where there is no blob; judged a disk) of float (N,3,H,W) [-1,1]
    images. The radius is read even when the blob is not a clean disk: a blurred disk still has a size."""
    from latentserve.models.judges.geometric import judge_disks
    from latentserve.models.judges.scoring import to_u8

    j = judge_disks(to_u8(images))
    return j.factors[:, 0].astype(np.float64), j.labels == 0


def _err(r: np.ndarray, target: np.ndarray, miss: float) -> np.ndarray:
    return np.where(np.isnan(r), miss, np.abs(r - target))


def measure_variant(repo: Any, name: str, s: StudySettings, data: Any) -> dict:
    """The figures of the module doc for one exported variant; also the radii behind the plots."""
    from latentserve.models.evaluate import OnnxGraph, _images

    record = repo.load(f"disks-{name}")
    graphs, _ = lo.graphs_for_record(repo, record)
    space = repo.latent_space(record)
    lo_, hi = s.band
    miss = hi - lo_
    x = _images(data.test)
    true_r = data.test.factors[:, 0].astype(np.float64)
    z = OnnxGraph(record, "encoder")(image=x)["latent"]

    def decode(zz: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return graphs.decode(torch.as_tensor(np.asarray(zz, np.float32)),
                                 torch.zeros(len(zz), dtype=torch.int64)).numpy()

    recon_r, recon_disk = _radius(decode(z))
    inside = (true_r >= lo_) & (true_r < hi)
    e = _err(recon_r, true_r, miss)
    out: dict[str, Any] = {"family": record.family, "recon_in": float(e[inside].mean()),
                           "recon_out": float(e[~inside].mean()), "recon_missed": float(np.isnan(recon_r).mean()),
                           "recon_disk": float(recon_disk.mean())}
    wa, wb, _ = pair_groups(lo_, hi, s.window, *_range(data))["in band"]
    rng = np.random.default_rng(s.seed)
    a, b = rng.choice(_pick(true_r, wa), s.pairs), rng.choice(_pick(true_r, wb), s.pairs)
    target = (true_r[a] + true_r[b]) / 2
    mid = s.frames // 2
    paths = {"lerp": [lerp(z[i], z[j], s.frames) for i, j in zip(a, b)],
             "slerp": [slerp(z[i], z[j], s.frames) for i, j in zip(a, b)]}
    labels = np.zeros(s.frames, np.int64)
    states = [lo.init_path(graphs, p, labels, "pixel", s.geodesic_learning_rate, s.geodesic_iterations)
              for p in paths["lerp"]]
    lo.run_to_end(lo.geodesic_step, graphs, states)
    paths["geodesic"] = [st.path().numpy() for st in states]
    for kind, ps in paths.items():
        r, _ = _radius(decode(np.stack([p[mid] for p in ps])))
        out[f"mid_{kind}"] = float(_err(r, target, miss).mean())
        out[f"mid_{kind}_in_band"] = float(np.mean((r >= lo_) & (r < hi)))
    ys = np.zeros(s.n_samples, np.int64)
    draw = space.sample_gmm if (space.gmm_weights is not None and record.family != "gan") else space.sample_prior
    sample_r, sample_disk = _radius(decode(draw(ys, np.random.default_rng(s.seed + 1))))
    edges = np.linspace(lo_, hi, s.coverage_bins + 1)
    hist = np.histogram(sample_r[~np.isnan(sample_r)], edges)[0]
    out.update(sample_source="prior" if draw == space.sample_prior else "latent_gmm",
               sample_in_band=float(np.mean((sample_r >= lo_) & (sample_r < hi))),
               band_bins_covered=float(np.mean(hist > 0)), sample_missed=float(np.isnan(sample_r).mean()),
               sample_disk=float(sample_disk.mean()),
               plot={"true_r": true_r.tolist(), "recon_r": recon_r.tolist(), "sample_r": sample_r.tolist()})
    return out


def _range(data: Any) -> tuple[float, float]:
    return float(data.factors[0].low), float(data.factors[0].high)


def generalisation(runs_dir: str | Path, s: StudySettings, threads: int = 1, say=print) -> dict:
    from latentserve.errors import ValidationError
    from latentserve.models.data import load_dataset
    from latentserve.models.data.disks import RADIUS_RANGE
    from latentserve.models.repository import Repository

    if "in band" not in pair_groups(s.band[0], s.band[1], s.window, *RADIUS_RANGE):
        raise ValidationError(f"radius band {s.band[0]}:{s.band[1]} leaves no room for pair ends on both sides "
                              f"(radii are in [{RADIUS_RANGE[0]}, {RADIUS_RANGE[1]}], ends within {s.window} of it)")
    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown:
        raise ValidationError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    t0 = time.time()
    runs_dir = Path(runs_dir)
    repo = Repository(train_all(runs_dir, s, threads, say))
    data = load_dataset("disks", **_data_args(s, holdout=True))  # its test split keeps every radius
    rows = {v: measure_variant(repo, v, s, data) for v in s.variants}
    lo_, hi = s.band
    low, high = _range(data)
    return {"settings": {**asdict(s), "radius_range": [low, high]}, "band": [lo_, hi], "true_share_in_band": (hi - lo_) / (high - low),
            "rows": rows, "seconds": round(time.time() - t0, 1)}


def format_study(rep: dict) -> str:
    lo_, hi = rep["band"]
    st = rep["settings"]
    lines = [f"disks {st['image_size']} px, radius band [{lo_}, {hi}) held out of training; {st['steps']} steps x "
             f"batch {st['batch_size']} per family; radii judged by geometry (errors in fraction of the image side; "
             f"a missing disk counts {hi - lo_:.3f})",
             f"  {'family':<15} {'recon in':>9} {'out':>7} {'mid lerp':>9} {'slerp':>7} {'geodesic':>9} "
             f"{'in band l/s/g':>15} {'samples in band':>16} {'bins':>5} {'disks r/s':>10}"]
    for v, r in rep["rows"].items():
        ib = f"{r['mid_lerp_in_band']:.0%}/{r['mid_slerp_in_band']:.0%}/{r['mid_geodesic_in_band']:.0%}"
        lines.append(f"  {v:<15} {r['recon_in']:>9.4f} {r['recon_out']:>7.4f} {r['mid_lerp']:>9.4f} "
                     f"{r['mid_slerp']:>7.4f} {r['mid_geodesic']:>9.4f} {ib:>15} "
                     f"{r['sample_in_band']:>9.0%} ({r['sample_source'][:5]}) {r['band_bins_covered']:>4.0%} "
                     f"{r['recon_disk']:>4.0%}/{r['sample_disk']:.0%}")
    lines.append(f"  true share of radii in the band: {rep['true_share_in_band']:.0%}; {rep['seconds']} s")
    return "\n".join(lines)


def write_plots(rep: dict, out_dir: str | Path) -> list[Path]:
    """PNG plots (PIL, no plotting library): per family, reconstructed vs true radius of real test disks, and the
    histogram of sample radii; the held-out band shaded. Returns the files written."""
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lo_, hi = rep["band"]
    low, high = rep["settings"].get("radius_range", (0.1, 0.35))
    rows = rep["rows"]
    w, h, pad = 220, 200, 24
    sx = lambda r: pad + (r - low) / (high - low) * (w - 2 * pad)  # noqa: E731
    files = []
    for kind in ("recon", "samples"):
        img = Image.new("RGB", (w * len(rows), h), "white")
        d = ImageDraw.Draw(img)
        for i, (name, r) in enumerate(rows.items()):
            ox = i * w
            d.rectangle([ox + sx(lo_), pad, ox + sx(hi), h - pad], fill=(255, 220, 220))
            d.rectangle([ox + pad, pad, ox + w - pad, h - pad], outline="black")
            d.text((ox + pad, 4), f"{name} ({'recon vs true' if kind == 'recon' else r['sample_source']})", fill="black")
            p = r["plot"]
            if kind == "recon":
                d.line([ox + sx(low), h - pad, ox + sx(high), pad], fill=(150, 150, 150))
                for t, rr in zip(p["true_r"], p["recon_r"]):
                    if rr == rr:  # not NaN
                        y = h - pad - (min(max(rr, low), high) - low) / (high - low) * (h - 2 * pad)
                        d.point((ox + sx(t), y), fill=(0, 0, 200))
            else:
                vals = np.asarray([v for v in p["sample_r"] if v == v])
                counts = np.histogram(vals, np.linspace(low, high, 26))[0]
                top = max(int(counts.max()) if len(counts) else 1, 1)
                for k, c in enumerate(counts):
                    x0, x1 = sx(low + k * (high - low) / 25), sx(low + (k + 1) * (high - low) / 25)
                    d.rectangle([ox + x0, h - pad - c / top * (h - 2 * pad), ox + x1 - 1, h - pad], fill=(0, 120, 0))
            d.text((ox + pad, h - pad + 4), f"{low:g} .. radius .. {high:g}", fill="black")
        path = out_dir / f"generalisation-{kind}.png"
        img.save(path)
        files.append(path)
    return files
