"""The serve frontend (`grpc_frontend="serve"`): the `LatentIngress` Ray Serve deployment that Serve's gRPC
proxy (or Serve's direct ingress) calls with each request message and its `grpc_context`.

A thin adapter: the gRPC handlers (frontends/grpc/servicer.py) over the operations, whose model pool is the
`model-<name>` ModelServer deployments (handles), or runners in this replica with `colocate`.
"""
from __future__ import annotations

import logging
from typing import Any

from latentserve.services.config import ServeConfig
from latentserve.services.core.operations import LatentOperations
from latentserve.services.frontends.grpc.servicer import INGRESS_NAME, LatentServiceHandlers
from latentserve.services.observability import metrics
from latentserve.services.observability.identity import replica_identity

logger = logging.getLogger("ray.serve")


class LatentIngress(LatentServiceHandlers):
    """LatentService + Health as a Serve deployment body. `models`: name -> default version; `handles`: name ->
    ModelServer deployment handle (None: co-located, the runners live in this replica)."""

    def __init__(self, config: dict, models: dict[str, int], handles: dict[str, Any] | None = None) -> None:
        cfg = ServeConfig.from_dict(config)
        ops = LatentOperations.open(cfg, models, remote=handles)
        # after the models loaded: a replica that failed to start is not counted as live
        metrics.replica_up(INGRESS_NAME, ops.pool.default_versions)
        super().__init__(ops, replica_identity())
        logger.info("latentserve ingress up: models %s, backend %s, frontend serve, colocate=%s, auth=%s",
                    ops.pool.default_versions, cfg.served.backend, handles is None, ops.access.tokens_required)

    async def stats(self) -> dict:
        """Request counts, handle store size and every model's batch statistics (a Serve handle call)."""
        return {**await self.ops.stats(), "colocate": self.config.scaling.colocate}

    def close(self) -> None:
        self.ops.close()

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica; garbage collection otherwise.
        ops = getattr(self, "ops", None)
        if ops is not None:
            ops.close()
