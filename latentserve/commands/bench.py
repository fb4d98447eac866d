"""`latentserve bench`: decode throughput / latency of latentserve vs raw ONNX Runtime vs Triton, in one run;
`latentserve bench --cache`: Decode latency on a result-cache hit vs a miss, per cache backend.

The harnesses live in latentserve.tools.bench and latentserve.tools.cache_bench (see their docstrings
for what is measured and how).
"""
from __future__ import annotations

import argparse

from latentserve.commands.models import add_tls_options, resolve_target, resolve_tls, resolve_token


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def register(sub) -> None:
    p = sub.add_parser("bench", help="serving benchmark: latentserve vs raw onnxruntime vs Triton",
                       description="Decode throughput and p50/p99 latency over gRPC for bulk (64 images, raw "
                                   "uint8) and single-image requests at several concurrencies, side by side with "
                                   "raw in-process ONNX Runtime and NVIDIA Triton serving the same decoder.onnx.")
    p.add_argument("--model", default="shapes-gan", help="model name (default shapes-gan)")
    p.add_argument("--repo", default=None, help="model repository (default: the bundled models/repository)")
    p.add_argument("--onnx", default=None, help="decoder.onnx for raw/Triton (default: <repo>/<model>/<newest>/)")
    p.add_argument("--version", dest="model_version", type=int, default=None, help="model version (default newest)")
    srv = p.add_mutually_exclusive_group()
    srv.add_argument("-t", "--target", default=None, help="a running latentserve server host:port")
    srv.add_argument("--start", action="store_true", help="start `latentserve serve` on a free port for the run")
    p.add_argument("--serve-args", default="", metavar="'FLAGS'",
                   help="extra `latentserve serve` flags for --start, "
                        "e.g. --serve-args='--colocate --max-batch-size 64'")
    p.add_argument("--server-pid", type=int, default=None,
                   help="with --target: pid of the server (e.g. of `latentserve serve`) to count its CPU per image")
    p.add_argument("--label", default="latentserve", help="name of the measured server in the table (default latentserve)")
    p.add_argument("--token", default=None, help="API token for the latentserve server")
    add_tls_options(p.add_argument_group("TLS to the latentserve server (--target; Triton stays plaintext)"))
    p.add_argument("--app", default=None, help="Ray Serve application name, when the server runs several")
    p.add_argument("--duration", type=float, default=10.0, help="measuring window per run, seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up per run, seconds (default 2)")
    p.add_argument("--settle", type=float, default=60.0,
                   help="after starting servers, wait at most this long for the machine to go quiet (< 15%% of "
                        "the cores busy) before measuring; 0 = measure at once (default 60)")
    p.add_argument("--concurrency", type=_ints, default=(8, 32, 64),
                   help="single-image concurrencies (default 8,32,64)")
    p.add_argument("--bulk-size", type=int, default=64, help="images per bulk request (default 64)")
    p.add_argument("--bulk-concurrency", type=int, default=2, help="bulk requests in flight (default 2)")
    p.add_argument("--connections", type=int, default=1,
                   help="client connections per server, the workers spread over them (default 1: every request "
                        "on one connection; more models many clients, e.g. with `--serve-args "
                        "'--ingress-replicas 2'`)")
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads for raw, Triton and a --start'ed server; match a running "
                        "server's --threads (default 1, serve's default)")
    p.add_argument("--no-triton", action="store_true", help="skip the Triton comparison")
    p.add_argument("--triton-target", default=None, help="a running Triton host:port (model 'model') to use")
    p.add_argument("--triton-port", type=int, default=0, help="port for the started Triton (default: a free one)")
    p.add_argument("--triton-script", default=None, help="Triton peer run.sh (default shared/peers/triton/run.sh)")
    p.add_argument("--triton-delay-us", type=int, default=2000, help="Triton dynamic batcher max queue delay")
    p.add_argument("--json", dest="json_out", default=None,
                   help="write figures here (default runs/bench/serving.json, with --cache runs/bench/cache.json; "
                        "'' to skip)")
    cache = p.add_argument_group("cache benchmark (--cache)")
    cache.add_argument("--cache", action="store_true",
                       help="instead: Decode latency p50/p99 on a result-cache hit vs a miss, side by side with "
                            "the ratio; starts `latentserve serve` once per --cache-modes (or measures --target)")
    cache.add_argument("--cache-modes", default="redis,memory,off",
                       help="comma-separated: redis (throw-away redis-server), memory (in-process LRU), off "
                            "(cache disabled) (default: all three)")
    cache.add_argument("--requests", type=int, default=400, help="measured sequential requests per phase (default 400)")
    cache.add_argument("--format", choices=("png", "raw_uint8"), default="png", help="output image format (default png)")
    fault = p.add_argument_group("fault benchmark (--fault)")
    fault.add_argument("--fault", choices=("kill-replica", "redis-down"), default=None,
                       help="start `latentserve serve` (every bundled model, + --serve-args), put it under load "
                            "(calls to --model) and kill a serving process "
                            "(kill-replica) or the handle Redis (redis-down, back after 3 s); prints failed requests "
                            "and outage times (latentserve/tools/fault_bench.py)")
    fault.add_argument("--fault-clients", type=int, default=16, help="client threads, default retries (default 16)")
    fault.add_argument("--fault-redis", action="store_true",
                       help="kill-replica: serve with a handle Redis (AOF), as the documented cluster setup does "
                            "(default: without, as a default `latentserve serve`; redis-down always has one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex

    if args.cache:
        return _run_cache(args)
    if args.fault:
        return _run_fault(args)

    from latentserve.tools.bench import DEFAULT_REPO, BenchConfig, format_table, run_bench

    cfg = BenchConfig(model=args.model, repo=args.repo or str(DEFAULT_REPO), onnx=args.onnx,
                      version=args.model_version,
                      target=None if args.start else resolve_target(args),
                      start=args.start, serve_args=tuple(shlex.split(args.serve_args)), server_pid=args.server_pid,
                      label=args.label,
                      duration=args.duration, warmup=args.warmup, settle_s=args.settle,
                      concurrency=tuple(args.concurrency), bulk_size=args.bulk_size,
                      bulk_concurrency=args.bulk_concurrency, connections=args.connections, threads=args.threads,
                      triton=not args.no_triton,
                      triton_target=args.triton_target, triton_port=args.triton_port,
                      triton_script=args.triton_script, triton_delay_us=args.triton_delay_us,
                      token=resolve_token(args), app_name=args.app, tls=resolve_tls(args),
                      json_out="runs/bench/serving.json" if args.json_out is None else args.json_out or None)
    report = run_bench(cfg)
    print(format_table(report))
    if report.get("json_out"):
        print(f"wrote {report['json_out']}")
    return 0


def _run_cache(args: argparse.Namespace) -> int:
    import shlex

    from latentserve.errors import ValidationError
    from latentserve.tools.bench import DEFAULT_REPO
    from latentserve.tools.cache_bench import CacheBenchConfig, format_cache_table, run_cache_bench

    if args.start:
        raise ValidationError("--cache starts its servers itself (one per --cache-modes); drop --start")
    cfg = CacheBenchConfig(model=args.model, repo=args.repo or str(DEFAULT_REPO), version=args.model_version,
                           target=resolve_target(args) if args.target else None,
                           modes=tuple(m.strip() for m in args.cache_modes.split(",") if m.strip()),
                           requests=args.requests, format=args.format, serve_args=tuple(shlex.split(args.serve_args)),
                           token=resolve_token(args), app_name=args.app, tls=resolve_tls(args),
                           json_out="runs/bench/cache.json" if args.json_out is None else args.json_out or None)
    report = run_cache_bench(cfg)
    print(format_cache_table(report))
    if report.get("json_out"):
        print(f"wrote {report['json_out']}")
    return 0


def _run_fault(args: argparse.Namespace) -> int:
    import json
    import shlex

    from latentserve.tools.bench import DEFAULT_REPO
    from latentserve.tools.fault_bench import FaultBenchConfig, format_fault_report, run_fault_bench

    duration = args.duration if args.duration != 10.0 else 20.0  # a fault run needs time to recover in
    report = run_fault_bench(FaultBenchConfig(fault=args.fault, model=args.model, repo=args.repo or str(DEFAULT_REPO),
                                              serve_args=tuple(shlex.split(args.serve_args)),
                                              concurrency=args.fault_clients, duration=duration,
                                              redis=args.fault_redis))
    print(format_fault_report(report))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)
    return 0
