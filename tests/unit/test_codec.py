"""codec: protobuf <-> numpy for images (PNG/JPEG/raw), latents, tensors, enums and ModelInfo."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from latentserve.errors import ValidationError
from latentserve.services.frontends.grpc import codec
from latentserve.v1 import latent_pb2 as pb

SHAPE = (3, 4, 5)  # C, H, W (non-square catches H/W swaps)


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float32)


def _u8(x):
    return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("fmt,tol", [(codec.RAW_FLOAT32, 0.0), (codec.RAW_UINT8, 1 / 127.5), (codec.PNG, 1 / 127.5)])
def test_images_roundtrip(fmt, tol):
    x = _images()
    out = codec.images_to_pb(x, fmt)
    assert len(out) == 2
    back = codec.images_from_pb(out, SHAPE)
    assert back.shape == (2, *SHAPE) and back.dtype == np.float32
    assert np.abs(back - x).max() <= tol + 1e-6


def test_output_layouts():
    x = _images(1)
    f = codec.images_to_pb(x, codec.RAW_FLOAT32)[0].tensor
    assert list(f.shape) == [3, 4, 5] and f.dtype == pb.DTYPE_FLOAT32 and len(f.data) == 60 * 4
    u = codec.images_to_pb(x, codec.RAW_UINT8)[0].tensor
    assert list(u.shape) == [4, 5, 3] and u.dtype == pb.DTYPE_UINT8
    np.testing.assert_array_equal(np.frombuffer(u.data, np.uint8).reshape(4, 5, 3), _u8(x)[0])
    jpg = codec.images_to_pb(x, codec.JPEG)[0].encoded
    assert jpg[:2] == b"\xff\xd8"
    png = codec.images_to_pb(x, codec.PNG)[0].encoded
    assert Image.open(io.BytesIO(png)).size == (5, 4)


def test_grey_and_rgba_png_are_converted():
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 5), 255, np.uint8), "L").save(buf, "PNG")
    x = codec.images_from_pb([pb.Image(encoded=buf.getvalue())], SHAPE)
    assert np.allclose(x, 1.0)


def _png(h, w):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("image,needle", [
    (pb.Image(encoded=_png(8, 8)), "is 8x8"),
    (pb.Image(encoded=b"not an image"), "not a decodable"),
    (pb.Image(encoded=_png(4, 5)[:40]), "corrupt|decodable"),
    (pb.Image(), "empty Image"),
    (pb.Image(tensor=pb.Tensor(shape=[4, 5, 3], dtype=pb.DTYPE_UINT8, data=b"\0" * 10)), "data bytes"),
    (pb.Image(tensor=pb.Tensor(shape=[3, 4, 5], dtype=pb.DTYPE_UINT8, data=b"\0" * 60)), r"shape \[4, 5, 3\]"),
    (pb.Image(tensor=pb.Tensor(shape=[4, 5, 3], dtype=pb.DTYPE_FLOAT32, data=b"\0" * 240)), r"shape \[3, 4, 5\]"),
    (pb.Image(tensor=pb.Tensor(shape=[3, 4, 5], dtype=pb.DTYPE_UNSPECIFIED, data=b"")), "dtype"),
    (pb.Image(tensor=pb.Tensor(shape=[3, 4, 5], dtype=pb.DTYPE_FLOAT32,
                               data=np.full(60, np.nan, np.float32).tobytes())), "NaN"),
    (pb.Image(tensor=pb.Tensor(shape=[3, 4, 5], dtype=pb.DTYPE_FLOAT32,
                               data=np.full(60, 3.0, np.float32).tobytes())), r"\[-1, 1\]"),
])
def test_bad_images_name_the_item(image, needle):
    with pytest.raises(ValidationError, match=needle) as ei:
        codec.images_from_pb([pb.Image(encoded=_png(4, 5)), image], SHAPE)
    assert "images[1]" in str(ei.value)


def test_oversized_encoded_image_is_rejected_before_decoding():
    with pytest.raises(ValidationError, match="over the limit"):
        codec.images_from_pb([pb.Image(encoded=_png(4, 5))], SHAPE, max_bytes=10)


def test_latents_roundtrip_and_checks():
    z = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    msgs = codec.latents_to_pb(z, [0, 2, 1])
    z2, labels = codec.latents_from_pb(msgs, 6, 3)
    np.testing.assert_array_equal(z2, z)
    assert labels.tolist() == [0, 2, 1] and labels.dtype == np.int64
    with pytest.raises(ValidationError, match=r"latents\[0\]: latent has 6 values.*latent size is 5"):
        codec.latents_from_pb(msgs, 5, 3)
    with pytest.raises(ValidationError, match=r"latents\[1\]\.label: class label 2 is out of range"):
        codec.latents_from_pb(msgs, 6, 2)
    bad = [pb.Latent(values=[0.0, math.inf], label=0)]
    with pytest.raises(ValidationError, match="NaN or infinity"):
        codec.latents_from_pb(bad, 2, 1)


def test_tensor_helpers():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = codec.array_to_tensor(a)
    assert t.dtype == pb.DTYPE_FLOAT32
    np.testing.assert_array_equal(codec.tensor_to_array(t), a.astype(np.float32))
    with pytest.raises(ValidationError):
        codec.array_to_tensor(np.zeros(2, np.int64))


def test_enums():
    assert codec.image_format(pb.IMAGE_FORMAT_UNSPECIFIED) == codec.PNG
    assert codec.sample_source(pb.SAMPLE_SOURCE_UNSPECIFIED) == ""  # the model's default_sample_source
    assert codec.interpolation_method(pb.INTERPOLATION_METHOD_SLERP) == "slerp"
    with pytest.raises(ValidationError, match="unknown image format"):
        codec.image_format(99)


def test_model_info_to_pb():
    info = {
        "name": "m", "version": 2, "versions": [1, 2], "family": "gan", "image_shape": [3, 8, 8], "latent_shape": [16],
        "class_names": ["a", "b"], "factors": [{"name": "scale", "low": 0.1, "high": 0.9, "unit": "frac", "doc": ""}],
        "knobs": [{"name": "scale", "kind": "factor", "unit": "frac", "low": 0.1, "high": 0.9, "r2_fit": 0.8},
                  {"name": "pca_0", "kind": "pca", "unit": "std", "low": -3, "high": 3, "r2_fit": None}],
        "sample_sources": ["prior", "latent_gmm"], "interpolation_methods": ["lerp", "slerp"],
        "metrics": {"eval.acc": 0.9}, "backend": "onnxruntime", "prior": "standard_normal",
        "limits": {"max_images_per_request": 256, "max_interpolation_steps": 64},
        "default_sample_source": "latent_gmm",
    }
    m = codec.model_info_to_pb(info)
    assert m.default_sample_source == pb.SAMPLE_SOURCE_LATENT_GMM
    assert (m.name, m.version, list(m.versions), m.family) == ("m", 2, [1, 2], "gan")
    assert list(m.sample_sources) == [pb.SAMPLE_SOURCE_PRIOR, pb.SAMPLE_SOURCE_LATENT_GMM]
    assert m.knobs[0].r2_fit == pytest.approx(0.8) and math.isnan(m.knobs[1].r2_fit)
    assert m.limits.max_images_per_request == 256 and m.metrics["eval.acc"] == pytest.approx(0.9)


def test_model_info_to_pb_carries_gates_and_judged_knobs():
    from latentserve.models import gates

    metrics = {"judged": {"judge": "geometric", "default_source": "prior",
                          "sources": {"prior": {"class_accuracy": {"per_class": {"a": 0.99, "b": 0.5}},
                                                "knob_r2": {"scale": 0.2}}}}}
    g = gates.compute_gates("gan", metrics, ["scale"])
    info = {
        "name": "m", "version": 1, "versions": [1], "family": "gan", "image_shape": [3, 8, 8], "latent_shape": [4],
        "class_names": ["a", "b"], "factors": [],
        "knobs": [{"name": "scale", "kind": "factor", "unit": "", "low": 0, "high": 1, "r2_fit": 0.8,
                   "r2_judged": 0.2, "usable": False},
                  {"name": "pca_0", "kind": "pca", "unit": "std", "low": -3, "high": 3, "r2_fit": None}],
        "sample_sources": ["prior"], "interpolation_methods": ["lerp"], "metrics": {}, "backend": "onnxruntime",
        "prior": "standard_normal", "limits": {"max_images_per_request": 8, "max_interpolation_steps": 8},
        "default_sample_source": "prior", "gates": g,
    }
    m = codec.model_info_to_pb(info)
    assert m.judge == "geometric" and not m.gates_passed
    by_name = {x.name: x for x in m.gates}
    assert by_name["class_fidelity.a"].passed and not by_name["class_fidelity.b"].passed
    assert by_name["class_fidelity.a"].judge == "geometric" and by_name["class_fidelity.a"].op == ">="
    assert math.isnan(by_name["gan_train"].value) and by_name["gan_train"].detail == "not measured"
    assert m.knobs[0].r2_judged == pytest.approx(0.2) and not m.knobs[0].usable
    assert math.isnan(m.knobs[1].r2_judged) and m.knobs[1].usable
    del info["gates"]  # an info without gates (never built by the ingress today) converts to none
    assert not codec.model_info_to_pb(info).gates


def test_default_sample_source_is_the_gmm_for_a_vae_only():
    from latentserve.models.latent import default_sample_source

    assert default_sample_source("vae", has_gmm=True) == "latent_gmm"
    assert default_sample_source("vae", has_gmm=False) == "prior"
    assert default_sample_source("gan", has_gmm=True) == "prior"
    assert default_sample_source("flow", has_gmm=True) == "prior"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "raw_uint8", "raw_float32"])
def test_core_images_cache_as_the_protobuf_image_bytes(fmt):
    """The result cache stores the core's Image.to_bytes: the same bytes as latentserve.v1.Image, so entries
    written by another version or frontend of the service read back the same."""
    from latentserve.services.core.images import Image, encode_images

    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    for im in encode_images(x, fmt):
        wire = codec.image_out(im).SerializeToString()
        assert im.to_bytes() == wire
        assert Image.from_bytes(wire) == im and codec.image_in(pb.Image.FromString(wire)) == im


def test_hold_rides_from_the_client_to_the_calls():
    """SampleRequest.hold / EditRequest.hold (issue #22): client builders -> protobuf -> core calls."""
    from latentserve.client.messages import build_edit_request, build_sample_request
    from latentserve.errors import ValidationError
    from latentserve.services.frontends.grpc import codec

    req = build_sample_request("m", 2, knobs={"scale": 0.5}, hold=["hue", "x"])
    assert codec.sample_call(req, 0.0).hold == ["hue", "x"]
    assert codec.sample_call(build_sample_request("m", 1), 0.0).hold == []
    edit = build_edit_request("m", "h-1", [("scale", {"target": 0.5})], hold="hue")
    assert codec.edit_call(edit).hold == ["hue"]
    with pytest.raises(ValidationError, match="hold"):
        build_sample_request("m", 1, hold=[""])
