"""GAN-test per class factor on `textured`: the decoupled shape / texture generator against a plain conditional GAN
trained at the same budget (the talk's table), and what swapping the texture does to the shape.

`python -m latentserve.models.decoupled_study --out DIR [--steps N]` trains both (GANConfig.g_arch "decoupled", and
"decoder" with one class embedding for the 12 combined classes, given twice the width so its generator is not the
smaller one; everything else equal), then on `n` prior samples per combined class of each:
- GAN-test of the shape: the geometric judge (models/judges/geometric.py) names the requested shape;
- GAN-test of the texture: a classifier trained on real training images' texture classes only
  (models/judges/classifier.py) names the requested texture; both: the two at once;
- texture swap: the same latents decoded with the next texture class (same shape): the soft IoU of the two images'
  coverage (1 = the outline kept exactly), the share of judged samples still judged the same shape (NaN when the
  judge names none), and the swapped texture's GAN-test.
`--set K=V` adds family fields to both variants (e.g. the bundled GAN recipe's autoencoder phase, `adv_start`);
`--source anchors` draws the latents from an anchor mixture of the run's encoded training images (500 per class,
bandwidth 0.1: what Sample serves for such a GAN, latent.anchor_mixture) instead of the N(0, I) prior.
Writes DIR/runs/<name>/, DIR/decoupled.md and DIR/decoupled_<name>.png (rows: the 12 classes; the second half
of the sheet: the same latents with the texture swapped).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from latentserve.models.creative_study import start, study_parser
from latentserve.models.data.render import contact_sheet

VARIANTS = {"plain": {"g_arch": "decoder", "g_width": 32}, "decoupled": {"g_arch": "decoupled", "g_width": 16}}
COMMON = {"d_width": 16, "e_width": 16}


def decode(family, z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    import torch

    from latentserve.models.judges.scoring import to_u8

    g = family.sampling_generator()
    with torch.no_grad():
        return to_u8(g(torch.from_numpy(z), torch.from_numpy(labels)).numpy())


def coverage_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Soft IoU (N,) of the brightest-channel coverage of two uint8 image batches."""
    ca, cb = a.max(-1).astype(np.float64) / 255, b.max(-1).astype(np.float64) / 255
    inter, union = np.minimum(ca, cb).sum((1, 2)), np.maximum(ca, cb).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 1.0)


def _share(flags: np.ndarray) -> float:
    """Mean of a bool array; NaN when empty (no sample to ask about)."""
    return float(flags.mean()) if len(flags) else float("nan")


def anchor_latents(family, data, labels: np.ndarray, seed: int) -> np.ndarray:
    """Latents (N, Z) for `labels` from an anchor mixture of the family's encoded training images (up to 6000)."""
    import torch

    from latentserve.models.data.base import to_model
    from latentserve.models.bundle import ANCHORS
    from latentserve.models.latent import LatentSpace, anchor_mixture

    n = min(6000, len(data.train))
    family.e.eval()
    with torch.no_grad():
        codes = np.concatenate([family.e(torch.from_numpy(to_model(data.train.images[i:i + 500])))[0].numpy()
                                for i in range(0, n, 500)])
    weights, means, variances = anchor_mixture(codes, data.train.labels[:n], family.n_classes,
                                               ANCHORS["gmm_components"], ANCHORS["gmm_bandwidth"], seed=0)
    space = LatentSpace(prior_type="standard_normal", latent_dim=codes.shape[1], n_classes=family.n_classes,
                        gmm_weights=weights, gmm_means=means, gmm_vars=variances, gmm_kind="anchors")
    return space.sample_gmm(labels, np.random.default_rng(seed))


def draw_latents(family, data, labels: np.ndarray, seed: int, source: str) -> np.ndarray:
    if source == "anchors":
        return anchor_latents(family, data, labels, seed)
    return np.random.default_rng(seed).standard_normal((len(labels), family.config.z_dim)).astype(np.float32)


def measure(family, texture_of, n_per_class: int, seed: int = 1, data=None, source: str = "prior") -> dict:
    from latentserve.models.data.textured import TEXTURE_NAMES, split_labels
    from latentserve.models.judges.geometric import judge_shapes

    n_tex = len(TEXTURE_NAMES)
    labels = np.repeat(np.arange(family.n_classes), n_per_class).astype(np.int64)
    z = draw_latents(family, data, labels, seed, source)
    shape, texture = split_labels(labels)
    x = decode(family, z, labels)
    swapped_labels = shape * n_tex + (texture + 1) % n_tex
    xs = decode(family, z, swapped_labels)
    judged, judged_s = judge_shapes(x).labels, judge_shapes(xs).labels
    tex, tex_s = texture_of(x), texture_of(xs)
    return {"shape": float((judged == shape).mean()), "texture": float((tex == texture).mean()),
            "both": float(((judged == shape) & (tex == texture)).mean()),
            "swap_iou": float(coverage_iou(x, xs).mean()), "swap_same_shape": _share((judged_s == judged)[judged >= 0]),
            "swap_texture": float((tex_s == (texture + 1) % n_tex).mean()),
            "g_params": int(sum(p.numel() for p in family.g.parameters()))}


def main(argv: list[str] | None = None) -> int:
    ap = study_parser(__doc__, steps=1000, image_size=32, n=50)
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="family field for both variants")
    ap.add_argument("--source", default="prior", choices=["prior", "anchors"], help="latents: N(0, I) or anchors")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="which variants to train (default both)")
    args = ap.parse_args(argv)
    from latentserve.commands.train import parse_assignments
    from latentserve.models.data import load_dataset
    from latentserve.models.data.textured import TEXTURE_NAMES, split_labels
    from latentserve.models.judges.classifier import train_classifier
    from latentserve.models.judges.geometric import judge_shapes
    from latentserve.models.train import TrainConfig, load_checkpoint, train

    out = start(args)
    data_args = {"image_size": args.image_size, "n_train": args.n_train, "n_test": 1200}
    data = load_dataset("textured", **data_args)
    tex_meta = {**data.meta(), "class_names": list(TEXTURE_NAMES)}
    texture_of = train_classifier(data.train.images, split_labels(data.train.labels)[1], tex_meta, seed=0)
    real_shape, real_tex = split_labels(data.test.labels)
    real = {"shape": float((judge_shapes(data.test.images).labels == real_shape).mean()),
            "texture": float((texture_of(data.test.images) == real_tex).mean())}
    rows = []
    extra = parse_assignments(args.set, "--set")
    for name in args.variants.split(","):
        cfg = TrainConfig(family="gan", data="textured", data_args=data_args, steps=args.steps, threads=1,
                          out=str(out / "runs" / name), ckpt_every=min(args.steps, 1000),
                          family_args={**COMMON, **VARIANTS[name], **extra})
        family, ckpt = load_checkpoint(train(cfg, progress=False, dataset=data), "cpu")  # a finished run: measured again
        row = {"model": name, "train_s": round(float(ckpt.get("elapsed_seconds", 0))),
               **measure(family, texture_of, args.n, data=data, source=args.source)}
        rows.append(row)
        print(row, flush=True)
        lab = np.repeat(np.arange(family.n_classes), 6)
        z = draw_latents(family, data, lab, 2, args.source)
        shape, texture = split_labels(lab)
        sheet = np.concatenate([decode(family, z, lab), decode(family, z, shape * 4 + (texture + 1) % 4)])
        contact_sheet(sheet, ncol=12, upscale=3).save(out / f"decoupled_{name}.png")
    write_markdown(out / "decoupled.md", rows, real, args, argv)
    return 0


def write_markdown(path: Path, rows: list[dict], real: dict, args, argv) -> None:
    load = os.getloadavg()
    lines = [
        f"## GAN-test per factor on textured ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
        f"Command: `python -m latentserve.models.decoupled_study {' '.join(sys.argv[1:] if argv is None else argv)}`; {args.steps} steps at batch 64, "
        f"{args.image_size} px, {args.n_train} training images, {args.n} {'anchor-mixture' if args.source == 'anchors' else 'prior'} samples per combined class (12 "
        f"classes); load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on 2 shared cores.",
        f"Real test images: shape judged right {real['shape']:.3f}, texture classifier right {real['texture']:.3f}.", "",
        "| model | G params | GAN-test shape (judge) | GAN-test texture (real-trained classifier) | both "
        "| texture swap: coverage IoU | swap: same judged shape | swap: new texture right | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['g_params']} | {r['shape']:.3f} | {r['texture']:.3f} | {r['both']:.3f} "
                     f"| {r['swap_iou']:.3f} | {r['swap_same_shape']:.3f} | {r['swap_texture']:.3f} | {r['train_s']} |")
    lines += ["", "Grids: " + ", ".join(f"`decoupled_{r['model']}.png`" for r in rows)
              + " (top half: 6 samples per class, class-major; bottom half: the same latents, next texture)."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
