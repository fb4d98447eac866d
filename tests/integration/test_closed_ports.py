"""Closed by default: a real `latentserve serve` (its own local Ray) binds every listening socket of its session
to loopback: the gRPC port, the metrics exporter, Serve's HTTP proxy and all of Ray's (GCS, raylet, workers,
object manager, dashboard agent, metrics export, runtime-env agent). The sockets are read from /proc: every
TCP listener whose inode is held by a process of the server's process tree.

Known exception (Ray 2.60): each Serve replica's inter-deployment gRPC server binds `[::]:0` in Ray's own code
(ray/serve/_private/replica.py), with no setting to change it; it is allowed here, one per replica, and
nothing else is."""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from latentserve.client import LatentClient

pytestmark = pytest.mark.timeout(600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def _listeners() -> dict[int, tuple[str, int]]:
    """inode -> (ip, port) of every listening TCP socket on this host (IPv4 and IPv6)."""
    found = {}
    for family, path in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        with open(path) as f:
            for line in f.read().splitlines()[1:]:
                cols = line.split()
                if cols[3] != "0A":  # LISTEN
                    continue
                hex_ip, hex_port = cols[1].split(":")
                raw = bytes.fromhex(hex_ip)
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per 32-bit word, host order
                found[int(cols[9])] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    return found


def session_listeners(root: int) -> list[tuple[str, int, str]]:
    """(ip, port, process name) of every socket listening in the process tree of `root`."""
    listening, out = _listeners(), []
    for pid in _tree(root):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and int(target[8:-1]) in listening:
                out.append((*listening[int(target[8:-1])], name))
    return sorted(set(out))


def _count_processes(root: int, prefix: str) -> int:
    """Processes in the tree of `root` whose name starts with `prefix`."""
    n = 0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/comm") as f:
                n += f.read().startswith(prefix)
        except OSError:
            continue
    return n


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs /proc")
def test_a_local_serve_listens_on_loopback_only(tiny_repo, tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "latentserve", "serve", "--port", str(port), "--http-port",
                             str(_free_port()), "--metrics-port", str(_free_port()), "--repo", str(tiny_repo),
                             "--models", "tiny-gan", "--num-cpus", "0.25"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": ""})
    try:
        with LatentClient(f"127.0.0.1:{port}", timeout=5) as client:
            deadline = time.time() + 300
            while not client.health():
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.time() < deadline, "latentserve serve did not come up"
                time.sleep(1)
        time.sleep(3)  # Ray's agents start beside the first workers
        sockets = session_listeners(proc.pid)
        assert any(p == port for _, p, _ in sockets), sockets  # the listing sees the gRPC port itself
        assert len(sockets) >= 5, sockets  # and Ray's (GCS, raylet, agents, workers)
        open_ = [s for s in sockets if not _loopback(s[0])]
        serve_internal = [s for s in open_ if s[2].startswith("ray::ServeRepli")]  # see the module docstring
        replicas = _count_processes(proc.pid, "ray::ServeRepli")  # the gRPC app's and the HTTP app's
        assert len(serve_internal) <= replicas, (serve_internal, replicas)  # one per replica, no more
        open_ = [s for s in open_ if s not in serve_internal]
        assert not open_, f"listening beyond loopback: {open_} (all: {sockets})"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
