"""`latentserve latent-report shapes-gan shapes-vae`: what the gradient-based latent ops buy, measured locally.

Runs the server's latent-ops math (models/latent_ops.py, TorchScript artefacts; needs PyTorch) on models of a
repository, with the server's default settings (ServeConfig), and prints per model: geodesic vs lerp path
length and evenness over random pairs (pixel and probe space), the probe's class accuracy of prior vs guided
samples for the same seeds, factor-target error of the linear knobs vs guided chains, and the reconstruction
error of the encoder alone vs refined. Only argparse at module level.
"""
from __future__ import annotations

import argparse

from latentserve.commands import positive_int


def register(sub) -> None:
    p = sub.add_parser("latent-report", help="measure geodesic / guided / refine latent ops against their baselines",
                       description="Measure the gradient-based latent ops on repository models with the server's "
                                   "defaults and print each next to its baseline: geodesic vs lerp paths, guided "
                                   "vs prior samples (probe accuracy), guided factor targets vs linear knobs, "
                                   "refined vs plain encoder reconstructions. Needs PyTorch.")
    p.add_argument("models", nargs="*", default=["shapes-gan", "shapes-vae"],
                   help="generative models to measure (default: shapes-gan shapes-vae)")
    p.add_argument("--repo", default=None, help="model repository root (default: the bundled models/repository)")
    p.add_argument("--pairs", type=positive_int, default=20, help="random pairs for geodesic vs lerp (default 20)")
    p.add_argument("--steps", type=positive_int, default=8, help="frames per path (default 8)")
    p.add_argument("--n-per-class", type=positive_int, default=50, help="samples per class, guided vs prior (default 50)")
    p.add_argument("--n-factor", type=positive_int, default=60, help="targets per factor, guided vs knob (default 60)")
    p.add_argument("--refine-images", type=positive_int, default=64, help="test images to refine (default 64)")
    p.add_argument("--refine-steps", type=positive_int, default=100, help="refinement steps (default 100)")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="geodesic iterations (default: the server's geodesic_iterations)")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw (default 0)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: extra threads spin-wait badly on a busy machine)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from latentserve.errors import UnsupportedError
    from latentserve.services.config import ServeConfig

    try:
        import torch
    except ImportError:
        raise UnsupportedError("latent-report needs PyTorch: pip install 'latentserve[latent-ops]'") from None
    from latentserve.models.latent_report import ReportSettings, format_report, model_report
    from latentserve.models.repository import Repository

    torch.set_num_threads(args.threads)
    cfg = ServeConfig()  # the server's defaults for every option a request leaves at 0
    settings = ReportSettings(
        pairs=args.pairs, steps=args.steps, geodesic_iterations=args.iterations or cfg.geodesic_iterations,
        geodesic_learning_rate=cfg.geodesic_learning_rate, n_per_class=args.n_per_class, n_factor=args.n_factor,
        guidance_steps=cfg.guidance_steps, guidance_step_size=cfg.guidance_step_size,
        guidance_class_weight=cfg.guidance_class_weight, guidance_noise=cfg.guidance_noise,
        guidance_factor_weight=cfg.guidance_factor_weight, refine_images=args.refine_images,
        refine_steps=args.refine_steps, refine_learning_rate=cfg.refine_learning_rate, seed=args.seed)
    repo = Repository(args.repo)
    reports = []
    for name in args.models:
        rep = model_report(repo, name, settings)
        print(format_report(rep), flush=True)
        reports.append(rep)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(reports, fh, indent=2)
        print(f"wrote {args.json}")
    return 0
