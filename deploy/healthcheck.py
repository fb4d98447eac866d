"""Container healthchecks of the compose deployment (the slim image has no curl: stdlib + grpc only).

    python /app/deploy/healthcheck.py head     the Ray head is up AND every Serve application on it is
                                               RUNNING (dashboard REST API, with the cluster token)
    python /app/deploy/healthcheck.py worker   the node's raylet, via the Ray dashboard agent's auth-exempt
                                               /api/local_raylet_healthz route on 127.0.0.1:52365
    python /app/deploy/healthcheck.py grpc     grpc.health.v1 Check (no token needed) on 127.0.0.1:9000 answers
                                               SERVING (this node serves gRPC: a native-frontend replica or
                                               Serve's proxy listens here); over TLS when the server does

The head check does not probe gRPC: with the native frontend (services/app.py) the head may host no ingress
replica at all, and the load balancer (`lb`, deploy/haproxy.cfg) checks every node's gRPC port itself.
Exit 0 = healthy, 1 = not; one line on stderr says why (`docker inspect` shows it under State.Health).
Environment: LATENTSERVE_GRPC_PORT (9000), HEALTHCHECK_TIMEOUT_S (5), RAY_DASHBOARD_PORT (8265),
RAY_DASHBOARD_AGENT_PORT (52365), RAY_AUTH_TOKEN_PATH (the token file sent as `authorization: Bearer`).
TLS (`grpc_tls`), from the server's own settings, so the serving containers' environment is all it needs:
LATENTSERVE_TLS_CERT set = the server speaks TLS; the check trusts that very certificate (HEALTHCHECK_TLS_CA: a
CA bundle instead) for the name it carries (its first subjectAltName, else its CN; HEALTHCHECK_TLS_SERVER_NAME
overrides). With LATENTSERVE_TLS_CA (mutual TLS) it presents HEALTHCHECK_TLS_CERT/HEALTHCHECK_TLS_KEY, by
default the server's own pair, which the server accepts when its CA (LATENTSERVE_TLS_CA) issued it for client
use too; else give a client certificate.
"""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

AGENT_PORT = 52365  # Ray's default dashboard-agent port (ray-entrypoint.sh passes it explicitly)
DASHBOARD_PORT = 8265
SERVE_APPS_PATH = "/api/serve/applications/"  # what `serve status` reads (needs the token when auth is on)


def _token_header(environ) -> dict[str, str]:
    """`authorization: Bearer <Ray token>` from RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN); {} without one."""
    token = environ.get("RAY_AUTH_TOKEN", "").strip()
    path = environ.get("RAY_AUTH_TOKEN_PATH", "")
    if not token and path:
        try:
            with open(path) as fh:
                token = fh.read().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def check_serve_apps(port: int, timeout_s: float, headers: dict[str, str]) -> str | None:
    """None when the dashboard lists at least one Serve application and all are RUNNING, else why not."""
    url = f"http://127.0.0.1:{port}{SERVE_APPS_PATH}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
            details = json.load(resp)
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code} {exc.read(200).decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    apps = details.get("applications") or {}
    if not apps:
        return "no Serve application deployed yet"
    bad = {name: app.get("status") for name, app in apps.items() if app.get("status") != "RUNNING"}
    if bad:
        return "Serve application(s) not RUNNING: " + ", ".join(f"{n}={s}" for n, s in sorted(bad.items()))
    return None


def _cert_name(path: str) -> str:
    """The name a certificate is for: its first DNS / IP subjectAltName, else its CN ('' when unreadable)."""
    import ssl

    try:
        info = ssl._ssl._test_decode_cert(path)  # stdlib's PEM decoder (the image has no `cryptography`)
    except (ssl.SSLError, OSError, AttributeError):
        return ""
    for kind, value in info.get("subjectAltName", ()):
        if kind in ("DNS", "IP Address"):
            return value
    for rdn in info.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def grpc_tls(environ) -> tuple[bytes, bytes | None, bytes | None, str] | str | None:
    """(root PEM, client cert PEM or None, client key PEM or None, server name) when the server speaks TLS
    (LATENTSERVE_TLS_CERT set; module docstring), None when it does not, a message when a file is unreadable."""
    cert = environ.get("LATENTSERVE_TLS_CERT", "")
    if not cert:
        return None
    root_path = environ.get("HEALTHCHECK_TLS_CA") or cert
    pair = (environ.get("HEALTHCHECK_TLS_CERT") or cert, environ.get("HEALTHCHECK_TLS_KEY")
            or environ.get("LATENTSERVE_TLS_KEY", "")) if environ.get("LATENTSERVE_TLS_CA") else None
    try:
        with open(root_path, "rb") as fh:
            root = fh.read()
        chain = key = None
        if pair is not None:
            with open(pair[0], "rb") as fh:
                chain = fh.read()
            with open(pair[1], "rb") as fh:
                key = fh.read()
    except OSError as exc:
        return f"TLS file unreadable: {exc.filename}: {exc.strerror}"
    return root, chain, key, environ.get("HEALTHCHECK_TLS_SERVER_NAME") or _cert_name(cert)


def check_grpc(port: int, timeout_s: float, tls: tuple[bytes, bytes | None, bytes | None, str] | None = None
               ) -> str | None:
    """None when the gRPC health service answers SERVING on 127.0.0.1:port (over TLS with `tls`, see
    `grpc_tls`), else why not."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls is None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    else:
        root, chain, key, name = tls
        creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
        channel = grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                      options=[("grpc.ssl_target_name_override", name)] if name else [])
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.RpcError as exc:
        return f"gRPC health on :{port}: {exc.code().name} {exc.details() or ''}".strip()
    finally:
        channel.close()
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        return f"gRPC health on :{port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
    return None


def check_worker(port: int, timeout_s: float) -> str | None:
    """None when the local raylet is alive according to the dashboard agent, else why not."""
    url = f"http://127.0.0.1:{port}/api/local_raylet_healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status == 200:
                return None
            return f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code} {exc.read(200).decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("head", "worker", "grpc"):
        print("usage: healthcheck.py head|worker|grpc", file=sys.stderr)
        return 2
    env = os.environ
    timeout_s = float(env.get("HEALTHCHECK_TIMEOUT_S", "5"))
    if argv[0] == "head":
        why = check_serve_apps(int(env.get("RAY_DASHBOARD_PORT", str(DASHBOARD_PORT))), timeout_s, _token_header(env))
    elif argv[0] == "worker":
        why = check_worker(int(env.get("RAY_DASHBOARD_AGENT_PORT", str(AGENT_PORT))), timeout_s)
    else:
        tls = grpc_tls(env)
        why = tls if isinstance(tls, str) else check_grpc(int(env.get("LATENTSERVE_GRPC_PORT", "9000")), timeout_s, tls)
    if why:
        print(f"unhealthy: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
