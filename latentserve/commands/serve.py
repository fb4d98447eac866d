"""`latentserve serve`: start local Ray + Ray Serve with the latentserve gRPC app in one command.

Serves every generative model of the repository (default: the bundled one) on gRPC (default 127.0.0.1:9000)
and on HTTP/JSON with the latent explorer page (default http://127.0.0.1:8000/, `--http-port 0` = off), prints
the addresses and blocks until Ctrl-C / SIGTERM, then shuts Serve and Ray down cleanly. Flags override
LATENTSERVE_* environment variables (services/config.py), which override defaults. The API token is taken
from LATENTSERVE_API_TOKEN only, never from the command line (it would show in `ps`); named tokens come from
a file (--tokens-file). TLS: --tls-cert/--tls-key (gRPC and HTTPS), --tls-ca (mutual TLS on gRPC); a token
on a plaintext listener beyond loopback is refused unless --insecure (README, "TLS and tokens").

Default frontend "native": each ingress replica runs its own gRPC server with the models in-process (no
Serve proxy is started); `--frontend serve` puts Ray Serve's gRPC proxy in front instead (see
services/app.py). `--colocate`, `--direct-ingress` and `--fast` are options of the serve frontend and
select it when `--frontend` is not given.

Metrics: `http://127.0.0.1:8080/metrics` (`--metrics-port`, 0 = off; bound on --host): latentserve_* series
of every replica process plus Ray's own metrics (ray_serve_*, ...), see services/observability/metrics.py. The replicas
record into a fresh temporary directory (or LATENTSERVE_METRICS_DIR), removed at exit when temporary.

For a cluster use `serve deploy deploy/serve.yaml` instead (see services/app.py for rolling out versions).
Only argparse at module level: ray and onnxruntime are imported inside run().
"""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve models over gRPC on Ray Serve (local, one command)",
        description="Start local Ray + Ray Serve with the latentserve gRPC application (LatentService, "
                    "grpc.health.v1, reflection) and block until Ctrl-C.",
    )
    p.add_argument("--port", type=int, default=None, help="gRPC port (default 9000; env LATENTSERVE_GRPC_PORT)")
    p.add_argument("--host", default=None, help="address the native gRPC servers bind (default 127.0.0.1; "
                                                "0.0.0.0 for every interface); with --frontend serve only "
                                                "printed, Ray Serve's gRPC proxy listens on all interfaces")
    p.add_argument("--frontend", choices=("native", "serve"), default=None,
                   help="native (default): every ingress replica serves gRPC itself, models in-process; "
                        "serve: Ray Serve's gRPC proxy in front (env LATENTSERVE_GRPC_FRONTEND)")
    p.add_argument("--grpc-transport", choices=("auto", "cxx", "grpcio"), default=None,
                   help="native frontend: cxx = the compiled grpc++ transport, grpcio = grpc.aio, auto (default) "
                        "= cxx when installed (env LATENTSERVE_GRPC_TRANSPORT)")
    p.add_argument("--http-port", type=int, default=None,
                   help="HTTP/JSON API and the latent explorer page at http://HOST:PORT/ on Ray Serve's HTTP proxy "
                        "(default 8000; 0 = off; env LATENTSERVE_HTTP_PORT)")
    p.add_argument("--repo", default=None, help="model repository (default: the bundled models/repository)")
    p.add_argument("--models", default=None, help="comma-separated model names (default: every generative model)")
    p.add_argument("--backend", choices=("onnxruntime", "torchscript"), default=None, help="inference backend")
    p.add_argument("--replicas", type=int, default=None, help="model-server replicas per model (default 1)")
    p.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                   help="autoscale model servers between MIN and MAX replicas instead of --replicas")
    p.add_argument("--ingress-replicas", type=int, default=None,
                   help="gRPC ingress replicas (default 1); native frontend: serving replicas, each with every "
                        "model (they share --port via SO_REUSEPORT)")
    p.add_argument("--serving-processes", type=int, default=None,
                   help="native frontend: serving processes per replica sharing --port, a dead one restarted "
                        "(default 0 = 2 on a node with >= 2 CPUs, else 1; they share handles through Redis or "
                        "the node's store)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads per replica (default 1)")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs reserved per model replica (default 1)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per model replica (default 0)")
    p.add_argument("--max-batch-size", type=int, default=None, help="rows per model call (default 64)")
    p.add_argument("--preferred-batch-size", type=int, default=None,
                   help="a batch runs once this many rows wait and combines requests up to that many rows "
                        "(default 16; 0 = --max-batch-size)")
    p.add_argument("--batch-wait-ms", type=float, default=None, help="longest dynamic batching wait in ms (default 10; a batch "
                                                                  "also closes 2 ms after the newest request)")
    p.add_argument("--max-ongoing", type=int, default=None, help="concurrent requests per replica (default 128)")
    p.add_argument("--max-queued", type=int, default=None,
                   help="queued requests per caller before RESOURCE_EXHAUSTED (default 256, -1 unbounded)")
    p.add_argument("--request-timeout", type=float, default=None, help="server-side deadline per call in s (0 = none)")
    p.add_argument("--colocate", action="store_true", default=None,
                   help="serve frontend: run the models inside the ingress replica (no model-server hop)")
    p.add_argument("--direct-ingress", action="store_true", default=None,
                   help="serve frontend: the ingress replica serves gRPC on --port itself (Ray Serve direct "
                        "ingress, throughput-optimized); Serve's proxy moves to --proxy-port")
    p.add_argument("--proxy-port", type=int, default=None,
                   help="Serve's gRPC proxy port with --direct-ingress (default: port + ingress replicas + 1)")
    p.add_argument("--fast", action="store_true",
                   help="serve frontend's fastest path: --colocate --direct-ingress (the native frontend, "
                        "the default, is faster still)")
    p.add_argument("--drain-period", type=float, default=None,
                   help="native frontend: seconds a stopping replica keeps serving with health NOT_SERVING "
                        "(for load balancers; default 0)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus endpoint http://HOST:PORT/metrics with latentserve_* and Ray's metrics "
                        "(default 8080; 0 = none; env LATENTSERVE_METRICS_PORT)")
    p.add_argument("--access-log", action="store_true", default=None,
                   help="log one line per request in the replica logs (off by default: it costs CPU)")
    p.add_argument("--reflection", choices=("open", "auth", "off"), default=None,
                   help="gRPC server reflection: auth (default) = needs the API token when one is set, open, off")
    tls = p.add_argument_group("TLS and client identity (services/access.py; README 'TLS and tokens')")
    tls.add_argument("--tls-cert", default=None, metavar="PEM",
                     help="certificate chain: gRPC and the HTTP door speak TLS (with --tls-key; env LATENTSERVE_TLS_CERT)")
    tls.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert (env LATENTSERVE_TLS_KEY)")
    tls.add_argument("--tls-ca", default=None, metavar="PEM",
                     help="mutual TLS: gRPC clients must present a certificate signed by this CA; its CN names them "
                          "(needs --http-port 0: Ray Serve's HTTP proxy cannot ask for client certificates)")
    tls.add_argument("--tokens-file", default=None, metavar="FILE",
                     help="named API tokens, one 'NAME TOKEN' per line, re-read when it changes (removing a line "
                          "revokes the token); LATENTSERVE_API_TOKEN stays valid as the client 'default'")
    tls.add_argument("--tokens-reload", type=float, default=None, metavar="S",
                     help="seconds between checks of the tokens file for changes (default 2)")
    tls.add_argument("--insecure", action="store_true", default=None,
                     help="allow an API token on a plaintext listener beyond loopback (it travels in clear text)")
    p.add_argument("--ray-address", default="local",
                   help="Ray cluster to use: 'local' starts a new one (default), 'auto' joins a running one")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """CLI flags -> ServeConfig overrides (None = not given, so env/defaults apply)."""
    out = {
        "grpc_port": args.port, "host": args.host, "http_port": args.http_port, "repository": args.repo,
        "models": args.models, "backend": args.backend, "replicas": args.replicas,
        "ingress_replicas": args.ingress_replicas, "serving_processes": args.serving_processes,
        "intra_op_threads": args.threads, "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus, "max_batch_size": args.max_batch_size,
        "preferred_batch_size": args.preferred_batch_size,
        "batch_wait_timeout_s": None if args.batch_wait_ms is None else args.batch_wait_ms / 1000.0,
        "max_ongoing_requests": args.max_ongoing, "max_queued_requests": args.max_queued,
        "request_timeout_s": args.request_timeout, "colocate": args.colocate,
        "direct_ingress": args.direct_ingress, "proxy_grpc_port": args.proxy_port, "access_log": args.access_log,
        "grpc_frontend": args.frontend, "grpc_transport": args.grpc_transport, "drain_period_s": args.drain_period,
        "metrics_port": args.metrics_port, "reflection": args.reflection,
        # paths made absolute here: Ray's workers (the serving processes, the HTTP proxy) run elsewhere
        **{name: _absolute(getattr(args, name)) for name in ("tls_cert", "tls_key", "tls_ca", "tokens_file")},
        "tokens_reload_s": args.tokens_reload, "insecure": args.insecure,
    }
    if args.fast:
        out.update(colocate=True, direct_ingress=True)
    if args.frontend is None and (args.fast or args.colocate or args.direct_ingress):
        out["grpc_frontend"] = "serve"  # options of the serve frontend select it
    if args.autoscale:
        lo, _, hi = args.autoscale.partition(":")
        if not (lo.isdigit() and hi.isdigit()):
            from latentserve.errors import ValidationError

            raise ValidationError(f"--autoscale must be MIN:MAX (integers), got {args.autoscale!r}")
        out.update(autoscaling=True, min_replicas=int(lo), max_replicas=int(hi))
    return out


def _absolute(path: str | None) -> str | None:
    import os

    return os.path.abspath(os.path.expanduser(path)) if path else path


# settings whose errors name their flag too (`serve config: tls_cert=...` -> `--tls-cert (tls_cert)=...`)
FLAGS = {"tls_cert": "--tls-cert", "tls_key": "--tls-key", "tls_ca": "--tls-ca", "tokens_file": "--tokens-file",
         "tokens_reload_s": "--tokens-reload", "host": "--host", "http_port": "--http-port"}


def flag_named(exc: Exception) -> Exception:
    """`exc` (a config ValidationError) with its setting named by its flag, for the one-line CLI error."""
    from latentserve.errors import ValidationError

    msg = str(exc)
    for name, flag in FLAGS.items():
        if msg.startswith(f"serve config: {name}=") or msg.startswith(f"serve config: {name}:"):
            return ValidationError(f"{flag} ({name}){msg[len('serve config: ') + len(name):]}")
    return exc


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    import tempfile
    import threading

    from latentserve.services.app import (build_app, build_http_app, grpc_route_prefix, http_app_name, local_ray_env,
                                          ray_env, served_models, start_options)
    from latentserve.services.config import load_config

    from latentserve.errors import ValidationError

    try:
        config = load_config(overrides_from_args(args))
    except ValidationError as exc:
        raise flag_named(exc) from None
    models = served_models(config)  # fail before starting Ray when the repository has nothing to serve
    transport = ""
    if config.frontend.grpc_frontend == "native" and args.ray_address == "local":
        from latentserve.services.frontends.grpc.transport import resolve

        transport = resolve(config.frontend.grpc_transport)  # 'cxx' without the build: one line, before Ray starts
    from latentserve.services.storage.redis_store import check_redis

    for warning in check_redis(config):  # wrong Redis password/db: one-line ValidationError before Ray starts
        print(f"latentserve: warning: {warning}", flush=True)
    exporter, temp_metrics = None, None
    if config.observability.metrics_port:
        from latentserve.services.observability.exporter import MetricsExporter

        if not config.observability.metrics_dir:  # a fresh directory: counts of an earlier run must not show up
            temp_metrics = tempfile.mkdtemp(prefix="latentserve-metrics-")
            config = config.with_overrides(metrics_dir=temp_metrics)
        # bound before Ray starts: a taken port is a one-line error, not a half-started server
        exporter = MetricsExporter(config.observability.metrics_dir, config.observability.metrics_port, config.frontend.host).start()

    if args.ray_address == "local":  # closed by default: a local session's sockets on loopback (before importing Ray)
        for key, value in local_ray_env(config).items():
            os.environ.setdefault(key, value)
    import ray
    from ray import serve

    stop = threading.Event()

    def _on_signal(signum, frame):  # Ctrl-C and SIGTERM (docker stop, systemd): the same clean shutdown
        stop.set()

    env = ray_env(config)
    if env and args.ray_address != "local":
        print("latentserve: warning: --direct-ingress needs these variables in the cluster's environment "
              "when it was started: " + " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    os.environ.update(env)  # before ray.init: Ray's processes inherit the driver's environment
    if args.ray_address == "local" and config.frontend.reset_serving_niceness:
        # Ray's workers (our replicas and their serving processes) would start at nice 15; a local server
        # starts them at 0 (no privilege needed, unlike lowering the value later; ServeConfig doc)
        os.environ.setdefault("RAY_worker_niceness", "0")
    print(f"latentserve: starting Ray ({args.ray_address}) and Serve ...", flush=True)
    try:
        ray.init(address=args.ray_address, num_cpus=args.ray_cpus if args.ray_address == "local" else None,
                 include_dashboard=False, log_to_driver=False)
    except BaseException:
        _stop_metrics(exporter, temp_metrics)
        raise
    # After ray.init, which installs its own SIGTERM handler (it would kill the driver without shutting down).
    # SIGINT explicitly too: a server started in the background by a script inherits SIGINT as ignored.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        if exporter is not None:
            from latentserve.services.observability.exporter import ray_metrics_port

            exporter.ray_metrics_port = ray_metrics_port()
        serve.start(**start_options(config))
        serve.run(build_app(config), name=config.frontend.app_name, route_prefix=grpc_route_prefix(config),
                  blocking=False)
        http_app = build_http_app(config)
        if http_app is not None:
            serve.run(http_app, name=http_app_name(config), route_prefix="/", blocking=False)
        native = config.frontend.grpc_frontend == "native"
        listed = ", ".join(f"{name} v{v}" for name, v in models.items())
        how = (f"native gRPC frontend{', transport ' + transport if transport else ''}" if native
               else "Serve gRPC proxy" + (", co-located" if config.scaling.colocate else ""))
        sec = config.security
        auth = ", ".join(x for x in ("mutual TLS" if sec.tls_ca else "TLS" if sec.tls_cert else "",
                                     "API token required" if config.frontend.api_token or sec.tokens_file else "") if x)
        print(f"latentserve: serving {listed} ({config.served.backend}, {how}{', ' + auth if auth else ''})",
              flush=True)
        services = "latentserve.v1.LatentService, grpc.health.v1.Health" + (", reflection" if native else "")
        print(f"latentserve: gRPC listening on {config.frontend.host}:{config.frontend.grpc_port} ({services}); Ctrl-C to stop",
              flush=True)
        if config.frontend.http_port:
            scheme = "https" if sec.tls_cert else "http"
            print(f"latentserve: HTTP/JSON API and latent explorer at {scheme}://{config.frontend.host}:"
                  f"{config.frontend.http_port}/ (API docs: /docs)", flush=True)
        if exporter is not None:
            print(f"latentserve: metrics at {exporter.url} (latentserve_* and Ray's ray_* series)", flush=True)
        if config.frontend.direct_ingress:
            print(f"latentserve: direct ingress on {config.frontend.host}:{config.frontend.grpc_port}; Serve's gRPC proxy on "
                  f"{config.frontend.host}:{config.effective_proxy_grpc_port}", flush=True)
        while not stop.wait(1.0):
            pass
        print("latentserve: shutting down ...", flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _stop_metrics(exporter, temp_metrics)
    print("latentserve: stopped")
    return 0


def _stop_metrics(exporter, temp_dir: str | None) -> None:
    import shutil

    if exporter is not None:
        exporter.stop()
    if temp_dir:
        shutil.rmtree(temp_dir, ignore_errors=True)
