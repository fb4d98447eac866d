"""`latentserve sample MODEL -n 16 [--class NAME | --class-weights a=1,b=2] [--knob scale=0.8] -o grid.png`:
conditional samples from a served model, written as one PNG grid (and optionally their latents).
"""
from __future__ import annotations

import argparse

from latentserve.commands.models import add_client_options, add_version_option, connect


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample images from a served model into a PNG grid",
                       description="Sample images from the prior, the per-class latent GMM or guided sampling, "
                                   "with knobs in factor units, and write them as a PNG grid.")
    p.add_argument("model", help="model name")
    p.add_argument("-n", type=int, default=16, help="number of images (default 16)")
    cls = p.add_mutually_exclusive_group()
    cls.add_argument("--class", dest="class_name", default=None, help="class name (or index) of every image")
    cls.add_argument("--class-weights", default=None, metavar="A=W,B=W",
                     help="draw classes with these weights, e.g. ellipse=1,square=2")
    p.add_argument("--class-factor", action="append", default=[], metavar="FACTOR=CLASS",
                   help="a model with class factors (e.g. textured: shape, texture): this factor's class for every "
                        "image, the others drawn (repeatable; not with --class / --class-weights)")
    p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="set a factor to a target value in its units (repeatable), e.g. --knob scale=0.8")
    p.add_argument("--allow-weak-knobs", action="store_true",
                   help="use knobs below their quality gate (`latentserve models NAME` marks them); refused otherwise")
    p.add_argument("--hold", action="append", default=[], metavar="FACTOR",
                   help="keep this factor fixed while the knobs move (repeatable): conditional directions")
    p.add_argument("--seed", type=int, default=0,
                   help="same non-zero seed and options -> same images (default 0: a fresh random seed)")
    p.add_argument("--temperature", type=float, default=0.0, help="prior temperature; 0 = model default")
    p.add_argument("--source", choices=["prior", "latent_gmm", "guided"], default=None,
                   help="where latents come from (default: the model's default source, see `latentserve models "
                        "NAME`: the latent GMM for a VAE, else the prior)")
    p.add_argument("--class-check", type=float, default=0.0, metavar="P",
                   help="label check: redraw images whose label the model's own class head gives less than P "
                        "(0 = the model's default for the source, see `latentserve models NAME`; < 0 = off)")
    g = p.add_argument_group("guided sampling (--source guided; 0 = server default)")
    g.add_argument("--guidance-steps", type=int, default=0, help="Langevin steps")
    g.add_argument("--step-size", type=float, default=0.0, help="Langevin step size eta")
    g.add_argument("--class-weight", type=float, default=0.0,
                   help="weight of the probe's log p(class | image); < 0 = no class term")
    g.add_argument("--noise", type=float, default=0.0, help="Langevin noise scale (1 = exact); < 0 = no noise")
    g.add_argument("--factor-target", action="append", default=[], metavar="NAME=VALUE",
                   help="reach this factor value through the probe's regressor (repeatable), e.g. scale=0.8")
    g.add_argument("--factor-weight", type=float, default=0.0, help="weight of the factor term")
    g.add_argument("--start", choices=["prior", "latent_gmm"], default=None, help="where the chains start")
    p.add_argument("--size", type=int, default=0, metavar="PX",
                   help="image size in px (0 = the model's own; vector models draw 16..1024, texture "
                        "models the sizes `latentserve models NAME` lists)")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default ceil(sqrt(n)))")
    p.add_argument("-o", "--output", default="samples.png", help="grid PNG to write (default samples.png)")
    p.add_argument("--save-latents", default=None, metavar="PATH",
                   help="also write latents + labels (.npz) or latents only (.npy)")
    p.add_argument("--handles", action="store_true", help="ask the server for handles and print them")
    add_version_option(p)
    add_client_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latentserve.client import make_grid, parse_class_factors, parse_weights, save_latents, save_png

    knobs: dict[str, float] = {}
    for k in args.knob:
        knobs.update(parse_weights(k, "--knob"))
    weights = parse_weights(args.class_weights, "--class-weights") if args.class_weights else None
    guidance = None
    if args.source == "guided":
        targets: dict[str, float] = {}
        for k in args.factor_target:
            targets.update(parse_weights(k, "--factor-target"))
        guidance = {"steps": args.guidance_steps, "step_size": args.step_size, "class_weight": args.class_weight,
                    "noise": args.noise, "factor_weight": args.factor_weight, "factor_targets": targets}
        if args.start:
            guidance["start"] = args.start
    elif args.factor_target:
        raise ValueError("--factor-target needs --source guided (use --knob for the linear knobs)")
    by_factor = parse_class_factors(args.class_factor)
    label = class_name = None
    if args.class_name is not None:
        if args.class_name.isdigit():
            label = int(args.class_name)
        else:
            class_name = args.class_name
    with connect(args) as client:
        res = client.sample(args.model, args.n, label=label, class_name=class_name, class_weights=weights,
                            knobs=knobs, seed=args.seed, temperature=args.temperature, source=args.source,
                            return_handles=args.handles, version=args.model_version, guidance=guidance,
                            class_check=args.class_check, allow_weak_knobs=args.allow_weak_knobs,
                            hold=args.hold, output_size=args.size, factor_classes=by_factor or None)
        names = client.model_info(args.model, args.model_version).class_names
    save_png(make_grid(res.images, args.cols), args.output)
    n, h, w, _ = res.images.shape
    counts: dict[str, int] = {}
    for y in res.labels.tolist():
        key = names[y] if 0 <= y < len(names) else str(y)
        counts[key] = counts.get(key, 0) + 1
    print(f"wrote {args.output}: {n} samples of {h}x{w} from {res.model or args.model} v{res.version} "
          f"({', '.join(f'{k}={v}' for k, v in counts.items())})")
    if res.class_confidence is not None:
        conf = res.class_confidence
        print(f"label check: the model's own p(label) min {conf.min():.3f}, mean {conf.mean():.3f}")
    if args.save_latents:
        save_latents(args.save_latents, res.latents, res.labels, class_names=list(names),
                     handles=res.handles or None)
        print(f"wrote {args.save_latents}: latents {res.latents.shape[0]}x{res.latents.shape[1]}")
    for i, handle in enumerate(res.handles):
        print(f"{i}\t{handle}")
    return 0
