"""Output size and SVG format: the checks of services/core/output.py, the client's request fields and the gRPC
codec (SampleRequest.output_size = 17, DecodeRequest.output_size = 6, IMAGE_FORMAT_SVG)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from latentserve.client.messages import build_decode_request, build_sample_request, images_from_protos
from latentserve.errors import OverloadedError, ValidationError
from latentserve.services.core import images as imgs
from latentserve.services.core import output
from latentserve.services.frontends.grpc import codec
from latentserve.v1 import latent_pb2 as pb

RASTER = SimpleNamespace(name="shapes-gan", family="gan", image_shape=(3, 32, 32))
VECTOR = SimpleNamespace(name="shapes-vector", family="vector", image_shape=(3, 32, 32))
BIG = 1 << 30


def test_native_size_is_the_raster_path():
    for sv in (RASTER, VECTOR):
        for size in (0, 32):
            out = output.resolve(sv, imgs.PNG, size, 4, BIG)
            assert (out.size, out.native, out.cache_format) == (32, True, "png")


def test_raster_models_draw_only_their_own_size_and_no_svg():
    with pytest.raises(ValidationError, match=r"^output_size: shapes-gan is a gan model \(raster\) and draws only 32"):
        output.resolve(RASTER, imgs.PNG, 64, 1, BIG)
    with pytest.raises(ValidationError, match=r"^format: SVG needs a vector model"):
        output.resolve(RASTER, imgs.SVG, 0, 1, BIG)


def test_vector_sizes_within_bounds_and_svg():
    out = output.resolve(VECTOR, imgs.RAW_UINT8, 128, 2, BIG)
    assert (out.size, out.native, out.cache_format) == (128, False, "raw_uint8@128")
    assert not output.resolve(VECTOR, imgs.SVG, 0, 1, BIG).native  # SVG comes from the layers
    for bad in (15, 1025, -1):
        with pytest.raises(ValidationError, match=r"^output_size: .* outside \[16, 1024\]"):
            output.resolve(VECTOR, imgs.PNG, bad, 1, BIG)


def test_pixel_budget_is_resource_exhausted():
    with pytest.raises(OverloadedError, match=r"^output_size: 5 images of 1024x1024 px .*Limits.max_output_pixels"):
        output.resolve(VECTOR, imgs.PNG, 1024, 5, 4 << 20)


def test_client_sends_output_size_and_svg():
    req = build_sample_request("m", 2, output_size=256, format="svg")
    assert req.output_size == 256 and req.format == pb.IMAGE_FORMAT_SVG
    req = build_decode_request("m", [[0.0, 1.0]], [0], output_size=64)
    assert req.output_size == 64
    for bad in (-1, 1.5, True):
        with pytest.raises(ValidationError, match="output_size"):
            build_decode_request("m", [[0.0]], [0], output_size=bad)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"/>'
    assert images_from_protos([pb.Image(encoded=svg)], "svg") == [svg]


def test_codec_carries_output_size_and_svg():
    s = codec.sample_call(pb.SampleRequest(model="m", n=1, output_size=96, format=pb.IMAGE_FORMAT_SVG), 0.0)
    assert (s.output_size, s.format) == (96, imgs.SVG)
    d = codec.decode_call(pb.DecodeRequest(model="m", output_size=48))
    assert (d.output_size, d.format) == (48, imgs.PNG)


def test_field_numbers_are_the_agreed_ones():
    assert pb.SampleRequest.DESCRIPTOR.fields_by_name["output_size"].number == 17
    assert pb.DecodeRequest.DESCRIPTOR.fields_by_name["output_size"].number == 6
    assert pb.IMAGE_FORMAT_SVG == 5
