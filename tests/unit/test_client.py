"""Client-side unit tests: image/tensor/latent conversions, request building and argument checks, error
mapping, CLI argument parsing and helpers, and the pure parts of the serving benchmark. No servers."""
from __future__ import annotations

import asyncio
import io
import math

import grpc
import numpy as np
import pytest
from PIL import Image

from latentserve.errors import (
    DeadlineExceededError,
    NotFoundError,
    OverloadedError,
    UnauthenticatedError,
    UnavailableError,
    UnrecoverableError,
    ValidationError,
)
from latentserve import client as lc
from latentserve.v1 import latent_pb2 as pb


def _images(n=3, h=8, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ images
def test_uint8_batch_round_trip_is_raw_and_exact():
    x = _images()
    protos = lc.images_to_protos(x)
    assert len(protos) == 3
    assert all(p.WhichOneof("data") == "tensor" and p.tensor.dtype == pb.DTYPE_UINT8 for p in protos)
    assert list(protos[0].tensor.shape) == [8, 6, 3]
    back = lc.images_from_protos(protos, "uint8")
    assert back.dtype == np.uint8 and back.shape == x.shape
    np.testing.assert_array_equal(back, x)


def test_single_image_view_is_read_only_and_exact():
    x = _images(1)[0]
    arr = lc.image_from_proto(lc.image_to_proto(x))
    np.testing.assert_array_equal(arr, x)
    assert not arr.flags.writeable  # a view of the message bytes, no copy


def test_float_images_round_trip():
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 5, 4)).astype(np.float32)
    back = lc.images_from_protos(lc.images_to_protos(x), "float32")
    assert back.shape == (2, 3, 5, 4) and back.dtype == np.float32
    np.testing.assert_allclose(back, x, atol=0)


def test_pil_and_png_bytes_inputs():
    x = _images(1)[0]
    pil = Image.fromarray(x)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    from_pil = lc.images_to_protos([pil])[0]
    np.testing.assert_array_equal(lc.image_from_proto(from_pil), x)
    from_png = lc.images_to_protos([buf.getvalue()])[0]
    assert from_png.WhichOneof("data") == "encoded"
    np.testing.assert_array_equal(lc.image_from_proto(from_png), x)  # PNG is lossless
    assert lc.images_from_protos([from_png], "png") == [buf.getvalue()]


@pytest.mark.parametrize("bad", [
    np.zeros((2, 8, 8), np.uint8),  # no channel axis
    np.zeros((2, 8, 8, 4), np.uint8),  # RGBA
    np.zeros((2, 8, 8, 3), np.int32),  # wrong dtype
    np.zeros((2, 8, 8, 3), np.float32),  # float must be (N, 3, H, W)
    [],  # nothing
    [b""],  # empty bytes
    [np.full((3, 4, 4), np.nan, np.float32)],  # NaN
    "not an image",
])
def test_bad_images_raise_validation_error(bad):
    with pytest.raises(ValidationError):
        lc.images_to_protos(bad)


def test_format_mismatch_and_unknown_format():
    protos = lc.images_to_protos(_images(1))
    with pytest.raises(UnrecoverableError):
        lc.images_from_protos(protos, "png")  # asked for PNG, got a tensor
    with pytest.raises(UnrecoverableError):
        lc.images_from_protos(protos, "float32")
    with pytest.raises(ValidationError, match="unknown image format"):
        lc.images_from_protos(protos, "gif")
    bad = pb.Image(tensor=pb.Tensor(shape=[2, 2, 3], dtype=pb.DTYPE_UINT8, data=b"\0" * 5))
    with pytest.raises(UnrecoverableError, match="shape"):
        lc.image_from_proto(bad)


# ----------------------------------------------------------------------------------------- latents
def test_latents_round_trip_and_label_broadcast():
    z = np.random.default_rng(2).standard_normal((4, 7)).astype(np.float32)
    protos = lc.latents_to_protos(z, 2)
    z2, y2 = lc.latents_from_protos(protos)
    np.testing.assert_allclose(z2, z, rtol=0, atol=1e-7)
    assert y2.dtype == np.int64 and y2.tolist() == [2, 2, 2, 2]
    _, y3 = lc.latents_from_protos(lc.latents_to_protos(z, [0, 1, 2, 3]))
    assert y3.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("latents,labels,match", [
    (np.zeros((2, 3)), None, "labels are required"),
    (np.zeros((2, 3)), [0, 1, 2], "shape"),
    (np.zeros((2, 3)), [-1, 0], ">= 0"),
    (np.zeros((2, 3)), [0.5, 1], "integers"),
    (np.full((2, 3), np.nan), 0, "NaN"),
    (np.zeros((2, 3, 4)), 0, r"\(N, D\)"),
    (np.zeros((0, 3)), 0, r"\(N, D\)"),
])
def test_bad_latents_raise(latents, labels, match):
    with pytest.raises(ValidationError, match=match):
        lc.latents_to_protos(latents, labels)


def test_latent_refs():
    assert lc.latent_ref("abc").handle == "abc"
    ref = lc.latent_ref((np.ones(4), 3))
    assert ref.WhichOneof("ref") == "latent" and ref.latent.label == 3 and list(ref.latent.values) == [1.0] * 4
    img_ref = lc.latent_ref(_images(1)[0])
    assert img_ref.WhichOneof("ref") == "image" and not img_ref.HasField("label")
    assert lc.latent_ref((_images(1)[0], 2)).label == 2
    with pytest.raises(ValidationError, match="needs its label"):
        lc.latent_ref(np.ones(4))
    with pytest.raises(ValidationError, match="handle already carries"):
        lc.latent_ref(("h", 1))
    with pytest.raises(ValidationError, match="empty handle"):
        lc.latent_ref("")


# ------------------------------------------------------------------------------------------ requests
def test_sample_request_fields_and_checks():
    req = lc.build_sample_request("m", 4, class_name="circle", knobs={"scale": 0.8}, seed=7, temperature=0.5,
                                  source="latent_gmm", format="png", return_handles=True, version=2)
    assert (req.model, req.version, req.n, req.seed, req.class_name) == ("m", 2, 4, 7, "circle")
    assert req.WhichOneof("classes") == "class_name" and dict(req.knobs) == {"scale": 0.8}
    assert req.source == pb.SAMPLE_SOURCE_LATENT_GMM and req.format == pb.IMAGE_FORMAT_PNG and req.return_handles
    w = lc.build_sample_request("m", 2, class_weights={"a": 1, "b": 2})
    assert dict(w.class_weights.weights) == {"a": 1.0, "b": 2.0}
    assert lc.build_sample_request("m", 1, label=0).WhichOneof("classes") == "label"
    g = lc.build_sample_request("m", 1, source="guided", guidance={"steps": 5, "factor_targets": {"scale": 0.5}})
    assert g.guidance.steps == 5 and dict(g.guidance.factor_targets) == {"scale": 0.5}
    for kwargs, match in [({"n": 0}, "n must be"), ({"n": 1, "label": 0, "class_name": "a"}, "at most one"),
                          ({"n": 1, "source": "magic"}, "sample source"), ({"n": 1, "temperature": -1}, "temperature"),
                          ({"n": 1, "class_weights": {"a": -1}}, "non-negative"), ({"n": 1, "seed": -1}, "seed"),
                          ({"n": 1, "knobs": {"scale": float("nan")}}, "finite"), ({"n": 1, "format": "bmp"}, "format"),
                          ({"n": 1, "guidance": {"bogus": 1}}, "guidance")]:
        with pytest.raises(ValidationError, match=match):
            lc.build_sample_request("m", **kwargs)
    with pytest.raises(ValidationError, match="model name"):
        lc.build_sample_request("", 1)


def test_decode_request_latents_or_handles():
    z = np.zeros((2, 3), np.float32)
    req = lc.build_decode_request("m", z, [0, 1])
    assert len(req.latents) == 2 and req.format == pb.IMAGE_FORMAT_RAW_UINT8
    enc = lc.EncodeResult(latents=z, labels=np.array([1, 1]), handles=[], confidence=np.ones(2, np.float32))
    assert [lat.label for lat in lc.build_decode_request("m", enc).latents] == [1, 1]
    assert list(lc.build_decode_request("m", handles=["a", "b"], format="float32").handles) == ["a", "b"]
    with pytest.raises(ValidationError, match="not both"):
        lc.build_decode_request("m", z, [0, 1], handles=["a"])
    with pytest.raises(ValidationError, match="not both"):
        lc.build_decode_request("m")


def test_encode_interpolate_edit_requests():
    enc = lc.build_encode_request("m", _images(2), labels=[1, -1], return_handles=True)
    assert list(enc.labels) == [1, -1] and enc.return_handles and len(enc.images) == 2
    with pytest.raises(ValidationError, match="one entry per image"):
        lc.build_encode_request("m", _images(2), labels=[1, 2, 3])
    it = lc.build_interpolate_request("m", "h1", (np.zeros(3), 1), steps=5, method="slerp")
    assert it.a.handle == "h1" and it.b.latent.label == 1 and it.method == pb.INTERPOLATION_METHOD_SLERP
    geo = lc.build_interpolate_request("m", "a", "b", method="geodesic", geodesic={"iterations": 3, "space": "probe"})
    assert geo.geodesic.iterations == 3 and geo.geodesic.space == "probe"
    with pytest.raises(ValidationError, match="steps"):
        lc.build_interpolate_request("m", "a", "b", steps=1)
    with pytest.raises(ValidationError, match="interpolation method"):
        lc.build_interpolate_request("m", "a", "b", method="cubic")
    ed = lc.build_edit_request("m", ["h1", "h2"], [("scale", {"amount": 0.1}), {"knob": "angle", "target": 30},
                                                   ("pc0", -1.5)])
    assert len(ed.inputs) == 2
    assert [(m.knob, m.WhichOneof("how")) for m in ed.moves] == [("scale", "amount"), ("angle", "target"),
                                                                 ("pc0", "amount")]
    assert len(lc.build_edit_request("m", "h", ("scale", 0.2)).moves) == 1  # one input, one move
    assert len(lc.build_edit_request("m", _images(3), [("scale", 0.2)]).inputs) == 3  # an image batch
    for moves, match in [([("scale", {"amount": 1, "target": 2})], "exactly one"), ([{"amount": 1}], "knob name"),
                         (["scale"], "a move is"), ([], "at least one move"),
                         ([("scale", float("inf"))], "finite")]:
        with pytest.raises(ValidationError, match=match):
            lc.build_edit_request("m", "h", moves)


# ------------------------------------------------------------------------------------- responses, errors
def test_model_info_carries_gates_and_weak_knobs():
    knobs = [pb.Knob(name="scale", kind="factor", low=0.3, high=0.9, r2_judged=0.2, usable=False)]
    m = pb.ModelInfo(name="g", version=1, knobs=knobs, judge="geometric", gates_passed=False,
                     gates=[pb.Gate(name="knob_r2.scale", value=0.2, threshold=0.9, op=">=", passed=False,
                                    judge="geometric", detail="d")])
    info = lc.model_info_from_proto(m)
    assert info.judge == "geometric" and not info.gates_passed
    assert info.gates == (lc.GateInfo("knob_r2.scale", pytest.approx(0.2), 0.9, ">=", False, "geometric", "d"),)
    assert info.knobs[0].r2_judged == pytest.approx(0.2) and not info.knobs[0].usable
    # a server without gates sends no judged figures: its knobs are usable, not judged
    old = lc.model_info_from_proto(pb.ModelInfo(name="g", version=1, knobs=[pb.Knob(name="scale", kind="factor")]))
    assert old.knobs[0].usable and math.isnan(old.knobs[0].r2_judged) and old.gates == () and old.judge == ""


def test_requests_carry_allow_weak_knobs():
    assert lc.build_sample_request("m", 1, knobs={"scale": 0.5}, allow_weak_knobs=True).allow_weak_knobs
    assert not lc.build_sample_request("m", 1).allow_weak_knobs
    assert lc.build_edit_request("m", "h", [("scale", {"target": 0.5})], allow_weak_knobs=True).allow_weak_knobs
    req = lc.build_augment_request({"model": "m", "count": 4}, allow_weak_knobs=True)
    assert req.allow_weak_knobs and req.spec.count == 4


def test_model_info_conversion():
    m = pb.ModelInfo(name="g", version=2, versions=[1, 2], family="gan", image_shape=[3, 32, 32], latent_shape=[64],
                     class_names=["a", "b"], factors=[pb.Factor(name="scale", low=0.3, high=0.9)],
                     knobs=[pb.Knob(name="scale", kind="factor", low=0.3, high=0.9, r2_fit=0.8)],
                     sample_sources=[pb.SAMPLE_SOURCE_PRIOR, pb.SAMPLE_SOURCE_GUIDED],
                     interpolation_methods=[pb.INTERPOLATION_METHOD_SLERP], metrics={"fid": 3.0},
                     limits=pb.Limits(max_images_per_request=128, max_interpolation_steps=32))
    info = lc.model_info_from_proto(m)
    assert info.latent_dim == 64 and info.image_size == (32, 32) and info.versions == (1, 2)
    assert info.sample_sources == ("prior", "guided") and info.interpolation_methods == ("slerp",)
    assert info.knobs[0].r2_fit == pytest.approx(0.8) and info.max_images_per_request == 128
    assert info.class_index("b") == 1 and info.class_index("0") == 0
    assert info.handle_store is None  # a server that does not say
    m.handle_store.CopyFrom(pb.HandleStore(backend="redis", durable=False, detail="the handle Redis has appendonly no"))
    assert lc.model_info_from_proto(m).handle_store == lc.HandleStoreInfo("redis", False,
                                                                          "the handle Redis has appendonly no")
    with pytest.raises(ValidationError, match="unknown class"):
        info.class_index("c")
    with pytest.raises(ValidationError, match="out of range"):
        info.class_index(5)


def test_label_check_defaults_per_source():
    from latentserve.commands.models import describe

    m = pb.ModelInfo(name="g", version=1, family="gan", image_shape=[3, 8, 8], latent_shape=[4],
                     sample_sources=[pb.SAMPLE_SOURCE_PRIOR, pb.SAMPLE_SOURCE_LATENT_GMM, pb.SAMPLE_SOURCE_GUIDED],
                     default_class_checks={"prior": 0.0, "latent_gmm": 0.99})
    info = lc.model_info_from_proto(m)
    assert info.class_check_for("latent_gmm") == pytest.approx(0.99) and info.class_check_for("prior") == 0.0
    assert info.class_check_for("guided") == 0.0  # a source missing from the map is off
    assert "label check by default prior: off, latent_gmm: redraw below p(label) 0.99" in describe(info)
    m.ClearField("default_class_checks")
    assert "label check off by default" in describe(lc.model_info_from_proto(m))


def test_frame_conversion_with_summary():
    x = _images(1)[0]
    f = pb.InterpolateFrame(index=3, t=1.0, image=lc.image_to_proto(x), latent=pb.Latent(values=[1, 2], label=1),
                            step_distance=0.25, summary=pb.PathSummary(path_length=1.5, evenness_cv=0.1))
    fr = lc.frame_from_proto(f, "uint8")
    np.testing.assert_array_equal(fr.image, x)
    assert fr.label == 1 and fr.latent.tolist() == [1.0, 2.0] and fr.summary.path_length == pytest.approx(1.5)
    assert lc.frame_from_proto(pb.InterpolateFrame(index=0), "uint8").summary is None


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("code,cls", [
    (grpc.StatusCode.INVALID_ARGUMENT, ValidationError), (grpc.StatusCode.NOT_FOUND, NotFoundError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, OverloadedError), (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
    (grpc.StatusCode.UNAVAILABLE, UnavailableError), (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
    (grpc.StatusCode.INTERNAL, UnrecoverableError),
])
def test_rpc_errors_map_to_the_hierarchy(code, cls):
    err = lc.error_from_rpc(_FakeRpcError(code, "what went wrong"))
    assert type(err) is cls and err.status is code
    assert str(err) == f"{code.name}: what went wrong"


def test_client_argument_checks():
    with pytest.raises(ValidationError, match="host:port"):
        lc.LatentClient("localhost")
    with pytest.raises(ValidationError, match="timeout"):
        lc.LatentClient("127.0.0.1:1", timeout=0)
    c = lc.LatentClient("127.0.0.1:1", token="s3cret", app_name="app")  # no connection until a call
    assert dict(c._metadata) == {"authorization": "Bearer s3cret", "application": "app"}
    with pytest.raises(ValidationError):  # checked before anything is sent
        c.sample("m", 0)
    c.close()


# ---------------------------------------------------------------------------------------- file helpers
def test_grid_size_and_layout():
    x = _images(5, 4, 6)
    g = lc.make_grid(x, ncols=3, pad=2)
    assert g.shape == (2 * (4 + 2) + 2, 3 * (6 + 2) + 2, 3)
    np.testing.assert_array_equal(g[2:6, 10:16], x[1])  # row 0, column 1
    assert lc.make_grid(x).shape == lc.make_grid(x, ncols=3).shape  # ceil(sqrt(5)) = 3
    with pytest.raises(ValidationError):
        lc.make_grid(np.zeros((0, 4, 4, 3), np.uint8))


def test_latents_files_and_refs(tmp_path):
    z = np.arange(12, dtype=np.float32).reshape(3, 4)
    lc.save_latents(str(tmp_path / "l.npz"), z, [0, 1, 2], class_names=["a", "b", "c"])
    z2, y2 = lc.load_latents(str(tmp_path / "l.npz"))
    np.testing.assert_array_equal(z2, z)
    assert y2.tolist() == [0, 1, 2]
    lc.save_latents(str(tmp_path / "l.npy"), z, None)
    assert lc.load_latents(str(tmp_path / "l.npy"))[1] is None
    vec, label = lc.parse_ref(f"{tmp_path / 'l.npz'}:2")
    assert label == 2 and vec.tolist() == z[2].tolist()
    img = _images(1)[0]
    lc.save_png(img, str(tmp_path / "a.png"))
    np.testing.assert_array_equal(lc.parse_ref(str(tmp_path / "a.png")), img)
    assert lc.parse_ref("some-handle") == "some-handle"
    with pytest.raises(ValidationError, match="out of range"):
        lc.parse_ref(f"{tmp_path / 'l.npz'}:3")
    with pytest.raises(ValidationError, match="no labels"):
        lc.parse_ref(f"{tmp_path / 'l.npy'}:0")
    with pytest.raises(NotFoundError):
        lc.parse_ref(str(tmp_path / "missing.png"))


def test_parse_weights():
    assert lc.parse_weights("a=1, b=2.5") == {"a": 1.0, "b": 2.5}
    for bad in ("a", "=1", "a=x", ""):
        with pytest.raises(ValidationError):
            lc.parse_weights(bad)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_parses_client_commands(monkeypatch):
    from latentserve.cli import build_parser
    from latentserve.commands.models import DEFAULT_TARGET, TARGET_ENV, resolve_target

    p = build_parser()
    a = p.parse_args(["sample", "g", "-n", "8", "--class", "circle", "--knob", "scale=0.8", "--knob", "angle=10",
                      "--source", "latent_gmm", "-o", "x.png", "-t", "h:1", "--timeout", "5"])
    assert (a.model, a.n, a.class_name, a.knob, a.source, a.output) == ("g", 8, "circle", ["scale=0.8", "angle=10"],
                                                                        "latent_gmm", "x.png")
    assert resolve_target(a) == "h:1" and a.timeout == 5.0
    a = p.parse_args(["models"])
    monkeypatch.delenv(TARGET_ENV, raising=False)
    assert resolve_target(a) == DEFAULT_TARGET
    monkeypatch.setenv(TARGET_ENV, "env:2")
    assert resolve_target(a) == "env:2"
    a = p.parse_args(["interpolate", "g", "--a", "x.png", "--b", "h", "--method", "lerp,slerp,geodesic"])
    assert a.steps == 8 and a.method == "lerp,slerp,geodesic"
    a = p.parse_args(["edit", "g", "--input", "h", "--input", "y.png", "--knob", "scale", "--sweep", "0.5:1:6"])
    assert a.inputs == ["h", "y.png"] and a.sweep == "0.5:1:6"
    a = p.parse_args(["bench", "--concurrency", "8,32", "--no-triton", "--start"])
    assert a.concurrency == (8, 32) and a.no_triton and a.start
    for bad in (["sample", "g", "--class", "a", "--class-weights", "a=1"], ["edit", "g", "--knob", "s", "--set", "1"],
                ["bench", "--concurrency", "x"], ["sample", "g", "--source", "nope"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_cli_helpers():
    from latentserve.commands.edit import parse_sweep
    from latentserve.commands.interpolate import path_figures

    assert parse_sweep("0.3:0.9:5") == [0.3, 0.45, 0.6, 0.75, 0.9]
    assert parse_sweep("1:2:1") == [1.0]
    for bad in ("1:2", "a:b:3", "0:1:0", "0:1:2:3"):
        with pytest.raises(ValidationError):
            parse_sweep(bad)
    length, cv = path_figures([0.0, 1.0, 1.0, 1.0])
    assert length == pytest.approx(3.0) and cv == pytest.approx(0.0)


def test_cli_edit_needs_a_knob_move_or_class_factors(capsys):
    """What `latentserve edit` refuses before it connects: one line, exit 2 (the names are checked against the
    model's class factors once connected: test_output_size, tests/integration/test_creative_decoupled.py)."""
    from latentserve.cli import main
    from latentserve.client import parse_class_factors

    base = ["edit", "g", "--input", "h", "--target", "127.0.0.1:1"]
    for extra, message in (
            ([], "give --knob NAME with --sweep, --set or --amount, or --class-factor FACTOR=CLASS"),
            (["--knob", "s"], "--knob s needs --sweep LO:HI:N, --set VALUE or --amount VALUE"),
            (["--set", "1"], "--sweep, --set, --amount, --relative and --hold move a knob: give --knob NAME too"),
            (["--class-factor", "texture=dots", "--hold", "scale"], "--hold move a knob: give --knob NAME too"),
            (["--class-factor", "texture"], "--class-factor must look like FACTOR=CLASS (e.g. texture=dots), "
                                            "got 'texture'"),
            (["--class-factor", "=dots"], "--class-factor must look like FACTOR=CLASS")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("latentserve edit: error: ") and message in err and err.count("\n") == 1, err
    assert parse_class_factors(["texture=dots", " shape = square ", "texture=checks"]) == {
        "texture": "checks", "shape": "square"}


def test_cli_sweep_takes_a_negative_low_end():
    """`--sweep -1:1:5` (argparse alone reads the value as an option) means the same as `--sweep=-1:1:5`."""
    from latentserve.cli import build_parser, join_dash_values

    base = ["edit", "g", "--input", "h", "--knob", "pc0"]
    for argv in (base + ["--sweep", "-1:1:5"], base + ["--sweep=-1:1:5"], base + ["--sweep", "-.5:1:3", "-o", "e.png"]):
        a = build_parser().parse_args(join_dash_values(argv))
        assert a.sweep in ("-1:1:5", "-.5:1:3"), argv
    assert join_dash_values(["--sweep", "-1:1:5"]) == ["--sweep=-1:1:5"]
    assert join_dash_values(["--sweep", "--set"]) == ["--sweep", "--set"]  # not a value: argparse reports it
    assert join_dash_values(["--", "--sweep", "-1"]) == ["--", "--sweep", "-1"]


@pytest.mark.parametrize("content, message", [
    (b"plain text, not a picture", "not a readable PNG or JPEG image"),
    (None, "no such file"),
    ("dir", "not a file"),
])
def test_cli_encode_of_a_non_image_is_a_user_error(tmp_path, capsys, content, message):
    """Exit 2 and one plain line, before any server is contacted (the target has nothing listening)."""
    from latentserve.cli import main

    path = tmp_path / "input.png"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    rc = main(["encode", "m", str(path), "-o", str(tmp_path / "z.npz"), "-t", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"latentserve encode: error: {path}: {message}"), err


# -------------------------------------------------------------------------------------- bench (pure parts)
def test_bench_config_checks():
    from latentserve.tools.bench import BenchConfig

    BenchConfig().validate()
    for kwargs in ({"duration": 0}, {"concurrency": ()}, {"concurrency": (0,)}, {"bulk_size": 0}, {"threads": 0},
                   {"target": "h:1", "start": True}, {"settle_s": -1}):
        with pytest.raises(ValidationError):
            BenchConfig(**kwargs).validate()


def test_bench_machine_busy_and_wait_quiet():
    from latentserve.tools.bench import machine_busy, wait_quiet

    busy = machine_busy(0.2)
    assert busy is None or 0.0 <= busy <= 1.0
    waited, last = wait_quiet(0.0)  # no time to wait: returns at once, without a measurement
    assert waited < 1.0 and last is None
    waited, last = wait_quiet(5.0, busy_below=1.01, window_s=0.1)  # any machine is below 101% busy
    assert waited < 5.0 and (last is None or last <= 1.0)


def test_bench_drive_counts_only_the_measuring_window():
    from latentserve.tools.bench import RunStats, drive

    async def call(req, timeout=None, metadata=None):
        await asyncio.sleep(0.005)
        return req

    cpu = iter([10.0, 10.5])
    stats = RunStats("fake", "single", 4, 1)
    asyncio.run(drive(call, [b"x"], lambda b: 1, concurrency=4, duration=0.3, warmup=0.1, stats=stats,
                      server_cpu=lambda: next(cpu)))
    assert stats.errors == 0 and 20 < stats.requests <= 4 * (0.3 + 0.01) / 0.005
    assert stats.images == stats.requests and 4 <= stats.percentile(50) < 100
    assert stats.server_cpu_s == pytest.approx(0.5) and stats.client_cpu_s >= 0
    assert stats.summary()["server_cpu_ms_per_image"] == pytest.approx(500 / stats.images, rel=1e-3)

    async def failing(req, timeout=None, metadata=None):
        raise RuntimeError("boom")

    bad = RunStats("fake", "single", 2, 1)
    asyncio.run(drive(failing, [b"x"], lambda b: 1, concurrency=2, duration=0.2, warmup=0.0, stats=bad))
    assert bad.requests == 0 and bad.errors > 0 and "boom" in bad.first_error


def test_process_tree_cpu():
    import os

    from latentserve.tools.bench import process_tree_cpu

    t = process_tree_cpu(os.getpid())
    if t is None:
        pytest.skip("no /proc on this platform")
    assert t >= 0
    assert process_tree_cpu(2**22 + 12345) is None  # no such pid


def test_bench_analyse_ratios_and_checks():
    from latentserve.tools.bench import BenchConfig, RunStats, analyse, format_table

    def rs(system, mode, conc, batch, images, cpu=None):
        return RunStats(system, mode, conc, batch, requests=images // batch, images=images, seconds=1.0,
                        latencies_ms=[1.0, 2.0], server_cpu_s=cpu)

    cfg = BenchConfig(concurrency=(32,), bulk_concurrency=2)
    rep = analyse([rs("raw", "bulk", 1, 64, 1000, cpu=0.2), rs("raw", "bulk", 1, 64, 700, cpu=0.21),
                   rs("latentserve", "bulk", 2, 64, 900, cpu=0.36),
                   rs("latentserve", "single", 32, 1, 400), rs("triton", "bulk", 2, 64, 600),
                   rs("triton", "single", 32, 1, 100)], cfg)
    by = {(r["system"], r["mode"]): r for r in rep["results"]}
    assert by[("latentserve", "bulk")]["vs_raw"] == pytest.approx(0.9)  # vs the better raw pass
    assert by[("latentserve", "bulk")]["cpu_efficiency_vs_raw"] == pytest.approx(0.5)  # 0.2 ms vs 0.4 ms per image
    assert by[("triton", "bulk")]["cpu_efficiency_vs_raw"] is None
    assert by[("latentserve", "bulk")]["vs_triton"] == pytest.approx(1.5)
    assert by[("latentserve", "single")]["vs_triton"] == pytest.approx(4.0)
    assert all(c["pass"] for c in rep["checks"]) and len(rep["checks"]) == 4
    rep.update(onnx="d.onnx", image_shape=[3, 8, 8], latent_dim=4, model={}, config={"threads": 2, "duration": 1,
                                                                                      "warmup": 0})
    assert "PASS" in format_table(rep)


def test_kserve_messages_and_triton_onnx(tmp_path):
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from latentserve.tools.bench import kserve_messages, to_uint8_nhwc, triton_onnx, triton_requests

    M = kserve_messages()
    req = M["ModelInferRequest"].FromString(triton_requests(latent_dim=4, n_classes=3, batch=2, seed=0, count=1)[0])
    assert [i.name for i in req.inputs] == ["latent", "label"] and list(req.inputs[1].shape) == [2, 1]
    assert len(req.raw_input_contents[0]) == 2 * 4 * 4
    # a tiny decoder-contract graph: image = tanh(latent[:, :1] * label) broadcast to (B, 1, 1, 1)
    g = helper.make_graph(
        [helper.make_node("Cast", ["label"], ["lf"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["lf", "ax"], ["l2"]),
         helper.make_node("Mul", ["latent", "l2"], ["m"]),
         helper.make_node("Tanh", ["m"], ["t"]),
         helper.make_node("Reshape", ["t", "shape"], ["image"])],
        "dec",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 1, 1])],
        [helper.make_tensor("ax", TensorProto.INT64, [1], [1]),
         helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 3, 1, 1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "d.onnx"))
    triton_onnx(str(tmp_path / "d.onnx"), str(tmp_path / "t.onnx"))
    z = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], np.float32)
    y = np.array([1, 2], np.int64)
    ref = ort.InferenceSession(str(tmp_path / "d.onnx")).run(None, {"latent": z, "label": y})[0]
    got = ort.InferenceSession(str(tmp_path / "t.onnx")).run(None, {"latent": z, "label": y[:, None]})[0]
    np.testing.assert_allclose(got, ref, atol=1e-6)
    u8 = to_uint8_nhwc(np.array([[[[-1.0]], [[0.0]], [[1.0]]]], np.float32))
    assert u8.shape == (1, 1, 1, 3) and u8.ravel().tolist() == [0, 128, 255]
