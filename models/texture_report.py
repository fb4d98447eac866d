"""Texture report of a trained spatial GAN (issue #22 part 4): samples at several sizes judged classically.

`python -m latentserve.models.texture_report RUN_DIR --out DIR`: from the run's checkpoint (EMA generator,
waves rounded to whole cycles so every sample tiles), per output size and class:
- class: the share of samples the nearest-centroid classifier of real crops (models/judges/texture.py, fitted
  on real textures of that size) gives the class they were drawn for; the same classifier on real test crops
  is the ceiling;
- stats: the distance between the samples' and real textures' mean filter-bank statistics (in units of the
  real statistics' spread over all classes),
  beside the same distance between two independent real sets (the floor);
- spectrum: the mean |difference| of log power spectra, samples vs real, beside real vs real;
- seam: the median seam score of the 2 x 2 tiling (1 = seamless) of samples, beside real crops (not periodic).
Writes `grid-<size>.png` (a row per class), `tiled-128.png` (one sample per class tiled 2 x 2), `classes.png`
(one latent decoded under every class: edit by class) and `blend.png` (lerp between two samples' latents of
different classes) into DIR, and prints the table as markdown.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from PIL import Image

from latentserve.models.data import textures as T
from latentserve.models.data.base import to_uint8
from latentserve.models.judges import texture as J

SIZES = (32, 128, 512)
PER_CLASS = {32: 40, 128: 12, 512: 3}  # samples per class judged at each size
REAL_PER_CLASS = {32: 40, 128: 20, 512: 8}  # real textures per class and split (the 512 px filter bank is slow)
GRID_COLS = {32: 8, 128: 4, 512: 2}


def real_textures(n: int, size: int, split: str, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """n real crops (uint8, labels) at `size` with the data set's parameter draws."""
    labels, factors, offsets, seeds = T.sample_params(seed, split, n)
    ims = np.stack([T.render(int(labels[i]), *map(float, factors[i]), size, tuple(offsets[i]), int(seeds[i]))
                    for i in range(n)])
    return ims, labels


def _u8(x) -> np.ndarray:
    return to_uint8(x.detach().float().cpu().numpy())


def _save_rows(rows: list[np.ndarray], path, pad: int = 4) -> None:
    """rows: lists of equal-size uint8 images, one PNG row each."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 32, np.uint8)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = im
    Image.fromarray(canvas).save(path)


def report(family, out_dir, seed: int = 0) -> list[dict]:
    """The table's rows (one per size and class) for a trained SGANFamily; writes the PNGs into out_dir."""
    import torch

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_classes = len(T.CLASS_NAMES)
    rows = []
    for size in SIZES:
        k = PER_CLASS[size]
        labels = torch.arange(n_classes).repeat_interleave(k)
        fake = np.concatenate([_u8(family.sample(labels[i:i + 10], size, seed + i)) for i in range(0, len(labels), 10)])
        fl = labels.numpy()
        n_real = n_classes * REAL_PER_CLASS[size]
        train, tl = real_textures(n_real, size, "train")
        test, vl = real_textures(n_real, size, "test")
        clf = J.NearestCentroid(J.shape_stats(train), tl, n_classes)
        pred_fake, pred_real = clf.predict(J.shape_stats(fake)), clf.predict(J.shape_stats(test))
        sf, st, sv = J.invariant_stats(fake), J.invariant_stats(train), J.invariant_stats(test)
        seam_fake, seam_real = J.seam(fake), J.seam(test)
        spread = st.std(0)  # over every class: the statistics' scale
        for c in range(n_classes):
            f, r, v = fl == c, tl == c, vl == c
            rows.append({
                "size": size, "class": T.CLASS_NAMES[c], "n": int(f.sum()),
                "class_ok": float((pred_fake[f] == c).mean()), "class_ok_real": float((pred_real[v] == c).mean()),
                "stats": J.stat_distance(st[r], sf[f], spread), "stats_real": J.stat_distance(st[r], sv[v], spread),
                "spectrum": J.spectrum_distance(train[r], fake[f]),
                "spectrum_real": J.spectrum_distance(train[r], test[v]),
                "seam": float(np.median(seam_fake[f])), "seam_real": float(np.median(seam_real[v])),
            })
        cols = GRID_COLS[size]
        _save_rows([[fake[i] for i in np.flatnonzero(fl == c)[:cols]] for c in range(n_classes)],
                   out / f"grid-{size}.png")
        if size == 128:
            one = [fake[np.flatnonzero(fl == c)[0]] for c in range(n_classes)]
            _save_rows([[np.tile(im, (2, 2, 1)) for im in one]], out / "tiled-128.png")
    gen = torch.Generator().manual_seed(seed + 99)
    from latentserve.models.families.sgan import draw_latent

    z = draw_latent(2, family.config, gen).to(family.device)
    noise = family.noise(1, 128, gen).to(family.device)
    with torch.no_grad():
        by_class = family.g_ema(z[:1].repeat(n_classes, 1), torch.arange(n_classes), noise.repeat(n_classes, 1, 1, 1),
                                tile=True)
        t = torch.linspace(0, 1, 6)[:, None]
        blend = family.g_ema((1 - t) * z[:1] + t * z[1:], torch.tensor([0, 0, 0, 4, 4, 4]),
                             noise.repeat(6, 1, 1, 1), tile=True)
    _save_rows([list(_u8(by_class))], out / "classes.png")
    _save_rows([list(_u8(blend))], out / "blend.png")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| size px | class | n | judged its class (real) | stats distance (real vs real) | spectrum distance "
             "(real vs real) | seam, 1 = seamless (real crops) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['class']} | {r['n']} | {r['class_ok']:.0%} ({r['class_ok_real']:.0%}) | "
                     f"{r['stats']:.2f} ({r['stats_real']:.2f}) | {r['spectrum']:.2f} ({r['spectrum_real']:.2f}) | "
                     f"{r['seam']:.2f} ({r['seam_real']:.2f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from latentserve.models.train import load_checkpoint

    p = argparse.ArgumentParser(prog="python -m latentserve.models.texture_report")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--json", default="")
    p.add_argument("--generator", choices=("ema", "raw"), default="ema",
                   help="which generator draws: the EMA of the weights (export's) or the raw one, for runs too short "
                        "for the EMA (decay 0.999 averages ~1000 steps) to have caught up")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    family, ckpt = load_checkpoint(args.run_dir)
    if args.generator == "raw":
        family.g_ema = family.g  # report() and family.sample() draw with g_ema
    rows = report(family, args.out)
    print(f"{args.run_dir}: step {ckpt['step']}, {args.generator} generator")
    print(markdown(rows))
    print(f"{time.time() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"step": ckpt["step"], "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
