"""Gradient-based latent ops over real gRPC against the shared Serve app (tests/integration/conftest.py).

Geodesic streams with their path summary, guided sampling (class and factor targets), Encode refinement
with before/after errors, batching of concurrent jobs, cancellation/deadlines stopping the optimisation
loop, caps -> INVALID_ARGUMENT, and a server with the ops switched off -> UNIMPLEMENTED.
"""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from latentserve.errors import DeadlineExceededError, UnsupportedError, ValidationError
from latentserve.client import AsyncLatentClient, LatentClient, build_interpolate_request

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client(serve_app):
    with LatentClient(serve_app.target, timeout=60) as c:
        yield c


def _engine_stats(serve_app, model: str) -> dict:
    from ray import serve

    stats = serve.get_app_handle(serve_app.app_name).stats.remote().result(timeout_s=30)
    return stats["models"][model].get("latent_ops", {})


def _ends(d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(d).astype(np.float32), 0), (rng.standard_normal(d).astype(np.float32), 0)


def test_model_info_advertises_the_ops(client):
    info = client.get_model("tiny-gan")
    assert "geodesic" in info.interpolation_methods and "guided" in info.sample_sources
    assert info.max_geodesic_iterations > 0 and info.max_guidance_steps > 0 and info.max_refine_steps > 0
    assert client.get_model("tiny-flow").max_refine_steps == 0  # an exact encoder needs no refinement


@pytest.mark.parametrize("model,space", [("tiny-gan", "pixel"), ("tiny-vae", "probe"), ("tiny-flow", "pixel")])
def test_geodesic_stream_carries_step_distances_and_summary(client, model, space):
    d = client.model_info(model).latent_dim
    a, b = _ends(d, seed=1)
    frames = list(client.interpolate(model, a, b, steps=7, method="geodesic", format="float32",
                                     geodesic={"iterations": 40, "space": space, "init": "slerp"}))
    assert [f.index for f in frames] == list(range(7))
    np.testing.assert_allclose(frames[0].latent, a[0], atol=1e-6)  # the ends never move
    np.testing.assert_allclose(frames[-1].latent, b[0], atol=1e-6)
    s = frames[-1].summary
    assert s is not None and all(f.summary is None for f in frames[:-1])
    assert s.space == space and s.iterations == 40
    steps = np.array([f.step_distance for f in frames[1:]])
    assert frames[0].step_distance == 0 and np.all(steps > 0)
    assert s.path_length == pytest.approx(steps.sum(), rel=1e-4)
    assert s.evenness_cv == pytest.approx(steps.std() / steps.mean(), rel=1e-3, abs=1e-5)
    assert s.lerp_path_length > 0
    # the tiny decoders are (nearly) linear: the geodesic cannot be longer than the straight line
    assert s.path_length <= s.lerp_path_length * 1.01
    if space == "pixel":  # frames are the decoded path: pixel step distances are recomputable from them
        x = np.stack([f.image for f in frames]).astype(np.float64)
        rms = np.sqrt(((x[1:] - x[:-1]) ** 2).mean(axis=(1, 2, 3)))
        np.testing.assert_allclose(rms, steps, rtol=1e-3, atol=1e-5)


def test_guided_sampling_reaches_the_class_and_the_factor_target(client, probe):
    # a hot prior (temperature 3) makes the tiny GAN's samples ambiguous; guidance pulls them to the class
    kw = dict(label=2, seed=7, temperature=3.0)
    prior = client.sample("tiny-gan", 24, **kw)
    guided = client.sample("tiny-gan", 24, source="guided", guidance={"steps": 60, "class_weight": 8.0}, **kw)
    acc_prior = float((probe(prior.images)[0] == 2).mean())
    acc_guided = float((probe(guided.images)[0] == 2).mean())
    assert acc_guided >= acc_prior and acc_guided >= 0.9, (acc_prior, acc_guided)
    assert np.all(guided.labels == 2)
    again = client.sample("tiny-gan", 24, source="guided", guidance={"steps": 60, "class_weight": 8.0}, **kw)
    np.testing.assert_allclose(again.latents, guided.latents, atol=1e-4)  # same seed, same chains
    # factor target through the probe's regressor (the tiny GAN moves brightness only slowly: strong weight)
    target = 0.1
    start = client.sample("tiny-gan", 16, label=0, seed=3)
    res = client.sample("tiny-gan", 16, label=0, seed=3, source="guided",
                        guidance={"steps": 40, "noise": -1, "class_weight": -1, "factor_weight": 20000,
                                  "factor_targets": {"brightness": target}})
    err_start = np.abs(probe(start.images)[1] - target).mean()
    err_guided = np.abs(probe(res.images)[1] - target).mean()
    assert err_guided < 0.5 * err_start, (err_start, err_guided)


def test_encode_refinement_reports_lower_error(client):
    # images the encoder cannot invert exactly: decoded samples with pixel noise on top
    x = client.sample("tiny-gan", 6, seed=5, format="float32").images
    rng = np.random.default_rng(0)
    noisy = np.clip(x + 0.2 * rng.standard_normal(x.shape).astype(np.float32), -1, 1)
    u8 = np.rint((noisy.transpose(0, 2, 3, 1) + 1) * 127.5).astype(np.uint8)
    plain = client.encode("tiny-gan", u8)
    assert plain.mse_before is None
    res = client.encode("tiny-gan", u8, refine_steps=60, refine={"learning_rate": 0.05})
    assert res.refine_steps == 60 and res.mse_before.shape == (6,)
    np.testing.assert_allclose(res.mse_before, res.mse_before)  # finite
    assert np.all(res.mse_after <= res.mse_before + 1e-7) and res.mse_after.mean() < res.mse_before.mean()
    assert not np.allclose(res.latents, plain.latents)
    # the reported error is the decoded latents' error
    dec = client.decode("tiny-gan", res.latents, res.labels, format="float32")
    target = u8.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(((dec - target) ** 2).mean(axis=(1, 2, 3)), res.mse_after, rtol=0.02, atol=1e-5)


def test_concurrent_jobs_share_passes(serve_app):
    d = 8

    async def run():
        async with AsyncLatentClient(serve_app.target, timeout=60) as c:
            async def one(seed):
                a, b = _ends(d, seed)
                return [f async for f in c.interpolate("tiny-vae", a, b, steps=6, method="geodesic",
                                                        geodesic={"iterations": 150})]
            return await asyncio.gather(*(one(s) for s in range(4)))

    results = asyncio.run(run())
    assert all(len(r) == 6 and r[-1].summary.iterations == 150 for r in results)
    stats = _engine_stats(serve_app, "tiny-vae")["ops"]["geodesic"]
    assert stats["max_jobs_per_step"] > 1, stats


def test_deadline_and_cancel_stop_the_loop(serve_app, client):
    cap = client.get_model("tiny-gan").max_geodesic_iterations
    a, b = _ends(8, seed=3)
    with LatentClient(serve_app.target, timeout=0.5) as short:
        t0 = time.time()
        with pytest.raises(DeadlineExceededError):
            list(short.interpolate("tiny-gan", a, b, steps=16, method="geodesic", geodesic={"iterations": cap}))
    assert time.time() - t0 < 10
    # a client that walks away mid-call: cancel the stream
    import grpc

    from latentserve.v1 import latent_pb2_grpc as pb_grpc

    with grpc.insecure_channel(serve_app.target) as ch:
        call = pb_grpc.LatentServiceStub(ch).Interpolate(
            build_interpolate_request("tiny-gan", a, b, 16, "geodesic", geodesic={"iterations": cap}), timeout=60)
        time.sleep(0.5)
        call.cancel()
    # both jobs leave the engine long before their iterations are done
    deadline = time.time() + 30
    while time.time() < deadline:
        st = _engine_stats(serve_app, "tiny-gan")
        stopped = [r for r in st.get("recent", []) if r["op"] == "geodesic" and r["outcome"] in ("cancelled", "deadline")
                   and r["requested"] == cap]
        if len(stopped) >= 2 and st["active_jobs"] == 0:
            break
        time.sleep(0.2)
    assert len(stopped) >= 2 and st["active_jobs"] == 0, st
    assert all(r["iterations"] < cap for r in stopped), stopped


@pytest.mark.parametrize("call,fragment", [
    (lambda c, cap: list(c.interpolate("tiny-gan", *_ends(8), method="geodesic",
                                       geodesic={"iterations": cap.max_geodesic_iterations + 1})), "geodesic.iterations"),
    (lambda c, cap: list(c.interpolate("tiny-gan", *_ends(8), method="geodesic", geodesic={"space": "latent"})),
     "geodesic.space"),
    (lambda c, cap: list(c.interpolate("tiny-gan", *_ends(8), method="geodesic", geodesic={"learning_rate": 5.0})),
     "geodesic.learning_rate"),
    (lambda c, cap: c.sample("tiny-gan", 2, source="guided", guidance={"steps": cap.max_guidance_steps + 1}),
     "guidance.steps"),
    (lambda c, cap: c.sample("tiny-gan", 2, source="guided", guidance={"step_size": 2.0}), "guidance.step_size"),
    (lambda c, cap: c.sample("tiny-gan", 2, source="guided", guidance={"factor_targets": {"brightness": 9.0}}),
     "outside the factor range"),
    (lambda c, cap: c.sample("tiny-gan", 2, source="guided", guidance={"factor_targets": {"size": 0.1}}),
     "no factor 'size'"),
    (lambda c, cap: c.encode("tiny-gan", np.zeros((1, 8, 8, 3), np.uint8), refine_steps=cap.max_refine_steps + 1),
     "refine_steps"),
    (lambda c, cap: c.encode("tiny-flow", np.zeros((1, 8, 8, 3), np.uint8), refine_steps=5), "already exact"),
])
def test_bad_options_are_invalid_argument(client, call, fragment):
    cap = client.get_model("tiny-gan")
    with pytest.raises(ValidationError) as err:
        call(client, cap)
    assert err.value.status.name == "INVALID_ARGUMENT" and fragment in str(err.value)


def test_ops_switched_off_answer_unimplemented(extra_app):
    target, md, _ = extra_app("no-latent-ops", latent_ops=False)
    with LatentClient(target, timeout=60, app_name="no-latent-ops" if md else None) as c:
        info = c.get_model("tiny-gan")
        assert "geodesic" not in info.interpolation_methods and info.max_guidance_steps == 0
        with pytest.raises(UnsupportedError, match="latent_ops=false"):
            list(c.interpolate("tiny-gan", *_ends(8), method="geodesic"))
        with pytest.raises(UnsupportedError):
            c.sample("tiny-gan", 2, source="guided")
        assert len(c.sample("tiny-gan", 2, seed=1).images) == 2  # plain ops still work
