"""A real two-node Ray cluster on loopback serving deploy/serve.yaml (issue #8; the cross-replica handle of #4).

Two `ray start` nodes, each its own process session and resources (2 CPUs: room for one ingress replica,
which reserves 1.5), Ray token auth on with a temp token file, a real redis-server shared by both nodes.
The app is deployed with deploy/serve_deploy.py (`serve deploy` through the head's dashboard) from
deploy/serve.yaml with only the repository, ports, bind address and replica count changed
(latentserve/tools/local_cluster.py serve_config_for). Checked, in order:

1. Serve's status places one RUNNING LatentIngress replica on each node;
2. gRPC requests succeed and both nodes answer them (the `latentserve-node` trailing metadata);
3. a handle issued by the replica on one node resolves on the replica on the other, both ways (issue #4:
   "handle round trip through two replicas" of one app, here on two nodes);
4. the worker node is SIGKILLed (all its processes) while a stream of requests runs: no request fails (the
   client retries UNAVAILABLE on a fresh connection), later ones are all served by the head, and every
   handle issued before or during the kill (by either node) still resolves.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from latentserve.tools.local_cluster import (
    ClientPool,
    LocalCluster,
    RequestStream,
    free_ports,
    resolve,
    sample_issue,
    serve_config_for,
)

_name = "latentserve_tests_redis_fixture"
if _name not in sys.modules:  # tests/integration is not a package: load the fixture module by path, once
    _spec = importlib.util.spec_from_file_location(_name, Path(__file__).with_name("redis_fixture.py"))
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules[_name] = _mod
    _spec.loader.exec_module(_mod)
_fx = sys.modules[_name]
redis_factory, redis_server = _fx.redis_factory, _fx.redis_server

ROOT = Path(__file__).resolve().parents[2]
APP = "latentserve"
MODEL = "tiny-gan"
STREAM_AFTER_KILL_S = 3.0
# every test here starts a two-node Ray cluster (two `ray start` sessions, Serve, a deploy) and stops it
pytestmark = pytest.mark.slow


def test_two_node_cluster_serves_shares_handles_and_survives_a_node_kill(tiny_repo, redis_server):
    t0 = time.monotonic()
    marks: list[str] = []

    def mark(what: str) -> None:
        marks.append(f"{time.monotonic() - t0:6.1f}s {what}")

    # Short paths: Ray's Unix sockets live under --temp-dir (sun_path is at most 107 bytes).
    workdir = Path(tempfile.mkdtemp(prefix="lscl-", dir="/tmp"))
    grpc_port, http_port = free_ports(2)
    base = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    config = workdir / "serve.yaml"
    config.write_text(yaml.safe_dump(serve_config_for(base, str(tiny_repo), grpc_port, http_port, replicas=2)))
    cluster = LocalCluster(workdir, env={"LATENTSERVE_REDIS_URL": redis_server.url()}, log=mark)
    pool = ClientPool(f"127.0.0.1:{grpc_port}")
    ok = False
    try:
        head = cluster.start_head(num_cpus=2, wait=False)
        worker = cluster.add_node(num_cpus=2, wait=False)  # joins as soon as the head's GCS listens
        cluster.wait_registered()
        assert head.node_id != worker.node_id
        cluster.deploy(config, ROOT / "deploy" / "serve_deploy.py", timeout_s=240)
        mark("deployed")

        # 1. placement, from Serve's own status
        placed = cluster.replica_nodes(APP)
        assert sorted(placed.values()) == sorted([head.node_id, worker.node_id]), placed

        # 2. both nodes answer gRPC on the shared port
        reached = pool.nodes_reached([head.node_id, worker.node_id])
        assert {head.node_id, worker.node_id} <= set(reached), reached
        answered: dict[str, int] = {}
        for seed in range(1, 17):
            item, info = pool.call(lambda c, s=seed: sample_issue(c, MODEL, s))
            assert info is not None and info.node == item.node
            answered[item.node] = answered.get(item.node, 0) + 1
        assert set(answered) <= {head.node_id, worker.node_id}, answered
        replicas_seen = {c.last_server.replica for c in pool.clients if c.last_server}
        assert replicas_seen <= set(placed), (replicas_seen, placed)
        mark(f"traffic over {len(pool.clients)} connections: {sorted(answered.values())} calls per node")

        # 3. a handle issued on one node resolves on the other (both directions)
        issued = []
        for seed, (src, dst) in enumerate([(head, worker), (worker, head)], start=100):
            item = pool.call_on(src.node_id, lambda c, s=seed: sample_issue(c, MODEL, s))
            assert item.node == src.node_id and len(item.handles) == 2
            diff = pool.call_on(dst.node_id, lambda c, it=item: resolve(c, MODEL, it))
            assert diff <= 2.0, f"handle from {src.name} decoded on {dst.name} differs by {diff}"
            issued.append(item)
        mark("handles resolved across nodes")

        # 4. kill the worker node while requests stream; then only the head answers and nothing is lost
        with RequestStream(pool, MODEL, first_seed=1000) as stream:
            assert stream.wait_for(8, [head.node_id, worker.node_id]), (stream.by_node, stream.failures[:3])
            killed = cluster.kill_node(worker)
            n_at_kill = len(stream.issued)
            time.sleep(STREAM_AFTER_KILL_S)
        mark(f"worker killed ({killed} processes); stream: {len(stream.issued)} ok, {len(stream.failures)} failed")
        assert killed >= 3  # raylet + agents + the replica and its serving process
        assert not stream.failures, stream.failures[:5]
        # one call at a time: only the call recorded right after the kill may have been answered before it
        after = stream.issued[n_at_kill + 1:]
        assert after and {it.node for it in after} == {head.node_id}, {it.node for it in after}
        for seed in range(2000, 2000 + len(pool.clients)):  # every connection, incl. those to the dead node
            item, info = pool.call(lambda c, s=seed: sample_issue(c, MODEL, s))
            assert info.node == head.node_id
        everything = issued + stream.issued
        worst = max(pool.call(lambda c, it=it: resolve(c, MODEL, it))[0] for it in everything)
        assert worst <= 2.0
        assert {it.node for it in everything} == {head.node_id, worker.node_id}
        mark(f"{len(everything)} handle batches issued before/while the kill all resolve on the head")
        ok = True
    finally:
        pool.close()
        if not ok:
            print("\n".join(marks))
            for node in cluster.nodes:
                print(f"===== Ray {node.name} log\n{node.log_tail()}")
            print(cluster.serve_log_tail())
        cluster.stop()
        mark("stopped")
        print("\n".join(marks))
        if ok:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def test_cluster_demo_command_passes_its_checks_and_leaves_nothing_running(tiny_repo, redis_server):
    """`latentserve cluster-demo` end to end (the same steps as above, as a user runs them), then no process
    of its cluster is left."""
    import subprocess

    workdir = Path(tempfile.mkdtemp(prefix="lscl-demo-", dir="/tmp"))
    cmd = [sys.executable, "-m", "latentserve", "cluster-demo", "--repo", str(tiny_repo), "--redis-url",
           redis_server.url(), "--requests", "16", "--after-kill", "1", "--workdir", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    assert proc.returncode == 0
    checks = [line.strip() for line in proc.stdout.splitlines() if line.startswith("  ok") or "FAIL" in line]
    assert len(checks) == 6 and all(c.startswith("ok") for c in checks), checks
    assert "0 failed" in proc.stdout
    leftovers = []
    for pid in Path("/proc").iterdir():
        try:
            if str(workdir) in (pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                leftovers.append(pid.name)
        except OSError:
            continue
    assert not leftovers, leftovers
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
