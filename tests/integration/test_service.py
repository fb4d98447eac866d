"""Every LatentService RPC through the client against the shared Serve app (tests/integration/conftest.py).

Checks semantics, not just plumbing: exact flow round trip, conditional classes scored by the probe,
interpolation ends = decode(ends), slerp's norm profile, seeded determinism, dynamic batching across
concurrent requests (batch sizes > 1 observed), oversized-request splitting, version pinning vs default,
handles, knob edits in factor units, health + reflection, and TorchScript/ONNX parity of the backends.
"""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from latentserve.client import AsyncLatentClient, LatentClient

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client(serve_app):
    with LatentClient(serve_app.target, timeout=30) as c:
        yield c


def _stats(serve_app) -> dict:
    from ray import serve

    return serve.get_app_handle(serve_app.app_name).stats.remote().result(timeout_s=30)


def test_health_and_reflection(serve_app, client):
    assert client.health()
    import grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(serve_app.target) as ch:
        services = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert "latentserve.v1.LatentService" in services and "grpc.health.v1.Health" in services


def test_list_and_get_models(client):
    models = {m.name: m for m in client.list_models()}
    assert sorted(models) == ["tiny-flow", "tiny-gan", "tiny-vae"]  # the probe is not a generative model
    gan = models["tiny-gan"]
    assert gan.version == 2 and gan.versions == (1, 2) and gan.family == "gan"
    assert gan.image_shape == (3, 8, 8) and gan.latent_shape == (8,)
    assert gan.class_names == ("square", "ellipse", "triangle")
    assert [f.name for f in gan.factors] == ["brightness"]
    knobs = {k.name: k for k in gan.knobs}
    assert knobs["brightness"].kind == "factor" and (knobs["brightness"].low, knobs["brightness"].high) == (-0.5, 0.5)
    assert "pca_0" in knobs and knobs["pca_0"].unit == "std"
    assert set(gan.sample_sources) == {"prior", "latent_gmm", "guided"}  # guided: torch is installed here
    assert set(gan.interpolation_methods) == {"lerp", "slerp", "geodesic"}
    assert gan.max_images_per_request == 64 and gan.max_interpolation_steps == 16
    assert gan.metrics == {"tiny.seed": 5.0} and gan.backend == "onnxruntime"
    assert models["tiny-flow"].prior == "class_gaussian" and models["tiny-vae"].prior == "standard_normal"
    everything = client.list_models(all_versions=True)
    assert sorted((m.name, m.version) for m in everything) == [("tiny-flow", 1), ("tiny-gan", 1), ("tiny-gan", 2), ("tiny-vae", 1)]
    assert client.get_model("tiny-gan", version=1).version == 1


def test_flow_round_trip_is_exact(client):
    x = client.sample("tiny-flow", 6, seed=3, format="uint8").images  # (6, 8, 8, 3)
    enc = client.encode("tiny-flow", x)
    assert enc.latents.shape == (6, 3 * 8 * 8)
    back = client.decode("tiny-flow", enc.latents, enc.labels, format="float32")  # (6, 3, 8, 8)
    x_model = x.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    assert np.abs(back - x_model).max() < 1e-4
    again = client.decode("tiny-flow", enc.latents, enc.labels, format="uint8")
    assert np.abs(again.astype(int) - x.astype(int)).max() <= 1


@pytest.mark.parametrize("model", ["tiny-flow", "tiny-gan", "tiny-vae"])
def test_conditional_samples_have_the_requested_class(client, probe, model):
    for label, name in enumerate(["square", "ellipse", "triangle"]):
        out = client.sample(model, 8, class_name=name, seed=11 + label)
        assert out.labels.tolist() == [label] * 8
        predicted, _ = probe(out.images)
        assert (predicted == label).mean() >= 0.9, (model, name, predicted)
        enc = client.encode(model, out.images)  # the encoder's class head agrees
        assert (enc.labels == label).mean() >= 0.9
        if model == "tiny-flow":  # a flow not evaluated reports no confidence (core.pool.class_head_trusted)
            assert enc.confidence.shape == (0,)
        else:
            assert enc.confidence.shape == (8,) and np.all(enc.confidence > 0.3)


def test_class_weights_and_gmm_source(client):
    out = client.sample("tiny-gan", 40, class_weights={"square": 0.0, "triangle": 1.0}, source="latent_gmm", seed=5)
    assert set(out.labels.tolist()) == {2}
    mixed = client.sample("tiny-gan", 60, class_weights={"square": 1, "ellipse": 1}, seed=6)
    assert set(mixed.labels.tolist()) == {0, 1}


def test_unspecified_source_is_the_models_default(client):
    """No source: a VAE samples its latent GMM (its prior samples fall in the prior hole), a GAN its prior."""
    assert client.get_model("tiny-vae").default_sample_source == "latent_gmm"
    assert client.get_model("tiny-gan").default_sample_source == "prior"
    for model, default in (("tiny-vae", "latent_gmm"), ("tiny-gan", "prior")):
        implicit = client.sample(model, 4, label=2, seed=9, format="float32")
        explicit = client.sample(model, 4, label=2, seed=9, format="float32", source=default)
        other = client.sample(model, 4, label=2, seed=9, format="float32",
                              source="prior" if default == "latent_gmm" else "latent_gmm")
        np.testing.assert_array_equal(implicit.latents, explicit.latents)
        assert np.abs(implicit.latents - other.latents).max() > 1e-3


def test_label_check_redraws_what_the_models_own_head_does_not_recognise(client):
    """Sample's label check (models/class_check.py): each returned image's confidence is the model's own
    encoder on that very image, draws that pass at once are kept as they were, and it is off by default for
    a model without an evaluated class head."""
    assert client.get_model("tiny-vae").default_class_check == 0.0  # tiny models carry no encoder_accuracy
    kw = dict(n=30, seed=21, format="float32", source="latent_gmm")
    plain = client.sample("tiny-vae", **kw)
    assert plain.class_confidence is None
    np.testing.assert_array_equal(client.sample("tiny-vae", class_check=-1, **kw).latents, plain.latents)
    # the tiny VAE's head gives its labels p 0.74-0.82: a threshold some first draws pass and others do not
    checked = client.sample("tiny-vae", class_check=0.79, **kw)
    np.testing.assert_array_equal(checked.labels, plain.labels)  # redraws keep every label
    conf = checked.class_confidence
    assert conf.shape == (30,) and np.all((0 < conf) & (conf <= 1))
    enc = client.encode("tiny-vae", checked.images)
    sure = conf >= 0.79
    assert sure.mean() >= 0.8
    assert np.all(enc.labels[sure] == checked.labels[sure])
    np.testing.assert_allclose(enc.confidence[sure], conf[sure], atol=1e-4)
    # the first draw is the unchecked sample: rows whose first draw passed are unchanged, the others redrawn
    first = client.encode("tiny-vae", plain.images)
    first_ok = (first.labels == plain.labels) & (first.confidence >= 0.79)
    np.testing.assert_array_equal(checked.latents[first_ok], plain.latents[first_ok])
    changed = np.abs(checked.latents - plain.latents).max(axis=1) > 0
    assert changed.any() and not np.any(changed & first_ok)
    again = client.sample("tiny-vae", class_check=0.79, **kw)
    np.testing.assert_array_equal(again.images, checked.images)  # same seed and options -> same images


def test_label_check_default_is_per_sample_source(client):
    """The default threshold is the one evaluation recorded for the request's source (tiny-gan v1: 0.5 for its
    latent GMM, off for its prior); an explicit threshold or -1 overrides it."""
    info = client.get_model("tiny-gan", version=1)
    assert info.default_class_checks == {"prior": 0.0, "latent_gmm": 0.5} and info.default_class_check == 0.0
    assert client.get_model("tiny-gan").default_class_checks == {}  # v2: not evaluated, off everywhere
    kw = dict(n=12, seed=4, format="float32", version=1)
    assert client.sample("tiny-gan", source="prior", **kw).class_confidence is None
    implicit = client.sample("tiny-gan", source="latent_gmm", **kw)
    explicit = client.sample("tiny-gan", source="latent_gmm", class_check=0.5, **kw)
    assert implicit.class_confidence is not None and implicit.class_confidence.shape == (12,)
    np.testing.assert_array_equal(implicit.latents, explicit.latents)
    np.testing.assert_allclose(implicit.class_confidence, explicit.class_confidence, atol=1e-6)
    assert client.sample("tiny-gan", source="latent_gmm", class_check=-1, **kw).class_confidence is None


def test_same_seed_same_images(client):
    a = client.sample("tiny-gan", 5, label=1, seed=42, knobs={"brightness": 0.1}, format="float32")
    b = client.sample("tiny-gan", 5, label=1, seed=42, knobs={"brightness": 0.1}, format="float32")
    c = client.sample("tiny-gan", 5, label=1, seed=43, knobs={"brightness": 0.1}, format="float32")
    np.testing.assert_allclose(a.images, b.images, atol=1e-5)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert np.abs(a.images - c.images).max() > 0.05


def test_knob_targets_move_the_factor(client, probe):
    out = client.sample("tiny-flow", 4, label=0, seed=9, knobs={"brightness": 0.25}, format="float32")
    np.testing.assert_allclose(out.images.mean(axis=(1, 2, 3)), 0.25, atol=1e-4)  # flow decoder is linear: exact


def test_interpolation_ends_and_step_distances(client):
    z = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    ends = client.decode("tiny-gan", z, [0, 2], format="float32")
    frames = list(client.interpolate("tiny-gan", (z[0], 0), (z[1], 2), steps=7, format="float32"))
    assert [f.index for f in frames] == list(range(7))
    assert frames[0].t == 0.0 and frames[-1].t == 1.0
    np.testing.assert_allclose(frames[0].image, ends[0], atol=1e-5)
    np.testing.assert_allclose(frames[-1].image, ends[1], atol=1e-5)
    assert [f.label for f in frames] == [0, 0, 0, 2, 2, 2, 2]
    imgs = np.stack([f.image for f in frames])
    rms = np.sqrt(((imgs[1:] - imgs[:-1]) ** 2).mean(axis=(1, 2, 3)))
    np.testing.assert_allclose([f.step_distance for f in frames[1:]], rms, atol=1e-5)
    assert frames[0].step_distance == 0.0 and frames[-1].summary is not None and frames[0].summary is None
    assert frames[-1].summary.path_length == pytest.approx(rms.sum(), rel=1e-4)


def test_slerp_keeps_the_norm_profile(client):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 8)).astype(np.float32)
    b *= np.linalg.norm(a) / np.linalg.norm(b)  # equal norms: slerp keeps the norm constant, lerp dips
    slerp = list(client.interpolate("tiny-gan", (a, 1), (b, 1), steps=9, method="slerp", format="uint8"))
    lerp = list(client.interpolate("tiny-gan", (a, 1), (b, 1), steps=9, method="lerp", format="uint8"))
    ns = np.array([np.linalg.norm(f.latent) for f in slerp])
    nl = np.array([np.linalg.norm(f.latent) for f in lerp])
    np.testing.assert_allclose(ns, np.linalg.norm(a), rtol=1e-4)
    assert nl[4] < 0.95 * np.linalg.norm(a)
    np.testing.assert_allclose(slerp[0].latent, a, atol=1e-6)
    np.testing.assert_allclose(slerp[-1].latent, b, atol=1e-6)


def test_interpolate_between_images_and_handles(client):
    x = client.sample("tiny-flow", 2, label=2, seed=4, format="uint8", return_handles=True)
    frames = list(client.interpolate("tiny-flow", x.handles[0], x.images[1], steps=3, format="uint8"))
    assert len(frames) == 3 and frames[0].label == 2
    assert np.abs(frames[0].image.astype(int) - x.images[0].astype(int)).max() <= 1
    assert np.abs(frames[-1].image.astype(int) - x.images[1].astype(int)).max() <= 1


def test_handles_round_trip(client):
    x = client.sample("tiny-gan", 3, label=0, seed=8, format="uint8")
    enc = client.encode("tiny-gan", x.images, return_handles=True)
    assert len(enc.handles) == 3 and all(h.startswith("tiny-gan:2:") for h in enc.handles)
    by_handle = client.decode("tiny-gan", handles=enc.handles, format="float32")
    by_value = client.decode("tiny-gan", enc.latents, enc.labels, format="float32")
    np.testing.assert_allclose(by_handle, by_value, atol=1e-6)
    assert enc.handles == client.encode("tiny-gan", x.images, return_handles=True).handles  # content-addressed


def test_encode_labels_and_vae_posterior(client):
    x = client.sample("tiny-vae", 2, label=0, seed=2, format="uint8").images
    forced = client.encode("tiny-vae", x, labels=[1, -1])
    assert forced.labels.tolist() == [1, 0]
    mean = client.encode("tiny-vae", x).latents
    s1 = client.encode("tiny-vae", x, sample_posterior=True, seed=5).latents
    s2 = client.encode("tiny-vae", x, sample_posterior=True, seed=5).latents
    np.testing.assert_array_equal(s1, s2)
    assert 0 < np.abs(s1 - mean).max() < 1.0  # logvar = -4: std ~0.14


def test_edit_moves_in_factor_units(client):
    x = client.sample("tiny-flow", 3, label=1, seed=12, format="float32", return_handles=True)
    moved = client.edit("tiny-flow", x.handles, [("brightness", {"amount": 0.1})], format="float32")
    np.testing.assert_allclose(moved.images.mean(axis=(1, 2, 3)) - x.images.mean(axis=(1, 2, 3)), 0.1, atol=1e-4)
    target = client.edit("tiny-flow", x.handles, [("brightness", {"target": -0.2}), ("pc0", 0.5)], format="float32")
    assert target.latents.shape == (3, 192) and target.labels.tolist() == [1, 1, 1]
    pc_only = client.edit("tiny-flow", x.handles, [("pca_0", 0.0)], format="float32")
    np.testing.assert_allclose(pc_only.latents, x.latents, atol=1e-6)


def test_version_pinning_and_default(client):
    z = np.ones((1, 8), np.float32)
    newest = client.decode("tiny-gan", z, [0], format="float32")
    pinned = client.decode("tiny-gan", z, [0], format="float32", version=1)
    explicit = client.decode("tiny-gan", z, [0], format="float32", version=2)
    np.testing.assert_allclose(newest, explicit, atol=1e-6)
    assert np.abs(pinned - newest).max() > 0.1  # v1 and v2 have different decoders
    out = client.sample("tiny-gan", 1, seed=1, version=1)
    assert out.version == 1
    assert client.sample("tiny-gan", 1, seed=1).version == 2


def _decode_stats(stats: dict, model: str = "tiny-flow") -> list[dict]:
    """`model`'s decode statistics of each serving process (a native replica runs several, `processes`)."""
    return [p["models"][model]["methods"].get("decode", {"batches": 0, "recent": []})
            for p in stats.get("processes", [stats])]


def test_concurrent_single_requests_are_batched(serve_app):
    before = [d["batches"] for d in _decode_stats(_stats(serve_app))]

    async def burst():
        async with AsyncLatentClient(serve_app.target, timeout=30) as c:
            # distinct latents: a result cache must not answer any of them
            z = np.random.default_rng(21).standard_normal((24, 1, 192)).astype(np.float32) * 0.1
            return await asyncio.gather(*[c.decode("tiny-flow", z[i], [i % 3], format="uint8") for i in range(24)])

    results = asyncio.run(burst())
    assert len(results) == 24 and all(r.shape == (1, 8, 8, 3) for r in results)
    # one client connection: every call reached one serving process, the one whose batches grew
    dec, b0 = max(zip(_decode_stats(_stats(serve_app)), before), key=lambda d: d[0]["batches"] - d[1])
    recent = dec["recent"][-(dec["batches"] - b0):]
    assert sum(r for r, _ in recent) >= 24
    assert max(r for r, _ in recent) > 1, recent  # several requests shared one model call


def test_bench_harness_spreads_workers_over_connections(serve_app):
    """`latentserve bench --connections 2`: the harness's workers really use two TCP connections (each its own
    channel), and every request on either is answered."""
    import os

    from latentserve.tools import bench
    port = int(serve_app.target.rsplit(":", 1)[1])
    md = (("application", serve_app.app_name),) if serve_app.frontend == "serve" else ()

    def open_connections() -> int:
        """Established TCP connections of this process to the server's port (Linux /proc)."""
        mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.islink(f"/proc/self/fd/{fd}")}
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in open(table).read().splitlines()[1:]:
                f = line.split()  # sl local rem st ... inode (field 9)
                if int(f[2].rsplit(":", 1)[1], 16) == port and f[3] == "01" and f"socket:[{f[9]}]" in mine:
                    count += 1
        return count

    before = open_connections()  # the session's own clients may hold some

    async def run():
        channels = bench.open_channels(serve_app.target, 2)
        calls = [ch.unary_unary("/latentserve.v1.LatentService/Decode") for ch in channels]
        stats = bench.RunStats("latentserve", "single", 4, 1)
        seen = []

        async def watch():
            await asyncio.sleep(0.8)
            seen.append(open_connections())

        await asyncio.gather(watch(), bench.drive(
            calls, bench.latentserve_requests("tiny-gan", None, 8, 3, 1, seed=0), bench.latentserve_parser(1, (8, 8)),
            4, duration=1.0, warmup=0.3, stats=stats, metadata=md))
        for ch in channels:
            await ch.close()
        return stats, seen

    stats, seen = asyncio.run(run())
    assert stats.errors == 0, stats.first_error
    assert stats.requests > 0 and stats.images == stats.requests
    assert seen == [before + 2], (before, seen)


def test_oversized_requests_are_split_into_max_batch_size_chunks(serve_app, client):
    before = [d["batches"] for d in _decode_stats(_stats(serve_app), "tiny-vae")]
    out = client.sample("tiny-vae", 40, seed=1, format="uint8")  # max_batch_size is 16 in the test app
    assert out.images.shape == (40, 8, 8, 3)
    dec, _ = max(zip(_decode_stats(_stats(serve_app), "tiny-vae"), before), key=lambda d: d[0]["batches"] - d[1])
    assert [rows for _, rows in dec["recent"][-3:]] == [16, 16, 8]


def test_torchscript_and_onnx_backends_agree(tiny_repo):
    """The TorchScript backend (torch imported only then) gives the ONNX outputs on the same graphs."""
    from latentserve.models.repository import Repository
    from latentserve.services.core.backends import open_session
    from latentserve.services.core.model_server import graph_io

    rec = Repository(tiny_repo).load("tiny-vae")
    rng = np.random.default_rng(0)
    feeds = {"encoder": {"image": rng.uniform(-1, 1, (3, 3, 8, 8)).astype(np.float32)},
             "decoder": {"latent": rng.standard_normal((3, 8)).astype(np.float32), "label": np.array([0, 1, 2])}}
    for graph, feed in feeds.items():
        ins, outs = graph_io(rec, graph)
        a = open_session("onnxruntime", rec.graph_path(graph, "onnx"), ins, outs).run(feed)
        b = open_session("torchscript", rec.graph_path(graph, "torchscript"), ins, outs).run(feed)
        assert set(a) == set(b) == set(outs)
        for k in outs:
            np.testing.assert_allclose(a[k], b[k], atol=1e-5)


# ------------------------------------------------------------------------------------------ real families
REAL_DATA = {"image_size": 16, "n_train": 128, "n_test": 32, "seed": 0}
REAL_TINY = {
    "probe": {"width": 4, "depth": 2, "head_channels": 2, "feature_dim": 8},
    "gan": {"z_dim": 8, "g_width": 4, "d_width": 4, "e_width": 4, "e_hidden": 16, "e_batch": 8},
    "vae": {"z_dim": 8, "widths": [4, 8], "res_blocks": 0, "hidden": 16, "embed_dim": 4},
    "flow": {"levels": 1, "steps": [2], "hidden": [8]},
}


def _real_repository(root) -> list[str]:
    """Train every available family for 2 steps and export it (probe first): the real export path."""
    import dataclasses
    import importlib.util

    torch = pytest.importorskip("torch")
    from latentserve.models.data import load_dataset
    from latentserve.models.export import export_run
    from latentserve.models.families import FAMILIES, get_family
    from latentserve.models.train import TrainConfig, train

    torch.set_num_threads(1)
    data = load_dataset("shapes", **REAL_DATA)
    served = []
    for fam in ("probe", "gan", "vae", "flow"):
        if importlib.util.find_spec(FAMILIES[fam].partition(":")[0]) is None:
            continue
        known = {f.name for f in dataclasses.fields(get_family(fam).config_cls)}
        cfg = TrainConfig(family=fam, data="shapes", data_args=dict(REAL_DATA), steps=2, batch_size=16,
                          out=str(root / "runs" / fam), ckpt_every=2, eval_every=2, grid_every=10**6, threads=1,
                          device="cpu", family_args={k: v for k, v in REAL_TINY[fam].items() if k in known},
                          eval_size=16)
        run = train(cfg, progress=False, dataset=data)
        export_run(run, f"shapes-{fam}", repo_root=root / "repo", probe="shapes-probe", max_latent_fit=128, data=data)
        if fam != "probe":
            served.append(f"shapes-{fam}")
    return served


def test_real_exported_families_serve_end_to_end(serve_app, tmp_path, extra_app):
    """Models from models.train + models.export (not hand-built) through every RPC, in a second app."""
    if serve_app.frontend == "direct":
        pytest.skip("a second app needs the native frontend or Serve's proxy")
    served = _real_repository(tmp_path)
    if not served:
        pytest.skip("no generative family is built yet")
    name = "real"
    target, md, _ = extra_app(name, repository=str(tmp_path / "repo"), models=[], colocate=True,
                              num_cpus=0.25, ingress_num_cpus=0.25)
    with LatentClient(target, timeout=60, app_name=name if md else None) as c:
        assert sorted(m.name for m in c.list_models()) == sorted(served)
        for model in served:
            info = c.get_model(model)
            out = c.sample(model, 4, label=1, seed=3, format="uint8", return_handles=True)
            assert out.images.shape == (4, 16, 16, 3) and out.labels.tolist() == [1] * 4
            enc = c.encode(model, out.images, labels=[1] * 4)
            back = c.decode(model, enc.latents, enc.labels, format="uint8")
            assert back.shape == out.images.shape
            if info.family == "flow":  # an exact bijection, up to 8-bit rounding
                assert np.abs(back.astype(int) - out.images.astype(int)).max() <= 2
            frames = list(c.interpolate(model, out.handles[0], out.handles[1], steps=3, method="slerp"))
            assert len(frames) == 3 and frames[-1].summary is not None
            factor_knobs = [k for k in info.knobs if k.kind == "factor"]
            if factor_knobs:
                k = factor_knobs[0]
                edited = c.edit(model, out.handles[:2], [(k.name, {"target": (k.low + k.high) / 2})])
                assert edited.images.shape == (2, 16, 16, 3)


def test_rollout_of_a_new_version_drops_no_request(serve_app, tiny_repo, tmp_path, extra_app):
    """A version folder appears, the app is deployed again (what `serve deploy` does: the builder re-reads the
    repository): traffic running throughout sees the default switch from v1 to v2 and not one error.

    Native frontend: Serve stops the old replica before starting the new one, so this also checks the drain
    (the old replica serves until its replacement listens on the shared port, then sends GOAWAY)."""
    import shutil
    import threading

    import grpc
    from ray import serve

    from latentserve.services.app import build_app
    from latentserve.v1 import latent_pb2 as pb
    from latentserve.v1 import latent_pb2_grpc as pb_grpc

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny-gan" / "1", repo / "tiny-gan" / "1")
    name = "rollout"
    target, md, cfg = extra_app(name, repository=str(repo), models=[], num_cpus=0.25, ingress_num_cpus=0.25)
    per_thread: list[list[int]] = [[], [], []]
    errors: list[str] = []
    stop = threading.Event()

    def traffic(versions: list[int]):
        with grpc.insecure_channel(target) as ch:  # one connection per thread, kept across the rollout
            stub = pb_grpc.LatentServiceStub(ch)
            rng = np.random.default_rng(len(errors) + id(versions) % 1000)
            while not stop.is_set():
                # distinct latents: answered by a model, never by a result cache
                req = pb.DecodeRequest(model="tiny-gan", latents=[pb.Latent(values=rng.standard_normal(8).tolist())],
                                       format=pb.IMAGE_FORMAT_RAW_UINT8)
                try:
                    versions.append(stub.Decode(req, metadata=md, timeout=30).version)
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=traffic, args=(v,)) for v in per_thread]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        tmp = repo / "tiny-gan" / ".incoming"
        shutil.copytree(tiny_repo / "tiny-gan" / "2", tmp)
        tmp.rename(repo / "tiny-gan" / "2")  # a version folder appears atomically, as export writes it
        serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
        # every client ends up on the new replica (native: when its connection ages out of the old one)
        deadline = time.time() + 90
        while not all(v and v[-1] == 2 for v in per_thread) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    for versions in per_thread:
        assert versions[0] == 1 and versions[-1] == 2, (versions[:3], versions[-3:])
        assert all(v == 2 for v in versions[-5:])  # old replicas drained


def test_the_other_frontend_serves_the_same_results(serve_app, extra_app):
    """Smoke test of the frontend the session does not run (native session -> Serve's proxy -> ingress ->
    model-server deployments; serve session -> a native app): same handlers, same images, same errors."""
    import grpc

    from latentserve.v1 import latent_pb2 as pb
    from latentserve.v1 import latent_pb2_grpc as pb_grpc

    other = "serve" if serve_app.config.frontend.grpc_frontend == "native" else "native"
    target, md, _ = extra_app("other-frontend", frontend=other, models=["tiny-gan"], colocate=False,
                              num_cpus=0.25, ingress_num_cpus=0.25)
    z = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    # with two apps behind Serve's proxy, requests to the session app must name it too
    main_app = serve_app.app_name if serve_app.config.frontend.grpc_frontend == "serve" else None
    with LatentClient(target, timeout=60, app_name="other-frontend" if md else None) as c, \
            LatentClient(serve_app.target, timeout=60, app_name=main_app) as client:
        assert c.health()
        assert [m.name for m in c.list_models()] == ["tiny-gan"]
        np.testing.assert_array_equal(c.decode("tiny-gan", z, [0, 1, 2]), client.decode("tiny-gan", z, [0, 1, 2]))
        np.testing.assert_allclose(c.decode("tiny-gan", z, [0, 1, 2], format="float32"),
                                   client.decode("tiny-gan", z, [0, 1, 2], format="float32"), atol=1e-6)
        s = c.sample("tiny-gan", 4, seed=3, return_handles=True)
        assert s.images.shape == (4, 8, 8, 3) and len(s.handles) == 4
        frames = list(c.interpolate("tiny-gan", s.handles[0], s.handles[1], steps=3))
        assert len(frames) == 3 and frames[-1].summary is not None
        assert c.encode("tiny-gan", s.images).latents.shape == (4, 8)
    with grpc.insecure_channel(target) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.LatentServiceStub(ch).GetModel(pb.GetModelRequest(model="nope"), metadata=md, timeout=30)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in ei.value.details()
