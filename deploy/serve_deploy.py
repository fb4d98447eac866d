"""Deploys (or re-deploys, i.e. rolls out) the latentserve Serve app on the running Ray cluster of the compose
deployment, and waits until it is RUNNING.

    python /app/deploy/serve_deploy.py [--config /app/deploy/serve.yaml] [--address http://127.0.0.1:8265]
                                       [--timeout 600] [--dry-run]

Run by deploy/ray-entrypoint.sh when the head starts, and by operators for a rollout:
`docker compose exec ray-head python /app/deploy/serve_deploy.py`. Steps:

1. Read the Serve config file (deploy/serve.yaml) and find the application whose import_path is
   latentserve.services.app:app_builder.
2. Apply this container's LATENTSERVE_<FIELD> environment over that app's `args` (in the container deployment
   the environment, i.e. .env + docker-compose.yml, is where operators configure it, so it wins over the
   checked-in file, whose `repository: ""` would otherwise hide LATENTSERVE_REPOSITORY). Secrets
   (`is_secret`: the API token, the Redis URLs) are never written into the config: Serve stores and shows deployed configs; the app
   builder reads them from its node's environment itself (every Ray container gets the same .env).
3. Validate: ServeConfig range checks, grpc_options.port / http_options.port == the app's ports, and the
   repository has the models (`render` = steps 2-4).
4. Stamp the newest version of every served model into the app's runtime_env (ROLLOUT_ENV_VAR). With the
   native frontend, http_port > 0 and Serve's proxies on (proxy_location not Disabled), add the HTTP/JSON
   application `<name>-http` (services.app:http_app_builder, route "/", the same args and stamp) and take
   the gRPC app off HTTP routing (`with_http_app`). Serve
   rebuilds an app only when its import_path, args or runtime_env change (its "code version"); without the
   stamp, re-deploying an unchanged serve.yaml after exporting version N+1 would be a no-op. With it, Serve
   runs the builder again and replaces the replicas gradually (services/app.py: no request dropped).
5. Write the effective config (no secrets in it) to a temp file, run `serve deploy` on it, and poll
   Serve's status (what `serve status` shows, fetched in-process) until the app is RUNNING with a
   deployment time after ours (DEPLOY_FAILED or the timeout exits non-zero with Serve's message).
   Exit codes: 0 RUNNING, 1 deploy failed, 2 invalid config.
"""
from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

APP_IMPORT_PATH = "latentserve.services.app:app_builder"
HTTP_IMPORT_PATH = "latentserve.services.app:http_app_builder"
ENV_PREFIX = "LATENTSERVE_"
# Read from the environment by the app builder, never written into the Serve config: the API token and
# every URL field (Redis URLs carry the password). `is_secret` also catches fields added later.
SECRET_FIELDS = frozenset({"api_token", "redis_url", "redis_cache_url"})
ROLLOUT_ENV_VAR = "LATENTSERVE_ROLLOUT"  # runtime_env marker: "name=version,..." of the newest versions
# The `serve` CLI of this interpreter's Ray (a `serve` script on PATH may belong to another Python).
SERVE_CLI = (sys.executable, "-c", "from ray.serve.scripts import cli; cli()")
DEFAULT_CONFIG = "/app/deploy/serve.yaml"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL_FAILURES = ("DEPLOY_FAILED",)


def _error(msg: str) -> Exception:
    from latentserve.errors import ValidationError

    return ValidationError(msg)


def load_serve_file(path: Path) -> dict:
    """The parsed Serve config file (a mapping with `applications`)."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise _error(f"Serve config {path} not found") from None
    except yaml.YAMLError as exc:
        raise _error(f"Serve config {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("applications"), list) or not doc["applications"]:
        raise _error(f"Serve config {path} has no `applications` list")
    return doc


def find_app(doc: Mapping[str, Any]) -> dict:
    """The latentserve application entry of a Serve config (the one with our import_path)."""
    apps = [a for a in doc.get("applications") or [] if isinstance(a, dict) and a.get("import_path") == APP_IMPORT_PATH]
    if len(apps) != 1:
        raise _error(f"Serve config must have exactly one application with import_path {APP_IMPORT_PATH}, found {len(apps)}")
    return apps[0]


def is_secret(field_name: str) -> bool:
    """True for ServeConfig fields that may hold credentials (kept out of the Serve config)."""
    return (field_name in SECRET_FIELDS or field_name.endswith("_url")
            or any(w in field_name for w in ("token", "password", "secret")))


def env_args(environ: Mapping[str, str]) -> dict[str, str]:
    """{setting: raw string} for every non-secret ServeConfig setting set as LATENTSERVE_<NAME> in `environ`."""
    from latentserve.services.config import FLAT

    out = {}
    for name in FLAT:
        key = ENV_PREFIX + name.upper()
        if not is_secret(name) and key in environ:
            out[name] = environ[key]
    return out


def effective_config(doc: Mapping[str, Any], environ: Mapping[str, str]) -> dict:
    """A copy of `doc` with the environment applied over the latentserve app's args (secrets excluded).

    An environment `grpc_port` / `http_port` also moves `grpc_options.port` / `http_options.port`, which must
    stay equal to them."""
    out = copy.deepcopy(dict(doc))
    app = find_app(out)
    args = dict(app.get("args") or {})
    for k in sorted(args):
        if is_secret(k) and args[k]:
            raise _error(f"Serve config sets args.{k}: secrets belong in .env (LATENTSERVE_{k.upper()}), because "
                         f"Serve stores and shows deployed configs")
    overrides = env_args(environ)
    args.update(overrides)
    app["args"] = args
    if "grpc_port" in overrides:
        out["grpc_options"] = {**(out.get("grpc_options") or {}), "port": int(overrides["grpc_port"])}
    if "http_port" in overrides:
        out["http_options"] = {**(out.get("http_options") or {}), "port": int(overrides["http_port"])}
    return out


def validate(doc: Mapping[str, Any], environ: Mapping[str, str]):
    """(ServeConfig, {model: newest version}) the builder will see; raises ValidationError / NotFoundError."""
    from latentserve.services.app import served_models
    from latentserve.services.config import load_config

    app = find_app(doc)
    config = load_config(app.get("args") or {}, environ=environ)
    proxy_port = (doc.get("grpc_options") or {}).get("port")
    if proxy_port is not None and int(proxy_port) != config.effective_proxy_grpc_port:
        raise _error(f"grpc_options.port ({proxy_port}) differs from the app's gRPC port ({config.effective_proxy_grpc_port})")
    http_port = (doc.get("http_options") or {}).get("port")
    if http_port is not None and config.frontend.http_port and int(http_port) != config.frontend.http_port:
        raise _error(f"http_options.port ({http_port}) differs from the app's http_port ({config.frontend.http_port})")
    return config, served_models(config)


def render(doc: Mapping[str, Any], environ: Mapping[str, str]):
    """Steps 2-4 of the module docstring: (effective doc, ServeConfig, {model: newest version}).

    Environment values land in the doc typed (as the validated ServeConfig holds them), not as strings."""
    out = effective_config(doc, environ)
    config, models = validate(out, environ)
    args = find_app(out)["args"]
    for name in env_args(environ):
        args[name] = config.to_dict()[name]
    from latentserve.services.app import http_tls

    if http_tls(config):  # TLS (LATENTSERVE_TLS_CERT/KEY, compose secrets): Serve's HTTP proxy speaks HTTPS too
        out["http_options"] = {**(out.get("http_options") or {}), **http_tls(config)}
    return with_http_app(stamp_rollout(out, models), config), config, models


def with_http_app(doc: dict, config: Any) -> dict:
    """The native frontend's HTTP application beside the gRPC one (step 4), derived from the gRPC app's entry
    so the two never disagree; any HTTP entry in the file is replaced."""
    main = find_app(doc)
    apps = [a for a in doc["applications"] if a.get("import_path") != HTTP_IMPORT_PATH]
    native = config.frontend.grpc_frontend == "native"
    if native and doc.get("proxy_location", "EveryNode") != "Disabled":
        # Serve's gRPC proxy would share the replicas' port (SO_REUSEPORT) and take part of the connections
        doc["grpc_options"] = {**(doc.get("grpc_options") or {}), "grpc_servicer_functions": []}
    if doc.get("proxy_location", "EveryNode") != "Disabled" and config.frontend.http_port and native:
        main["route_prefix"] = None
        apps.append({"name": f"{main.get('name', config.frontend.app_name)}-http", "route_prefix": "/",
                     "import_path": HTTP_IMPORT_PATH, "args": copy.deepcopy(main.get("args") or {}),
                     "runtime_env": copy.deepcopy(main.get("runtime_env") or {})})
    doc["applications"] = apps
    return doc


def stamp_rollout(doc: dict, models: Mapping[str, int]) -> dict:
    """Put the served model versions into the app's runtime_env so a new version changes Serve's code version."""
    app = find_app(doc)
    runtime_env = dict(app.get("runtime_env") or {})
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars[ROLLOUT_ENV_VAR] = ",".join(f"{name}={version}" for name, version in sorted(models.items()))
    runtime_env["env_vars"] = env_vars
    app["runtime_env"] = runtime_env
    return doc


_status_clients: dict[str, Any] = {}


def app_status(address: str, app_name: str) -> dict | None:
    """The app's entry of Serve's status ({status, message, last_deployed_time_s, ...}); None if absent.

    The same request `serve status` makes (GET /api/serve/applications/ with the Ray token when token auth
    is on), made in this process: a `serve status` subprocess per poll costs seconds of imports each time."""
    client = _status_clients.get(address)
    if client is None:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        try:
            client = _status_clients[address] = ServeSubmissionClient(address)
        except Exception as exc:  # noqa: BLE001 - connection refused / version check: retried by the caller
            raise RuntimeError(f"Serve status at {address}: {type(exc).__name__}: {exc}") from None
    try:
        details = client.get_serve_details()
    except Exception as exc:  # noqa: BLE001 - the dashboard is busy or restarting: retried by the caller
        raise RuntimeError(f"Serve status at {address}: {type(exc).__name__}: {exc}") from None
    return (details.get("applications") or {}).get(app_name)


def wait_running(address: str, app_name: str, since: float, timeout_s: float, poll_s: float = 1.0) -> dict:
    """Poll until the app was (re)deployed after `since` and is RUNNING; raise with Serve's message otherwise."""
    deadline = time.monotonic() + timeout_s
    last: dict | None = None
    while True:
        # Sleep first: the controller takes the new config synchronously but reports DEPLOYING only from its
        # next control-loop pass (~0.1 s), so an immediate poll could see the old app's RUNNING.
        time.sleep(poll_s)
        try:
            last = app_status(address, app_name)
        except RuntimeError as exc:  # dashboard busy during a rollout: retry
            print(f"serve_deploy: {exc}", file=sys.stderr, flush=True)
            last = None
        if last:
            fresh = float(last.get("last_deployed_time_s") or 0.0) >= since - 1.0
            state = last.get("status")
            if fresh and state == "RUNNING":
                return last
            if fresh and state in TERMINAL_FAILURES:
                raise RuntimeError(f"application {app_name!r} {state}:\n{last.get('message', '')}")
        if time.monotonic() > deadline:
            state = (last or {}).get("status", "absent")
            raise RuntimeError(f"application {app_name!r} not RUNNING after {timeout_s:.0f} s (status {state}):\n"
                               f"{(last or {}).get('message', '')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Deploy or roll out the latentserve Serve app and wait for RUNNING.")
    p.add_argument("--config", type=Path, default=Path(os.environ.get("LATENTSERVE_SERVE_CONFIG", DEFAULT_CONFIG)),
                   help="Serve config file (default: $LATENTSERVE_SERVE_CONFIG or /app/deploy/serve.yaml)")
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", DEFAULT_ADDRESS),
                   help="Ray dashboard address (default: $RAY_DASHBOARD_ADDRESS or http://127.0.0.1:8265)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for RUNNING (default 600)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the effective config; deploy nothing")
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error("--timeout must be > 0")

    from latentserve.errors import LatentServeError

    try:
        doc, config, models = render(load_serve_file(args.config), os.environ)
    except LatentServeError as exc:
        print(f"serve_deploy: error: {exc}", file=sys.stderr)
        return 2
    listed = ", ".join(f"{n} v{v}" for n, v in sorted(models.items()))
    text = yaml.safe_dump(doc, sort_keys=False)
    if args.dry_run:
        sys.stdout.write(text)
        return 0

    app_name = find_app(doc).get("name", config.frontend.app_name)
    with tempfile.NamedTemporaryFile("w", prefix="serve-", suffix=".yaml", delete=False) as fh:
        fh.write(text)
        rendered = fh.name
    try:
        since = time.time()
        print(f"serve_deploy: deploying {app_name!r} ({listed}) to {args.address}", flush=True)
        proc = subprocess.run([*SERVE_CLI, "deploy", "--address", args.address, rendered])
        if proc.returncode != 0:
            print(f"serve_deploy: error: `serve deploy` exited {proc.returncode}", file=sys.stderr)
            return 1
        try:
            for name in [a.get("name", app_name) for a in doc["applications"] if a.get("import_path") == HTTP_IMPORT_PATH]:
                wait_running(args.address, name, since, args.timeout)
            wait_running(args.address, app_name, since, args.timeout)
        except RuntimeError as exc:
            print(f"serve_deploy: error: {exc}", file=sys.stderr)
            return 1
    finally:
        os.unlink(rendered)
    http = any(a.get("import_path") == HTTP_IMPORT_PATH for a in doc["applications"])
    print(f"serve_deploy: {app_name!r} RUNNING ({listed}); gRPC on :{config.frontend.grpc_port}"
          + (f", HTTP/JSON + explorer on :{config.frontend.http_port}" if http else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
