"""What a vector model buys at a larger output size: edge sharpness and class fidelity at 4x its native size,
against raster models whose native samples are upsampled bicubically to the same size.

`python -m latentserve.models.vector_report --model shapes-vector --raster shapes-gan shapes-vae [--repo DIR]
[--n 60] [--sheet PATH]` prints one table. Every model is sampled from its default sample source (the served
default path), `n` images per class, fixed seed. The vector model is drawn from its decoder's layers at the
native size and at `--scale` x (models/vector.py, exactly as Decode with output_size draws); each raster model's
native samples are resized with PIL's bicubic filter. Real test images rendered at both sizes are the reference.

Figures:
- edge_px: the 10-90% width of the edges in output pixels, estimated over the whole image as (pixels whose
  brightness lies between 10% and 90% of the shape's) / (total variation of the brightness): an ideal edge of
  width w over a perimeter P has w P such pixels and a variation of P. Lower = crisper.
- fidelity: the geometric judge (models/judges/geometric.py, any size) per class: the share of samples judged
  their requested class.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from latentserve.models import vector as vec
from latentserve.models.evaluate import OnnxGraph, _latent_space, decoder_fn
from latentserve.models.judges.geometric import judge_shapes
from latentserve.models.judges.scoring import to_u8
from latentserve.models.latent import default_sample_source
from latentserve.models.repository import Repository

SEED = 2024


def edge_width_px(images: np.ndarray) -> float:
    """uint8 (N, S, S, 3) -> the mean 10-90% edge width in pixels (see the module docstring)."""
    v = images.max(axis=3).astype(np.float64)  # brightness: a shape of any hue at full value
    widths = []
    for img in v:
        top = np.percentile(img, 99.5)
        if top < 32:  # an empty image has no edge
            continue
        b = np.clip(img / top, 0.0, 1.0)
        tv = np.abs(np.diff(b, axis=0)).sum() + np.abs(np.diff(b, axis=1)).sum()
        if tv > 0:
            widths.append(float(((b > 0.1) & (b < 0.9)).sum() / tv))
    return float(np.mean(widths)) if widths else float("nan")


def fidelity(images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    judged = judge_shapes(images).labels
    return {c: float((judged[labels == k] == k).mean()) for k, c in enumerate(class_names)}


def _samples(record, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    space = _latent_space(record)
    labels = np.repeat(np.arange(len(record.class_names)), n_per_class).astype(np.int64)
    rng = np.random.default_rng(SEED)
    source = default_sample_source(record.family, space.gmm_weights is not None, space.gmm_kind)
    z = space.sample_gmm(labels, rng) if source == "latent_gmm" else space.sample_prior(labels, rng)
    return z.astype(np.float32), labels


def _bicubic(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])


def vector_images(record, n_per_class: int, sizes: tuple[int, ...]) -> tuple[dict[int, np.ndarray], np.ndarray]:
    z, labels = _samples(record, n_per_class)
    out = OnnxGraph(record, "decoder")(latent=z, label=labels)
    spec = record.manifest["vector"]
    return {s: to_u8(vec.render(out["layers"], out["background"], spec["layers"], s, spec["edge_px"]))
            for s in sizes}, labels


def report(repo: Repository, model: str, rasters: list[str], n_per_class: int = 60, scale: int = 4,
           raster_repo: Repository | None = None) -> list[dict]:
    from latentserve.models.data import load_dataset

    rec = repo.load(model)
    native = int(rec.manifest["image_shape"][-1])
    big = native * scale
    names = list(rec.class_names)
    rows = []
    imgs, labels = vector_images(rec, n_per_class, (native, big))
    rows.append({"what": f"{model} (vector) drawn at {big} px", "size": big, "edge_px": edge_width_px(imgs[big]),
                 **{f"{c}@{native}": v for c, v in fidelity(imgs[native], labels, names).items()},
                 **{f"{c}@{big}": v for c, v in fidelity(imgs[big], labels, names).items()}})
    rows += report_rasters(raster_repo or repo, rasters, rec, n_per_class, scale)
    for size, how in ((big, f"rendered at {big} px"), (native, f"{native} px, bicubic x{scale}")):
        test = load_dataset("shapes", image_size=size, n_train=1, n_test=3 * n_per_class, seed=0).test
        real = test.images if size == big else _bicubic(test.images, big)
        rows.append({"what": f"real test images {how}", "size": big, "edge_px": edge_width_px(real),
                     **{f"{c}@{big}": v for c, v in fidelity(real, test.labels, names).items()}})
    return rows


def sheet(repo: Repository, model: str, path: str, sizes: tuple[int, ...] = (32, 128), n_per_class: int = 4) -> None:
    """PNG: each class's samples at each size (the small ones scaled up by pixel repetition, to see them)."""
    from PIL import Image

    rec = repo.load(model)
    imgs, labels = vector_images(rec, n_per_class, sizes)
    top = max(sizes)
    rows = []
    for s in sizes:
        rep = top // s
        tiles = [np.kron(im, np.ones((rep, rep, 1), np.uint8)) for im in imgs[s]]
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=80) for t in tiles], 1))
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def format_rows(rows: list[dict]) -> str:
    keys = sorted({k for r in rows for k in r if "@" in k}, key=lambda k: (int(k.split("@")[1]), k))
    lines = ["| images | edge 10-90% (px) | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.2f}" if k in r else "" for k in keys]
        lines.append(f"| {r['what']} | {r['edge_px']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentserve.models.vector_report", description=__doc__.split("\n")[0])
    p.add_argument("--repo", default=None, help="model repository (default: the bundled one)")
    p.add_argument("--model", required=True)
    p.add_argument("--raster", nargs="*", default=["shapes-gan", "shapes-vae"])
    p.add_argument("--raster-repo", default=None, help="repository of the raster models (default: --repo)")
    p.add_argument("--n", type=int, default=60, help="samples per class")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--sheet", default=None, help="write a sample sheet PNG (32 and 128 px) here")
    a = p.parse_args(argv)
    repo = Repository(a.repo) if a.repo else Repository()
    rows = report(repo, a.model, a.raster, a.n, a.scale, Repository(a.raster_repo) if a.raster_repo else None)
    print(format_rows(rows))
    if a.sheet:
        sheet(repo, a.model, a.sheet)
        print(f"wrote {a.sheet}")
    return 0


def report_rasters(repo: Repository, rasters: list[str], vector_record, n_per_class: int, scale: int) -> list[dict]:
    native = int(vector_record.manifest["image_shape"][-1])
    big = native * scale
    names = list(vector_record.class_names)
    rows = []
    for name in rasters:
        r = repo.load(name)
        z, y = _samples(r, n_per_class)
        small = to_u8(decoder_fn(r)(z, y))
        up = _bicubic(small, big)
        rows.append({"what": f"{name} ({r.family}) {native} px, bicubic x{scale}", "size": big,
                     "edge_px": edge_width_px(up),
                     **{f"{c}@{native}": v for c, v in fidelity(small, y, names).items()},
                     **{f"{c}@{big}": v for c, v in fidelity(up, y, names).items()}})
    return rows


if __name__ == "__main__":
    sys.exit(main())
