"""The identity of this serving replica, as trailing metadata for every response (latentserve/metadata.py
names the keys and says what they are for). `replica_identity` imports ray lazily: outside a Serve replica
(tools, tests) there is nothing to report."""
from __future__ import annotations

from latentserve.metadata import NODE_KEY, REPLICA_KEY


def replica_identity() -> tuple[tuple[str, str], ...]:
    """The trailing metadata naming the current Ray Serve replica and its node; () outside a Serve replica.

    Call it in the replica process (a Ray actor): the native frontend's serving process is a plain child
    process, so its replica computes this and hands it over (services/frontends/grpc/native.py)."""
    try:
        import ray

        if not ray.is_initialized():
            return ()
        from ray import serve

        node = ray.get_runtime_context().get_node_id()
        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - not inside a Serve replica (tests, tools): nothing to report
        return ()
    return ((NODE_KEY, str(node)), (REPLICA_KEY, str(replica)))
