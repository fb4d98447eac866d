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


def _record(family: str, size: int, **manifest):
    return SimpleNamespace(name="m", version=1, family=family, manifest={
        "image_shape": [3, size, size], "latent_shape": [8], "class_names": ["a"], "factors": [], "knobs": [],
        "metrics": {}, **manifest})


def test_model_info_tells_the_output_sizes_and_class_factors():
    """ModelInfo (core/pool.py -> the gRPC codec -> the client) says which output_size and factor_classes a request
    may ask for: a vector model's size range, a raster model's native size, a decoupled model's class factors."""
    from latentserve.client.messages import model_info_from_proto
    from latentserve.services.config import ServeConfig
    from latentserve.services.core.pool import model_info

    assert output.sizes("vector", 32, {}) == {"min_px": 16, "max_px": 1024, "multiple_of_px": 1}
    assert output.sizes("gan", 32, {}) == {"min_px": 32, "max_px": 32, "multiple_of_px": 32}
    config = ServeConfig()
    factors = {"shape": ["ellipse", "square", "triangle"], "texture": ["solid", "stripes", "dots", "checks"]}
    cases = [(_record("vector", 16), 16, 1024, {}),
             (_record("gan", 32), 32, 32, {}),
             (_record("gan", 16, class_factors=factors,
                      class_names=[f"{s}+{t}" for s in factors["shape"] for t in factors["texture"]]), 16, 16, factors)]
    for record, lo, hi, class_factors in cases:
        info = {**model_info(record, config), "versions": [1], "handle_store": None}
        assert (info["output_sizes"]["min_px"], info["output_sizes"]["max_px"]) == (lo, hi)
        assert info["class_factors"] == [{"name": k, "classes": v} for k, v in class_factors.items()]
        assert info["limits"]["max_output_pixels"] == config.limits.max_output_pixels
        m = codec.model_info_to_pb(info)
        assert (m.output_sizes.min_px, m.output_sizes.max_px, m.limits.max_output_pixels) == (
            lo, hi, config.limits.max_output_pixels)
        assert [(f.name, list(f.classes)) for f in m.class_factors] == list(class_factors.items())
        client = model_info_from_proto(pb.ModelInfo.FromString(m.SerializeToString()))
        assert (client.output_sizes.min_px, client.output_sizes.max_px) == (lo, hi)
        assert client.class_factors == {k: tuple(v) for k, v in class_factors.items()}
        assert list(client.class_factors) == list(class_factors)  # label order kept


def test_model_info_fields_and_the_models_command():
    from latentserve.client.messages import model_info_from_proto
    from latentserve.commands.models import describe

    assert [(f.name, f.number) for f in pb.ModelInfo.DESCRIPTOR.fields if f.number > 22] == [
        ("output_sizes", 23), ("class_factors", 24)]
    assert pb.Limits.DESCRIPTOR.fields_by_name["max_output_pixels"].number == 6
    old = model_info_from_proto(pb.ModelInfo(name="g", family="gan", image_shape=[3, 8, 8]))  # an older server
    assert (old.output_sizes, old.class_factors) == (None, {})
    assert "native size only" in describe(old) and "class factors" not in describe(old)
    vec = model_info_from_proto(pb.ModelInfo(name="v", family="vector", image_shape=[3, 16, 16],
                                             output_sizes=pb.OutputSizes(min_px=16, max_px=1024, multiple_of_px=1),
                                             limits=pb.Limits(max_output_pixels=1 << 22)))
    assert "--size 16..1024 px, 0 = native" in describe(vec) and "4194304 output pixels" in describe(vec)
    dec = model_info_from_proto(pb.ModelInfo(
        name="d", family="gan", image_shape=[3, 16, 16],
        output_sizes=pb.OutputSizes(min_px=16, max_px=16, multiple_of_px=16),
        class_factors=[pb.ClassFactor(name="shape", classes=["ellipse", "square"]),
                       pb.ClassFactor(name="texture", classes=["solid", "dots"])]))
    text = describe(dec)
    assert "native size only" in text
    assert ("class factors (--class-factor FACTOR=CLASS)\n    shape        ellipse, square\n"
            "    texture      solid, dots") in text
    dec.check_factor_classes({"texture": "dots", "shape": "square"})
    for bad, needle in (
            ({"colour": "red"}, "--class-factor: unknown class factor 'colour' for d; factors: shape, texture"),
            ({"texture": "plaid"}, "--class-factor: unknown texture class 'plaid' for d; classes: solid, dots")):
        with pytest.raises(ValidationError, match=f"^{needle}$"):
            dec.check_factor_classes(bad, "--class-factor")
    with pytest.raises(ValidationError, match="^factor_classes: v has no class factors"):
        vec.check_factor_classes({"texture": "dots"})
