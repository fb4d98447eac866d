"""Does synthetic data from the service help? Train the probe classifier three ways and score each on real
test images:

    real only        a small real training set (--real images)
    real + synthetic the same real images plus --synthetic images streamed from the service (every batch
                     half real, half synthetic)
    synthetic only   GAN-train: the service's images alone

The synthetic images come through `AugmentDataset` (latentserve/client/dataset.py): a reproducible job spec
(class-balanced counts, the model's sampling source, a seed), streamed with bounded prefetch. Real data: the
`shapes` dataset at the model's image size (a fresh draw: --data-seed), whose classes must be the model's.

    latentserve serve --repo models/repository &          # serves shapes-gan (and the others)
    python examples/augment_probe.py -t 127.0.0.1:9000 --model shapes-gan --real 150 --synthetic 3000

Needs the training extras (torch). Prints one table row per setting and the same figures as JSON (--json).
Steps and batch size are the same for every setting; each run is seeded, so reruns give the same figures.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def load_synthetic(target: str, model: str, count: int, seed: int, source: str, class_names: list[str],
                   token: str | None) -> tuple[np.ndarray, np.ndarray]:
    """`count` class-balanced images of `model` -> uint8 (N, H, W, 3), labels (N,)."""
    from latentserve.client.dataset import AugmentDataset

    per_class = [count // len(class_names) + (k < count % len(class_names)) for k in range(len(class_names))]
    spec = {"model": model, "class_counts": dict(zip(class_names, per_class)), "seed": seed, "source": source,
            "format": "uint8", "handles": False, "shard_size": 256}
    images, labels = [], []
    for image, label in AugmentDataset(target, spec, token=token, transform=np.asarray):
        images.append(image)
        labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64)


def train_probe(pools: list[tuple[np.ndarray, np.ndarray, np.ndarray]], test, meta: dict, steps: int, batch: int,
                seed: int) -> float:
    """Train a fresh probe on batches drawn equally from each (images, labels, factors) pool; test accuracy."""
    import torch

    from latentserve.models.data.base import to_model
    from latentserve.models.families.probe import ProbeFamily
    from latentserve.models.nets.probe import ProbeConfig

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    family = ProbeFamily(ProbeConfig(lr_schedule_steps=steps, warmup_steps=min(100, steps // 10)), meta)
    share = [batch // len(pools) + (i < batch % len(pools)) for i in range(len(pools))]
    for step in range(steps):
        xs, ys, fs = [], [], []
        for (images, labels, factors), n in zip(pools, share):
            rows = rng.integers(0, len(images), size=n)
            xs.append(images[rows])
            ys.append(labels[rows])
            fs.append(factors[rows])
        family.train_step(torch.from_numpy(to_model(np.concatenate(xs))), torch.from_numpy(np.concatenate(ys)),
                          torch.from_numpy(np.concatenate(fs)), step)
    x_test = torch.from_numpy(to_model(test.images))
    return family.evaluate(x_test, torch.from_numpy(test.labels), torch.from_numpy(test.factors))["acc"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-t", "--target", default="127.0.0.1:9000")
    p.add_argument("--token", default=None)
    p.add_argument("--model", default="shapes-gan")
    p.add_argument("--real", type=int, default=150, help="real training images (default 150)")
    p.add_argument("--synthetic", type=int, default=3000, help="synthetic training images (default 3000)")
    p.add_argument("--test", type=int, default=2000, help="real test images (default 2000)")
    p.add_argument("--steps", type=int, default=600, help="training steps per setting (default 600)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--source", default=None,
                   help="prior | latent_gmm (default: the one with the better GAN-test accuracy in the manifest)")
    p.add_argument("--seed", type=int, default=1, help="job seed of the synthetic data and the training seed")
    p.add_argument("--data-seed", type=int, default=123, help="seed of the real shapes draw")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    a = p.parse_args()

    import torch

    from latentserve.models.data import load_dataset
    from latentserve.client import LatentClient

    torch.set_num_threads(a.threads)
    with LatentClient(a.target, token=a.token) as client:
        info = client.get_model(a.model)
    data = load_dataset("shapes", image_size=info.image_size[0], n_train=a.real, n_test=a.test, seed=a.data_seed)
    if list(info.class_names) != list(data.class_names):
        raise SystemExit(f"{a.model} classes {list(info.class_names)} are not the shapes classes {data.class_names}")
    # default: the source whose samples the probe recognises best (the manifest's GAN-test accuracy)
    source = a.source or max(info.sample_sources, key=lambda s: info.metrics.get(f"gan_test.{s}.mean", -1.0))
    t0 = time.time()
    syn_x, syn_y = load_synthetic(a.target, a.model, a.synthetic, a.seed, source, list(info.class_names), a.token)
    fetch_s = time.time() - t0
    print(f"{a.model} v{info.version}: {len(syn_x)} synthetic images ({source}) in {fetch_s:.1f}s "
          f"({len(syn_x) / fetch_s:.0f} img/s); real: {len(data.train)} train, {len(data.test)} test")
    k = len(data.factors)
    real = (data.train.images, data.train.labels, data.train.factors)
    synthetic = (syn_x, syn_y, np.full((len(syn_x), k), np.nan, np.float32))  # factors unknown: masked out
    settings = {"real only": [real], "real + synthetic": [real, synthetic], "synthetic only (GAN-train)": [synthetic]}
    results = {}
    print(f"{'setting':<28} {'train images':>12} {'test acc':>9} {'seconds':>8}")
    for name, pools in settings.items():
        t = time.time()
        acc = train_probe(pools, data.test, data.meta(), a.steps, a.batch, a.seed)
        n = sum(len(pool[0]) for pool in pools)
        results[name] = {"train_images": n, "test_acc": acc, "seconds": round(time.time() - t, 1)}
        print(f"{name:<28} {n:>12} {acc:>9.3f} {results[name]['seconds']:>8.1f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"model": a.model, "version": info.version, "source": source, "steps": a.steps,
                       "batch": a.batch, "real": a.real, "synthetic": a.synthetic, "test": a.test,
                       "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
