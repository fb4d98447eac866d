"""The HTTP/JSON API (services/frontends/http/) against real servers: a `latentserve serve` subprocess with an API
token (`http_server`) and the same app without one on the session's Serve instance (`http_open`).

The cases follow the gRPC tests (test_service.py, test_bad_input.py): list/get models, exact flow round trip,
seeded determinism, knob targets in factor units, interpolation ends, handles, edits, version pinning, Augment
as a stream, a corpus of bad requests each with its status and a message naming the field, the token, the
bounded queue; and the HTTP side's own: PNG bytes with `Accept: image/png`, JSON arrays and base64, the
OpenAPI schema and docs page, answers identical to gRPC's for the same request.
"""
from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.timeout(300)
Z8 = [0.0] * 8


def _png_b64(h: int, w: int, value: int = 0) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _post(server, path: str, body, **headers):
    return requests.post(server.url + "api/v1/" + path, json=body, headers=server.headers(**headers), timeout=60)


def _get(server, path: str, **params):
    return requests.get(server.url + "api/v1/" + path, params=params, headers=server.headers(), timeout=60)


def _ok(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return resp.json()


def _arrays(images) -> np.ndarray:
    return np.array([img["array"] for img in images])


@pytest.fixture(params=["token", "open"])
def server(request):
    """Each semantic test runs on both servers: token on (subprocess) and off (in-process app)."""
    return request.getfixturevalue("http_server" if request.param == "token" else "http_open")


# ------------------------------------------------------------------------------------------------ semantics
def test_list_and_get_models(server):
    models = {m["name"]: m for m in _ok(_get(server, "models"))["models"]}
    assert sorted(models) == ["tiny-flow", "tiny-gan", "tiny-vae"]
    gan = models["tiny-gan"]
    assert gan["version"] == 2 and gan["versions"] == [1, 2] and gan["family"] == "gan"
    assert gan["image_shape"] == [3, 8, 8] and gan["latent_shape"] == [8]
    assert gan["class_names"] == ["square", "ellipse", "triangle"]
    knobs = {k["name"]: k for k in gan["knobs"]}
    assert (knobs["brightness"]["low"], knobs["brightness"]["high"]) == (-0.5, 0.5) and knobs["pca_0"]["unit"] == "std"
    assert gan["limits"]["max_interpolation_steps"] == 16
    everything = _ok(_get(server, "models", all_versions="true"))["models"]
    assert sorted((m["name"], m["version"]) for m in everything) == [("tiny-flow", 1), ("tiny-gan", 1), ("tiny-gan", 2), ("tiny-vae", 1)]
    assert _ok(_get(server, "models/tiny-gan", version=1))["version"] == 1


def test_flow_round_trip_is_exact_with_arrays(server):
    x = _ok(_post(server, "models/tiny-flow/sample", {"n": 4, "seed": 3, "format": "array"}))
    images = _arrays(x["images"])
    assert images.shape == (4, 8, 8, 3)
    enc = _ok(_post(server, "models/tiny-flow/encode", {"images": [{"array": i.tolist()} for i in images]}))
    assert len(enc["latents"][0]["values"]) == 192
    back = _ok(_post(server, "models/tiny-flow/decode", {"latents": enc["latents"], "format": "float_array"}))
    x_model = images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    assert np.abs(_arrays(back["images"]) - x_model).max() < 1e-4


def test_same_seed_same_images_and_knob_targets(server):
    body = {"n": 4, "label": 0, "seed": 9, "knobs": {"brightness": 0.25}, "format": "float_array"}
    a, b = _ok(_post(server, "models/tiny-flow/sample", body)), _ok(_post(server, "models/tiny-flow/sample", body))
    assert a["latents"] == b["latents"] and a["images"] == b["images"]
    np.testing.assert_allclose(_arrays(a["images"]).mean(axis=(1, 2, 3)), 0.25, atol=1e-4)  # linear decoder: exact
    c = _ok(_post(server, "models/tiny-flow/sample", {**body, "seed": 10}))
    assert c["latents"] != a["latents"]


def test_png_bytes_with_accept_image_png(server):
    r = _post(server, "models/tiny-gan/sample", {"n": 1, "seed": 5, "label": 2}, Accept="image/png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    assert r.headers["x-latentserve-model"] == "tiny-gan" and r.headers["x-latentserve-version"] == "2"
    assert r.headers["x-latentserve-label"] == "2"
    png = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    js = _ok(_post(server, "models/tiny-gan/sample", {"n": 1, "seed": 5, "label": 2}))
    assert np.array_equal(png, np.asarray(Image.open(io.BytesIO(base64.b64decode(js["images"][0]["png"]))).convert("RGB")))
    two = _post(server, "models/tiny-gan/sample", {"n": 2}, Accept="image/png")
    assert two.status_code == 400 and "answers with one image" in two.json()["message"]


def test_interpolation_ends_and_step_distances(server):
    z = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    lat = [{"values": z[0].tolist(), "label": 0}, {"values": z[1].tolist(), "label": 2}]
    ends = _arrays(_ok(_post(server, "models/tiny-gan/decode", {"latents": lat, "format": "float_array"}))["images"])
    out = _ok(_post(server, "models/tiny-gan/interpolate", {"a": {"latent": lat[0]}, "b": {"latent": lat[1]},
                                                             "steps": 7, "format": "float_array"}))
    frames = out["frames"]
    assert [f["index"] for f in frames] == list(range(7)) and frames[0]["t"] == 0.0 and frames[-1]["t"] == 1.0
    np.testing.assert_allclose(frames[0]["image"]["array"], ends[0], atol=1e-5)
    np.testing.assert_allclose(frames[-1]["image"]["array"], ends[1], atol=1e-5)
    assert [f["latent"]["label"] for f in frames] == [0, 0, 0, 2, 2, 2, 2]
    imgs = _arrays([f["image"] for f in frames])
    rms = np.sqrt(((imgs[1:] - imgs[:-1]) ** 2).mean(axis=(1, 2, 3)))
    assert out["summary"]["path_length"] == pytest.approx(rms.sum(), rel=1e-4) and out["summary"]["space"] == "pixel"
    slerp = _ok(_post(server, "models/tiny-gan/interpolate", {"a": {"latent": lat[0]}, "b": {"latent": lat[1]},
                                                               "steps": 3, "method": "slerp"}))
    assert len(slerp["frames"]) == 3 and "png" in slerp["frames"][1]["image"]


def test_handles_images_and_edits(server):
    x = _ok(_post(server, "models/tiny-flow/sample", {"n": 3, "label": 1, "seed": 12, "format": "float_array",
                                                      "return_handles": True}))
    assert len(x["handles"]) == 3 and all(h.startswith("tiny-flow:1:") for h in x["handles"])
    by_handle = _ok(_post(server, "models/tiny-flow/decode", {"handles": x["handles"], "format": "float_array"}))
    np.testing.assert_allclose(_arrays(by_handle["images"]), _arrays(x["images"]), atol=1e-5)
    moved = _ok(_post(server, "models/tiny-flow/edit", {"inputs": [{"handle": h} for h in x["handles"]],
                                                        "moves": [{"knob": "brightness", "amount": 0.1}],
                                                        "format": "float_array"}))
    delta = _arrays(moved["images"]).mean(axis=(1, 2, 3)) - _arrays(x["images"]).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(delta, 0.1, atol=1e-4)
    target = _ok(_post(server, "models/tiny-flow/edit", {"inputs": [{"latent": x["latents"][0]}],
                                                         "moves": [{"knob": "brightness", "target": -0.2}],
                                                         "format": "float_array"}))
    assert np.mean(target["images"][0]["array"]) == pytest.approx(-0.2, abs=1e-4)
    png = _ok(_post(server, "models/tiny-gan/sample", {"n": 1, "seed": 4}))["images"][0]["png"]
    enc = _ok(_post(server, "models/tiny-gan/encode", {"images": [{"png": "data:image/png;base64," + png}],
                                                       "return_handles": True}))
    assert enc["handles"][0].startswith("tiny-gan:2:") and len(enc["label_confidence"]) == 1
    frames = _ok(_post(server, "models/tiny-gan/interpolate", {"a": {"handle": enc["handles"][0]},
                                                                "b": {"image": {"png": png}}, "steps": 3}))["frames"]
    assert len(frames) == 3


def test_version_pinning_and_default(server):
    lat = [{"values": [1.0] * 8, "label": 0}]
    newest = _ok(_post(server, "models/tiny-gan/decode", {"latents": lat, "format": "float_array"}))
    pinned = _ok(_post(server, "models/tiny-gan/decode", {"latents": lat, "format": "float_array", "version": 1}))
    assert newest["version"] == 2 and pinned["version"] == 1
    assert np.abs(_arrays(pinned["images"]) - _arrays(newest["images"])).max() > 0.1


def test_augment_streams_ndjson_batches(server):
    spec = {"model": "tiny-gan", "count": 5, "seed": 7, "shard_size": 2, "format": "array",
            "factors": {"brightness": {"range": [-0.2, 0.2]}}}
    with requests.post(server.url + "api/v1/augment", json={"spec": spec}, headers=server.headers(), stream=True,
                       timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
        batches = [json.loads(line) for line in r.iter_lines() if line]
    assert [b["start"] for b in batches] == [0, 2, 4] and batches[0]["num_shards"] == 3 and batches[0]["count"] == 5
    assert sum(len(b["images"]) for b in batches) == 5 and all(len(b["factors"]["brightness"]) == len(b["images"]) for b in batches)
    again = requests.post(server.url + "api/v1/augment", json={"spec": spec, "shards": [1]}, headers=server.headers(),
                          timeout=60)
    assert json.loads(again.text.splitlines()[0])["images"] == batches[1]["images"]  # a shard regenerates the same
    bad = requests.post(server.url + "api/v1/augment", json={"spec": {**spec, "seed": 0}}, headers=server.headers(), timeout=60)
    assert bad.status_code == 400 and "spec.seed" in bad.json()["message"]


def test_openapi_schema_docs_page_and_health(server):
    schema = requests.get(server.url + "openapi.json", timeout=30).json()
    paths = schema["paths"]
    assert {"/api/v1/models", "/api/v1/models/{model}", "/api/v1/models/{model}/encode", "/api/v1/models/{model}/decode",
            "/api/v1/models/{model}/sample", "/api/v1/models/{model}/interpolate", "/api/v1/models/{model}/edit",
            "/api/v1/augment"} <= set(paths)
    assert "SampleRequest" in schema["components"]["schemas"] and "ErrorBody" in schema["components"]["schemas"]
    assert "413" in paths["/api/v1/models/{model}/encode"]["post"]["responses"]
    docs = requests.get(server.url + "docs", timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    health = requests.get(server.url + "healthz", timeout=30).json()
    assert health["status"] == "SERVING" and health["auth"] == bool(server.token)
    assert set(health["handles"]) == {"backend", "durable", "detail"}
    page = requests.get(server.url, timeout=30)
    assert page.status_code == 200 and "latent explorer" in page.text and "static/app.js" in page.text
    assert requests.get(server.url + "static/app.js", timeout=30).status_code == 200


def test_http_answers_equal_grpc_answers(http_server):
    """The same request through both doors of one server: identical latents and image bytes."""
    from latentserve.client import LatentClient

    with LatentClient(http_server.grpc_target, timeout=60, token=http_server.token) as c:
        g = c.sample("tiny-vae", 3, seed=21, label=1, format="uint8")
    h = _ok(_post(http_server, "models/tiny-vae/sample", {"n": 3, "seed": 21, "label": 1, "format": "array"}))
    assert np.array_equal(_arrays(h["images"]), g.images)
    np.testing.assert_array_equal(np.array([lat["values"] for lat in h["latents"]], np.float32), g.latents)


# ------------------------------------------------------------------------------------------------ errors
REF = {"latent": {"values": Z8, "label": 0}}
# (id, path, body, HTTP status, gRPC code name, regex the message must match)
CORPUS = [
    ("unknown model", "models/nope/decode", {"latents": [REF["latent"]]}, 404, "NOT_FOUND", "unknown model 'nope'.*tiny-gan"),
    ("probe model", "models/tiny-probe/sample", {"n": 1}, 404, "NOT_FOUND", "'tiny-probe' is not served"),
    ("unknown version", "models/tiny-gan/decode", {"latents": [REF["latent"]], "version": 9}, 404, "NOT_FOUND", "no version 9"),
    ("wrong latent size", "models/tiny-gan/decode", {"latents": [{"values": [0.0] * 5, "label": 0}]}, 400,
     "INVALID_ARGUMENT", r"latents\[0\]: latent has 5 values.*latent size is 8"),
    ("label out of range", "models/tiny-gan/decode", {"latents": [{"values": Z8, "label": 7}]}, 400, "INVALID_ARGUMENT",
     "class label 7 is out of range.*0..2"),
    ("latents and handles", "models/tiny-gan/decode", {"latents": [REF["latent"]], "handles": ["x"]}, 400,
     "INVALID_ARGUMENT", "either latents or handles"),
    ("nothing to decode", "models/tiny-gan/decode", {}, 400, "INVALID_ARGUMENT", "at least 1 required"),
    ("too many latents", "models/tiny-gan/decode", {"latents": [REF["latent"]] * 65}, 400, "INVALID_ARGUMENT",
     "65 is over the limit of 64"),
    ("unknown format", "models/tiny-gan/decode", {"latents": [REF["latent"]], "format": "gif"}, 400, "INVALID_ARGUMENT",
     "format: Input should be 'png', 'jpeg', 'array', 'float_array' or 'svg'"),
    ("unknown field", "models/tiny-gan/sample", {"n": 1, "sead": 3}, 400, "INVALID_ARGUMENT", "sead: unknown field"),
    ("wrong type", "models/tiny-gan/sample", {"n": "many"}, 400, "INVALID_ARGUMENT", "^n: Input should be a valid integer"),
    ("malformed handle", "models/tiny-gan/decode", {"handles": ["bogus"]}, 400, "INVALID_ARGUMENT", "malformed handle"),
    ("unknown handle", "models/tiny-flow/decode", {"handles": ["tiny-flow:1:" + "0" * 32]}, 404, "NOT_FOUND", "unknown handle"),
    ("bad base64", "models/tiny-gan/encode", {"images": [{"png": "%%%"}]}, 400, "INVALID_ARGUMENT", r"images\[0\]\.png: not valid base64"),
    ("undecodable image", "models/tiny-gan/encode", {"images": [{"png": base64.b64encode(b"\x89PNGnope").decode()}]}, 400,
     "INVALID_ARGUMENT", r"images\[0\]: not a decodable PNG or JPEG"),
    ("wrong image size", "models/tiny-gan/encode", {"images": [{"png": _png_b64(16, 12)}]}, 400, "INVALID_ARGUMENT",
     "image is 12x16.*expects 8x8"),
    ("image over byte limit", "models/tiny-gan/encode", {"images": [{"png": base64.b64encode(b"\x89PNG" + b"0" * 5000).decode()}]},
     413, "INVALID_ARGUMENT", r"images\[0\]: 5004 bytes is over the limit of 4096 bytes"),
    ("array wrong shape", "models/tiny-gan/encode", {"images": [{"array": [[[0, 0, 0, 0]]]}]}, 400, "INVALID_ARGUMENT",
     r"images\[0\]\.array: must be H x W x 3"),
    ("array out of range", "models/tiny-gan/encode", {"images": [{"array": [[[300, 0, 0]]]}]}, 400, "INVALID_ARGUMENT",
     r"images\[0\]\.array: values must be integers in \[0, 255\]"),
    ("image both kinds", "models/tiny-gan/encode", {"images": [{"png": _png_b64(8, 8), "array": [[[0, 0, 0]]]}]}, 400,
     "INVALID_ARGUMENT", r"images\[0\]: set exactly one of png"),
    ("labels count", "models/tiny-gan/encode", {"images": [{"png": _png_b64(8, 8)}], "labels": [0, 1]}, 400,
     "INVALID_ARGUMENT", "2 labels for 1 images"),
    ("posterior on gan", "models/tiny-gan/encode", {"images": [{"png": _png_b64(8, 8)}], "sample_posterior": True}, 400,
     "INVALID_ARGUMENT", "only for vae"),
    ("n zero", "models/tiny-gan/sample", {"n": 0}, 400, "INVALID_ARGUMENT", "n: at least 1"),
    ("n over cap", "models/tiny-gan/sample", {"n": 1000}, 400, "INVALID_ARGUMENT", "1000 is over the limit of 64"),
    ("two class choices", "models/tiny-gan/sample", {"n": 1, "label": 0, "class_name": "square"}, 400, "INVALID_ARGUMENT",
     "set at most one of label, class_name and class_weights"),
    ("unknown class name", "models/tiny-gan/sample", {"n": 1, "class_name": "hexagon"}, 400, "INVALID_ARGUMENT",
     "unknown class 'hexagon'.*square, ellipse, triangle"),
    ("bad class weights", "models/tiny-gan/sample", {"n": 1, "class_weights": {"square": -1.0}}, 400, "INVALID_ARGUMENT",
     "weights must be finite, >= 0"),
    ("unknown knob", "models/tiny-gan/sample", {"n": 1, "knobs": {"hue": 0.2}}, 400, "INVALID_ARGUMENT",
     "unknown factor 'hue'.*brightness"),
    ("knob out of range", "models/tiny-gan/sample", {"n": 1, "knobs": {"brightness": 0.9}}, 400, "INVALID_ARGUMENT",
     r"outside the factor range \[-0.5, 0.5\]"),
    ("negative seed", "models/tiny-gan/sample", {"n": 1, "seed": -3}, 400, "INVALID_ARGUMENT", "seed: Input should be greater"),
    ("unknown source", "models/tiny-gan/sample", {"n": 1, "source": "moon"}, 400, "INVALID_ARGUMENT", "source: Input should be"),
    ("negative temperature", "models/tiny-gan/sample", {"n": 1, "temperature": -1}, 400, "INVALID_ARGUMENT", "temperature"),
    ("label check of 1", "models/tiny-gan/sample", {"n": 1, "class_check": 1.0}, 400, "INVALID_ARGUMENT",
     "class_check: 1.0 must be below 1"),
    ("steps over cap", "models/tiny-gan/interpolate", {"a": REF, "b": REF, "steps": 17}, 400, "INVALID_ARGUMENT",
     r"steps: 17 is outside \[2, 16\]"),
    ("missing end", "models/tiny-gan/interpolate", {"a": REF, "steps": 4}, 400, "INVALID_ARGUMENT", "^b: Field required"),
    ("empty ref", "models/tiny-gan/interpolate", {"a": REF, "b": {"label": 1}, "steps": 4}, 400, "INVALID_ARGUMENT",
     "empty LatentRef"),
    ("two ref kinds", "models/tiny-gan/interpolate", {"a": REF, "b": {**REF, "handle": "h"}, "steps": 4}, 400,
     "INVALID_ARGUMENT", "b: set exactly one of latent, handle and image"),
    ("unknown method", "models/tiny-gan/interpolate", {"a": REF, "b": REF, "steps": 4, "method": "cubic"}, 400,
     "INVALID_ARGUMENT", "method: Input should be"),
    ("edit unknown knob", "models/tiny-gan/edit", {"inputs": [REF], "moves": [{"knob": "hue", "amount": 1}]}, 400,
     "INVALID_ARGUMENT", "unknown knob 'hue'"),
    ("edit target out of range", "models/tiny-gan/edit", {"inputs": [REF], "moves": [{"knob": "brightness", "target": 2.0}]},
     400, "INVALID_ARGUMENT", r"moves\[0\]\.target.*outside the factor range"),
    ("edit amount and target", "models/tiny-gan/edit", {"inputs": [REF], "moves": [{"knob": "brightness", "amount": 1,
                                                                                     "target": 0}]},
     400, "INVALID_ARGUMENT", r"moves\[0\]: set one of amount and target"),
    ("edit no moves", "models/tiny-gan/edit", {"inputs": [REF], "moves": []}, 400, "INVALID_ARGUMENT", "at least one move"),
    ("edit bad image ref", "models/tiny-gan/edit", {"inputs": [{"image": {"png": _png_b64(4, 4)}}],
                                                    "moves": [{"knob": "brightness", "amount": 0.1}]}, 400,
     "INVALID_ARGUMENT", r"inputs\[0\]\.image: image is 4x4"),
    ("augment bad spec", "augment", {"spec": {"model": "tiny-gan", "count": 0, "seed": 1}}, 400, "INVALID_ARGUMENT", "spec.count"),
    ("augment unknown model", "augment", {"spec": {"model": "nope", "count": 2, "seed": 1}}, 404, "NOT_FOUND", "unknown model"),
    ("no such route", "models/tiny-gan/paint", {}, 404, "NOT_FOUND", "no such resource: POST"),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_request(http_server, case):
    import re

    _, path, body, status, code, pattern = case
    r = _post(http_server, path, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["code"] == code and re.search(pattern, err["message"]), err
    assert "Traceback" not in err["message"] and "0x" not in err["message"]


def test_bodies_that_are_not_json_objects(http_server):
    url = http_server.url + "api/v1/models/tiny-gan/sample"
    for data, headers, needle in (("n=1", {"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type: application/json"),
                                  ('{"n": 1', {"Content-Type": "application/json"}, "body: not valid JSON")):
        r = requests.post(url, data=data, headers=http_server.headers(**headers), timeout=30)
        assert r.status_code == 400 and needle in r.json()["message"], r.text


def test_oversized_body_is_413(http_server):
    big = {"images": [{"png": "A" * (2 << 20)}]}  # the server's http_max_body_bytes is 1 MiB (conftest)
    r = requests.post(http_server.url + "api/v1/models/tiny-gan/encode", data=json.dumps(big),
                      headers=http_server.headers(**{"Content-Type": "application/json"}), timeout=120)
    assert r.status_code == 413 and r.json()["code"] == "INVALID_ARGUMENT" and "http_max_body_bytes" in r.json()["message"]


def test_token_is_required_when_set(http_server):
    url = http_server.url + "api/v1/models/tiny-gan/decode"
    body = {"latents": [REF["latent"]]}
    for headers, needle in (({}, "missing API token"), ({"Authorization": "Bearer wrong"}, "wrong API token"),
                            ({"Authorization": "Basic abc"}, "wrong API token")):
        r = requests.post(url, json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["code"] == "UNAUTHENTICATED" and needle in r.json()["message"], r.text
        assert http_server.token not in r.text
    assert requests.get(http_server.url + "api/v1/models", timeout=30).status_code == 401
    assert requests.post(http_server.url + "api/v1/augment", json={"spec": {}}, timeout=30).status_code == 401
    assert _post(http_server, "models/tiny-gan/decode", body).status_code == 200


def test_no_token_needed_without_one(http_open):
    r = requests.post(http_open.url + "api/v1/models/tiny-gan/decode", json={"latents": [REF["latent"]]}, timeout=30)
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_bounded_queue_answers_429(serve_app):
    """An HTTP app with 1 ongoing + 1 queued call: concurrent slow requests get 429, the rest succeed."""
    from ray import serve

    from latentserve.services.app import build_http_app

    if serve_app.config.frontend.grpc_frontend != "native":
        pytest.skip("the serve frontend's ingress uses Serve's own queues (503 from the proxy)")
    cfg = serve_app.config.with_overrides(app_name="queue", max_ongoing_requests=1, max_queued_requests=1,
                                          models=["tiny-gan"], batch_wait_timeout_s=0.3, batch_idle_timeout_s=0.3)
    serve.run(build_http_app(cfg), name="queue-http", route_prefix="/queue")
    try:
        url = f"http://127.0.0.1:{serve_app.http_port}/queue/"
        import time

        for _ in range(240):
            try:
                if requests.get(url + "healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        codes: list[int] = []
        lock = threading.Lock()

        def one():
            r = requests.post(url + "api/v1/models/tiny-gan/sample", json={"n": 2, "seed": 1}, timeout=60)
            with lock:
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["code"] == "RESOURCE_EXHAUSTED"

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}, codes
    finally:
        serve.delete("queue-http")


def test_server_still_serves_after_the_corpus(http_server):
    assert _ok(_post(http_server, "models/tiny-gan/sample", {"n": 1, "seed": 1}))["version"] == 2
