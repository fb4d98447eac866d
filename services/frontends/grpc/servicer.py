"""LatentService (+ grpc.health.v1.Health) over the core: one handler per RPC, each converting the request
(codec.py), calling the operation (services/core/operations.py) and converting the answer; errors become
status codes through status.py. The same handlers serve every gRPC door: the native server (native.py, on
the grpc++ or grpc.aio transport) and Ray Serve's gRPC proxy (serve_proxy.py), which pass a grpc.aio-like
context or Serve's `grpc_context`.

Per call, whatever the door: the API token and, with mutual TLS, the client certificate are checked
(services/access.py; authorization metadata; health needs none), the caller's name noted for logs and metrics, the
answering replica is named in the trailing metadata (latentserve/metadata.py), the call is counted and
recorded in the metrics. A request never crashes the replica: unary RPCs answer with the status set on the
context; streaming RPCs raise `StatusSet` after setting it.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Awaitable, Callable

from grpc_health.v1 import health_pb2

from latentserve.errors import NotFoundError
from latentserve.metadata import AUTHORIZATION_KEY, REQUEST_ID_KEY
from latentserve.services.core.operations import LatentOperations
from latentserve.services.frontends.grpc import codec
from latentserve.services.frontends.grpc.status import StatusSet, set_status, status_for
from latentserve.services.observability import metrics
from latentserve.v1 import latent_pb2 as pb

SERVICE_NAME = "latentserve.v1.LatentService"
INGRESS_NAME = "LatentIngress"  # the Serve deployment that answers LatentService, in both frontends


def authorization(grpc_context: Any) -> str:
    """The call's `authorization` metadata value ('' when absent)."""
    for key, v in (grpc_context.invocation_metadata() or ()) if grpc_context is not None else ():
        if key == AUTHORIZATION_KEY:
            return v if isinstance(v, str) else v.decode("latin-1")
    return ""


def cert_name(grpc_context: Any) -> str | None:
    """The CN of the client's verified TLS certificate ('' when it has none), None when the call came without
    one (plaintext, TLS without client certificates, or a context without `auth_context`, like Serve's)."""
    auth = getattr(grpc_context, "auth_context", None)
    if auth is None:
        return None
    try:
        props = auth() or {}
    except Exception:  # noqa: BLE001 - a context that cannot tell: no certificate
        return None
    if not props.get("x509_pem_cert") and not props.get("x509_common_name"):
        return None
    cn = props.get("x509_common_name") or [b""]
    return cn[0].decode("utf-8", "replace") if isinstance(cn[0], bytes) else str(cn[0])


class LatentServiceHandlers:
    """The LatentService and Health handlers over `ops`; `identity` is the trailing metadata naming this
    replica (services/observability/identity.py), () for none."""

    def __init__(self, ops: LatentOperations, identity: tuple[tuple[str, str], ...] = ()) -> None:
        self.ops = ops
        self.config = ops.config
        self._identity = tuple(tuple(kv) for kv in identity)

    # -- per-call plumbing --------------------------------------------------------------------------------
    def _authorize(self, grpc_context: Any) -> None:
        """The token / client-certificate check (services/access.py); notes the caller's name for the call's
        log lines and metrics."""
        access = self.ops.access
        if not (access.tokens_required or access.require_cert):
            return  # open server: every caller is "anonymous" (the record's default)
        name = access.authenticate(authorization(grpc_context), cert_name(grpc_context))
        metrics.note_client(name, access.metric_name(name))

    def _identify(self, grpc_context: Any) -> str:
        """A new request id; the trailing metadata names it and this replica."""
        rid = os.urandom(8).hex()
        if grpc_context is not None:  # Serve's context concatenates lists: set once per call
            grpc_context.set_trailing_metadata([*self._identity, (REQUEST_ID_KEY, rid)])
        return rid

    async def _unary(self, rpc: str, grpc_context: Any, empty: Any, run: Callable[[], Awaitable[Any]],
                     answer: Callable[[Any], Any] = lambda r: r) -> Any:
        """One unary RPC: auth, `answer(await run())`, error mapping, metrics (`set_status` records the code).
        Never raises to Serve."""
        self.ops.count(rpc)
        rec, token = metrics.begin_request(rpc)  # token None: the native server's wrapper records the call
        rid = self._identify(grpc_context)
        try:
            self._authorize(grpc_context)
            resp = answer(await run())
            if rec is not None:
                rec.images = len(getattr(resp, "images", ()))
            return resp
        except asyncio.CancelledError:
            metrics.note_status("CANCELLED")
            raise  # the client went away or its deadline passed: Serve reports it; nothing to answer
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crashed replica
            set_status(grpc_context, exc, rpc, rid)
            return empty
        finally:
            metrics.end_request(rec, token)

    def _fail_stream(self, grpc_context: Any, exc: BaseException, rpc: str, rid: str = "") -> StatusSet:
        set_status(grpc_context, exc, rpc, rid)
        return StatusSet(status_for(exc)[1])

    # -- LatentService ------------------------------------------------------------------------------------
    async def ListModels(self, request: pb.ListModelsRequest, grpc_context: Any = None) -> pb.ListModelsResponse:
        return await self._unary("ListModels", grpc_context, pb.ListModelsResponse(),
                                 lambda: self.ops.list_models(request.all_versions),
                                 lambda infos: pb.ListModelsResponse(models=[codec.model_info_to_pb(i) for i in infos]))

    async def GetModel(self, request: pb.GetModelRequest, grpc_context: Any = None) -> pb.ModelInfo:
        return await self._unary("GetModel", grpc_context, pb.ModelInfo(),
                                 lambda: self.ops.get_model(request.model, request.version), codec.model_info_to_pb)

    async def Encode(self, request: pb.EncodeRequest, grpc_context: Any = None) -> pb.EncodeResponse:
        end = codec.deadline(grpc_context, self.config)
        return await self._unary("Encode", grpc_context, pb.EncodeResponse(),
                                 lambda: self.ops.encode(codec.encode_call(request, end)), codec.encode_response)

    async def Decode(self, request: pb.DecodeRequest, grpc_context: Any = None) -> pb.DecodeResponse:
        return await self._unary("Decode", grpc_context, pb.DecodeResponse(),
                                 lambda: self.ops.decode(codec.decode_call(request)), codec.decode_response)

    async def Sample(self, request: pb.SampleRequest, grpc_context: Any = None) -> pb.SampleResponse:
        end = codec.deadline(grpc_context, self.config)
        return await self._unary("Sample", grpc_context, pb.SampleResponse(),
                                 lambda: self.ops.sample(codec.sample_call(request, end)), codec.sample_response)

    async def Edit(self, request: pb.EditRequest, grpc_context: Any = None) -> pb.EditResponse:
        return await self._unary("Edit", grpc_context, pb.EditResponse(),
                                 lambda: self.ops.edit(codec.edit_call(request)), codec.edit_response)

    @metrics.counted_stream("Interpolate")  # one image per frame
    async def Interpolate(self, request: pb.InterpolateRequest, grpc_context: Any = None) -> AsyncIterator[pb.InterpolateFrame]:
        self.ops.count("Interpolate")
        rid = self._identify(grpc_context)
        try:
            self._authorize(grpc_context)
            call = codec.interpolate_call(request, codec.deadline(grpc_context, self.config))
            frames = codec.interpolate_frames(await self.ops.interpolate(call))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail_stream(grpc_context, exc, "Interpolate", rid) from None
        for frame in frames:
            yield frame

    @metrics.counted_stream("Augment", images=False)  # a batch message carries many images: counted below
    async def Augment(self, request: pb.AugmentRequest, grpc_context: Any = None) -> AsyncIterator[pb.AugmentBatch]:
        self.ops.count("Augment")
        rid = self._identify(grpc_context)
        try:
            self._authorize(grpc_context)
            run = await self.ops.augment(codec.augment_call(request))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail_stream(grpc_context, exc, "Augment", rid) from None
        try:
            async for b in run.batches:
                metrics.add_images(len(b.images))
                yield codec.augment_batch(run, b)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failure mid-stream ends the stream with its status
            raise self._fail_stream(grpc_context, exc, "Augment", rid) from None
        finally:
            await run.batches.aclose()

    # -- grpc.health.v1.Health ----------------------------------------------------------------------------
    @staticmethod
    def _health(service: str) -> Any:
        if service in ("", SERVICE_NAME):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        raise NotFoundError(f"unknown service {service!r}; this server has '' and {SERVICE_NAME!r}")

    async def Check(self, request: Any, grpc_context: Any = None) -> Any:
        """Health check without auth (load balancers and probes carry no token)."""
        try:
            return self._health(request.service)
        except Exception as exc:  # noqa: BLE001
            set_status(grpc_context, exc, "Check")
            return health_pb2.HealthCheckResponse()

    async def Watch(self, request: Any, grpc_context: Any = None) -> AsyncIterator[Any]:
        """Sends the current status once and ends (status changes end the stream; clients re-watch)."""
        try:
            resp = self._health(request.service)
        except Exception as exc:  # noqa: BLE001
            raise self._fail_stream(grpc_context, exc, "Watch") from None
        yield resp
