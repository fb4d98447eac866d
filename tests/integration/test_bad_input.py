"""A corpus of bad requests, each with its expected gRPC status and a message check, sent with raw stubs (the
client would reject many of them before sending); afterwards a valid request still succeeds (the server stayed
up). Then a second, token-protected app with tiny queues: UNAUTHENTICATED without/with a wrong token, OK with
the right one, health without a token, and RESOURCE_EXHAUSTED when its bounded queue overflows.
"""
from __future__ import annotations

import io
import math
import re
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from latentserve.v1 import latent_pb2 as pb
from latentserve.v1 import latent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(300)
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _lat(values, label=0) -> pb.Latent:
    return pb.Latent(values=list(values), label=label)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header declares w x h RGB pixels, with a little zlib data (a decompression bomb's shape)."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 200_000, 9)) + _chunk(b"IEND", b""))


def _jpeg(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _flipped(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


Z8 = [0.0] * 8
GOOD_PNG = _png(8, 8)
HUGE = 3e38  # finite in float32, but decodes to NaN pixels
REF = pb.LatentRef(latent=_lat(Z8))
FLOW_H = "tiny-flow:1:" + "0" * 32

# (id, rpc, request, expected code, regex the details must match)
CORPUS = [
    ("unknown model", "Decode", pb.DecodeRequest(model="nope", latents=[_lat(Z8)]), NOT_FOUND, "unknown model 'nope'.*tiny-gan"),
    ("missing model", "GetModel", pb.GetModelRequest(), INVALID, "model: required"),
    ("probe model", "Sample", pb.SampleRequest(model="tiny-probe", n=1), NOT_FOUND,
     "'tiny-probe' is not served: it is a probe, the evaluator / guide model.*served models: tiny-flow"),
    ("unknown version", "GetModel", pb.GetModelRequest(model="tiny-gan", version=9), NOT_FOUND, "no version 9.*1, 2"),
    ("negative version", "GetModel", pb.GetModelRequest(model="tiny-gan", version=-1), INVALID, "version must be >= 0"),
    ("wrong latent size", "Decode", pb.DecodeRequest(model="tiny-gan", latents=[_lat([0.0] * 5)]), INVALID,
     r"latents\[0\]: latent has 5 values.*latent size is 8"),
    ("NaN latent", "Decode", pb.DecodeRequest(model="tiny-gan", latents=[_lat([math.nan] * 8)]), INVALID, "NaN or infinity"),
    ("inf latent", "Decode", pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8), _lat([math.inf] + Z8[1:])]), INVALID,
     r"latents\[1\].*NaN or infinity"),
    ("label out of range", "Decode", pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8, 7)]), INVALID,
     "class label 7 is out of range.*0..2"),
    ("latents and handles", "Decode", pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8)], handles=["x"]), INVALID,
     "either latents or handles"),
    ("nothing to decode", "Decode", pb.DecodeRequest(model="tiny-gan"), INVALID, "at least 1 required"),
    ("too many latents", "Decode", pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8)] * 65), INVALID,
     "65 is over the limit of 64"),
    ("unknown format", "Decode", pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8)], format=42), INVALID,
     "unknown image format 42"),
    ("malformed handle", "Decode", pb.DecodeRequest(model="tiny-gan", handles=["bogus"]), INVALID, "malformed handle"),
    ("unknown handle", "Decode", pb.DecodeRequest(model="tiny-flow", handles=[FLOW_H]), NOT_FOUND, "unknown handle"),
    ("handle of another model", "Decode", pb.DecodeRequest(model="tiny-gan", handles=[FLOW_H]), INVALID,
     "belongs to model 'tiny-flow'"),
    ("handle version vs pin", "Decode", pb.DecodeRequest(model="tiny-flow", version=2, handles=[FLOW_H]), INVALID,
     "belong to version 1.*pins version 2"),
    ("undecodable image", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=b"\x89PNGnope")]), INVALID,
     r"images\[0\]: not a decodable PNG or JPEG"),
    ("wrong image size", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=_png(16, 12))]), INVALID,
     "image is 12x16.*expects 8x8"),
    ("raw image wrong shape", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(tensor=pb.Tensor(
        shape=[8, 8, 4], dtype=pb.DTYPE_UINT8, data=b"\0" * 256))]), INVALID, r"shape \[8, 8, 3\]"),
    ("raw image short data", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(tensor=pb.Tensor(
        shape=[8, 8, 3], dtype=pb.DTYPE_UINT8, data=b"\0" * 10))]), INVALID, "data bytes do not match"),
    ("raw float out of range", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(tensor=pb.Tensor(
        shape=[3, 8, 8], dtype=pb.DTYPE_FLOAT32, data=np.full(192, 5, np.float32).tobytes()))]), INVALID, r"\[-1, 1\]"),
    ("empty image", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image()]), INVALID, "empty Image"),
    ("labels count", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=GOOD_PNG)], labels=[0, 1]),
     INVALID, "2 labels for 1 images"),
    ("posterior on gan", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=GOOD_PNG)],
                                                    sample_posterior=True), INVALID, "only for vae"),
    ("n zero", "Sample", pb.SampleRequest(model="tiny-gan", n=0), INVALID, "n: at least 1"),
    ("n over cap", "Sample", pb.SampleRequest(model="tiny-gan", n=1000), INVALID, "1000 is over the limit of 64"),
    ("unknown class name", "Sample", pb.SampleRequest(model="tiny-gan", n=1, class_name="hexagon"), INVALID,
     "unknown class 'hexagon'.*square, ellipse, triangle"),
    ("label over range", "Sample", pb.SampleRequest(model="tiny-gan", n=1, label=3), INVALID, "out of range"),
    ("bad class weights", "Sample", pb.SampleRequest(model="tiny-gan", n=1, class_weights=pb.ClassWeights(
        weights={"square": -1.0})), INVALID, "weights must be finite, >= 0"),
    ("unknown weighted class", "Sample", pb.SampleRequest(model="tiny-gan", n=1, class_weights=pb.ClassWeights(
        weights={"blob": 1.0})), INVALID, "unknown class"),
    ("unknown knob", "Sample", pb.SampleRequest(model="tiny-gan", n=1, knobs={"hue": 0.2}), INVALID,
     "unknown factor 'hue'.*brightness"),
    ("knob out of range", "Sample", pb.SampleRequest(model="tiny-gan", n=1, knobs={"brightness": 0.9}), INVALID,
     r"outside the factor range \[-0.5, 0.5\]"),
    ("pca knob in sample", "Sample", pb.SampleRequest(model="tiny-gan", n=1, knobs={"pc0": 1.0}), INVALID,
     "principal direction"),
    ("negative temperature", "Sample", pb.SampleRequest(model="tiny-gan", n=1, temperature=-1), INVALID, "temperature"),
    ("label check of 1", "Sample", pb.SampleRequest(model="tiny-gan", n=1, class_check=1.0), INVALID, "class_check: 1.0 must be below 1"),
    ("label check of guided chains", "Sample",
     pb.SampleRequest(model="tiny-gan", n=1, class_check=0.5, source=pb.SAMPLE_SOURCE_GUIDED), INVALID,
     "class_check applies to PRIOR and LATENT_GMM"),
    ("guided steps over cap", "Sample", pb.SampleRequest(model="tiny-gan", n=1, source=pb.SAMPLE_SOURCE_GUIDED,
                                                         guidance=pb.GuidanceOptions(steps=100_000)), INVALID,
     "guidance.steps: 100000 is outside"),
    ("guided start guided", "Sample", pb.SampleRequest(model="tiny-gan", n=1, source=pb.SAMPLE_SOURCE_GUIDED,
                                                       guidance=pb.GuidanceOptions(start=pb.SAMPLE_SOURCE_GUIDED)),
     INVALID, "guidance.start"),
    ("refine a flow", "Encode", pb.EncodeRequest(model="tiny-flow", images=[pb.Image(encoded=_png(8, 8))],
                                                 refine_steps=3), INVALID,
     "already exact"),
    ("steps over cap", "Interpolate", pb.InterpolateRequest(model="tiny-gan", a=REF, b=REF, steps=17), INVALID,
     r"steps: 17 is outside \[2, 16\]"),
    ("steps too few", "Interpolate", pb.InterpolateRequest(model="tiny-gan", a=REF, b=REF, steps=1), INVALID, "steps"),
    ("geodesic bad space", "Interpolate", pb.InterpolateRequest(model="tiny-gan", a=REF, b=REF, steps=4,
                                                                method=pb.INTERPOLATION_METHOD_GEODESIC,
                                                                geodesic=pb.GeodesicOptions(space="latent")), INVALID,
     "geodesic.space"),
    ("missing end", "Interpolate", pb.InterpolateRequest(model="tiny-gan", a=REF, steps=4), INVALID, "a and b are required"),
    ("empty ref", "Interpolate", pb.InterpolateRequest(model="tiny-gan", a=REF, b=pb.LatentRef(label=1), steps=4), INVALID,
     "empty LatentRef"),
    ("stream unknown model", "Interpolate", pb.InterpolateRequest(model="nope", a=REF, b=REF, steps=4), NOT_FOUND,
     "unknown model"),
    ("edit unknown knob", "Edit", pb.EditRequest(model="tiny-gan", inputs=[REF], moves=[pb.Move(knob="hue", amount=1)]),
     INVALID, "unknown knob 'hue'"),
    ("edit target out of range", "Edit", pb.EditRequest(model="tiny-gan", inputs=[REF], moves=[
        pb.Move(knob="brightness", target=2.0)]), INVALID, r"moves\[0\]\.target.*outside the factor range"),
    ("edit pca target", "Edit", pb.EditRequest(model="tiny-gan", inputs=[REF], moves=[pb.Move(knob="pc1", target=1.0)]),
     INVALID, "takes an amount"),
    ("edit move without how", "Edit", pb.EditRequest(model="tiny-gan", inputs=[REF], moves=[pb.Move(knob="brightness")]),
     INVALID, "set amount"),
    ("edit no moves", "Edit", pb.EditRequest(model="tiny-gan", inputs=[REF]), INVALID, "at least one move"),
    # hostile images: sizes come from the header before any pixel is decoded; partial files are refused
    ("decompression bomb", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=_png_header(30000, 30000))]),
     INVALID, r"images\[0\]: the image header declares too many pixels"),
    ("big header", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=_png_header(10000, 10000))]),
     INVALID, r"images\[0\]: image is 10000x10000 \(WxH\) by its header"),
    ("truncated png", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=GOOD_PNG),
                                                                           pb.Image(encoded=GOOD_PNG[:-20])]),
     INVALID, r"images\[1\]: image data is corrupt or truncated"),
    ("png without its end", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=GOOD_PNG[:-1])]),
     INVALID, r"images\[0\]: image data is corrupt or truncated"),
    ("corrupt png", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=_flipped(GOOD_PNG, 45))]),
     INVALID, r"images\[0\]: image data is corrupt or truncated"),
    ("truncated jpeg", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=_jpeg(8, 8)[:-30])]),
     INVALID, r"images\[0\]: image data is corrupt or truncated"),
    ("not an image (no repr)", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=b"\x89PN" * 10)]),
     INVALID, r"^images\[0\]: not a decodable PNG or JPEG image$"),
    # latents far outside any prior (finite in float32, NaN pixels once decoded)
    ("huge latent", "Decode", pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8), _lat([HUGE] * 8)]), INVALID,
     r"latents\[1\]: latent value 3e\+38 is out of range.*within \+-1000"),
    ("huge latent ref", "Interpolate", pb.InterpolateRequest(model="tiny-gan", a=REF, b=pb.LatentRef(
        latent=_lat([0.0] * 7 + [-HUGE])), steps=4), INVALID, "out of range"),
    ("huge edit input", "Edit", pb.EditRequest(model="tiny-gan", inputs=[pb.LatentRef(latent=_lat([HUGE] + Z8[1:]))],
                                               moves=[pb.Move(knob="brightness", amount=0.1)]), INVALID, "out of range"),
    # the gradient ops' memory budget (the test app allows 32 rows per request)
    ("guided rows over budget", "Sample", pb.SampleRequest(model="tiny-gan", n=33, source=pb.SAMPLE_SOURCE_GUIDED,
                                                           guidance=pb.GuidanceOptions(steps=2)), EXHAUSTED,
     r"^n: 33 rows is over this server's budget of 32 rows per gradient request"),
    ("refine rows over budget", "Encode", pb.EncodeRequest(model="tiny-gan", images=[pb.Image(encoded=GOOD_PNG)] * 40,
                                                           refine_steps=2), EXHAUSTED, r"^images: 40 rows"),
    ("edit bad image ref", "Edit", pb.EditRequest(model="tiny-gan", inputs=[pb.LatentRef(image=pb.Image(
        encoded=_png(4, 4)))], moves=[pb.Move(knob="brightness", amount=0.1)]), INVALID, r"inputs\[0\]\.image: image is 4x4"),
]


@pytest.fixture(scope="module")
def stub(serve_app):
    with grpc.insecure_channel(serve_app.target) as ch:
        yield pb_grpc.LatentServiceStub(ch)


def _call(stub, rpc: str, request, metadata=None, timeout=30):
    method = getattr(stub, rpc)
    if rpc == "Interpolate":
        return list(method(request, timeout=timeout, metadata=metadata))
    return method(request, timeout=timeout, metadata=metadata)


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_request(stub, case):
    _, rpc, request, code, pattern = case
    with pytest.raises(grpc.RpcError) as ei:
        _call(stub, rpc, request)
    assert ei.value.code() == code, ei.value.details()
    details = ei.value.details() or ""
    assert re.search(pattern, details), details
    # nothing internal reaches the caller: no object reprs, heap addresses, URLs
    assert not re.search(r"0x[0-9a-f]{6,}|object at|://", details), details
    # the call's request id, which the server's log lines carry
    assert re.fullmatch(r"[0-9a-f]{16}", dict(ei.value.trailing_metadata() or ()).get("latentserve-request-id", ""))


def test_client_deadline_is_honoured(stub):
    with pytest.raises(grpc.RpcError) as ei:
        # 1 ms: below what 64 PNG encodes alone take, so the call cannot beat it on a quiet machine (5 ms could:
        # seen once in CI, the request completed)
        stub.Sample(pb.SampleRequest(model="tiny-flow", n=64, format=pb.IMAGE_FORMAT_PNG), timeout=0.001)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_cancelled_requests_release_their_queued_work(extra_app):
    """Requests whose deadline passes while they wait in the batch queue are dropped before the model runs
    (no model call, no rows), and free their admission slots; the server keeps serving."""
    from ray import serve

    name = "cancel"
    # a batch forms for 0.6 s (no idle cut-off): the requests' deadlines pass while they wait in it
    target, md, _ = extra_app(name, colocate=True, models=["tiny-gan"], batch_wait_timeout_s=0.6,
                              batch_idle_timeout_s=0.6, max_ongoing_requests=4, max_queued_requests=4,
                              num_cpus=0.25, ingress_num_cpus=0.25)
    handle = serve.get_app_handle(name)

    def decode_batches() -> int:
        return handle.stats.remote().result(timeout_s=30)["models"]["tiny-gan"]["methods"].get("decode", {}).get("batches", 0)

    before = decode_batches()
    rng = np.random.default_rng(11)
    with grpc.insecure_channel(target) as ch:
        s = pb_grpc.LatentServiceStub(ch)
        futures = [s.Decode.future(pb.DecodeRequest(model="tiny-gan", latents=[_lat(rng.standard_normal(8))],
                                                    format=pb.IMAGE_FORMAT_RAW_UINT8), metadata=md, timeout=0.2)
                   for _ in range(6)]  # 4 wait in the batch queue, 2 for an admission slot
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 6, codes
        time.sleep(1.0)  # past the batch window: a batch of the cancelled requests would have run by now
        assert decode_batches() == before
        stats = handle.stats.remote().result(timeout_s=30)
        if "grpc" in stats:  # native frontend: admission slots released
            assert stats["grpc"]["ongoing"] == 0 and stats["grpc"]["queued"] == 0, stats["grpc"]
        ok = s.Decode(pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8)], format=pb.IMAGE_FORMAT_RAW_UINT8),
                      metadata=md, timeout=30)
        assert len(ok.images) == 1 and decode_batches() == before + 1


def test_server_still_serves_after_the_corpus(stub):
    resp = stub.Decode(pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8, 1)], format=pb.IMAGE_FORMAT_RAW_UINT8), timeout=30)
    assert len(resp.images) == 1 and list(resp.images[0].tensor.shape) == [8, 8, 3]


# ------------------------------------------------------------------------------------------ auth + back-pressure
def test_token_and_bounded_queue(serve_app, extra_app):
    """A second app (co-located models, API token, 1 ongoing + 1 queued request) on the same Serve instance,
    with the session's frontend (native: the replica's own admission control; serve: Serve's queues)."""
    name, token = "secure", "t0ken"
    # extra_app waits for health SERVING without a token: health needs none
    target, app_md, _ = extra_app(name, api_token=token, colocate=True, models=["tiny-gan"], max_ongoing_requests=1,
                                  max_queued_requests=1, batch_wait_timeout_s=0.2, batch_idle_timeout_s=0.2,
                                  num_cpus=0.25, ingress_num_cpus=0.25)
    good_md = app_md + (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as ch:
        s = pb_grpc.LatentServiceStub(ch)
        req = pb.DecodeRequest(model="tiny-gan", latents=[_lat(Z8)], format=pb.IMAGE_FORMAT_RAW_UINT8)
        for md, needle in ((app_md, "missing API token"), (app_md + (("authorization", "Bearer wrong"),), "wrong API token")):
            with pytest.raises(grpc.RpcError) as ei:
                s.Decode(req, metadata=md, timeout=30)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED and needle in ei.value.details()
        with pytest.raises(grpc.RpcError) as ei:
            list(s.Interpolate(pb.InterpolateRequest(model="tiny-gan", a=REF, b=REF, steps=3), metadata=app_md, timeout=30))
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert len(s.Decode(req, metadata=good_md, timeout=30).images) == 1

        codes: list = []
        lock = threading.Lock()

        def one():
            try:
                s.Sample(pb.SampleRequest(model="tiny-gan", n=2, seed=1), metadata=good_md, timeout=60)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert grpc.StatusCode.OK in codes, codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
