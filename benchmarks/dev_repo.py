"""Builds a development model repository for the serving benchmark: the real GAN family (default recipe,
32x32 shapes, D=64) with UNTRAINED weights, exported by models/export.py like a bundled model (ONNX +
TorchScript, latent space, manifest with checksums).

The decoder has exactly the bundled model's architecture and cost, so serving figures measured on it carry
over; only image quality is meaningless. Use it until models/repository/shapes-gan exists:

    python benchmarks/dev_repo.py --repo /tmp/bench-repo            # -> /tmp/bench-repo/shapes-gan/1/
    latentserve bench --repo /tmp/bench-repo --start
"""
from __future__ import annotations

import argparse
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default="/tmp/bench-repo", help="repository root to write into")
    p.add_argument("--name", default="shapes-gan", help="model name (default shapes-gan)")
    p.add_argument("--image-size", type=int, default=32, choices=(16, 32, 64))
    p.add_argument("--z-dim", type=int, default=64)
    p.add_argument("--n-train", type=int, default=512, help="training images for the latent-space fit")
    a = p.parse_args()

    import torch

    from latentserve.models.data import load_dataset
    from latentserve.models.export import ExportConfig, export_family
    from latentserve.models.families import get_family

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_dataset("shapes", image_size=a.image_size, n_train=a.n_train, n_test=64)
    fam_cls = get_family("gan")
    family = fam_cls(fam_cls.config_cls(z_dim=a.z_dim), data.meta(), torch.device("cpu"))
    t0 = time.time()
    record = export_family(family, a.name, data, {"train_config": {"note": "untrained: benchmark only"},
                                                  "steps": 0, "seconds": 0.0, "final_losses": {}},
                           repo_root=a.repo, config=ExportConfig(max_latent_fit=max(100, a.n_train), n_pca=4,
                                                                 gmm_components=2))
    print(f"wrote {record.path} ({a.name} v{record.version}, untrained GAN, {a.image_size}px, D={a.z_dim}) "
          f"in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
