"""Wires the latentserve Ray Serve application from a ServeConfig: the only place that chooses deployments.

    build_app(config) -> serve Application      (used by `latentserve serve` and the tests)
    app_builder(args) -> serve Application      (Serve's `import_path: latentserve.services.app:app_builder`
                                                 with `args:` from deploy/serve.yaml; env LATENTSERVE_* apply)
    build_http_app(config) -> Application | None  (the native frontend's HTTP/JSON app; None when the HTTP door
                                                 is off or rides on the serve frontend's ingress)
    http_app_builder(args)                      (Serve's import path of that app, deploy/serve.yaml)
    start_options(config) -> dict               (serve.start kwargs: proxies and their ports for the frontend)
    grpc_options(config) -> gRPCOptions          (Serve's gRPC proxy: port + servicer functions, or none)

Frontend "native" (default): one `LatentIngress` deployment of NativeReplica bodies, each serving gRPC itself
with every model in-process in its serving processes (frontends/grpc/replica.py, native.py). Frontend "serve": Ray Serve's gRPC proxy routes to
the `LatentIngress` deployment (frontends/serve_proxy.py), which calls one `model-<name>` ModelServer
deployment per model, or runs the models itself with `colocate`. Replicas, resources, autoscaling, queue
limits and rollouts: docs/architecture.md, "Serving frontends" and "Deployments and rollouts".

HTTP/JSON door + explorer page (services/frontends/http/, `http_port`, 0 = off) on Serve's HTTP proxy: native =
a second application `<app_name>-http` whose `LatentHttp` replicas hold the models; serve = the same FastAPI
app on the LatentIngress deployment (docs/architecture.md, "Serving frontends").
"""
from __future__ import annotations

import logging
from typing import Any

from latentserve.errors import NotFoundError, ValidationError
from latentserve.models.manifest import GENERATIVE, read_manifest
from latentserve.models.repository import Repository
from latentserve.services.config import ServeConfig, is_loopback, load_config
from latentserve.services.core.model_server import ModelServer, model_deployment_name
from latentserve.services.frontends.grpc.native import (AUTOSCALING_METRIC, NATIVE_GRACE_S,  # noqa: F401
                                                        NATIVE_REPLACEMENT_WAIT_S)
from latentserve.services.frontends.grpc.replica import NativeReplica
from latentserve.services.frontends.grpc.servicer import INGRESS_NAME
from latentserve.services.frontends.http.ingress import HTTP_INGRESS_NAME, http_ingress, http_latent_ingress
from latentserve.services.frontends.serve_proxy import LatentIngress

SERVICER_FUNCTIONS = [
    "latentserve.v1.latent_pb2_grpc.add_LatentServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
GRACEFUL_SHUTDOWN_S = 20.0  # in-flight requests finish on a replica being replaced


def served_models(config: ServeConfig) -> dict[str, int]:
    """{model name: default version (newest in the repository now)} for the configured models.

    Default: every generative model in the repository. Unknown or non-generative names are an error that
    lists what the repository has."""
    repo = Repository(config.repository_path())
    names = repo.names()
    families = {}
    for name in names:
        v, path = repo.resolve(name)
        families[name] = read_manifest(path, validate=False).get("family", "?")
    generative = [n for n in names if families[n] in GENERATIVE]
    if config.served.models:
        unknown = [m for m in config.served.models if m not in names]
        if unknown:
            raise NotFoundError(
                f"model(s) {', '.join(unknown)} not in repository {repo.root}; it has: {', '.join(names) or '(none)'}"
            )
        wrong = [f"{m} ({families[m]})" for m in config.served.models if m not in generative]
        if wrong:
            raise ValidationError(f"only generative models ({', '.join(GENERATIVE)}) can be served; not: {', '.join(wrong)}")
        chosen = list(config.served.models)
    else:
        chosen = generative
    if not chosen:
        raise NotFoundError(f"no generative model in repository {repo.root} (found: {', '.join(names) or 'nothing'})")
    return {name: repo.versions(name)[-1] for name in chosen}


def _replica_options(config: ServeConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "logging_config": {"enable_access_log": config.frontend.access_log},
        "max_ongoing_requests": config.scaling.max_ongoing_requests,
        "max_queued_requests": config.scaling.max_queued_requests,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
    }
    if config.scaling.autoscaling:
        opts["autoscaling_config"] = {
            "min_replicas": config.scaling.min_replicas,
            "max_replicas": config.scaling.max_replicas,
            "target_ongoing_requests": config.scaling.target_ongoing_requests,
        }
    else:
        opts["num_replicas"] = config.scaling.replicas
    return opts


def build_app(config: ServeConfig):
    """The Serve application for `config` (validated again here: the builder may get a hand-made config)."""
    from ray import serve

    config.validate()
    models = served_models(config)
    cfg = config.to_dict()
    if config.frontend.grpc_frontend == "native":
        return _native_app(config, models)
    ingress = serve.deployment(http_latent_ingress() if config.frontend.http_port else LatentIngress, name=INGRESS_NAME)
    ingress_opts: dict[str, Any] = {
        "num_replicas": config.scaling.ingress_replicas,
        "logging_config": {"enable_access_log": config.frontend.access_log},
        "max_ongoing_requests": config.scaling.max_ongoing_requests,
        "max_queued_requests": config.scaling.max_queued_requests,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
        # co-located: the ingress replica also runs the models, so it reserves the model CPUs too.
        "ray_actor_options": {"num_cpus": config.scaling.ingress_num_cpus + (config.scaling.num_cpus if config.scaling.colocate else 0.0)},
    }
    if config.scaling.colocate:
        return ingress.options(**ingress_opts).bind(cfg, models, None)
    server = serve.deployment(ModelServer)
    handles = {
        name: server.options(
            name=model_deployment_name(name),
            ray_actor_options={"num_cpus": config.scaling.num_cpus, "num_gpus": config.scaling.num_gpus},
            **_replica_options(config),
        ).bind(cfg, name, version)
        for name, version in models.items()
    }
    return ingress.options(**ingress_opts).bind(cfg, models, handles)


def _native_app(config: ServeConfig, models: dict[str, int]):
    """One LatentIngress deployment whose replicas serve gRPC themselves, models in-process."""
    from ray import serve

    if config.scaling.replicas != 1 and not config.scaling.autoscaling:
        logging.getLogger("ray.serve").warning(
            "grpc_frontend native: replicas=%d is ignored; every ingress replica holds all models, "
            "set ingress_replicas (or autoscaling) instead", config.scaling.replicas)
    opts: dict[str, Any] = {
        "logging_config": {"enable_access_log": config.frontend.access_log},
        # Serve's queue limits see only the handle calls (stats); the replica's gRPC server enforces the
        # configured ones on gRPC traffic itself.
        "max_ongoing_requests": config.scaling.max_ongoing_requests,
        "graceful_shutdown_timeout_s": native_shutdown_timeout_s(config),
        "ray_actor_options": {"num_cpus": config.scaling.ingress_num_cpus + config.scaling.num_cpus, "num_gpus": config.scaling.num_gpus},
        # make-before-break rollouts: new replicas listen on the shared port before old ones drain
        "max_surge_percent": config.frontend.max_surge_percent,
    }
    if config.scaling.autoscaling:
        opts["autoscaling_config"] = {
            "min_replicas": config.scaling.min_replicas,
            "max_replicas": config.scaling.max_replicas,
            "target_ongoing_requests": config.scaling.target_ongoing_requests,
            "policy": {"policy_function": "latentserve.services.app:native_autoscaling_policy"},
        }
    else:
        opts["num_replicas"] = config.scaling.ingress_replicas
    replica = serve.deployment(NativeReplica, name=INGRESS_NAME)
    return replica.options(**opts).bind(config.to_dict(), models)


def http_app_name(config: ServeConfig) -> str:
    return f"{config.frontend.app_name}-http"


def build_http_app(config: ServeConfig):
    """The native frontend's HTTP application (`LatentHttp` replicas, models in-process; Ray reserves
    `ingress_num_cpus` for each, so it fits beside the gRPC replicas), or None: HTTP off, or the serve
    frontend, whose ingress answers HTTP itself."""
    from ray import serve

    config.validate()
    if not config.frontend.http_port or config.frontend.grpc_frontend != "native":
        return None
    deployment = serve.deployment(http_ingress(), name=HTTP_INGRESS_NAME)
    return deployment.options(
        num_replicas=config.scaling.ingress_replicas,
        logging_config={"enable_access_log": config.frontend.access_log},
        # the app admits max_ongoing + max_queued calls itself and answers 429 beyond (api.py); Serve's own
        # queue limit would answer 503 from the proxy instead
        max_ongoing_requests=config.scaling.max_ongoing_requests + max(config.scaling.max_queued_requests, 0) + 1,
        max_queued_requests=-1,
        graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
        ray_actor_options={"num_cpus": config.scaling.ingress_num_cpus},
    ).bind(config.to_dict(), served_models(config))


def http_app_builder(args: dict | None = None):
    """Serve application builder of the HTTP app (deploy/serve.yaml): `args` over LATENTSERVE_* env."""
    app = build_http_app(load_config(args or {}))
    if app is None:
        raise ValidationError("http_app_builder: the HTTP app is for grpc_frontend native with http_port > 0 "
                              "(the serve frontend's LatentIngress answers HTTP itself)")
    return app


def grpc_route_prefix(config: ServeConfig) -> str | None:
    """HTTP route of the gRPC application: none when the native frontend's HTTP app takes "/"."""
    return None if config.frontend.http_port and config.frontend.grpc_frontend == "native" else "/"


def native_shutdown_timeout_s(config: ServeConfig) -> float:
    """Serve's force-kill deadline for a stopping native replica: its drain (services/frontends/grpc/native.py) may
    wait for a replacement to listen, then for its connections to age out, then for calls in flight."""
    return (config.frontend.drain_period_s + NATIVE_REPLACEMENT_WAIT_S + 1.1 * config.frontend.max_connection_age_s + 2.0
            + NATIVE_GRACE_S + 15.0)


def native_autoscaling_policy(ctx) -> tuple[float, dict]:
    """Serve autoscaling policy for native replicas: the gRPC traffic never passes Serve's handles, so the
    built-in request counts stay 0; scale on the replicas' own running + queued gRPC requests instead
    (`NativeReplica.record_autoscaling_stats`): desired = total / target_ongoing_requests. Serve applies
    min/max replicas, up/down-scaling delays and factors around it."""
    metrics = (ctx.aggregated_metrics or {}).get(AUTOSCALING_METRIC, {})
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    total = float(sum(metrics.values())) if metrics else 0.0
    target = ctx.config.get_target_ongoing_requests() if ctx.config is not None else 16.0
    return total / max(target, 1e-9), {}


def app_builder(args: dict | None = None):
    """Serve application builder: `args` (deploy/serve.yaml) over LATENTSERVE_* env over defaults."""
    return build_app(load_config(args or {}))


def ray_env(config: ServeConfig) -> dict[str, str]:
    """Environment variables Ray must be started with for `config` (empty unless direct_ingress).

    direct_ingress: Ray Serve's throughput-optimized mode (direct ingress: each ingress replica runs its own
    gRPC server; user code on the replica's main loop; request-path logs buffered) with the replicas' gRPC
    ports pinned to grpc_port, grpc_port + 1, ... so clients keep using grpc_port (figures:
    benchmarks/README.md)."""
    if not config.frontend.direct_ingress:
        return {}
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(config.frontend.grpc_port),
        # exclusive upper bound: one port per ingress replica plus one spare for a replica being replaced
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(config.frontend.grpc_port + config.scaling.ingress_replicas + 1),
        # Serve keeps a stopping direct-ingress replica up >= 30 s so external load balancers notice; clients
        # connect to the replica itself here, so a short drain keeps Ctrl-C and rollouts quick.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def local_ray_env(config: ServeConfig) -> dict[str, str]:
    """Environment for a Ray this process starts itself (`latentserve serve`, no --ray-address): closed by
    default. While `host` is a loopback address, Ray runs in its single-machine mode (what it does on macOS
    and Windows), in which the node IP is 127.0.0.1 and every socket of the session (GCS, raylet, workers and
    object manager, dashboard agent, metrics export, runtime-env agent) binds loopback; another host opens
    them as Ray normally does. Read by Ray when it is imported: set before `import ray`."""
    if not is_loopback(config.frontend.host):
        return {}
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def grpc_options(config: ServeConfig):
    """Serve's gRPC proxy options: the port, LatentService + Health servicers, optional server-side timeout.

    Native frontend: no servicer functions, so Serve starts no gRPC proxy (one on grpc_port would share the
    port with the replicas through SO_REUSEPORT and take part of the connections)."""
    from ray.serve.config import gRPCOptions

    if config.frontend.grpc_frontend == "native":
        return gRPCOptions(port=config.effective_proxy_grpc_port, grpc_servicer_functions=[])
    return gRPCOptions(
        port=config.effective_proxy_grpc_port,
        grpc_servicer_functions=list(SERVICER_FUNCTIONS),
        request_timeout_s=config.scaling.request_timeout_s or None,
    )


def http_tls(config: ServeConfig) -> dict[str, str]:
    """Serve's HTTP proxy options for TLS (uvicorn's ssl_certfile / ssl_keyfile): HTTPS with the gRPC port's
    certificate. Client certificates cannot be required there (Ray Serve 2.60 passes no ssl_cert_reqs), which
    is why ServeConfig refuses tls_ca with the HTTP door on."""
    sec = config.security
    if not sec.tls_cert:
        return {}
    return {"ssl_certfile": sec.tls_cert, "ssl_keyfile": sec.tls_key}


def start_options(config: ServeConfig) -> dict[str, Any]:
    """`serve.start(**start_options(config))` for a Serve instance that runs this app alone: native = the HTTP
    proxy for the HTTP door on host:http_port, or no proxy at all with http_port 0 (the replicas serve gRPC
    themselves), serve = proxies with the gRPC servicers on `effective_proxy_grpc_port` and HTTP on
    `http_port`."""
    f = config.frontend
    opts: dict[str, Any] = {"http_options": {"host": f.host, "port": f.http_port or 8000, **http_tls(config)},
                            "grpc_options": grpc_options(config)}
    if f.grpc_frontend == "native" and not f.http_port:
        opts["proxy_location"] = "Disabled"
    return opts
