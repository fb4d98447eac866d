"""A native replica's serving processes (services/frontends/grpc/replica.py `ServingGroup`), real processes on a
loopback port without Ray: one is killed with SIGKILL under load, clients with the default retries see no
failed call, the group restarts it, and a group stop drains every process. Without Redis (the default) the
processes share the node's handle store (services/storage/node_store.py): handles issued before the kill
resolve throughout, on whichever process answers."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import numpy as np
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def group(tiny_repo):
    from latentserve.services.config import load_config
    from latentserve.services.frontends.grpc.replica import ServingGroup

    config = load_config({"repository": str(tiny_repo), "grpc_port": free_port(), "max_batch_size": 16,
                          "serving_processes": 2}, use_env=False)
    g = ServingGroup(config, {"tiny-gan": 2})
    g.start()
    g.target = f"127.0.0.1:{config.frontend.grpc_port}"
    yield g
    g.stop(1.0)


def _until(check, timeout_s: float, what: str) -> None:
    t_end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > t_end:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


def test_a_killed_serving_process_fails_no_call_and_is_restarted(group):
    from latentserve.client import LatentClient
    from latentserve.errors import LatentServeError

    live = group.live()
    assert len(live) == 2
    group.probe()
    pids = {p.proc.pid for p in live}
    calls, failures, stop = [0], [], threading.Event()

    def load() -> None:
        rng = np.random.default_rng()
        with LatentClient(group.target, timeout=20) as c:  # the client's default retries
            while not stop.is_set():
                try:
                    c.decode("tiny-gan", rng.standard_normal((4, 8)).astype(np.float32), [0, 1, 2, 0])
                    calls[0] += 1
                except LatentServeError as exc:
                    failures.append(str(exc))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    _until(lambda: calls[0] >= 50, 60, "calls before the fault")
    os.kill(live[0].proc.pid, signal.SIGKILL)
    _until(lambda: group.restarts == 1 and len(group.live()) == 2, 120, "the killed process restarted")
    n_after = calls[0]
    _until(lambda: calls[0] >= n_after + 50, 60, "calls after the restart")
    stop.set()
    for t in threads:
        t.join(30)
    assert failures == []
    now = {p.proc.pid for p in group.live()}
    assert len(now) == 2 and len(now & pids) == 1  # one survivor, one new process
    group.probe()  # both answer health
    procs = group.live()
    group.stop(1.0)
    assert all(p.proc.poll() is not None for p in procs) and group.live() == []
    time.sleep(0.5)
    assert group.restarts == 1  # nothing restarted after the stop


def test_the_group_answers_health_while_one_process_is_dead(group):
    from latentserve.errors import UnavailableError

    victim = group.live()[0]
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    group.probe()  # the other one serves: the replica stays healthy, Serve replaces nothing
    for p in group.live():
        os.kill(p.proc.pid, signal.SIGKILL)
        p.proc.wait(10)
    if not group.live():  # both dead before the monitor restarted one: the replica is unhealthy
        with pytest.raises(UnavailableError, match="no serving process"):
            group.probe()
    _until(lambda: len(group.live()) == 2, 120, "both processes restarted")
    _until(lambda: _probe_ok(group), 30, "health after the restarts")


def _probe_ok(group) -> bool:
    from latentserve.errors import UnavailableError

    try:
        group.probe()
        return True
    except UnavailableError:
        return False


def test_default_without_redis_two_processes_share_handles_through_a_kill(tiny_repo):
    """The default config (no Redis, serving_processes 0): two serving processes where the node has two CPUs,
    one killed while clients decode by latent values and by handles issued before; no call fails."""
    from latentserve.client import LatentClient
    from latentserve.errors import LatentServeError
    from latentserve.services.config import load_config
    from latentserve.services.frontends.grpc.replica import ServingGroup, serving_process_count

    config = load_config({"repository": str(tiny_repo), "grpc_port": free_port(), "max_batch_size": 16},
                         use_env=False)
    if serving_process_count(config) < 2:
        pytest.skip("a node with one CPU runs one serving process by default")
    g = ServingGroup(config, {"tiny-gan": 2})
    g.start()
    target = f"127.0.0.1:{config.frontend.grpc_port}"
    try:
        live = g.live()
        assert len(live) == 2
        with LatentClient(target, timeout=30) as c:
            assert c.get_model("tiny-gan").handle_store.backend == "node"
            issued = c.sample("tiny-gan", 4, seed=11, return_handles=True).handles
        calls, failures, stop = [0], [], threading.Event()

        def load(by_handle: bool) -> None:
            rng = np.random.default_rng()
            with LatentClient(target, timeout=20) as client:  # the client's default retries
                while not stop.is_set():
                    try:
                        if by_handle:
                            assert len(client.decode("tiny-gan", handles=issued)) == 4
                        else:
                            client.decode("tiny-gan", rng.standard_normal((2, 8)).astype(np.float32), [0, 1])
                        calls[0] += 1
                    except LatentServeError as exc:
                        failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=load, args=(i % 2 == 1,), daemon=True) for i in range(6)]
        for t in threads:
            t.start()
        try:
            _until(lambda: calls[0] >= 50, 60, "calls before the fault")
            os.kill(live[0].proc.pid, signal.SIGKILL)
            _until(lambda: g.restarts == 1 and len(g.live()) == 2, 120, "the killed process restarted")
            n_after = calls[0]
            _until(lambda: calls[0] >= n_after + 50, 60, "calls after the restart")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert failures == []
        for _ in range(8):  # new connections, spread by the kernel over both processes: the same answer
            with LatentClient(target, timeout=30) as c:
                fresh = c.sample("tiny-gan", 2, seed=12, return_handles=True).handles
                assert len(c.decode("tiny-gan", handles=fresh + issued)) == 6
    finally:
        g.stop(1.0)
