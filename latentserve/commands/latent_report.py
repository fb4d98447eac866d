"""`latentserve latent-report shapes-gan shapes-vae`: what the gradient-based latent ops buy, measured locally.

Runs the server's latent-ops math (models/latent_ops.py, TorchScript artefacts; needs PyTorch) on models of a
repository, with the server's default settings (ServeConfig), and prints per model: geodesic vs lerp path
length and evenness over random pairs (pixel and probe space), the probe's class accuracy of prior vs guided
samples for the same seeds, factor-target error of the linear knobs vs guided chains, and the reconstruction
error of the encoder alone vs refined. `--disks-holdout` adds the generalisation experiment of
models/disks_holdout.py (trains or reuses a small VAE with a held-out radius band and a probe on all radii);
with `--disks-families gan,vae,ae,ae-contractive,ae-smooth` it compares those variants at one budget instead
(models/generalisation.py: reconstruction, midpoint and sample radii judged by geometry);
`--markdown DIR` writes DIR/report.md with every table and PNG strips of lerp / slerp / geodesic paths.
`--tradeoff` trains GAN, GAN + mixed batches, VAE, VAE + autoregressive decoder, flow and the flow hybrid at one
budget and prints the coverage / quality table (models/tradeoff.py); `--quick` makes it tiny (tests).
Only argparse at module level.
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
    p.add_argument("models", nargs="*", default=[],
                   help="generative models to measure (default: shapes-gan shapes-vae, none with --disks-holdout)")
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
    p.add_argument("--markdown", default=None, metavar="DIR",
                   help="also write DIR/report.md with the tables and PNG strips of lerp/slerp/geodesic paths")
    p.add_argument("--strip-pairs", type=positive_int, default=3,
                   help="random pairs per model drawn as path strips in the markdown (default 3)")
    p.add_argument("--disks-holdout", action="store_true",
                   help="also run the held-out radius band experiment on disks: train (or reuse) a small VAE "
                        "without the band and a probe on all radii, then measure lerp/geodesic midpoints "
                        "between radii on either side of the band")
    p.add_argument("--disks-band", default="0.2:0.25", metavar="LO:HI",
                   help="held-out radius band, fraction of the image side (default 0.2:0.25)")
    p.add_argument("--disks-image-size", type=positive_int, default=16, help="disk image size (default 16)")
    p.add_argument("--disks-runs", default="runs/disks-holdout", metavar="DIR",
                   help="training runs of the disks experiment, reused when present; the scratch repository "
                        "is DIR/repo (default runs/disks-holdout)")
    p.add_argument("--disks-families", default=None, metavar="LIST",
                   help="with --disks-holdout: compare these comma-separated variants at one training budget instead "
                        "(gan, vae, ae, ae-contractive, ae-smooth; models/generalisation.py), radii judged by geometry")
    p.add_argument("--disks-steps", type=positive_int, default=1500,
                   help="training steps of every variant of --disks-families (default 1500)")
    t = p.add_argument_group("coverage / quality trade-off (models/tradeoff.py)")
    t.add_argument("--tradeoff", action="store_true",
                   help="train every variant at the same budget on each data set and print the table of bits/dim, "
                        "precision, recall, coverage, judged class fidelity and modes recovered")
    t.add_argument("--tradeoff-steps", type=positive_int, default=1500, help="training steps per model (default 1500)")
    t.add_argument("--tradeoff-seeds", default="0", metavar="S[,S...]", help="training seeds (default 0)")
    t.add_argument("--tradeoff-data", default="modes,shapes", metavar="D[,D...]",
                   help="data sets: modes, shapes (default both)")
    t.add_argument("--tradeoff-variants", default="gan,gan_mixed,vae,vae_ar,flow,flow_hybrid", metavar="V[,V...]",
                   help="variants (default the six above; also gan_mr, gan_mr_mixed: the project's "
                        "mode-regularised GAN recipe with each discriminator)")
    t.add_argument("--tradeoff-batch", type=positive_int, default=64, help="training batch size (default 64)")
    t.add_argument("--tradeoff-samples", type=positive_int, default=1000, help="samples judged per model (default 1000)")
    t.add_argument("--tradeoff-runs", default="runs/tradeoff", metavar="DIR",
                   help="training runs (reused when finished with the same settings) and DIR/repo (default runs/tradeoff)")
    t.add_argument("--tradeoff-gmm", choices=["auto", "anchors"], default="auto",
                   help="latent density of each export: the default fit, or the anchor mixture the bundled GAN serves")
    t.add_argument("--tradeoff-set", action="append", default=[], metavar="VARIANT.FIELD=VALUE",
                   help="override a variant's family setting, e.g. vae_ar.aux_weight=10 (repeatable)")
    t.add_argument("--quick", action="store_true", help="tiny nets and data for the trade-off (tests; figures meaningless)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from latentserve.errors import UnsupportedError
    from latentserve.services.config import ServeConfig

    try:
        import torch
    except ImportError:
        raise UnsupportedError("latent-report needs PyTorch, the latent-ops extra: "
                               "pip install -e '.[latent-ops]'") from None
    from latentserve.models.latent_report import ReportSettings, format_report, model_report
    from latentserve.models.repository import Repository

    torch.set_num_threads(args.threads)
    cfg = ServeConfig()  # the server's defaults for every option a request leaves at 0
    settings = ReportSettings(
        pairs=args.pairs, steps=args.steps, geodesic_iterations=args.iterations or cfg.latent_ops.geodesic_iterations,
        geodesic_learning_rate=cfg.latent_ops.geodesic_learning_rate, n_per_class=args.n_per_class, n_factor=args.n_factor,
        guidance_steps=cfg.latent_ops.guidance_steps, guidance_step_size=cfg.latent_ops.guidance_step_size,
        guidance_class_weight=cfg.latent_ops.guidance_class_weight, guidance_noise=cfg.latent_ops.guidance_noise,
        guidance_factor_weight=cfg.latent_ops.guidance_factor_weight, refine_images=args.refine_images,
        refine_steps=args.refine_steps, refine_learning_rate=cfg.latent_ops.refine_learning_rate, seed=args.seed)
    holdout_settings = _holdout_settings(args, cfg) if args.disks_holdout else None
    tradeoff_settings = _tradeoff_settings(args) if args.tradeoff else None
    models = args.models or ([] if args.disks_holdout or args.tradeoff else ["shapes-gan", "shapes-vae"])
    repo = Repository(args.repo)
    reports, strips = [], {}
    for name in models:
        rep = model_report(repo, name, settings)
        print(format_report(rep), flush=True)
        reports.append(rep)
        if args.markdown:
            strips[name] = _strips(repo, name, settings, args.strip_pairs)
    holdout = None
    if holdout_settings is not None and args.disks_families:
        return _generalisation(args, holdout_settings)
    if holdout_settings is not None:
        from latentserve.models.disks_holdout import disks_holdout, format_holdout

        holdout = disks_holdout(args.disks_runs, holdout_settings, threads=args.threads)
        print(format_holdout(holdout), flush=True)
    table = None
    if tradeoff_settings is not None:
        from latentserve.models.tradeoff import format_table, tradeoff

        table = tradeoff(tradeoff_settings, log=lambda line: print(line, flush=True))
        print(format_table(table["summary"]), flush=True)
    if args.json:
        figures = {"models": reports, "disks_holdout": _without_images(holdout)} if holdout else reports
        if table is not None:
            figures = {"models": reports, "tradeoff": table, **({"disks_holdout": _without_images(holdout)}
                                                                  if holdout else {})}
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)
        print(f"wrote {args.json}")
    if args.markdown:
        import shlex
        import sys

        from latentserve.models.latent_report_markdown import write_markdown

        command = "latentserve " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        print(f"wrote {write_markdown(args.markdown, reports, strips, holdout, command)}")
        if table is not None:
            from pathlib import Path

            from latentserve.models.tradeoff import format_table

            path = Path(args.markdown) / "tradeoff.md"
            path.write_text(f"`{command}`\n\n{format_table(table['summary'], markdown=True)}\n")
            print(f"wrote {path}")
    return 0


def _tradeoff_settings(args: argparse.Namespace):
    from latentserve.errors import ValidationError
    from latentserve.models.tradeoff import TradeoffSettings

    try:
        seeds = tuple(int(v) for v in args.tradeoff_seeds.split(","))
    except ValueError:
        raise ValidationError(f"--tradeoff-seeds must be integers separated by commas, got {args.tradeoff_seeds!r}") from None
    split = lambda text: tuple(v.strip() for v in text.split(",") if v.strip())  # noqa: E731
    quick = dict(n_train=100, n_test=40, batch_size=16) if args.quick else {"batch_size": args.tradeoff_batch}
    from latentserve.commands.train import parse_assignments

    extra: dict = {}
    for key, value in parse_assignments(args.tradeoff_set, "--tradeoff-set").items():
        variant, dot, name = key.partition(".")
        if not dot or not name:
            raise ValidationError(f"--tradeoff-set expects VARIANT.FIELD=VALUE, got {key!r}")
        extra.setdefault(variant, {})[name] = value
    return TradeoffSettings(extra=extra, steps=args.tradeoff_steps, seeds=seeds, data=split(args.tradeoff_data),
                            variants=split(args.tradeoff_variants), n_samples=args.tradeoff_samples,
                            quick=args.quick, runs=args.tradeoff_runs, threads=args.threads, gmm=args.tradeoff_gmm,
                            **quick)


def _holdout_settings(args: argparse.Namespace, cfg):
    from latentserve.errors import ValidationError
    from latentserve.models.data import parse_holdout
    from latentserve.models.disks_holdout import HoldoutSettings

    band = parse_holdout(f"radius={args.disks_band}")["radius"]
    if not band[0] < band[1]:
        raise ValidationError(f"--disks-band must be LO:HI with LO < HI, got {args.disks_band}")
    return HoldoutSettings(band=(band[0], band[1]), image_size=args.disks_image_size, seed=args.seed,
                           geodesic_iterations=args.iterations or cfg.latent_ops.geodesic_iterations,
                           geodesic_learning_rate=cfg.latent_ops.geodesic_learning_rate)


def _strips(repo, name: str, s, pairs: int) -> list[dict]:
    from latentserve.models import latent_ops
    from latentserve.models.latent_report import _temperature
    from latentserve.models.latent_report_markdown import path_strips

    record = repo.load(name)
    graphs, _ = latent_ops.graphs_for_record(repo, record)
    return path_strips(graphs, repo.latent_space(record), len(record.class_names), _temperature(record), pairs,
                       s.steps, s.geodesic_iterations, s.geodesic_learning_rate, s.seed + 100)


def _without_images(holdout: dict) -> dict:
    return {k: v for k, v in holdout.items() if k != "strips"}


def _generalisation(args: argparse.Namespace, hs) -> int:
    """--disks-holdout --disks-families: the multi-family study (models/generalisation.py) with its table, JSON,
    and with --markdown DIR the PNG plots and DIR/generalisation.md."""
    import json
    import shlex
    import sys
    from pathlib import Path

    from latentserve.errors import ValidationError
    from latentserve.models.generalisation import VARIANTS, StudySettings, format_study, generalisation, write_plots

    variants = tuple(v.strip() for v in args.disks_families.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValidationError(f"--disks-families: unknown variant(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(VARIANTS)}")
    s = StudySettings(band=hs.band, image_size=hs.image_size, seed=hs.seed, steps=args.disks_steps, variants=variants,
                      geodesic_iterations=hs.geodesic_iterations, geodesic_learning_rate=hs.geodesic_learning_rate)
    rep = generalisation(args.disks_runs, s, threads=args.threads)
    table = format_study(rep)
    print(table, flush=True)
    plain = {**rep, "rows": {k: {f: v for f, v in r.items() if f != "plot"} for k, r in rep["rows"].items()}}
    if args.json:
        Path(args.json).write_text(json.dumps({"generalisation": plain}, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        files = write_plots(rep, args.markdown)
        command = "latentserve " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
        md = Path(args.markdown) / "generalisation.md"
        md.write_text("\n".join(["# Generalisation into a held-out radius band", "", f"`{command}`", "", "```",
                                  table, "```", ""] + [f"![{f.stem}]({f.name})" for f in files]) + "\n")
        print(f"wrote {md}")
    return 0
