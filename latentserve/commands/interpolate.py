"""`latentserve interpolate MODEL --a A --b B --steps 8 --method lerp,slerp[,geodesic] -o strip.png`:
paths between two latents, one row per method in one PNG, with each path's length and evenness.

A and B are image files, `latents.npz:ROW` (a row of an .npz written by encode / sample) or server handles.
Path length = sum of RMS image distances between consecutive frames ([-1, 1] scale); evenness = their
coefficient of variation (0 = perfectly even steps). Both come from the server's path summary.
"""
from __future__ import annotations

import argparse

from latentserve.commands.models import add_client_options, add_version_option, connect


def register(sub) -> None:
    p = sub.add_parser("interpolate", help="interpolate between two images/latents/handles; compare methods",
                       description="Interpolate between two latents with one or more methods and write one row "
                                   "per method into a PNG strip; prints each path's length and evenness.")
    p.add_argument("model", help="model name")
    p.add_argument("--a", required=True, help="start: image file, latents.npz:ROW or handle")
    p.add_argument("--b", required=True, help="end: image file, latents.npz:ROW or handle")
    p.add_argument("--steps", type=int, default=8, help="frames per path including both ends (default 8)")
    p.add_argument("--method", default="", help="comma-separated: lerp, slerp, geodesic (default: lerp,slerp, or those "
                                                "of them the model offers: a texture model lerp only)")
    p.add_argument("--geodesic-iterations", type=int, default=None, help="geodesic optimisation iterations")
    p.add_argument("--geodesic-space", choices=["pixel", "probe"], default=None,
                   help="space whose path energy the geodesic minimises (default pixel)")
    p.add_argument("--geodesic-lr", type=float, default=None, help="geodesic Adam learning rate (latent units)")
    p.add_argument("--geodesic-init", choices=["lerp", "slerp"], default=None, help="geodesic starting path")
    p.add_argument("--size", type=int, default=0, metavar="PX",
                   help="frame size in px (0 = the model's own; texture models: any size of `latentserve models NAME`)")
    p.add_argument("-o", "--output", default="interpolation.png", help="PNG strip to write")
    add_version_option(p)
    add_client_options(p)
    p.set_defaults(func=run)


def path_figures(step_distances: list[float]) -> tuple[float, float]:
    """(path length, evenness CV) of a path's step distances (first frame's 0 excluded)."""
    import numpy as np

    d = np.asarray(step_distances[1:], dtype=np.float64)
    if d.size == 0:
        return 0.0, 0.0
    mean = d.mean()
    return float(d.sum()), float(d.std() / mean) if mean > 0 else 0.0


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from latentserve.errors import ValidationError
    from latentserve.client import INTERPOLATION_METHODS, make_grid, parse_ref, save_png

    methods = [m.strip() for m in (args.method or "lerp,slerp").split(",") if m.strip()]
    bad = [m for m in methods if m not in INTERPOLATION_METHODS]
    if (args.method and not methods) or bad:
        raise ValidationError(f"--method: unknown {', '.join(bad) or '(none given)'}; choose from "
                              f"{', '.join(INTERPOLATION_METHODS)}")
    a, b = parse_ref(args.a, "--a"), parse_ref(args.b, "--b")
    geodesic = {k: v for k, v in (("iterations", args.geodesic_iterations), ("space", args.geodesic_space),
                                  ("learning_rate", args.geodesic_lr), ("init", args.geodesic_init))
                if v is not None}
    rows, report = [], []
    with connect(args) as client:
        if not args.method:  # the default: the plain methods the model offers
            offered = client.model_info(args.model, args.model_version).interpolation_methods
            methods = [m for m in methods if m in offered] or methods
        for method in methods:
            frames = list(client.interpolate(args.model, a, b, steps=args.steps, method=method,
                                             version=args.model_version,
                                             geodesic=geodesic if method == "geodesic" else None,
                                             output_size=args.size))
            if len(frames) != args.steps:
                raise ValidationError(f"{method}: server sent {len(frames)} frames, expected {args.steps}")
            frames.sort(key=lambda f: f.index)
            rows.append(np.stack([f.image for f in frames]))
            summary = frames[-1].summary
            if summary is not None:
                length, cv = summary.path_length, summary.evenness_cv
            else:  # an older server without summaries: the same figures from the step distances
                length, cv = path_figures([f.step_distance for f in frames])
            line = f"{method:<9} path length {length:8.4f}   evenness CV {cv:6.3f}"
            if summary is not None and summary.space != "pixel":
                line += f"   ({summary.space} space)"
            if method == "geodesic" and summary is not None and summary.lerp_path_length > 0:
                line += (f"   (lerp: {summary.lerp_path_length:.4f}, CV {summary.lerp_evenness_cv:.3f}; "
                         f"{100 * (1 - length / summary.lerp_path_length):+.1f}% shorter)")
            report.append(line)
    strip = make_grid(np.concatenate(rows), ncols=args.steps)
    save_png(strip, args.output)
    for line in report:
        print(line)
    print(f"wrote {args.output}: {len(methods)} row(s) ({', '.join(methods)}) x {args.steps} frames")
    return 0
