"""`latentserve cluster-demo`: a real multi-node Ray cluster on this machine, without Docker, in one command.

What it does, printing each step and what it observed:
1. Redis for the latent handles, shared by every node: `--redis-url`, or a private password-protected
   `redis-server` on a free loopback port (needs redis-server on PATH).
2. A Ray head and `--workers` worker nodes on 127.0.0.1 (`ray start --block` each: own processes, own CPUs,
   free ports, Ray's token authentication on with a fresh token file; latentserve/tools/local_cluster.py).
3. Deploys deploy/serve.yaml with deploy/serve_deploy.py (`serve deploy` through the head's dashboard),
   changing only the repository, the ports, the bind address and the replica count (one ingress replica
   per node, `max_replicas_per_node: 1`), and waits for RUNNING.
4. Shows where Serve placed the replicas (Serve's status).
5. Sends Sample calls over several connections to the shared gRPC port and counts the answers per node
   (the `latentserve-node` trailing metadata, services/observability/identity.py).
6. Issues latent handles on each node and resolves them on every other node (shared Redis).
7. Kills the last worker node (SIGKILL to all its processes) under a stream of requests: counts failed calls
   (the client retries UNAVAILABLE on a fresh connection), checks the head answers everything afterwards
   and that every handle issued before and during the kill still resolves.
Then stops every node (also on Ctrl-C or a failed step) and exits 0 when every check passed, 1 otherwise.
`--keep` leaves the surviving cluster up until Ctrl-C so other commands can be pointed at it.

Only argparse at module level; the cluster code is imported in run().
"""
from __future__ import annotations

import argparse

from latentserve.commands import positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "cluster-demo", help="run a real multi-node Ray cluster on this machine and show it serving (no Docker)",
        description="Start a Ray head and worker nodes on 127.0.0.1, deploy deploy/serve.yaml, show replica "
                    "placement, per-node request counts and handles shared across nodes, then kill a worker "
                    "under load and show that no request fails. Cleans up on exit and Ctrl-C.",
    )
    p.add_argument("--repo", default=None, help="model repository (default: the bundled models/repository)")
    p.add_argument("--config", default=None,
                   help="Serve config to start from (default: deploy/serve.yaml of this source tree)")
    p.add_argument("--redis-url", default=None,
                   help="Redis for latent handles (redis://[:password@]host:port/db); default: start a private "
                        "redis-server on a free loopback port")
    p.add_argument("--workers", type=positive_int, default=1, help="worker nodes besides the head (default 1)")
    p.add_argument("--cpus-per-node", type=positive_int, default=2,
                   help="CPUs each Ray node offers (default 2: room for one ingress replica, which reserves "
                        "ingress_num_cpus + num_cpus = 1.5)")
    p.add_argument("--requests", type=positive_int, default=40, help="Sample calls in step 5 (default 40)")
    p.add_argument("--after-kill", type=float, default=3.0, metavar="S",
                   help="seconds the request stream keeps running after the kill (default 3)")
    p.add_argument("--port", type=int, default=0, help="gRPC port all nodes share (default: a free port)")
    p.add_argument("--workdir", default=None,
                   help="where node temp dirs and logs go (default: a new /tmp/lscl-* directory, removed at the end "
                        "unless a step failed)")
    p.add_argument("--keep", action="store_true", help="after the checks, keep the surviving cluster up until Ctrl-C")
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    import shutil
    import signal
    import tempfile
    import time
    from pathlib import Path

    import yaml

    from latentserve.errors import ValidationError
    from latentserve.tools import local_cluster as lc
    from latentserve.services.app import served_models
    from latentserve.services.config import load_config

    if args.after_kill < 0:
        raise ValidationError("--after-kill must be >= 0")
    config_path, deploy_script = lc.deploy_files(args.config)
    base = yaml.safe_load(Path(config_path).read_text())
    repo = args.repo or ""
    # clear errors before Ray starts: the repository has models, a node has room for one replica
    app_args = lc.serve_config_for(base, repo, 9000, 8000, 1)["applications"][0]["args"]
    config = load_config(app_args, use_env=False)
    need = config.scaling.ingress_num_cpus + config.scaling.num_cpus
    if args.cpus_per_node < need:
        raise ValidationError(f"--cpus-per-node {args.cpus_per_node}: a replica of {config_path} reserves "
                              f"ingress_num_cpus + num_cpus = {need:g} CPUs")
    models = served_models(config)
    model = sorted(models)[0]

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lscl-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port = args.port or lc.free_ports(1)[0]
    http_port = lc.free_ports(1)[0]
    target = f"{lc.LOOPBACK}:{grpc_port}"
    _say(f"cluster-demo: work dir {workdir} (Ray logs: head.log, worker-N.log and */session_*/logs)")

    def on_term(signum, frame):  # SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    redis = None
    cluster = None
    pool = None
    ok = False
    try:
        # 1. Redis
        if args.redis_url:
            redis_url = args.redis_url
            _say("[1/7] Redis: --redis-url (shared by every node)")
        else:
            redis = lc.PrivateRedis(workdir / "redis").start()
            redis_url = redis.url
            _say(f"[1/7] Redis: private redis-server on {lc.LOOPBACK}:{redis.port} (password-protected, "
                 f"shared by every node)")

        # 2. nodes
        cluster = lc.LocalCluster(workdir, env={"LATENTSERVE_REDIS_URL": redis_url},
                                  log=lambda m: _say(f"      {m}"))
        _say(f"[2/7] Ray: a head and {args.workers} worker node(s) on {lc.LOOPBACK}, {args.cpus_per_node} CPUs each, "
             f"token auth on (RAY_AUTH_TOKEN_PATH={cluster.token_path})")
        t = time.monotonic()
        cluster.start_head(args.cpus_per_node, wait=False)
        for _ in range(args.workers):
            cluster.add_node(args.cpus_per_node, wait=False)
        cluster.wait_registered()
        names = {n.node_id: n.name for n in cluster.nodes}

        def per_node(counts: dict) -> str:  # "head 12, worker-1 9" in node order
            order = list(names)
            return ", ".join(f"{names.get(n, n[:12])} {c}" for n, c in
                             sorted(counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
        _say(f"      {len(cluster.nodes)} nodes up in {time.monotonic() - t:.0f} s; dashboard {cluster.dashboard_url}")

        # 3. deploy
        replicas = len(cluster.nodes)
        demo_config = workdir / "serve.yaml"
        demo_config.write_text(yaml.safe_dump(lc.serve_config_for(base, repo, grpc_port, http_port, replicas),
                                              sort_keys=False))
        _say(f"[3/7] deploy {config_path} as {demo_config} (repository, ports, host 127.0.0.1, "
             f"{replicas} ingress replicas, at most 1 per node)")
        t = time.monotonic()
        cluster.deploy(demo_config, deploy_script)
        served = ", ".join(f"{n} v{v}" for n, v in sorted(models.items()))
        _say(f"      RUNNING after {time.monotonic() - t:.0f} s; serving {served} on {target} (every node's replica "
             f"listens there)")

        # 4. placement
        placed = cluster.replica_nodes("latentserve")
        head_first = sorted(placed.items(), key=lambda kv: kv[1] != cluster.head.node_id)
        _say("[4/7] placement (Serve's status): " + ", ".join(f"replica {r} -> {names.get(n, n[:12])}"
                                                             for r, n in head_first))
        checks = {"one replica on every node": sorted(placed.values()) == sorted(names)}

        # 5. traffic
        pool = lc.ClientPool(target)
        pool.nodes_reached(names)
        counts: dict[str, int] = {}
        for seed in range(1, args.requests + 1):
            item, _ = pool.call(lambda c, s=seed: lc.sample_issue(c, model, s))
            counts[item.node] = counts.get(item.node, 0) + 1
        _say(f"[5/7] {args.requests} Sample calls ({model}) over {len(pool.clients)} connections: {per_node(counts)}")
        checks["every node answered"] = set(counts) == set(names)

        # 6. handles across nodes
        issued = []
        worst = 0.0
        pairs = [(a, b) for a in cluster.nodes for b in cluster.nodes if a is not b]
        for seed, (src, dst) in enumerate(pairs, start=10_000):
            item = pool.call_on(src.node_id, lambda c, s=seed: lc.sample_issue(c, model, s))
            diff = pool.call_on(dst.node_id, lambda c, it=item: lc.resolve(c, model, it))
            worst = max(worst, diff)
            issued.append(item)
            _say(f"[6/7] handles issued on {src.name} resolved on {dst.name}: max pixel difference {diff:.0f}")
        checks["handles resolve on every other node"] = worst <= 2.0

        # 7. kill a worker under load
        victim = cluster.nodes[-1]
        with lc.RequestStream(pool, model, first_seed=20_000) as stream:
            stream.wait_for(8, names)  # every node is serving the stream (or a call failed: reported below)
            before = dict(stream.by_node)
            killed = cluster.kill_node(victim)
            n_at_kill = len(stream.issued)
            time.sleep(args.after_kill)
        after_nodes: dict[str, int] = {}
        for it in stream.issued[n_at_kill:]:
            after_nodes[it.node] = after_nodes.get(it.node, 0) + 1
        _say(f"[7/7] SIGKILL {victim.name} ({killed} processes) during a stream of {len(stream.issued)} calls: "
             f"{len(stream.failures)} failed")
        _say(f"      answered before the kill: {per_node(before)}; after: {per_node(after_nodes)}")
        for f in stream.failures[:5]:
            _say(f"      failed: {f}")
        late = stream.issued[n_at_kill + 1:]  # one call at a time: only the next one may predate the kill
        everything = issued + stream.issued
        unresolved = []
        for it in everything:
            try:
                if pool.call(lambda c, it=it: lc.resolve(c, model, it))[0] > 2.0:
                    unresolved.append(it)
            except Exception as exc:  # noqa: BLE001 - reported below
                unresolved.append(it)
                _say(f"      handle {it.handles[0]} did not resolve: {exc}")
        _say(f"      {len(everything) - len(unresolved)} of {len(everything)} handle batches issued before/during the "
             f"kill resolve on the surviving nodes")
        checks["no request failed during the kill"] = not stream.failures
        late_nodes = {it.node for it in late}
        checks["only surviving nodes answer after the kill"] = bool(late) and victim.node_id not in late_nodes
        checks["no handle lost"] = not unresolved

        failed = [name for name, good in checks.items() if not good]
        for name, good in checks.items():
            _say(f"  {'ok  ' if good else 'FAIL'} {name}")
        ok = not failed
        if ok and args.keep:
            _say(f"cluster-demo: the surviving cluster serves {target}; try "
                 f"`latentserve models --target {target}`. Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                _say("")
        return 0 if ok else 1
    finally:
        if pool is not None:
            pool.close()
        if cluster is not None:
            _say("cluster-demo: stopping the Ray nodes")
            if not ok:
                for node in cluster.nodes:
                    _say(f"===== Ray {node.name} log ({node.log_path})\n{node.log_tail(1500)}")
            cluster.stop()
        if redis is not None:
            redis.stop()
        signal.signal(signal.SIGTERM, old_term)
        if ok and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            _say(f"cluster-demo: logs kept in {workdir}")
