"""`latentserve bundle`: reproduce the bundled default models (train, export, evaluate) in one command."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="train, export and evaluate the bundled default models (about an hour on 2 idle cores)",
                       description=__doc__)
    p.add_argument("--repo", default=None, help="model repository to export into (default: the bundled one)")
    p.add_argument("--runs", default="runs/bundle", help="where training runs and logs go (resumable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lanes", type=int, default=2, help="trainings run at once, one thread each")
    p.add_argument("--only", default=None, help="comma-separated subset, e.g. shapes-probe,shapes-gan")
    p.add_argument("--skip-train", action="store_true", help="export and evaluate existing runs only")
    p.add_argument("--require-gates", action="store_true",
                   help="exit 2, one line per failed quality gate, unless every model passes its gates "
                        "(checked after all evaluations; the models stay in the repository either way)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentserve.models.bundle import build_bundle

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    results = build_bundle(repo=Path(args.repo) if args.repo else None, runs=Path(args.runs), seed=args.seed,
                           lanes=args.lanes, only=only, skip_train=args.skip_train)
    return check_gates(args.repo, results) if args.require_gates else 0


def check_gates(repo, results: dict[str, dict]) -> int:
    """Gates of every evaluated model ({name: metrics} of the newest versions): a table each; 2 with one line
    per failed gate on stderr when any fails."""
    import sys

    from latentserve.models import gates
    from latentserve.models.repository import Repository

    repository, lines = Repository(repo), []
    for name, metrics in results.items():
        record = repository.load(name, verify=False)
        g = gates.compute_gates(record.family, metrics, gates.factor_knobs(record.manifest))
        print(gates.format_table(f"{name} v{record.version}", g))
        lines += [f"{name} v{record.version} {line}" for line in gates.failures(g)]
    for line in lines:
        print(f"latentserve bundle: gate failed: {line}", file=sys.stderr)
    return 2 if lines else 0
