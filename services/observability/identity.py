"""Which server answered a call: the `latentserve-node` / `latentserve-replica` trailing metadata.

Every LatentService response (unary and streamed, OK or not) carries two trailing-metadata entries set by the
LatentIngress handlers, so the native frontend and the serve frontend report them alike:

    latentserve-node      the Ray node id (hex) of the ingress replica that answered
    latentserve-replica   that replica's Ray Serve replica id (unique within its deployment)

They exist for debugging and for checking placement: behind a load balancer, or on one host where several
Ray nodes share the gRPC port through SO_REUSEPORT (`latentserve cluster-demo`), the peer address does not
tell which node served a call. Neither is a secret (`serve status` lists both); a server outside Ray Serve
(tools, unit tests) sends none. The client exposes them as `LatentClient.last_server` (a `ServerInfo`).

Imports nothing heavy: the client imports this module too; `replica_identity` imports ray lazily.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

NODE_KEY = "latentserve-node"
REPLICA_KEY = "latentserve-replica"


@dataclass(frozen=True)
class ServerInfo:
    """The ingress replica that answered a call (from its trailing metadata)."""

    node: str  # Ray node id (hex)
    replica: str  # Ray Serve replica id


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


def server_info(metadata: Iterable[tuple[str, str | bytes]] | None) -> ServerInfo | None:
    """ServerInfo from a call's trailing metadata; None when the server sent no identity."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in (NODE_KEY, REPLICA_KEY):
            found[key] = value.decode() if isinstance(value, bytes) else str(value)
    if NODE_KEY not in found:
        return None
    return ServerInfo(node=found[NODE_KEY], replica=found.get(REPLICA_KEY, ""))
