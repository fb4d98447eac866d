"""gRPC metadata of the latentserve contract beyond the .proto, shared by server and client.

- `authorization: Bearer <token>`: the API token (the server checks it when one is configured).
- `latentserve-node` / `latentserve-replica` trailing metadata: which Ray node and Serve replica answered a call
  (set by every LatentService handler; read by the client as `ServerInfo`). For debugging and checking
  placement behind a load balancer; neither is a secret. A server outside Ray Serve sends none.
- `latentserve-request-id` trailing metadata: the call's id, which the server's log lines about the call carry
  (an INTERNAL status's details name it too): quote it when reporting a failure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

AUTHORIZATION_KEY = "authorization"
NODE_KEY = "latentserve-node"
REPLICA_KEY = "latentserve-replica"
REQUEST_ID_KEY = "latentserve-request-id"


@dataclass(frozen=True)
class ServerInfo:
    """The ingress replica that answered a call (from its trailing metadata)."""

    node: str  # Ray node id (hex)
    replica: str  # Ray Serve replica id


def request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The request id from a call's trailing metadata ('' when the server sent none)."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def server_info(metadata: Iterable[tuple[str, str | bytes]] | None) -> ServerInfo | None:
    """ServerInfo from a call's trailing metadata; None when the server sent no identity."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in (NODE_KEY, REPLICA_KEY):
            found[key] = value.decode() if isinstance(value, bytes) else str(value)
    if NODE_KEY not in found:
        return None
    return ServerInfo(node=found[NODE_KEY], replica=found.get(REPLICA_KEY, ""))
