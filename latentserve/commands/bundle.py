"""`latentserve bundle`: reproduce the bundled default models (train, export, evaluate) in one command."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="train, export and evaluate the bundled default models (<= 20 min on 2 cores)",
                       description=__doc__)
    p.add_argument("--repo", default=None, help="model repository to export into (default: the bundled one)")
    p.add_argument("--runs", default="runs/bundle", help="where training runs and logs go (resumable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lanes", type=int, default=2, help="trainings run at once, one thread each")
    p.add_argument("--only", default=None, help="comma-separated subset, e.g. shapes-probe,shapes-gan")
    p.add_argument("--skip-train", action="store_true", help="export and evaluate existing runs only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentserve.models.bundle import build_bundle

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    build_bundle(repo=Path(args.repo) if args.repo else None, runs=Path(args.runs), seed=args.seed,
                 lanes=args.lanes, only=only, skip_train=args.skip_train)
    return 0
