"""`latentserve augment --spec spec.yaml --out DIR`: a labelled synthetic dataset from a served model, written
as an ImageFolder (class subfolders) plus labels.csv; resumable (latentserve/client/augment_job.py), reproducible
(services/augment/spec.py documents the spec and what each image depends on).
"""
from __future__ import annotations

import argparse

from latentserve.commands.models import add_client_options, resolve_target, resolve_tls, resolve_token

# Reconnect quickly once a restarted server listens again (grpc's default backoff grows to 120 s).
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 2000))


EXAMPLE = """example spec (every field: docs/architecture.md "Augmentation jobs"):
  model: shapes-gan
  class_counts: {square: 400, ellipse: 300, triangle: 300}   # or count: N + class_weights: {...}
  factors:
    scale: {range: [0.35, 0.55]}      # uniform per image; also a number, {grid: [lo, hi, steps]}, {values: [...]}
    hue: {grid: [0.0, 0.8, 5]}
  source: latent_gmm                  # or prior
  seed: 7
  format: png                         # or jpeg
  shard_size: 256                     # images per resumable unit
"""


def register(sub) -> None:
    p = sub.add_parser("augment", help="generate a labelled synthetic dataset (ImageFolder + labels.csv)",
                       description="Generate a labelled synthetic dataset from a served model: class subfolders of "
                                   "images plus labels.csv (path, class, factors, seed, handle, model version). "
                                   "Re-running the same command finishes an interrupted job; the result is "
                                   "byte-identical to an uninterrupted run.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, metavar="SPEC.yaml",
                   help="job spec (YAML or JSON): model, count or class_counts, class_weights, factors, source, "
                        "seed, temperature, format, shard_size, handles, class_check")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new, empty, or this job's own)")
    p.add_argument("--retry-timeout", type=float, default=300.0, metavar="S",
                   help="keep reconnecting for this long without progress when the server is unavailable "
                        "(default 300)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-weak-knobs", action="store_true",
                   help="use factor knobs below their quality gate (`latentserve models NAME` marks them); "
                        "refused otherwise (not part of the spec: a resumed job needs the flag again)")
    add_client_options(p)
    p.set_defaults(func=run)


def load_spec_file(path: str):
    """SPEC.yaml -> AugmentSpec (parse errors name the field)."""
    from pathlib import Path

    import yaml

    from latentserve.errors import ValidationError
    from latentserve.services.augment.spec import parse_spec

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such spec file: {path}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValidationError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_spec(data)


def run(args: argparse.Namespace) -> int:
    import sys

    from tqdm import tqdm

    from latentserve.client.augment_job import AugmentJob
    from latentserve.client import LatentClient

    spec = load_spec_file(args.spec)  # every local check before contacting the server
    with LatentClient(resolve_target(args), token=resolve_token(args), timeout=args.timeout, app_name=args.app,
                      options=RECONNECT_OPTIONS, tls=resolve_tls(args)) as client:
        job = AugmentJob(client, spec, args.out, allow_weak_knobs=args.allow_weak_knobs)
        bars: list = []

        def on_start(state) -> None:
            bars.append(tqdm(total=state.count, initial=state.skipped, unit="img", file=sys.stderr, smoothing=0.1,
                             disable=args.no_progress or None, dynamic_ncols=True))

        try:
            result = job.run(retry_s=args.retry_timeout, progress=lambda n: bars[0].update(n), on_start=on_start)
        finally:
            for bar in bars:
                bar.close()
    if result.already_complete:
        print(f"{args.out}: already complete ({result.count} images of {result.model} v{result.version})")
        return 0
    resumed = f", {result.skipped} already there" if result.skipped else ""
    again = f", {result.reconnects} reconnect(s)" if result.reconnects else ""
    print(f"wrote {args.out}: {result.written} images of {result.model} v{result.version} in {result.seconds:.1f}s "
          f"({result.images_per_s:.0f} img/s{resumed}{again}); labels in {args.out}/labels.csv")
    return 0
