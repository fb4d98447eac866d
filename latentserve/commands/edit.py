"""`latentserve edit MODEL --input img.png|handle|latents.npz:ROW --knob scale --sweep 0.5:1.0:6 -o sweep.png`:
move latents along a calibrated knob and write the results, one row per input and one column per value.

--sweep LO:HI:N sets the knob's factor to N evenly spaced targets (factor knobs), or, with --relative or on a
principal direction (pcN), moves by N evenly spaced amounts. --set X (a target) / --amount X make a single
edit. (--target is the server address, as in every client command.)

--class-factor FACTOR=CLASS (repeatable; a model whose classes are combinations of class factors, e.g. a decoupled
shape x texture model) sets that factor's class of every input and keeps its latent and its other factors: alone it
is one edit (one column), with --knob it applies to every value of the sweep. The names are checked against the
model's ModelInfo.class_factors before any call.
"""
from __future__ import annotations

import argparse

from latentserve.commands.models import add_client_options, add_version_option, connect


def register(sub) -> None:
    p = sub.add_parser("edit", help="edit latents along a knob (a sweep of values or one move) or set class factors",
                       description="Move latents along a knob (factor units, or std units for pcN) and write "
                                   "one row per input, one column per value; --class-factor sets a class factor "
                                   "(e.g. texture=solid) of every input and keeps its latent.")
    p.add_argument("model", help="model name")
    p.add_argument("--input", action="append", required=True, dest="inputs",
                   help="image file, latents.npz:ROW or handle (repeatable: one row each)")
    p.add_argument("--knob", default=None, help="knob name: a factor (e.g. scale) or pcN")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--sweep", metavar="LO:HI:N",
                     help="N evenly spaced values from LO to HI, e.g. 0.3:0.6:4 or -1:1:5")
    how.add_argument("--set", dest="set_value", type=float, metavar="VALUE",
                     help="set the factor to this target value (factor knobs)")
    how.add_argument("--amount", type=float, help="change by this many units")
    p.add_argument("--relative", action="store_true", help="--sweep values are amounts, not targets")
    p.add_argument("--allow-weak-knobs", action="store_true",
                   help="use knobs below their quality gate (`latentserve models NAME` marks them); refused otherwise")
    p.add_argument("--hold", action="append", default=[], metavar="FACTOR",
                   help="keep this factor fixed while the knobs move (repeatable): conditional directions")
    p.add_argument("--class-factor", action="append", default=[], metavar="FACTOR=CLASS",
                   help="a model with class factors (e.g. textured: shape, texture): set this factor's class of every "
                        "input, keeping its latent and other factors (repeatable; with or without --knob)")
    p.add_argument("-o", "--output", default="edit.png", help="PNG grid to write (default edit.png)")
    p.add_argument("--save-latents", default=None, metavar="PATH", help="also write the edited latents (.npz)")
    add_version_option(p)
    add_client_options(p)
    p.set_defaults(func=run)


def parse_sweep(text: str) -> list[float]:
    """'0.5:1.0:6' -> [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]."""
    from latentserve.errors import ValidationError

    parts = text.split(":")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise ValidationError(f"--sweep must be LO:HI:N (e.g. 0.5:1.0:6), got {text!r}") from None
    if not 1 <= n <= 64:
        raise ValidationError(f"--sweep: N must be in 1..64, got {n}")
    if n == 1:
        return [lo]
    # round away float noise so the ends stay exactly LO and HI (0.3 + 0.6 would be 0.9000000000000001)
    return [lo] + [round(lo + (hi - lo) * i / (n - 1), 12) for i in range(1, n - 1)] + [hi]


def check_what(args: argparse.Namespace) -> None:
    """An edit needs a knob move (--knob with --sweep, --set or --amount), class factors, or both."""
    from latentserve.errors import ValidationError

    moves = args.sweep is not None or args.set_value is not None or args.amount is not None
    if args.knob is None and (moves or args.relative or args.hold):
        raise ValidationError("--sweep, --set, --amount, --relative and --hold move a knob: give --knob NAME too")
    if args.knob is None and not args.class_factor:
        raise ValidationError("give --knob NAME with --sweep, --set or --amount, or --class-factor FACTOR=CLASS")
    if args.knob is not None and not moves:
        raise ValidationError(f"--knob {args.knob} needs --sweep LO:HI:N, --set VALUE or --amount VALUE")


def run(args: argparse.Namespace) -> int:
    from latentserve.errors import ValidationError
    from latentserve.client import parse_class_factors, parse_ref

    check_what(args)
    by_factor = parse_class_factors(args.class_factor)
    inputs = [parse_ref(text, f"--input {text}") for text in args.inputs]
    with connect(args) as client:
        info = client.model_info(args.model, args.model_version)
        if by_factor:
            info.check_factor_classes(by_factor, "--class-factor")
        if args.knob is None:  # class factors only: one edit
            results = [client.edit(args.model, inputs, [], version=args.model_version, factor_classes=by_factor)]
            return _write(args, info, results, None, "", by_factor)
        knob = next((k for k in info.knobs if k.name == args.knob), None)
        if knob is None:
            raise ValidationError(f"unknown knob {args.knob!r} for {info.name}; knobs: "
                                  f"{', '.join(k.name for k in info.knobs) or '(none)'}")
        if args.sweep:
            values = parse_sweep(args.sweep)
            key = "amount" if args.relative or knob.kind != "factor" else "target"
        elif args.set_value is not None:
            values, key = [args.set_value], "target"
        else:
            values, key = [args.amount], "amount"
        if key == "target" and knob.kind != "factor":
            raise ValidationError(f"{knob.name} is a {knob.kind} knob: it takes --amount or --sweep amounts "
                                  "(std units), not targets")
        if key == "target":
            tol = 1e-9 * max(1.0, abs(knob.high - knob.low))
            out = [v for v in values if not knob.low - tol <= v <= knob.high + tol]
            if out:  # the server rejects these too; say it here with the range
                raise ValidationError(f"{knob.name} targets {', '.join(f'{v:g}' for v in out)} outside "
                                      f"[{knob.low:g}, {knob.high:g}] {knob.unit}".rstrip())
        # One call per value; each call edits every input. cells[value][input] -> (H, W, 3)
        results = [client.edit(args.model, inputs, [(knob.name, {key: v})], version=args.model_version,
                               allow_weak_knobs=args.allow_weak_knobs, hold=args.hold,
                               factor_classes=by_factor or None) for v in values]
        print(f"{knob.name} {key}s: {', '.join(f'{v:g}' for v in values)} {knob.unit}".rstrip())
    return _write(args, info, results, values, "value", by_factor)


def _write(args: argparse.Namespace, info, results: list, values: list[float] | None, column: str,
           by_factor: dict[str, str]) -> int:
    """The grid (rows = inputs, columns = the calls: one per value, or one for a class-factor edit) and the
    latents; prints what was written."""
    import numpy as np

    from latentserve.client import make_grid, save_latents, save_png

    n_in, n_col = len(results[0].images), len(results)
    # rows = inputs, columns = calls: (n_in * n_col, H, W, 3) in row-major order
    grid = np.stack([results[j].images[i] for i in range(n_in) for j in range(n_col)])
    save_png(make_grid(grid, ncols=n_col), args.output)
    if by_factor:
        names = info.class_names
        print(f"class factors set: {', '.join(f'{f}={c}' for f, c in by_factor.items())}; classes now: "
              f"{', '.join(names[y] if 0 <= y < len(names) else str(y) for y in results[0].labels.tolist())}")
    print(f"wrote {args.output}: {n_in} input(s)" + (f" x {n_col} {column}(s)" if column else ""))
    if args.save_latents:
        z = np.concatenate([r.latents for r in results])  # call-major: (n_col * n_in, D)
        y = np.concatenate([r.labels for r in results])
        save_latents(args.save_latents, z, y, values=None if values is None else np.repeat(values, n_in),
                     class_names=list(info.class_names))
        print(f"wrote {args.save_latents}: latents {z.shape[0]}x{z.shape[1]}" + (" (value-major)" if column else ""))
    return 0
