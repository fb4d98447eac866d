"""The clients: `LatentClient` (sync, one HTTP/2 channel) and `AsyncLatentClient` (grpc.aio), one method per RPC.
Arguments are checked and converted by latentserve/client/messages.py; errors arrive as latentserve.errors."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import grpc

from latentserve.client.augment import augment_chunk, build_augment_request
from latentserve.client.connection import (CHANNEL_OPTIONS, DEFAULT_RETRIES, DEFAULT_TARGET, ClientTls, _answered_by,
                                           _check_client_args, _metadata, error_from_rpc, make_channel,
                                           retry_options)
from latentserve.client.messages import (IMAGE_FORMATS, _check_model, _version, build_decode_request,
                                         build_edit_request, build_encode_request, build_interpolate_request,
                                         build_sample_request, encode_result, frame_from_proto, images_from_protos,
                                         images_result, model_info_from_proto)
from latentserve.client.results import AugmentChunk, EditResult, EncodeResult, Frame, ModelInfo, SampleResult
from latentserve.errors import UnavailableError
from latentserve.metadata import ServerInfo, server_info
from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc


class LatentClient:
    """Synchronous client. Thread-safe (one HTTP/2 channel); use as a context manager or call close()."""

    def __init__(self, target: str = DEFAULT_TARGET, token: str | None = None, timeout: float | None = 30.0,
                 app_name: str | None = None, options: Sequence[tuple[str, Any]] = (),
                 retries: int = DEFAULT_RETRIES, tls: ClientTls | bool | None = None) -> None:
        _check_client_args(target, timeout)
        self.target, self.timeout = target, timeout
        self._metadata = _metadata(token, app_name)
        self._channel = make_channel(target, list(CHANNEL_OPTIONS) + retry_options(retries) + list(options), tls,
                                     aio=False)
        self._stub = pb_grpc.LatentServiceStub(self._channel)
        self._models: dict[tuple[str, int], ModelInfo] = {}
        self.last_server: ServerInfo | None = None  # who answered the last finished call (module docstring)

    # -- plumbing -----------------------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "LatentClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method, request):
        try:
            response, call = method.with_call(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            self.last_server = _answered_by(exc)
            raise error_from_rpc(exc) from exc
        self.last_server = server_info(call.trailing_metadata())
        return response

    # -- health ---------------------------------------------------------------------------------------------
    def health(self, service: str = "", timeout: float = 5.0) -> bool:
        """True when the server answers grpc.health.v1 Check with SERVING (or, on a server without the health
        service, Ray Serve's Healthz with OK). Never raises for an unreachable server: returns False."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=self._metadata)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                return False
        try:  # Ray Serve's own health RPC: empty request, any response = healthy
            self._channel.unary_unary("/ray.serve.RayServeAPIService/Healthz", request_serializer=None,
                                      response_deserializer=None)(b"", timeout=timeout)
            return True
        except grpc.RpcError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.5) -> None:
        """Block until health() is True; raises UnavailableError after `timeout` seconds."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health(timeout=max(0.5, min(5.0, deadline - time.monotonic()))):
                return
            time.sleep(interval)
        raise UnavailableError(f"latentserve at {self.target} not healthy after {timeout:.0f}s")

    # -- models ---------------------------------------------------------------------------------------------
    def list_models(self, all_versions: bool = False) -> list[ModelInfo]:
        resp = self._call(self._stub.ListModels, pb.ListModelsRequest(all_versions=bool(all_versions)))
        return [model_info_from_proto(m) for m in resp.models]

    def get_model(self, name: str, version: int | None = None) -> ModelInfo:
        resp = self._call(self._stub.GetModel, pb.GetModelRequest(model=_check_model(name), version=_version(version)))
        info = model_info_from_proto(resp)
        self._models[(name, _version(version))] = info
        return info

    def model_info(self, name: str, version: int | None = None) -> ModelInfo:
        """get_model, cached per client (model metadata does not change while a version is served)."""
        cached = self._models.get((name, _version(version)))
        return cached if cached is not None else self.get_model(name, version)

    # -- latent operations ------------------------------------------------------------------------------------
    def encode(self, model: str, images: Any, labels: Any = None, return_handles: bool = False,
               sample_posterior: bool = False, seed: int = 0, version: int | None = None,
               refine_steps: int = 0, refine: Mapping[str, Any] | None = None) -> EncodeResult:
        """`refine_steps` > 0 (gan, vae): gradient refinement of the encoder's latents on the reconstruction
        error; `refine` = {learning_rate, feature_weight}; the result carries mse_before / mse_after."""
        req = build_encode_request(model, images, labels, return_handles, sample_posterior, seed, version,
                                   refine_steps, refine)
        return encode_result(self._call(self._stub.Encode, req))

    def decode(self, model: str, latents: Any = None, labels: Any = None, handles: Sequence[str] | None = None,
               format: str = "uint8", version: int | None = None, output_size: int = 0) -> Any:
        """`output_size` px (0 = the model's native size; vector models draw 16..1024, texture models
        ModelInfo.output_sizes); format "svg" (vector models) returns each image's SVG document as bytes."""
        req = build_decode_request(model, latents, labels, handles, format, version, output_size)
        return images_from_protos(self._call(self._stub.Decode, req).images, format)

    def sample(self, model: str, n: int, label: int | None = None, class_name: str | None = None,
               class_weights: Mapping[str, float] | None = None, knobs: Mapping[str, float] | None = None,
               seed: int = 0, temperature: float = 0.0, source: str | None = None, format: str = "uint8",
               return_handles: bool = False, version: int | None = None,
               guidance: Mapping[str, Any] | None = None, class_check: float = 0.0,
               allow_weak_knobs: bool = False, hold: Sequence[str] = (), output_size: int = 0,
               factor_classes: Mapping[str, str] | None = None) -> SampleResult:
        """`class_check`: the label check's threshold (0 = the model's default, < 0 = off; see SampleRequest).
        `allow_weak_knobs`: use knobs below their quality gate (KnobInfo.usable False) instead of a refusal.
        `hold`: factors the knobs keep fixed (SampleRequest.hold). `output_size` px (0 = native; vector models
        draw 16..1024, texture models ModelInfo.output_sizes); format "svg" (vector models) returns SVG documents
        as bytes. `factor_classes`: {class factor: class} on a model whose classes are combinations, e.g.
        {"shape": "square", "texture": "dots"} (the rest drawn); a texture model's one factor is "texture"."""
        req = build_sample_request(model, n, label, class_name, class_weights, knobs, seed, temperature, source,
                                   format, return_handles, version, guidance, class_check, allow_weak_knobs, hold,
                                   output_size, factor_classes)
        return images_result(self._call(self._stub.Sample, req), format)

    def interpolate(self, model: str, a: Any, b: Any, steps: int = 8, method: str = "lerp", format: str = "uint8",
                    return_handles: bool = False, version: int | None = None,
                    geodesic: Mapping[str, Any] | None = None, output_size: int = 0) -> Iterator[Frame]:
        """Frames as the server streams them. Stopping the iteration early cancels the call. `output_size` px
        (0 = native): texture models draw frames at any of their sizes."""
        req = build_interpolate_request(model, a, b, steps, method, format, return_handles, version, geodesic,
                                        output_size)
        try:
            call = self._stub.Interpolate(req, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return self._stream(call, lambda f: frame_from_proto(f, format))

    def _stream(self, call, convert) -> Iterator[Any]:
        """The converted messages of a server-streaming call; errors as latentserve errors; closing the
        iterator early cancels the call."""
        try:
            for message in call:
                yield convert(message)
            self.last_server = server_info(call.trailing_metadata())
        except grpc.RpcError as exc:
            self.last_server = _answered_by(exc)
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()  # no-op when the stream completed

    def edit(self, model: str, inputs: Any, moves: Sequence[Any] = (), format: str = "uint8",
             return_handles: bool = False, version: int | None = None, allow_weak_knobs: bool = False,
             hold: Sequence[str] = (), factor_classes: Mapping[str, str] | None = None,
             output_size: int = 0) -> EditResult:
        """`hold`: factors every factor move keeps fixed (EditRequest.hold). `factor_classes`: class factors set on
        every input before the moves, latent kept (e.g. {"texture": "dots"} swaps the texture, keeps the shape).
        `output_size` px as for decode."""
        req = build_edit_request(model, inputs, moves, format, return_handles, version, allow_weak_knobs, hold,
                                 factor_classes, output_size)
        return images_result(self._call(self._stub.Edit, req), format)

    def augment(self, spec: Any, shards: Sequence[int] | None = None, timeout: float | None = None,
                allow_weak_knobs: bool = False) -> Iterator[AugmentChunk]:
        """The chunks of an augmentation job (an AugmentSpec or its dict form), shard by shard in index order;
        `shards`: only these shard indices (ascending; None = all). The server generates only as fast as this
        iterator is read. `timeout`: a deadline for the whole stream (default none: bulk jobs run long; the
        client's own timeout is for unary calls). `allow_weak_knobs`: use factor knobs below their quality gate.
        Stopping the iteration early cancels the call."""
        req = build_augment_request(spec, shards, allow_weak_knobs)
        fmt = {v: k for k, v in IMAGE_FORMATS.items()}[req.spec.format]
        try:
            call = self._stub.Augment(req, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        return self._stream(call, lambda m: augment_chunk(m, fmt))


class AsyncLatentClient:
    """asyncio client (grpc.aio) with the same methods as LatentClient, as coroutines; interpolate returns an
    async iterator. Create it inside the running event loop; `async with` or `await close()`."""

    def __init__(self, target: str = DEFAULT_TARGET, token: str | None = None, timeout: float | None = 30.0,
                 app_name: str | None = None, options: Sequence[tuple[str, Any]] = (),
                 retries: int = DEFAULT_RETRIES, tls: ClientTls | bool | None = None) -> None:
        _check_client_args(target, timeout)
        self.target, self.timeout = target, timeout
        self._metadata = _metadata(token, app_name)
        self._channel = make_channel(target, list(CHANNEL_OPTIONS) + retry_options(retries) + list(options), tls,
                                     aio=True)
        self._stub = pb_grpc.LatentServiceStub(self._channel)
        self.last_server: ServerInfo | None = None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncLatentClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, method, request):
        call = method(request, timeout=self.timeout, metadata=self._metadata)
        try:
            response = await call
        except grpc.RpcError as exc:
            self.last_server = _answered_by(exc)
            raise error_from_rpc(exc) from exc
        self.last_server = server_info(await call.trailing_metadata())
        return response

    async def health(self, service: str = "", timeout: float = 5.0) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            resp = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=self._metadata)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                return False
        try:
            await self._channel.unary_unary("/ray.serve.RayServeAPIService/Healthz")(b"", timeout=timeout)
            return True
        except grpc.RpcError:
            return False

    async def list_models(self, all_versions: bool = False) -> list[ModelInfo]:
        resp = await self._call(self._stub.ListModels, pb.ListModelsRequest(all_versions=bool(all_versions)))
        return [model_info_from_proto(m) for m in resp.models]

    async def get_model(self, name: str, version: int | None = None) -> ModelInfo:
        return model_info_from_proto(await self._call(
            self._stub.GetModel, pb.GetModelRequest(model=_check_model(name), version=_version(version))))

    async def encode(self, model: str, images: Any, labels: Any = None, return_handles: bool = False,
                     sample_posterior: bool = False, seed: int = 0, version: int | None = None,
                     refine_steps: int = 0, refine: Mapping[str, Any] | None = None) -> EncodeResult:
        req = build_encode_request(model, images, labels, return_handles, sample_posterior, seed, version,
                                   refine_steps, refine)
        return encode_result(await self._call(self._stub.Encode, req))

    async def decode(self, model: str, latents: Any = None, labels: Any = None,
                     handles: Sequence[str] | None = None, format: str = "uint8", version: int | None = None,
                     output_size: int = 0) -> Any:
        req = build_decode_request(model, latents, labels, handles, format, version, output_size)
        return images_from_protos((await self._call(self._stub.Decode, req)).images, format)

    async def sample(self, model: str, n: int, label: int | None = None, class_name: str | None = None,
                     class_weights: Mapping[str, float] | None = None, knobs: Mapping[str, float] | None = None,
                     seed: int = 0, temperature: float = 0.0, source: str | None = None, format: str = "uint8",
                     return_handles: bool = False, version: int | None = None,
                     guidance: Mapping[str, Any] | None = None, class_check: float = 0.0,
                     allow_weak_knobs: bool = False, hold: Sequence[str] = (), output_size: int = 0,
                     factor_classes: Mapping[str, str] | None = None) -> SampleResult:
        req = build_sample_request(model, n, label, class_name, class_weights, knobs, seed, temperature, source,
                                   format, return_handles, version, guidance, class_check, allow_weak_knobs, hold,
                                   output_size, factor_classes)
        return images_result(await self._call(self._stub.Sample, req), format)

    def interpolate(self, model: str, a: Any, b: Any, steps: int = 8, method: str = "lerp",
                    format: str = "uint8", return_handles: bool = False, version: int | None = None,
                    geodesic: Mapping[str, Any] | None = None, output_size: int = 0) -> AsyncIterator[Frame]:
        """`async for frame in client.interpolate(...)`; arguments are checked at the call, not at the first
        iteration. Leaving the loop early cancels the call."""
        req = build_interpolate_request(model, a, b, steps, method, format, return_handles, version, geodesic,
                                        output_size)
        return self._stream(self._stub.Interpolate, req, self.timeout, lambda f: frame_from_proto(f, format))

    def augment(self, spec: Any, shards: Sequence[int] | None = None, timeout: float | None = None,
                allow_weak_knobs: bool = False) -> AsyncIterator[AugmentChunk]:
        """`async for chunk in client.augment(spec)`: as LatentClient.augment."""
        req = build_augment_request(spec, shards, allow_weak_knobs)
        fmt = {v: k for k, v in IMAGE_FORMATS.items()}[req.spec.format]
        return self._stream(self._stub.Augment, req, timeout, lambda m: augment_chunk(m, fmt))

    async def _stream(self, method, req: Any, timeout: float | None, convert) -> AsyncIterator[Any]:
        call = method(req, timeout=timeout, metadata=self._metadata)
        try:
            async for message in call:
                yield convert(message)
            self.last_server = server_info(await call.trailing_metadata())
        except grpc.RpcError as exc:
            self.last_server = _answered_by(exc)
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def edit(self, model: str, inputs: Any, moves: Sequence[Any] = (), format: str = "uint8",
                   return_handles: bool = False, version: int | None = None,
                   allow_weak_knobs: bool = False, hold: Sequence[str] = (),
                   factor_classes: Mapping[str, str] | None = None, output_size: int = 0) -> EditResult:
        req = build_edit_request(model, inputs, moves, format, return_handles, version, allow_weak_knobs, hold,
                                 factor_classes, output_size)
        return images_result(await self._call(self._stub.Edit, req), format)
