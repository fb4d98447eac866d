"""`latentserve eval`: score an exported model with its probe on the test split; metrics go into its manifest.
Then prints its quality gates (models/gates.py: each target, pass or fail, and the judge that measured it).

Only argparse at module level; numpy/onnxruntime and the dataset are imported inside `run`.
"""
from __future__ import annotations

import argparse

from latentserve.commands import positive_int as _positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate an exported model (GAN-test, knob R2, precision/recall/density/coverage, PSNR, bits/dim)",
        description="Evaluate a model version from the repository on its dataset's test split, with ONNX Runtime "
                    "on the exported files. Generative models are scored with a probe (GAN-test accuracy, knob "
                    "R2, PRDC coverage, reconstruction PSNR or flow bits/dim); a probe is scored on its own "
                    "accuracy and factor R2. Results are written into manifest.json 'metrics' (the model files "
                    "and their checksums are not touched) and printed as a table.")
    p.add_argument("--model", required=True, help="model name in the repository")
    p.add_argument("--version", type=_positive_int, default=None, help="model version (default: newest)")
    p.add_argument("--repo", default=None, help="model repository root (default: the bundled models/repository)")
    p.add_argument("--probe", default=None, help="probe model name (default: the one named in the manifest)")
    p.add_argument("--probe-version", type=_positive_int, default=None, help="probe version (default: newest)")
    p.add_argument("--n-per-class", type=_positive_int, default=100,
                   help="generated samples per class for GAN-test / knobs / coverage (default 100)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--threads", type=_positive_int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write metrics into the manifest")
    p.add_argument("--json", action="store_true", help="also print the full metrics as JSON")
    p.add_argument("--sheet", default=None, metavar="PNG",
                   help="also write a picture: per class, samples of the default source framed by the judge's "
                        "verdict (green right, red wrong) above real test images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from latentserve.models import gates
    from latentserve.models.evaluate import evaluate_record
    from latentserve.models.repository import Repository

    repo = Repository(args.repo)
    metrics = evaluate_record(repo, args.model, version=args.version, probe=args.probe,
                              probe_version=args.probe_version, n_per_class=args.n_per_class, seed=args.seed,
                              write=not args.no_write, threads=args.threads)
    record = repo.load(args.model, args.version, verify=False)
    if record.family != "probe":
        g = gates.compute_gates(record.family, metrics, gates.factor_knobs(record.manifest))
        print(gates.format_table(f"{record.name} v{record.version}", g))
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    if args.sheet and record.family != "probe":
        from latentserve.models.evaluate import sheet_record

        print(f"sheet written to {sheet_record(repo, args.model, args.sheet, version=args.version, seed=args.seed)}")
    if not args.no_write:
        print(f"metrics written to {record.path / 'manifest.json'}")
    return 0
