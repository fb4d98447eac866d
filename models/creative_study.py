"""The CAN trade-off study: novelty against realism for several style-ambiguity weights (GANConfig.can_weight).

`python -m latentserve.models.creative_study --out DIR [--steps N] [--weights 0,0.3,1,3] [--form multiclass]`
trains one GAN per weight on `shapes` (everything else equal, `can_form` set for all, so weight 0 has the same
discriminator with its class head and no push). `--init-from RUN --set K=V ... --source anchors` instead
fine-tunes every weight from one pretrained run (e.g. the bundled recipe's autoencoder phase: G already draws
shapes, so the weight alone decides how far they move) and measures what Sample serves: each run exported with
the anchor mixture (latent.anchor_mixture), its samples decoded by the exported graph. Then on `n` samples per
class of each (prior samples of the EMA generator with `--source prior`):
- novelty: median pixel distance of a sample to its nearest training image over the same median for real test
  images (1 = as new as fresh real data; models/judges/scoring._novelty), and the mean entropy (nats) of the class
  posterior of a classifier trained on real training images only (models/judges/classifier.py; log 3 = 1.10 is
  "no known class at all");
- realism: the share that is "a shape at all" (models/judges/geometric.shape_at_all: one blob that some class
  fits within the judge's tolerance, no margin or corner check), the share the full judge names as some class,
  and the run's own discriminator: mean sigmoid of its real/fake score on the samples, and on real test images.
Writes DIR/runs/<name>/, DIR/creative.md (the table, commands, date, load) and DIR/creative_<name>.png grids.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from latentserve.models.data.render import contact_sheet

FAMILY_ARGS = {"g_width": 16, "d_width": 16, "e_width": 16, "w_ac": 0.0}  # CAN's G is steered by D alone


def sample_images(family, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (C*n, S, S, 3) prior samples of the EMA generator, labels (C*n,) class-major."""
    import torch

    from latentserve.models.judges.scoring import to_u8

    with torch.no_grad():
        x = family.sample_grid(n_per_class, seed).cpu().numpy()
    return to_u8(x), np.repeat(np.arange(family.n_classes), n_per_class)


def anchor_images(run: Path, repo: Path, name: str, data, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (C*n, S, S, 3) samples of a run as Sample serves them (export with the anchor mixture, decode with the
    exported graph), labels (C*n,) class-major."""
    import shutil

    from latentserve.models.bundle import ANCHORS
    from latentserve.models.evaluate import _latent_space, decoder_fn
    from latentserve.models.export import export_run
    from latentserve.models.judges.scoring import to_u8

    shutil.rmtree(repo / name, ignore_errors=True)
    record = export_run(run, name, repo_root=repo, data=data, knob_readouts=False, **ANCHORS)
    labels = np.repeat(np.arange(len(data.class_names)), n_per_class)
    z = _latent_space(record).sample_gmm(labels, np.random.default_rng(seed))
    return to_u8(decoder_fn(record)(z.astype(np.float32), labels)), labels


def d_realness(family, images_u8: np.ndarray) -> float:
    """Mean sigmoid of the run's discriminator's real/fake score over uint8 images."""
    import torch

    from latentserve.models.data.base import to_model

    family.d.eval()
    with torch.no_grad():
        x = torch.from_numpy(to_model(images_u8))
        score, _ = family.d.score_and_class(x, torch.zeros(len(x), dtype=torch.int64))
    return float(torch.sigmoid(score).mean())


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)


def measure(family, data, posteriors, n_per_class: int, real_nearest: float, train_ref: np.ndarray,
            samples: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The row of one run on `samples` (images, labels), or on its prior samples when None."""
    from latentserve.models.judges.geometric import judge_shapes, shape_at_all
    from latentserve.models.judges.scoring import _novelty

    x, y = samples if samples is not None else sample_images(family, n_per_class, seed=1)
    judged = judge_shapes(x).labels
    at_all, best_fit = shape_at_all(x)
    return {
        "novelty": _novelty(x, train_ref, real_nearest),
        "entropy": float(entropy(posteriors(x)).mean()),
        "shape_at_all": float(at_all.mean()),
        "best_fit": float(best_fit.mean()),
        "judged_some_class": float((judged >= 0).mean()),
        "judged_requested": float((judged == y).mean()),
        "d_samples": d_realness(family, x),
        "d_real": d_realness(family, data.test.images[:len(x)]),
    }


def study_parser(doc: str, steps: int, image_size: int, n: int) -> argparse.ArgumentParser:
    """The options every study has: --out DIR, --steps, --image-size, --n samples per class."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", required=True, help="directory of the runs, the table and the grids")
    ap.add_argument("--steps", type=int, default=steps, help=f"training steps per run (default {steps})")
    ap.add_argument("--image-size", type=int, default=image_size)
    ap.add_argument("--n", type=int, default=n, help=f"samples per class (default {n})")
    return ap


def start(args: argparse.Namespace) -> Path:
    """One torch thread (the studies share a small machine); the output directory, created."""
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(__doc__, steps=1500, image_size=16, n=200)
    ap.add_argument("--weights", default="0,0.3,1,3")
    ap.add_argument("--form", default="multiclass", choices=["multiclass", "binary"])
    ap.add_argument("--extra", default="binary:1", help="more runs, form:weight,... ('' = none)")
    ap.add_argument("--init-from", default=None, metavar="RUN", help="fine-tune every run from this run's weights")
    ap.add_argument("--set", action="append", default=[], metavar="K=V",
                    help="family config field for every run (replaces the small default nets' fields), repeatable")
    ap.add_argument("--source", default="prior", choices=["prior", "anchors"],
                    help="samples measured: the EMA generator's prior samples, or Sample's anchor mixture (export)")
    args = ap.parse_args(argv)
    from latentserve.commands.train import parse_assignments
    from latentserve.models.data import load_dataset
    from latentserve.models.judges.classifier import train_posterior_classifier
    from latentserve.models.judges.geometric import shape_at_all
    from latentserve.models.judges.scoring import _nearest
    from latentserve.models.train import TrainConfig, load_checkpoint, train

    out = start(args)
    data_args = {"image_size": args.image_size}
    data = load_dataset("shapes", **data_args)
    rng = np.random.default_rng(0)
    train_ref = data.train.images[rng.choice(len(data.train), 5000, replace=False)]
    real_nearest = float(np.median(_nearest(data.test.images[:600], train_ref)))
    posteriors = train_posterior_classifier(data.train.images, data.train.labels, data.meta(), seed=0)
    real_entropy = float(entropy(posteriors(data.test.images)).mean())
    real_acc = float((posteriors(data.test.images).argmax(1) == data.test.labels).mean())
    runs = [(args.form, float(w)) for w in args.weights.split(",")]
    runs += [(e.split(":")[0], float(e.split(":")[1])) for e in args.extra.split(",") if e]
    family_args = parse_assignments(args.set, "--set") if args.set else dict(FAMILY_ARGS)
    rows = []
    for form, weight in runs:
        name = f"{form}_{weight:g}"
        cfg = TrainConfig(family="gan", data="shapes", data_args=data_args, steps=args.steps, out=str(out / "runs" / name),
                          threads=1, ckpt_every=args.steps, init_from=args.init_from,
                          family_args={**family_args, "can_form": form, "can_weight": weight})
        run = train(cfg, progress=False, dataset=data)
        family, ckpt = load_checkpoint(run, "cpu")  # a finished run: measured again
        samples = (anchor_images(run, out / "repo", f"shapes-can-{name.replace('_', '-')}", data, args.n, seed=1)
                   if args.source == "anchors" else None)
        row = {"run": name, "form": form, "weight": weight, "train_s": round(float(ckpt.get("elapsed_seconds", 0))),
               **measure(family, data, posteriors, args.n, real_nearest, train_ref, samples)}
        rows.append(row)
        x = (samples[0].reshape(len(data.class_names), args.n, *samples[0].shape[1:])[:, :8].reshape(-1, *samples[0].shape[1:])
             if samples is not None else sample_images(family, 8, seed=2)[0])
        contact_sheet(x, ncol=8, upscale=4).save(out / f"creative_{name}.png")
        print(row, flush=True)
    at_all, best_fit = shape_at_all(data.test.images)
    write_markdown(out / "creative.md", rows, args, real_entropy, real_acc,
                   (float(at_all.mean()), float(best_fit.mean())), argv)
    return 0


def write_markdown(path: Path, rows: list[dict], args, real_entropy: float, real_acc: float, real_fit: tuple,
                   argv) -> None:
    load = os.getloadavg()
    lines = [
        f"## CAN trade-off ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
        f"Command: `python -m latentserve.models.creative_study {' '.join(sys.argv[1:] if argv is None else argv)}`; {args.steps} steps at batch 64, "
        f"{args.image_size} px shapes, {args.n} {'anchor-mixture' if args.source == 'anchors' else 'prior'} samples per class; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on 2 shared cores.",
        f"Real test images: posterior entropy {real_entropy:.3f} nats (classifier accuracy {real_acc:.3f}), "
        f"shape at all {real_fit[0]:.3f}, best fit {real_fit[1]:.3f}; novelty 1.0 by definition.", "",
        "| form | weight | novelty (NN dist / real's) | class entropy (nats, max 1.099) | shape at all | best fit "
        "(soft IoU) | judged some class | judged requested | D(sample) | D(real test) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['form']} | {r['weight']:g} | {r['novelty']:.3f} | {r['entropy']:.3f} | {r['shape_at_all']:.3f} "
                     f"| {r['best_fit']:.3f} "
                     f"| {r['judged_some_class']:.3f} | {r['judged_requested']:.3f} | {r['d_samples']:.3f} "
                     f"| {r['d_real']:.3f} | {r['train_s']} |")
    lines += ["", "Grids: " + ", ".join(f"`creative_{r['run']}.png`" for r in rows) + " (rows: the label G was given)."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
