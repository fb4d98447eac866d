"""The HTTP door's JSON mapping (services/frontends/http/convert.py, schemas.py, errors.py) and the status table
of every door (services/frontends/statuses.py): every request field reaches its core call, every answer field
its JSON, every error its status and a message naming the field. Pure functions: no server."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image as PILImage
from pydantic import ValidationError as PydanticError

from latentserve import errors
from latentserve.services.core import calls
from latentserve.services.core import images as core_images
from latentserve.services.core.failures import KINDS
from latentserve.services.frontends import statuses
from latentserve.services.frontends.http import convert
from latentserve.services.frontends.http import schemas as s
from latentserve.services.frontends.http.errors import failure, validation_message


def _png(h=4, w=4) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


# ------------------------------------------------------------------------------------------------ images, latents
def test_image_in_png_base64_data_url_and_urlsafe():
    png = _png()
    for text in (_b64(png), "data:image/png;base64," + _b64(png), base64.urlsafe_b64encode(png).decode()):
        img = convert.image_in(s.ImageIn(png=text), "images[0]")
        assert img.encoded == png and img.kind == "encoded"


def test_image_in_array_is_a_uint8_hwc_tensor():
    a = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    img = convert.image_in(s.ImageIn(array=a.tolist()), "images[0]")
    assert img.dtype == "uint8" and img.shape == (2, 3, 3)
    assert np.array_equal(core_images.tensor_array(img).reshape(2, 3, 3), a)


@pytest.mark.parametrize("kwargs, needle", [
    ({}, "images[1]: set exactly one of png (base64) and array"),
    ({"png": _b64(b"x"), "array": [[[0, 0, 0]]]}, "images[1]: set exactly one of"),
    ({"png": "not base64!!"}, "images[1].png: not valid base64"),
    ({"array": [[1, 2, 3]]}, "images[1].array: must be H x W x 3 (RGB), got shape [1, 3]"),
    ({"array": [[[1, 2]]]}, "images[1].array: must be H x W x 3 (RGB)"),
    ({"array": [[[1, 2, 256]]]}, "images[1].array: values must be integers in [0, 255]"),
    ({"array": [[[1, 2, -1]]]}, "images[1].array: values must be integers in [0, 255]"),
    ({"array": [[[1, 2, 0.5]]]}, "images[1].array: values must be integers in [0, 255]"),
    ({"array": [[[1, 2, "a"]]]}, "images[1].array: must be H x W x 3 nested lists of numbers"),
    ({"array": [[[1, 2, 3]], [[1, 2]]]}, "images[1].array: must be H x W x 3 nested lists of numbers"),
])
def test_image_in_errors_name_the_field(kwargs, needle):
    with pytest.raises(errors.ValidationError) as e:
        convert.image_in(s.ImageIn(**kwargs), "images[1]")
    assert needle in str(e.value)


def test_image_out_every_format():
    png, jpeg = _png(), b"\xff\xd8\xff\xe0rest"
    assert convert.image_out(core_images.Image(encoded=png)) == {"png": _b64(png)}
    assert convert.image_out(core_images.Image(encoded=jpeg)) == {"jpeg": _b64(jpeg)}
    u8 = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert convert.image_out(core_images.tensor_image(u8)) == {"array": u8.tolist()}
    f32 = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 2, 2)
    assert convert.image_out(core_images.tensor_image(f32)) == {"array": f32.tolist()}


def test_ref_in_every_kind_and_errors():
    assert convert.ref_in(None, "a") is None
    empty = convert.ref_in(s.Ref(), "a")
    assert empty.kind == "" and empty.label is None
    lat = convert.ref_in(s.Ref(latent=s.Latent(values=[1.0, 2.0], label=1)), "a")
    assert lat.kind == "latent" and list(lat.latent.values) == [1.0, 2.0] and lat.latent.label == 1
    h = convert.ref_in(s.Ref(handle="m:1:abc"), "a")
    assert h.kind == "handle" and h.handle == "m:1:abc" and h.latent is None
    img = convert.ref_in(s.Ref(image=s.ImageIn(png=_b64(_png())), label=-1), "b")
    assert img.kind == "image" and img.image.encoded == _png() and img.label == -1
    with pytest.raises(errors.ValidationError, match=r"inputs\[2\]: set exactly one of latent, handle and image \(got latent, handle\)"):
        convert.ref_in(s.Ref(latent=s.Latent(values=[0.0], label=0), handle="h"), "inputs[2]")
    with pytest.raises(errors.ValidationError, match=r"b\.image\.png: not valid base64"):
        convert.ref_in(s.Ref(image=s.ImageIn(png="%%")), "b")


def test_formats_map_to_core_names():
    assert {k: convert.format_name(k) for k in ("png", "jpeg", "array", "float_array")} == {
        "png": "png", "jpeg": "jpeg", "array": "raw_uint8", "float_array": "raw_float32"}
    with pytest.raises(PydanticError, match="format"):
        s.DecodeRequest(format="gif")


# ------------------------------------------------------------------------------------------------ requests
def test_encode_call_every_field():
    r = s.EncodeRequest(images=[{"png": _b64(_png())}, {"array": [[[0, 0, 0]]]}], version=2, labels=[-1, 1],
                        sample_posterior=True, seed=7, refine_steps=5,
                        refine={"learning_rate": 0.1, "feature_weight": 0.5}, return_handles=True)
    c = convert.encode_call("m", r, 123.0)
    assert (c.model, c.version, c.labels, c.sample_posterior, c.seed, c.refine_steps, c.return_handles, c.deadline) == \
        ("m", 2, [-1, 1], True, 7, 5, True, 123.0)
    assert c.refine == calls.RefineOptions(learning_rate=0.1, feature_weight=0.5)
    assert c.images[0].encoded == _png() and c.images[1].dtype == "uint8"
    assert convert.encode_call("m", s.EncodeRequest(images=[]), 0.0).images == []


def test_decode_call_every_field():
    c = convert.decode_call("m", s.DecodeRequest(version=3, latents=[{"values": [0.5], "label": 2}],
                                                 handles=["h1"], format="array"))
    assert (c.model, c.version, c.handles, c.format) == ("m", 3, ["h1"], "raw_uint8")
    assert list(c.latents[0].values) == [0.5] and c.latents[0].label == 2
    assert convert.decode_call("m", s.DecodeRequest()).format == "png"


def test_sample_call_every_field():
    r = s.SampleRequest(n=4, version=1, label=2, knobs={"scale": 0.4}, seed=9, temperature=0.7, source="latent_gmm",
                        format="jpeg", return_handles=True, class_check=0.9, allow_weak_knobs=True,
                        guidance={"steps": 3, "step_size": 0.1, "class_weight": 2.0, "noise": -1.0,
                                  "factor_targets": {"x": 0.5}, "factor_weight": 5.0, "start": "prior"})
    c = convert.sample_call("m", r, 55.0)
    assert (c.model, c.n, c.version, c.classes, c.knobs, c.seed, c.temperature, c.source, c.format,
            c.return_handles, c.class_check, c.allow_weak_knobs, c.deadline) == \
        ("m", 4, 1, ("label", 2), {"scale": 0.4}, 9, 0.7, "latent_gmm", "jpeg", True, 0.9, True, 55.0)
    assert c.guidance == calls.GuidanceOptions(steps=3, step_size=0.1, class_weight=2.0, noise=-1.0,
                                               factor_targets={"x": 0.5}, factor_weight=5.0, start="prior")
    assert convert.sample_call("m", s.SampleRequest(class_name="ellipse"), 0).classes == ("class_name", "ellipse")
    assert convert.sample_call("m", s.SampleRequest(class_weights={"a": 1.0}), 0).classes == ("class_weights", {"a": 1.0})
    d = convert.sample_call("m", s.SampleRequest(), 0)
    assert (d.n, d.classes, d.source, d.format, d.seed) == (1, None, "", "png", 0)
    with pytest.raises(errors.ValidationError, match="class_name: set at most one of label, class_name and class_weights"):
        convert.sample_call("m", s.SampleRequest(label=1, class_name="x"), 0)
    with pytest.raises(PydanticError, match="seed"):
        s.SampleRequest(seed=-1)
    with pytest.raises(PydanticError, match="source"):
        s.SampleRequest(source="nowhere")


def test_interpolate_call_every_field():
    r = s.InterpolateRequest(a={"latent": {"values": [0.0], "label": 0}}, b={"handle": "h"}, steps=5, version=2,
                             method="geodesic", format="float_array", return_handles=True,
                             geodesic={"iterations": 10, "learning_rate": 0.01, "space": "probe", "init": "slerp"})
    c = convert.interpolate_call("m", r, 9.0)
    assert (c.model, c.steps, c.version, c.method, c.format, c.return_handles, c.deadline) == \
        ("m", 5, 2, "geodesic", "raw_float32", True, 9.0)
    assert c.a.kind == "latent" and c.b.kind == "handle"
    assert c.geodesic == calls.GeodesicOptions(iterations=10, learning_rate=0.01, space="probe", init="slerp")
    with pytest.raises(PydanticError, match="method"):
        s.InterpolateRequest(a={}, b={}, steps=2, method="cubic")


def test_edit_call_every_field_and_move_errors():
    r = s.EditRequest(inputs=[{"handle": "h"}, {"latent": {"values": [1.0], "label": 0}}],
                      moves=[{"knob": "scale", "target": 0.5}, {"knob": "pc1", "amount": -1}], version=4,
                      format="array", allow_weak_knobs=True, return_handles=True)
    c = convert.edit_call("m", r)
    assert (c.model, c.version, c.format, c.allow_weak_knobs, c.return_handles) == ("m", 4, "raw_uint8", True, True)
    assert [i.kind for i in c.inputs] == ["handle", "latent"]
    assert c.moves == [calls.Move("scale", "target", 0.5), calls.Move("pc1", "amount", -1.0)]
    assert convert.edit_call("m", s.EditRequest(inputs=[], moves=[{"knob": "x"}])).moves == [calls.Move("x", None, 0.0)]
    with pytest.raises(errors.ValidationError, match=r"moves\[0\]: set one of amount and target, not both"):
        convert.edit_call("m", s.EditRequest(inputs=[], moves=[{"knob": "x", "amount": 1, "target": 2}]))


def test_augment_call_parses_the_spec_with_json_format_names():
    r = s.AugmentRequest(spec={"model": "m", "count": 4, "seed": 3, "format": "array", "shard_size": 2},
                         shards=[1], allow_weak_knobs=True)
    c = convert.augment_call(r)
    assert (c.spec.model, c.spec.count, c.spec.seed, c.spec.format, c.shards, c.allow_weak_knobs) == \
        ("m", 4, 3, "uint8", [1], True)
    with pytest.raises(errors.ValidationError, match="spec.seed"):
        convert.augment_call(s.AugmentRequest(spec={"model": "m", "count": 4, "seed": 0}))


def test_unknown_fields_are_refused():
    for model, body in ((s.SampleRequest, {"nn": 1}), (s.EncodeRequest, {"images": [], "x": 1}),
                        (s.EditRequest, {"inputs": [], "moves": [{"knob": "a", "by": 1}]})):
        with pytest.raises(PydanticError, match="Extra inputs are not permitted"):
            model(**body)


# ------------------------------------------------------------------------------------------------ answers
def test_encode_response_every_field():
    z = np.array([[1.0, 2.0]], dtype=np.float32)
    e = calls.Encoded(model="m", version=2, latents=z, labels=np.array([1]), confidence=np.array([0.75]),
                      refine=calls.RefineReport(np.array([0.5]), np.array([0.25]), 3), handles=["h"])
    assert convert.encode_response(e) == {
        "model": "m", "version": 2, "latents": [{"values": [1.0, 2.0], "label": 1}], "label_confidence": [0.75],
        "refine": {"mse_before": [0.5], "mse_after": [0.25], "steps": 3}, "handles": ["h"]}
    e.confidence, e.refine = None, None
    out = convert.encode_response(e)
    assert out["label_confidence"] == [] and out["refine"] is None
    s.EncodeResponse(**out)  # the declared response model accepts it


def test_images_response_every_field():
    png = _png()
    g = calls.Generated(model="m", version=1, images=[core_images.Image(encoded=png)],
                        latents=np.zeros((1, 2), np.float32), labels=np.array([2]), confidence=np.array([0.5]),
                        handles=["h"])
    out = convert.images_response(g)
    assert out == {"model": "m", "version": 1, "images": [{"png": _b64(png)}],
                   "latents": [{"values": [0.0, 0.0], "label": 2}], "class_confidence": [0.5], "handles": ["h"]}
    s.ImagesResponse(**out)
    decoded = convert.images_response(calls.Generated(model="m", version=1, images=[]))
    assert decoded["latents"] == [] and decoded["class_confidence"] == []


def test_interpolate_response_every_field():
    png = _png()
    p = calls.Path(model="m", version=1, t=np.array([0.0, 1.0]), images=[core_images.Image(encoded=png)] * 2,
                   latents=np.array([[0.0], [1.0]], np.float32), labels=np.array([0, 1]),
                   step_distance=np.array([0.0, 0.5]), summary={"path_length": 0.5, "space": "pixel", "iterations": 0}, handles=["h0", "h1"])
    out = convert.interpolate_response(p)
    assert out["summary"] == {"path_length": 0.5, "space": "pixel", "iterations": 0} and (out["model"], out["version"]) == ("m", 1)
    assert out["frames"][1] == {"index": 1, "t": 1.0, "image": {"png": _b64(png)},
                                "latent": {"values": [1.0], "label": 1}, "handle": "h1", "step_distance": 0.5}
    p.handles = None
    assert convert.interpolate_response(p)["frames"][0]["handle"] == ""
    s.InterpolateResponse(**out)


def test_augment_batch_every_field():
    class B:
        shard, start, shard_end = 1, 4, True
        images = [core_images.Image(encoded=b"\x89PNG")]
        labels, seeds, handles = np.array([2]), np.array([77], dtype=np.uint64), ["h"]
        factors = {"scale": np.array([0.4])}
        confidence = None

    run = calls.AugmentRun(model="m", version=1, factor_names=["scale"], num_shards=3, count=9, batches=None)
    assert convert.augment_batch(run, B) == {
        "model": "m", "version": 1, "shard": 1, "start": 4, "images": [{"png": _b64(b"\x89PNG")}], "labels": [2],
        "seeds": [77], "handles": ["h"], "shard_end": True, "factors": {"scale": [0.4]}, "num_shards": 3,
        "count": 9, "class_confidence": []}


def test_single_image_needs_exactly_one():
    assert convert.single_image([core_images.Image(encoded=b"png")]) == b"png"
    with pytest.raises(errors.ValidationError, match="Accept: image/png answers with one image; this request makes 2"):
        convert.single_image([core_images.Image(encoded=b"a")] * 2)


# ------------------------------------------------------------------------------------------------ errors
def test_one_status_table_for_every_kind_and_door():
    assert set(statuses.STATUSES) == set(KINDS)
    expected = {"validation": 400, "too_large": 413, "not_found": 404, "overloaded": 429, "unavailable": 503,
                "deadline": 504, "unauthenticated": 401}
    assert {k: statuses.http_status(k) for k in expected} == expected
    from latentserve.services.frontends.grpc.status import STATUS

    assert {k: c.name for k, c in STATUS.items()} == {k: statuses.grpc_code_name(k) for k in KINDS}
    assert statuses.grpc_code_name("too_large") == "INVALID_ARGUMENT"


@pytest.mark.parametrize("exc, status, code", [
    (errors.ValidationError("n: too many"), 400, "INVALID_ARGUMENT"),
    (errors.PayloadTooLargeError("images[0]: 9 bytes is over the limit"), 413, "INVALID_ARGUMENT"),
    (errors.NotFoundError("unknown model 'x'"), 404, "NOT_FOUND"),
    (errors.OverloadedError("queue full"), 429, "RESOURCE_EXHAUSTED"),
    (errors.DeadlineExceededError("too slow"), 504, "DEADLINE_EXCEEDED"),
    (TimeoutError(), 504, "DEADLINE_EXCEEDED"),
    (errors.UnavailableError("redis down"), 503, "UNAVAILABLE"),
    (errors.UnauthenticatedError("missing API token"), 401, "UNAUTHENTICATED"),
    (errors.UnsupportedError("no torch"), 501, "UNIMPLEMENTED"),
])
def test_failure_maps_every_error(exc, status, code):
    got_status, body = failure(exc, "Sample")
    assert (got_status, body["code"]) == (status, code)
    if str(exc):
        assert body["message"] == str(exc)


def test_internal_errors_show_no_repr():
    status, body = failure(RuntimeError("secret at 0x7f00 redis://:pw@host"), "Sample")
    assert status == 500 and body["code"] == "INTERNAL"
    assert "0x7f00" not in body["message"] and "redis" not in body["message"] and "RuntimeError" not in body["message"]


def test_validation_message_names_fields_as_written():
    errs = [{"type": "extra_forbidden", "loc": ("body", "images", 0, "pngg"), "msg": "Extra inputs"},
            {"type": "literal_error", "loc": ("body", "format"), "msg": "Input should be 'png'"},
            {"type": "int_parsing", "loc": ("query", "version"), "msg": "Input should be a valid integer"}]
    assert validation_message(errs) == ("images[0].pngg: unknown field; format: Input should be 'png'; "
                                        "version: Input should be a valid integer")
    assert validation_message([{"type": "json_invalid", "loc": ("body", 6), "msg": "JSON decode error"}]) == \
        "body: not valid JSON (at character 6)"
    assert "Content-Type: application/json" in validation_message(
        [{"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be a valid dictionary"}])
