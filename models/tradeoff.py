"""The coverage / quality trade-off table: GAN, GAN + mixed batches, VAE, VAE + autoregressive decoder, flow and
flow + adversarial hybrid, trained at the same budget on the same data and judged by referees no model was trained
against (`latentserve latent-report --tradeoff`).

Per (data set, variant, seed): train `steps` steps (batch `batch_size`), export into `<runs>/repo`, then
- bits/dim of the test split where the model has a likelihood (the family's own evaluation: the VAEs' negative
  ELBO on the 8-bit images, the flows' exact NLL; a GAN has none);
- `n_samples` samples from the model's default Sample source, decoded as Decode serves them
  (models/evaluate.decoder_fn: the PixelCNN's pixel loop for the autoregressive VAE), judged by the data set's
  geometric judge (models/judges/geometric.py; on `modes` a sample is its class when it shows one of the modes);
- class fidelity: the share of samples the judge calls the requested class;
- precision / recall / coverage (Kynkäänniemi 2019, Naeem 2020) in the judge's measured factor space against
  the real test images; a sample the judge rejects counts as outside every real neighbourhood (recall is
  computed on the accepted samples, 0 with too few of them);
- on `modes`: modes recovered (>= a quarter of a uniform share of samples), KL(mode histogram || uniform).
The variants differ only in what the table names; every other setting is the family's default (the plain
GANs train without the reconstruction term, `mode_reg = 0`, so the discriminator alone decides coverage).
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latentserve.errors import ValidationError
from latentserve.models.coverage import PRDC_K, prdc
from latentserve.models.evaluate import _draw_fns, _latent_space, decoder_fn
from latentserve.models.judges.geometric import PERIOD, judge_for
from latentserve.models.judges.modes import mode_figures, mode_of
from latentserve.models.judges.scoring import _factor_features, to_u8
from latentserve.models.latent import default_sample_source

VARIANTS = {  # name -> (family, family_args beyond the defaults)
    "gan": ("gan", {"mode_reg": 0.0}),
    "gan_mixed": ("gan", {"mode_reg": 0.0, "d_kind": "mixed"}),
    "vae": ("vae", {}),
    "vae_ar": ("vae", {"decoder": "pixelcnn"}),
    "flow": ("flow", {}),
    "flow_hybrid": ("flow", {"adv_weight": 0.1}),  # adv_start / adv_ramp scale with the budget (below)
    # the project's own GAN recipe (mode-regularised: a reconstruction term beside the adversarial one), with each
    # discriminator: learns in far fewer steps than the plain GAN, so it is the pair to compare at small budgets
    "gan_mr": ("gan", {}),
    "gan_mr_mixed": ("gan", {"d_kind": "mixed"}),
}
DEFAULT_VARIANTS = ("gan", "gan_mixed", "vae", "vae_ar", "flow", "flow_hybrid")
# --quick: the smallest nets, for tests of the command (figures meaningless)
QUICK = {"gan": {"z_dim": 8, "g_width": 4, "d_width": 4, "e_width": 4, "e_hidden": 16, "e_batch": 8,
                 "mix_set_size": 4},
         "vae": {"z_dim": 8, "widths": [4, 8], "hidden": 16, "embed_dim": 4, "ar_width": 8, "ar_layers": 1},
         "flow": {"levels": 1, "steps": [2], "hidden": [8]}}
DATA_SETS = ("modes", "shapes")
FAR = 1e3  # features of a rejected sample: far from every real image


@dataclass
class TradeoffSettings:
    steps: int = 1500
    seeds: tuple[int, ...] = (0,)
    data: tuple[str, ...] = DATA_SETS
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    n_samples: int = 1000
    n_train: int = 20000
    n_test: int = 1000
    batch_size: int = 64
    quick: bool = False
    runs: str = "runs/tradeoff"
    threads: int = 1
    extra: dict = field(default_factory=dict)  # variant -> family_args overrides
    # the latent density each GAN / VAE is exported with: "auto" (the export's default) or "anchors" (the bundled
    # GAN's anchor mixture of encoded training images, models/bundle.ANCHORS). The flows keep the default fit: their
    # latents are image-sized, so hundreds of anchors per class would weigh tens of MB
    gmm: str = "auto"

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValidationError(f"trade-off variants {bad} unknown; choose from {', '.join(VARIANTS)}")
        bad = [v for v in self.extra if v not in VARIANTS]
        if bad:
            raise ValidationError(f"settings for unknown trade-off variants {bad}; choose from {', '.join(VARIANTS)}")
        bad = [d for d in self.data if d not in DATA_SETS]
        if bad:
            raise ValidationError(f"trade-off data sets {bad} unknown; choose from {', '.join(DATA_SETS)}")
        if self.gmm not in ("auto", "anchors"):
            raise ValidationError(f"trade-off gmm {self.gmm!r}; choose auto or anchors")
        if self.steps < 1 or self.n_samples < 12 or not self.seeds:
            raise ValidationError("trade-off needs steps >= 1, n_samples >= 12 and at least one seed")


def family_args(variant: str, s: TradeoffSettings) -> tuple[str, dict]:
    fam, args = VARIANTS[variant]
    args = {**(QUICK[fam] if s.quick else {}), **args, **s.extra.get(variant, {})}
    if fam == "gan" and args.get("d_kind") != "mixed":
        args.pop("mix_set_size", None)
    if fam == "vae" and args.get("decoder") != "pixelcnn":
        args = {k: v for k, v in args.items() if not k.startswith("ar_")}
    if variant == "flow_hybrid":  # the flow first learns the data by likelihood, then the adversarial term joins
        args.setdefault("adv_start", s.steps // 3)
        args.setdefault("adv_ramp", s.steps // 6)
        if s.quick:
            args.setdefault("adv_batch", 8)
    return fam, args


def _data(name: str, s: TradeoffSettings):
    from latentserve.models.data import load_dataset

    size = 16 if s.quick and name == "shapes" else 32  # modes needs 32 px
    return load_dataset(name, image_size=size, n_train=s.n_train, n_test=s.n_test, seed=0)


def _bits_per_dim(run: Path, data) -> float | None:
    import torch

    from latentserve.models.data.base import to_model
    from latentserve.models.train import load_checkpoint

    family, _ = load_checkpoint(run)
    x = torch.from_numpy(to_model(data.test.images))
    figs = family.evaluate(x, torch.from_numpy(data.test.labels), torch.from_numpy(data.test.factors))
    v = figs.get("bits_per_dim", figs.get("bpd"))
    return None if v is None or not math.isfinite(v) else float(v)


def judged_figures(data, images_u8: np.ndarray, labels: np.ndarray) -> dict:
    """Class fidelity, PRDC in the judge's factor space and (modes) mode coverage of samples (N,H,W,3)."""
    judge = judge_for(data.name, dict(data.config))
    fake, real = judge(images_u8), judge(data.test.images)
    classes = list(data.class_names)
    specs = {f.name: f.to_dict() for f in data.factors}
    periods = [PERIOD[c] for c in classes] if all(c in PERIOD for c in classes) else None

    def feats(j, want):
        ok = (j.labels == want) & np.isfinite(j.factors).all(1)
        names = j.factor_names
        width = _factor_features(np.zeros((1, len(names))), np.zeros(1, np.int64), names, specs, periods,
                                 len(classes)).shape[1]
        out = np.full((len(want), width), FAR)
        if ok.any():
            out[ok] = _factor_features(j.factors[ok], j.labels[ok], names, specs, periods, len(classes))
        return out, ok

    real_f, real_ok = feats(real, data.test.labels)
    fake_f, fake_ok = feats(fake, labels)
    out = {"class_fidelity": float((fake.labels == labels).mean()), **prdc(real_f[real_ok], fake_f)}
    # recall from the accepted samples only: rejected ones sit together at FAR, and the k-NN radius of the few
    # accepted ones would then reach across everything
    out["recall"] = prdc(real_f[real_ok], fake_f[fake_ok])["recall"] if fake_ok.sum() > PRDC_K else 0.0
    if data.name == "modes":
        ids, _ = mode_of(images_u8, data.config["grid"], data.config["colours"])
        out["modes"] = mode_figures(ids, data.info["n_modes"])
    return out


def run_one(variant: str, data, seed: int, s: TradeoffSettings) -> dict:
    import torch

    from latentserve.models.bundle import ANCHORS
    from latentserve.models.export import export_run
    from latentserve.models.repository import Repository
    from latentserve.models.train import TrainConfig, train

    fam, args = family_args(variant, s)
    name = f"{data.name}-{variant}-s{seed}".replace("_", "-")
    root = Path(s.runs)
    run_dir = root / name
    torch.set_num_threads(s.threads)
    t0 = time.time()
    cfg = TrainConfig(family=fam, data=data.name, data_args=dict(data.config), steps=s.steps,
                      batch_size=s.batch_size, seed=seed, out=str(run_dir), ckpt_every=s.steps, eval_every=s.steps,
                      grid_every=10**9, threads=s.threads, device="cpu", family_args=args, eval_size=32)
    run = train(cfg, progress=False, dataset=data)
    train_s = time.time() - t0
    shutil.rmtree(root / "repo" / name, ignore_errors=True)
    density = ANCHORS if s.gmm == "anchors" and fam in ("gan", "vae") else {}
    record = export_run(run, name, repo_root=root / "repo", max_latent_fit=max(100, min(4000, len(data.train))), data=data,
                        fit_latents=True, knob_readouts=False, **density)
    record = Repository(root / "repo").load(name)
    space = _latent_space(record)
    source = default_sample_source(record.family, space.gmm_weights is not None, space.gmm_kind)
    temperature = float(record.manifest["prior"].get("sample_temperature", 1.0))
    n_classes = len(data.class_names)
    labels = np.arange(s.n_samples, dtype=np.int64) % n_classes
    z = _draw_fns(space, temperature)[source](labels, np.random.default_rng(seed + 1000))
    t1 = time.time()
    images = to_u8(decoder_fn(record, s.threads)(z.astype(np.float32), labels))
    row = {"data": data.name, "variant": variant, "seed": seed, "family": fam, "family_args": args,
           "source": source, "train_seconds": round(train_s, 1), "sample_seconds": round(time.time() - t1, 1),
           "bits_per_dim": _bits_per_dim(run, data), **judged_figures(data, images, labels)}
    return row


def tradeoff(s: TradeoffSettings, log=print) -> dict:
    rows = []
    for data_name in s.data:
        data = _data(data_name, s)
        for variant in s.variants:
            for seed in s.seeds:
                row = run_one(variant, data, seed, s)
                log(format_row(row))
                rows.append(row)
    return {"settings": asdict(s), "rows": rows, "summary": summarise(rows)}


def format_row(r: dict) -> str:
    m = r.get("modes")
    return (f"  {r['data']:<7} {r['variant']:<12} seed {r['seed']}: bits/dim {_f(r['bits_per_dim'])} precision "
            f"{_f(r['precision'])} recall {_f(r['recall'])} coverage {_f(r['coverage'])} fidelity "
            f"{_f(r['class_fidelity'])}" + (f" modes {m['recovered']}/{m['modes']} KL {_f(m['kl_uniform'])}" if m else "")
            + f" ({r['train_seconds']} s train, {r['sample_seconds']} s sampling)")


def _f(v, d: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


COLUMNS = [("bits/dim", "bits_per_dim"), ("precision", "precision"), ("recall", "recall"), ("coverage", "coverage"),
           ("class fidelity", "class_fidelity"), ("modes recovered", "recovered"), ("mode KL", "kl_uniform")]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (data, variant), in row order."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["data"], r["variant"])
        flat = {**(r.get("modes") or {}), **r}  # PRDC's precision, not the on-mode share (= class fidelity)
        cell = out.setdefault(key, {"data": r["data"], "variant": r["variant"], "seeds": 0, "values": {}})
        cell["seeds"] += 1
        for _, k in COLUMNS:
            if flat.get(k) is not None and k in flat:
                cell["values"].setdefault(k, []).append(float(flat[k]))
        if r.get("modes"):
            cell["n_modes"] = r["modes"]["modes"]
    for cell in out.values():
        cell["mean"] = {k: float(np.mean(v)) for k, v in cell["values"].items()}
        cell["sd"] = {k: float(np.std(v)) for k, v in cell["values"].items()}
    return list(out.values())


def format_table(summary: list[dict], markdown: bool = False) -> str:
    """The table (mean, +- sd over seeds when there are several); one row per data set and variant."""
    head = ["data", "model", "seeds"] + [c for c, _ in COLUMNS]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        lines.append("  ".join(f"{h:>15}" for h in head))
    for cell in summary:
        vals = [cell["data"], cell["variant"], str(cell["seeds"])]
        for _, k in COLUMNS:
            if k not in cell["mean"]:
                vals.append("n/a")
                continue
            digits = 0 if k == "recovered" else 3
            v = f"{cell['mean'][k]:.{digits}f}"
            if k == "recovered":
                v += f"/{cell['n_modes']}"
            if cell["seeds"] > 1:
                v += f" ± {cell['sd'][k]:.{digits}f}"
            vals.append(v)
        lines.append("| " + " | ".join(vals) + " |" if markdown else "  ".join(f"{v:>15}" for v in vals))
    return "\n".join(lines)
