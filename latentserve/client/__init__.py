"""The Python client SDK of latentserve.v1: `LatentClient` (sync) and `AsyncLatentClient` (grpc.aio).

Owns the client side of the gRPC contract (protos/latentserve/v1/latent.proto). Protobuf types stop inside this package:
methods take and return numpy arrays, PIL images, bytes and plain dataclasses.

    from latentserve.client import LatentClient
    with LatentClient("127.0.0.1:9000") as c:
        info = c.get_model("shapes-gan")
        out = c.sample("shapes-gan", 16, class_name="ellipse", knobs={"scale": 0.8}, seed=1)
        out.images            # uint8 (16, H, W, 3)
        enc = c.encode("shapes-gan", out.images)
        imgs = c.decode("shapes-gan", enc.latents, enc.labels)

Conventions
- Images in: uint8 (N, H, W, 3) array (or one (H, W, 3) image), float32 (N, 3, H, W) in [-1, 1], a list of PIL
  images, of uint8 arrays or of encoded PNG/JPEG bytes. Arrays travel as raw tensors (no PNG cost: the fast
  path); bytes travel as they are.
- Images out (`format`): "uint8" (default) -> uint8 (N, H, W, 3); "float32" -> float32 (N, 3, H, W) in [-1, 1];
  "png" / "jpeg" -> list of encoded bytes. Raw tensors are read with np.frombuffer (no copy per image; one copy
  when a batch is stacked). Single images (interpolation frames) are read-only views of the message bytes.
- A latent is a float32 (D,) vector plus a class label; batches are (N, D) + (N,).
- References to a latent (interpolate ends, edit inputs): a handle string, a `(vector, label)` tuple, an image
  (uint8 (H, W, 3) array, PIL image or encoded bytes) or `(image, label)` to force the class.

Retries: calls that fail with UNAVAILABLE (the server went away: a replica stopped or its node died, a
connection was reset) are retried by gRPC itself, on a new connection, up to `retries` more times (default
3, at most 4) with a randomized exponential backoff (0.1 s doubling, at most 1 s per wait), and gRPC's retry
throttling stops retrying after ~50 failures in a row, so a dead service sees no retry storm. Every RPC is
safe to repeat (handles are content-addressed; seeded samples are deterministic). A stream is retried only
before its first frame arrived. An UNAVAILABLE the server marks "do not retry" (gRPC pushback: its handle
store is down, which only the store's return mends) comes back at once. `retries=0` turns this off.

TLS: `LatentClient(target, tls=ClientTls(ca="ca.pem"))` verifies the server's certificate against `ca` (`tls=True`:
the system's roots); with `cert` and `key` too the client presents its certificate (mutual TLS). A failed
handshake (wrong CA, no client certificate where one is required) is UnavailableError, like a server that is
down; a wrong or revoked token is UnauthenticatedError.

Which server answered: `client.last_server` is the `ServerInfo(node, replica)` (Ray node id and Serve
replica id, services/observability/identity.py) from the trailing metadata of the last call that finished (None when the
server sent none), for debugging placement behind a load balancer.

Errors: every grpc.RpcError is re-raised as the latentserve.errors class of its status code (INVALID_ARGUMENT,
OUT_OF_RANGE, FAILED_PRECONDITION -> ValidationError; NOT_FOUND -> NotFoundError; RESOURCE_EXHAUSTED ->
OverloadedError; DEADLINE_EXCEEDED -> DeadlineExceededError; UNAVAILABLE -> UnavailableError; UNAUTHENTICATED,
PERMISSION_DENIED -> UnauthenticatedError; UNIMPLEMENTED -> UnsupportedError; anything else ->
UnrecoverableError), with the message
"<CODE>: <details>" and the original status in `exc.status` (a grpc.StatusCode); the RpcError is chained as
`__cause__`. Client-side argument checks raise ValidationError before anything is sent.

Installable alone: `pip install 'latentserve[client]'` (grpcio, protobuf, numpy, pillow; neither Ray nor ONNX
Runtime). Modules: connection.py (channel, retries, errors), messages.py (protobuf <-> Python), results.py,
calls.py (the clients), augment.py + augment_job.py (augmentation streams and the resumable dataset writer),
dataset.py (a torch IterableDataset over a job), files.py (images and latents on disk).
"""
from __future__ import annotations

from latentserve.client.calls import AsyncLatentClient, LatentClient
from latentserve.client.augment import augment_chunk, build_augment_request
from latentserve.client.connection import (CHANNEL_OPTIONS, DEFAULT_RETRIES, DEFAULT_TARGET, ClientTls, error_from_rpc,
                                           retry_options)
from latentserve.client.files import (IMAGE_SUFFIXES, load_image, load_latents, make_grid, parse_class_factors,
                                      parse_ref, parse_weights, save_latents, save_png)
from latentserve.client.messages import (IMAGE_FORMATS, INTERPOLATION_METHODS, SAMPLE_SOURCES, build_decode_request,
                                         build_edit_request, build_encode_request, build_interpolate_request,
                                         build_sample_request, decode_image_bytes, frame_from_proto, image_from_proto, image_to_proto,
                                         images_from_protos, images_to_protos, latent_ref, latents_from_protos,
                                         latents_to_protos, model_info_from_proto)
from latentserve.client.results import (AugmentChunk, EditResult, EncodeResult, FactorInfo, Frame, GateInfo,
                                        HandleStoreInfo, KnobInfo, ModelInfo, OutputSizes, PathSummary, SampleResult)
from latentserve.metadata import ServerInfo

__all__ = [
    "ClientTls",
    "AsyncLatentClient", "LatentClient", "ModelInfo", "FactorInfo", "KnobInfo", "GateInfo", "HandleStoreInfo",
    "OutputSizes",
    "EncodeResult",
    "SampleResult", "EditResult", "Frame", "PathSummary", "AugmentChunk", "ServerInfo", "DEFAULT_TARGET",
    "DEFAULT_RETRIES", "CHANNEL_OPTIONS", "IMAGE_FORMATS", "SAMPLE_SOURCES", "INTERPOLATION_METHODS", "IMAGE_SUFFIXES",
    "image_to_proto", "images_to_protos", "image_from_proto", "images_from_protos", "latents_to_protos",
    "latents_from_protos", "latent_ref", "error_from_rpc", "retry_options", "make_grid", "save_png", "load_image",
    "save_latents", "load_latents", "parse_weights", "parse_class_factors", "parse_ref", "decode_image_bytes",
    "build_encode_request",
    "build_decode_request", "build_sample_request", "build_interpolate_request", "build_edit_request",
    "build_augment_request", "augment_chunk", "frame_from_proto", "model_info_from_proto",
]
