"""A real multi-node Ray cluster on one host (loopback): `latentserve cluster-demo` and the cluster test.

    cluster = LocalCluster(workdir, env={"LATENTSERVE_REDIS_URL": url})
    head = cluster.start_head(num_cpus=2)                 # `ray start --head --block`
    worker = cluster.add_node(num_cpus=2)                 # `ray start --address=<head> --block`
    cluster.deploy(serve_config)                          # deploy/serve_deploy.py -> `serve deploy` via the dashboard
    cluster.replica_nodes("latentserve")                  # {replica id: node id} from Serve's status
    cluster.kill_node(worker)                             # SIGKILL every process of that node
    cluster.stop()                                        # every node (also on errors: use `with`)

Each node is `ray start --block` run by this interpreter (`sys.executable`: the nodes import the same
latentserve as the caller; a `ray` script on PATH may belong to another Python) in its own process session,
so all of a node's processes (raylet, agents, Serve replicas and their serving processes) are found by
session id and killed together, as a machine failure would. Every port Ray would otherwise take from a
fixed default (GCS 6379, dashboard 8265, dashboard agent 52365, client server 10001, ...) is a port chosen
here that is free right now, worker ports are random (0), and every node has its own --temp-dir under
`workdir`, so this cluster never collides with another Ray on the host. The gRPC port, the dashboard and
Redis listen on 127.0.0.1 only; Ray's own node-to-node ports are advertised on the host's address (Ray maps
127.0.0.1 to it, `ray._private.services.resolve_ip_for_localhost`) and need the cluster token. Token
authentication stays on, set up as in docker-compose.yml: a fresh random token in a 0600 file under
`workdir`, given to every node and to the serve CLI as RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH
(~/.ray/auth_token is never read or written).

`serve_config_for` writes the Serve config the cluster deploys: deploy/serve.yaml with only the repository,
the ports, the bind address (127.0.0.1) and the replica count changed, plus `max_replicas_per_node: 1` for
the ingress deployment so that its replicas land on different nodes. With the native frontend every node's
replica binds the same gRPC port (SO_REUSEPORT); the kernel spreads connections over the nodes and
`ClientPool` tells them apart by the `latentserve-node` trailing metadata (services/observability/identity.py).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from latentserve.errors import UnavailableError, ValidationError

RAY_CLI = (sys.executable, "-c", "from ray.scripts.scripts import main; main()")
LOOPBACK = "127.0.0.1"
INGRESS_DEPLOYMENT = "LatentIngress"
OBJECT_STORE_BYTES = 128 * 1024 * 1024  # per node; Ray's default (30% of RAM) is far more than a demo needs
START_TIMEOUT_S = 120.0
START_ATTEMPTS = 3  # `ray start` of one node, see LocalCluster._start
RUNTIME_STARTED = b"Ray runtime started."  # what `ray start` prints once the node registered with the GCS
STOP_TIMEOUT_S = 20.0


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """`n` distinct ports free on `host` right now (all held open while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_marker(name: str) -> str:
    """The custom resource (amount 1) that identifies the node started as `name` in Ray's node table."""
    return f"latentserve_demo_{name.replace('-', '_')}"


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except OSError:  # URLError and refused connections
        return False


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout_s`, then SIGKILL and reap: a server process that ignores SIGTERM (or is
    stuck) still goes away, and no zombie is left behind."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


def session_pids(sid: int) -> list[int]:
    """Every process of the process session `sid` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if len(fields) > 3 and int(fields[3]) == sid:
            out.append(int(entry))
    return out


@dataclass
class RayNode:
    """One `ray start --block` process and what the cluster learned about it."""

    name: str  # "head", "worker-1", ...
    proc: subprocess.Popen
    temp_dir: Path
    log_path: Path
    ports: dict[str, int]
    node_id: str = ""  # Ray node id (hex), known once the node registered
    killed: bool = False

    @property
    def sid(self) -> int:
        return self.proc.pid  # started with start_new_session: the session id is its pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass
class LocalCluster:
    """Ray nodes on this host (see the module docstring). `env`: extra environment for every node (e.g.
    LATENTSERVE_REDIS_URL, which the app reads on each node), the deploy step and the serve CLI."""

    workdir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = lambda msg: None
    nodes: list[RayNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_path = self.workdir / "ray_auth_token"
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        self.gcs_port = 0
        self.dashboard_port = 0

    # -- addresses ------------------------------------------------------------------------------------------
    @property
    def gcs_address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    def node_env(self) -> dict[str, str]:
        """The environment of every Ray process and of the serve CLI: token auth on, our token file."""
        env = dict(os.environ)
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):  # never join or authenticate against another cluster
            env.pop(key, None)
        env.update(self.env)
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # a stopping node drains its replicas for at most this long (Ray's default: 30 s)
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"})
        return env

    # -- nodes ----------------------------------------------------------------------------------------------
    def start_head(self, num_cpus: int, wait: bool = True) -> RayNode:
        """Start the head (GCS, dashboard with Serve's REST API, a raylet with `num_cpus` CPUs); returns once
        its Ray runtime started (workers may join from then on) or, with `wait`, once it is registered."""
        if self.nodes:
            raise ValidationError("the head is already started")

        def args() -> tuple[list[str], dict[str, int]]:  # fresh ports for every attempt
            names = ("gcs", "dashboard", "agent_http", "agent_grpc", "runtime_env_agent", "metrics_export",
                     "client_server", "node_manager", "object_manager")
            ports = dict(zip(names, free_ports(len(names))))
            self.gcs_port, self.dashboard_port = ports["gcs"], ports["dashboard"]
            args = ["--head", f"--port={ports['gcs']}", "--include-dashboard=true", f"--dashboard-host={LOOPBACK}",
                    f"--dashboard-port={ports['dashboard']}", f"--ray-client-server-port={ports['client_server']}"]
            return args, ports

        node = self._start("head", num_cpus, args)
        if wait:
            self.wait_registered()
        return node

    def add_node(self, num_cpus: int, wait: bool = True) -> RayNode:
        """Start a worker node joining the head with the cluster token; returns once its Ray runtime started
        or, with `wait`, once the head lists it."""
        if not self.nodes:
            raise ValidationError("start the head first")

        def args() -> tuple[list[str], dict[str, int]]:
            names = ("agent_http", "agent_grpc", "runtime_env_agent", "metrics_export", "node_manager",
                     "object_manager")
            return [f"--address={self.gcs_address}"], dict(zip(names, free_ports(len(names))))

        node = self._start(f"worker-{len(self.nodes)}", num_cpus, args)
        if wait:
            self.wait_registered()
        return node

    def _start(self, name: str, num_cpus: int, make_args: Callable[[], tuple[list[str], dict[str, int]]]) -> RayNode:
        """`ray start --block` for one node, restarted (at most START_ATTEMPTS times in all) when it exits
        before its runtime started, as compose's restart policy does for a container. On an overloaded host
        a raylet aborts when its dashboard agent has not written its port file within Ray's fixed wait
        (~15 s; "Timed out waiting for file .../dashboard_agent_listen_port_..."), and `ray start` exits."""
        temp_dir = self.workdir / name
        temp_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        for attempt in range(1, START_ATTEMPTS + 1):
            args, ports = make_args()
            # A custom resource names the node, so its node id can be found in the GCS's node table.
            marker = {node_marker(name): 1}
            cmd = [*RAY_CLI, "start", "--block", *args, f"--temp-dir={temp_dir}",
                   f"--num-cpus={int(num_cpus)}", f"--resources={json.dumps(marker)}",
                   f"--object-store-memory={OBJECT_STORE_BYTES}",
                   f"--dashboard-agent-listen-port={ports['agent_http']}",
                   f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
                   f"--runtime-env-agent-port={ports['runtime_env_agent']}",
                   f"--metrics-export-port={ports['metrics_export']}", f"--node-manager-port={ports['node_manager']}",
                   f"--object-manager-port={ports['object_manager']}", "--min-worker-port=0", "--max-worker-port=0",
                   "--disable-usage-stats"]
            self.log(f"starting Ray {name}: {num_cpus} CPUs, temp dir {temp_dir}, log {log_path}")
            offset = log_path.stat().st_size if log_path.exists() else 0
            with open(log_path, "ab") as logf:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                        env=self.node_env(), start_new_session=True)
            node = RayNode(name=name, proc=proc, temp_dir=temp_dir, log_path=log_path, ports=ports)
            self.nodes.append(node)

            def started() -> bool:
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    return RUNTIME_STARTED in f.read()

            try:
                self._wait_until(node, "Ray runtime", started)
                return node
            except UnavailableError:
                if node.alive() or attempt == START_ATTEMPTS:
                    raise  # a timeout, or the last attempt: report it
                self.nodes.remove(node)
                self._kill_session(node)
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
                self.log(f"Ray {name} exited while starting (attempt {attempt} of {START_ATTEMPTS}: "
                         f"{lines[-1][:200] if lines else 'no output'}); starting it again")
        raise AssertionError("unreachable")

    def _wait_until(self, node: RayNode, what: str, ready: Callable[[], bool],
                    timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if not node.alive():
                raise UnavailableError(f"Ray {node.name} exited with code {node.proc.returncode}:\n{node.log_tail()}")
            if time.monotonic() > deadline:
                raise UnavailableError(f"Ray {node.name}: no {what} after {timeout_s:.0f}s:\n{node.log_tail()}")
            time.sleep(0.3)

    def wait_registered(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the dashboard answers and every started node is ALIVE in the GCS; sets their node_id."""
        self._wait_until(self.head, f"dashboard on port {self.dashboard_port}",
                         lambda: _http_ok(f"{self.dashboard_url}/api/gcs_healthz"), timeout_s)
        for node in self.nodes:
            if node.node_id:
                continue

            def registered(node: RayNode = node) -> bool:
                try:
                    nodes = self.list_nodes()
                except (OSError, ValueError, KeyError):
                    return False
                for n in nodes:
                    if n.get("state") == "ALIVE" and node_marker(node.name) in (n.get("resources_total") or {}):
                        node.node_id = n["node_id"]
                        return True
                return False

            self._wait_until(node, "registration with the head", registered, timeout_s)
            self.log(f"Ray {node.name} is up: node {node.node_id[:12]}")

    @staticmethod
    def _kill_session(node: RayNode) -> int:
        """SIGKILL every process of the node's session; how many there were."""
        pids = session_pids(node.sid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if node.alive():
            node.proc.wait(10)
        return len(pids)

    def kill_node(self, node: RayNode) -> int:
        """SIGKILL every process of `node` at once (raylet, agents, replicas, their serving processes), as a
        crash of that machine would; returns how many were killed."""
        n = self._kill_session(node)
        node.killed = True
        self.log(f"killed Ray {node.name} ({n} processes, SIGKILL)")
        return n

    def stop(self) -> None:
        """Stop every node: SIGTERM to each `ray start --block` (workers first; each stops its processes),
        then SIGKILL whatever of a node's session is still running after STOP_TIMEOUT_S."""
        for node in reversed(self.nodes):
            if node.alive():
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in reversed(self.nodes):
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for node in self.nodes:
            self._kill_session(node)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the dashboard API (token auth) ---------------------------------------------------------------------
    def _get(self, path: str) -> Any:
        req = urllib.request.Request(self.dashboard_url + path,
                                     headers={"Authorization": f"Bearer {self.token_path.read_text().strip()}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def list_nodes(self) -> list[dict]:
        """Ray's state API: every node the GCS knows ({node_id, state, is_head_node, resources_total, ...})."""
        return self._get("/api/v0/nodes")["data"]["result"]["result"]

    def serve_details(self) -> dict:
        """Serve's status (what `serve status` shows, with per-replica node ids)."""
        return self._get("/api/serve/applications/")

    def replica_nodes(self, app: str, deployment: str = INGRESS_DEPLOYMENT, state: str = "RUNNING") -> dict[str, str]:
        """{replica id: node id} of the deployment's replicas in `state`, from Serve's status."""
        app_details = (self.serve_details().get("applications") or {}).get(app) or {}
        dep = (app_details.get("deployments") or {}).get(deployment) or {}
        return {r["replica_id"]: r["node_id"] for r in dep.get("replicas") or [] if r.get("state") == state}

    def deploy(self, config_path: Path, deploy_script: Path, timeout_s: float = 300.0) -> None:
        """Run deploy/serve_deploy.py (the compose head's deploy step: validate, `serve deploy` through the
        head's dashboard, wait for RUNNING) against this cluster."""
        cmd = [sys.executable, str(deploy_script), "--config", str(config_path), "--address", self.dashboard_url,
               "--timeout", str(timeout_s)]
        self.log(f"deploying {config_path} ({deploy_script.name} -> serve deploy --address {self.dashboard_url})")
        proc = subprocess.run(cmd, env=self.node_env(), capture_output=True, text=True, timeout=timeout_s + 120)
        if proc.returncode != 0:
            out = (proc.stderr or proc.stdout)[-4000:]
            raise UnavailableError(f"{deploy_script.name} exited {proc.returncode}:\n{out}")

    def serve_log_tail(self, chars: int = 4000) -> str:
        """The tail of every Serve log of every node (for failure reports)."""
        out = []
        for node in self.nodes:
            for path in sorted(node.temp_dir.glob("session_*/logs/serve/*.log")):
                out.append(f"===== {node.name}: {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)


def serve_config_for(base: Mapping[str, Any], repository: str, grpc_port: int, http_port: int,
                     replicas: int) -> dict:
    """deploy/serve.yaml (parsed) for a loopback cluster: only the repository, the ports, the bind address,
    the ingress replica count and the proxies (off) change; `max_replicas_per_node: 1` spreads the replicas over the nodes."""
    import copy

    doc = copy.deepcopy(dict(base))
    apps = [a for a in doc.get("applications") or [] if a.get("import_path") == "latentserve.services.app:app_builder"]
    if len(apps) != 1:
        raise ValidationError("the Serve config must have exactly one latentserve application")
    app = apps[0]
    app["args"] = {**(app.get("args") or {}), "repository": str(repository), "host": LOOPBACK,
                   "grpc_port": int(grpc_port), "http_port": int(http_port), "ingress_replicas": int(replicas)}
    doc["grpc_options"] = {**(doc.get("grpc_options") or {}), "port": int(grpc_port)}
    doc["http_options"] = {**(doc.get("http_options") or {}), "host": LOOPBACK, "port": int(http_port)}
    doc["proxy_location"] = "Disabled"  # loopback nodes cannot each bind the HTTP port (so: no HTTP app)
    deployments = [d for d in app.get("deployments") or [] if d.get("name") != INGRESS_DEPLOYMENT]
    app["deployments"] = deployments + [{"name": INGRESS_DEPLOYMENT, "max_replicas_per_node": 1}]
    return doc


def deploy_files(config: str | None = None) -> tuple[Path, Path]:
    """(Serve config, deploy/serve_deploy.py) of this source tree; `config` replaces the first. Both live in
    the repository's deploy/ folder, which a source checkout (`pip install -e '.[serve]'`) has and a wheel does not."""
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    script = deploy / "serve_deploy.py"
    if not script.is_file():
        raise ValidationError(f"{script} not found: the cluster demo needs the deploy/ folder of a latentserve "
                              f"source checkout (installed with `pip install -e '.[serve]'`)")
    path = Path(config) if config else deploy / "serve.yaml"
    if not path.is_file():
        raise ValidationError(f"Serve config {path} not found")
    return path, script


class PrivateRedis:
    """A password-protected redis-server on a free loopback port with its data in `workdir` (no persistence):
    the demo's handle store when no --redis-url is given."""

    def __init__(self, workdir: Path) -> None:
        import shutil

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise ValidationError("redis-server not found on PATH: install it (e.g. apt-get install redis-server) "
                                  "or pass --redis-url")
        self.workdir = Path(workdir)
        self.password = secrets.token_hex(16)
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> "PrivateRedis":
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"  # the password in a 0600 file, not on the command line (`ps`)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"port {self.port}\nbind {LOOPBACK}\ndir {self.workdir}\nsave \"\"\nappendonly no\n"
                    f"requirepass {self.password}\nlogfile {self.workdir / 'redis.log'}\n")
        self.proc = subprocess.Popen([self.binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not _accepts(LOOPBACK, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise UnavailableError(f"redis-server did not start on port {self.port} "
                                       f"(log: {self.workdir / 'redis.log'})")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


# ------------------------------------------------------------------------------------------ clients by node
class ClientPool:
    """LatentClients to one gRPC target that several nodes serve (SO_REUSEPORT or a TCP load balancer), each
    with its own connection (a channel-local subchannel pool), grouped by the node that answers them.

    `call(fn)` runs `fn(client)` on the next client in turn; `call_on(node, fn)` keeps trying clients (and
    opening new ones, up to `max_clients`) until `node` answered (or, `by="replica"`, that replica), which
    turns the kernel's (or a proxy's) choice of a server into a deterministic test. `app_name`: the
    `application` metadata Serve's gRPC proxy routes on when several apps run."""

    def __init__(self, target: str, token: str | None = None, max_clients: int = 64, timeout: float = 30.0,
                 app_name: str | None = None) -> None:
        self.target, self.token, self.max_clients, self.timeout = target, token, int(max_clients), timeout
        self.app_name = app_name
        self.clients: list[Any] = []
        self._next = 0

    def new_client(self):
        """Open one more client (its own connection) and add it to the pool."""
        from latentserve.client import LatentClient

        client = LatentClient(self.target, token=self.token, timeout=self.timeout, app_name=self.app_name,
                              options=[("grpc.use_local_subchannel_pool", 1)])
        self.clients.append(client)
        return client

    def call(self, fn: Callable[[Any], Any]) -> tuple[Any, Any]:
        """(fn(client), ServerInfo) on the next client in round-robin order."""
        if not self.clients:
            self.new_client()
        client = self.clients[self._next % len(self.clients)]
        self._next += 1
        result = fn(client)
        return result, client.last_server

    def call_on(self, wanted: str, fn: Callable[[Any], Any], by: str = "node") -> Any:
        """fn(client) answered by the node (`by="node"`) or replica (`by="replica"`) `wanted`; other answers
        are discarded, so use idempotent calls."""
        seen: set[str] = set()
        for i in range(self.max_clients):
            client = self.clients[i] if i < len(self.clients) else self.new_client()
            result = fn(client)
            got = getattr(client.last_server, by, None) if client.last_server else None
            if got == wanted:
                return result
            seen.add(got[:12] if got else "(no identity)")
        raise UnavailableError(f"no call to {self.target} reached {by} {wanted[:12]} in {self.max_clients} "
                               f"tries (answered by: {', '.join(sorted(seen))})")

    def nodes_reached(self, expected: Iterable[str]) -> dict[str, int]:
        """Open clients until every node in `expected` answered one (ListModels); {node: clients answered}."""
        want = set(expected)
        counts: dict[str, int] = {}
        for i in range(self.max_clients):
            client = self.clients[i] if i < len(self.clients) else self.new_client()
            client.list_models()
            node = client.last_server.node if client.last_server else ""
            counts[node] = counts.get(node, 0) + 1
            if want <= set(counts) and i + 1 >= len(self.clients):
                break
        return counts

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()


# ------------------------------------------------------------------------------------ what the demo checks
@dataclass
class Issued:
    """Handles one Sample call issued, the images it returned and the node that answered."""

    handles: list[str]
    images: Any  # uint8 (N, H, W, 3)
    node: str


def sample_issue(client: Any, model: str, seed: int, n: int = 2) -> Issued:
    """A seeded Sample with handles (idempotent: the same seed gives the same latents and handles)."""
    out = client.sample(model, n, seed=seed, return_handles=True)
    node = client.last_server.node if client.last_server else ""
    return Issued(handles=list(out.handles), images=out.images, node=node)


def resolve(client: Any, model: str, issued: Issued) -> float:
    """Decode `issued`'s handles; the largest uint8 difference to the images Sample returned."""
    import numpy as np

    images = client.decode(model, handles=issued.handles)
    return float(np.abs(images.astype(np.int16) - issued.images.astype(np.int16)).max())


class RequestStream:
    """A background thread sending seeded Sample-with-handles calls round-robin over a ClientPool's clients
    until stopped: the load running while a node dies. `issued` / `failures` / `by_node` record the outcome
    (every failure is kept with its message)."""

    def __init__(self, pool: ClientPool, model: str, first_seed: int) -> None:
        import threading

        self.pool, self.model, self.seed = pool, model, int(first_seed)
        self.issued: list[Issued] = []
        self.failures: list[str] = []
        self.by_node: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latentserve-request-stream", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seed += 1
            try:
                item, _ = self.pool.call(lambda c: sample_issue(c, self.model, self.seed))
            except Exception as exc:  # noqa: BLE001 - recorded: the caller asserts there are none
                self.failures.append(f"seed {self.seed}: {type(exc).__name__}: {exc}")
                continue
            self.issued.append(item)
            self.by_node[item.node] = self.by_node.get(item.node, 0) + 1

    def wait_for(self, calls: int, nodes: Iterable[str], timeout_s: float = 60.0) -> bool:
        """Block until at least `calls` calls succeeded and each of `nodes` answered one (connections move
        between nodes as they age out), a call failed, or `timeout_s` passed; True when the first."""
        want = set(nodes)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.failures:
            if len(self.issued) >= calls and want <= set(self.by_node):
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> "RequestStream":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(120)
