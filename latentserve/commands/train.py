"""`latentserve train`: train (or resume) one model family on one dataset into a run directory.

Only argparse and the family registry (no torch) at module level; torch and the loop (latentserve.models.train)
are imported inside `run`.
Values of --data-arg / --set are parsed as JSON where possible (so `--set z_dim=64` is an int).
"""
from __future__ import annotations

import argparse
import json

from latentserve.models.families import FAMILIES  # the registry only (no torch)

FAMILY_NAMES = tuple(FAMILIES)  # the registry's names, in its order
DATASET_NAMES = ("shapes", "disks", "modes", "textures", "textured", "digits", "folder")


def parse_value(text: str):
    """JSON if it parses (64 -> int, 0.5 -> float, true -> bool, [1,2] -> list), else the plain string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return text


def parse_assignments(items: list[str] | None, flag: str) -> dict:
    """["key=value", ...] -> {key: parsed value}; a malformed item raises ValidationError naming the flag."""
    from latentserve.errors import ValidationError

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"{flag} expects key=value, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def config_from_args(args: argparse.Namespace):
    """The TrainConfig described by parsed command-line arguments."""
    from latentserve.errors import ValidationError
    from latentserve.models.train import TrainConfig

    data_args = parse_assignments(args.data_arg, "--data-arg")
    if args.holdout:
        from latentserve.models.data import parse_holdout

        holdout = dict(data_args.get("holdout") or {})
        for item in args.holdout:
            holdout.update(parse_holdout(item) or {})
        data_args["holdout"] = holdout
    family_args = parse_assignments(args.set, "--set")
    try:
        return TrainConfig(
            family=args.family, data=args.data, data_args=data_args, steps=args.steps, batch_size=args.batch_size,
            seed=args.seed, out=args.out, ckpt_every=args.ckpt_every, eval_every=args.eval_every,
            grid_every=args.grid_every, threads=args.threads, device=args.device, family_args=family_args,
            init_from=args.init_from,
        )
    except TypeError as exc:
        raise ValidationError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    from latentserve.models.train import train

    cfg = config_from_args(args)
    run_dir = train(cfg, resume=not args.no_resume, progress=not args.quiet)
    print(run_dir)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train or resume a model (gan | vae | flow | ae | vector | sgan | probe)",
        description="Train a model family on a dataset into a run directory (checkpoint.pt, log.jsonl, "
        "samples/). Re-running the same command resumes from the checkpoint; Ctrl-C saves one before exiting.",
    )
    p.add_argument("--family", required=True, choices=FAMILY_NAMES, help="model family")
    p.add_argument("--data", default="shapes", choices=DATASET_NAMES, help="dataset (default: shapes)")
    p.add_argument("--data-arg", action="append", metavar="KEY=VALUE",
                   help="dataset keyword argument, repeatable (e.g. n_train=5000, image_size=32, path=DIR for folder)")
    p.add_argument("--holdout", action="append", metavar="FACTOR=LO:HI",
                   help="remove a band of a continuous factor from the training split, repeatable")
    p.add_argument("--steps", type=int, default=None, help="total steps (default: the family's recommendation)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, noise and data order (default: 0)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<data>-<family>)")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps (default: 500)")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N steps (default: --ckpt-every)")
    p.add_argument("--grid-every", type=int, default=None, help="sample grid every N steps (default: --ckpt-every)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto = cuda if available)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field of the family config, repeatable (e.g. z_dim=64)")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="fine-tune: start a new run from another run's weights (run directory or checkpoint of the "
                   "same family; tensors whose name and shape match are copied, optimisers and step start over)")
    p.add_argument("--no-resume", action="store_true", help="start over even if the run directory has a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
