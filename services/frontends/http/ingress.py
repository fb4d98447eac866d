"""The HTTP door's Ray Serve deployments: Serve's HTTP proxy hands each request to the FastAPI app that
api.py builds over this replica's LatentOperations (late-bound: `__serve_build_asgi_app__` runs after
__init__, so the routes close over the live operations).

- `HttpIngress` (native gRPC frontend): its own application (`<app_name>-http`, route "/") whose replicas
  hold the models themselves, like a co-located serve ingress; the gRPC replicas are untouched.
- `http_latent_ingress()` (serve gRPC frontend): the gRPC ingress class with the FastAPI app added, so ONE
  deployment answers Serve's gRPC proxy and its HTTP proxy (a second application would make gRPC clients
  name their application in metadata).
"""
from __future__ import annotations

import logging
from typing import Any

from latentserve.services.config import ServeConfig
from latentserve.services.core.operations import LatentOperations
from latentserve.services.frontends.http.api import build_api
from latentserve.services.frontends.serve_proxy import LatentIngress
from latentserve.services.observability import metrics

logger = logging.getLogger("ray.serve")
HTTP_INGRESS_NAME = "LatentHttp"


class HttpIngress:
    """The HTTP API + explorer over operations whose models run in this replica (or behind `handles`)."""

    def __init__(self, config: dict, models: dict[str, int], handles: dict[str, Any] | None = None) -> None:
        cfg = ServeConfig.from_dict(config)
        self.ops = LatentOperations.open(cfg, models, remote=handles)
        metrics.replica_up(HTTP_INGRESS_NAME, self.ops.pool.default_versions)
        logger.info("latentserve HTTP ingress up: models %s, auth=%s", self.ops.pool.default_versions,
                    self.ops.access.tokens_required)

    def __serve_build_asgi_app__(self):
        return build_api(self.ops)

    async def stats(self) -> dict:
        return await self.ops.stats()

    def __del__(self) -> None:
        ops = getattr(self, "ops", None)
        if ops is not None:
            ops.close()


class HttpLatentIngress(LatentIngress):
    """LatentIngress (gRPC handlers) that also answers HTTP."""

    def __serve_build_asgi_app__(self):
        return build_api(self.ops)


def http_ingress():
    """HttpIngress wrapped for Serve's HTTP proxy (function-level ray import: ray is heavy and optional here)."""
    from ray import serve

    return serve.ingress()(HttpIngress)


def http_latent_ingress():
    from ray import serve

    return serve.ingress()(HttpLatentIngress)
