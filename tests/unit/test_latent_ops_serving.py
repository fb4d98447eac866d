"""Serving side of the gradient latent ops without servers: option checks, availability, config ranges,
and the engine batching / cancelling jobs on an event loop (tiny TorchScript repository). That plain serving
never imports torch: tests/integration/test_import_boundaries.py."""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from latentserve.errors import UnsupportedError, ValidationError
from latentserve.services.core import latent_ops as lops
from latentserve.services.core import latent_ops_settings as lreq
from latentserve.services.core.calls import GeodesicOptions
from latentserve.services.config import load_config
from latentserve.v1 import latent_pb2 as pb


def _config(**kw):
    return load_config(kw, use_env=False)


def test_availability_names_the_switch_and_the_extra(monkeypatch):
    assert lops.availability_problem(_config()) == ""
    assert "latent_ops=false" in lops.availability_problem(_config(latent_ops=False))
    monkeypatch.setattr(lops, "torch_installed", lambda: False)
    problem = lops.availability_problem(_config())
    assert lops.INSTALL_COMMAND in problem and "PyTorch" in problem
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"`{lops.INSTALL_COMMAND}`" in readme  # the README's install line is the server's
    with pytest.raises(UnsupportedError, match=r"method GEODESIC: .*latent-ops"):
        lreq.require_available(_config(), "method GEODESIC")
    with pytest.raises(UnsupportedError, match="latent-ops"):
        lops.LatentOpsEngine(_config(), "m")


@pytest.mark.parametrize("field,value", [
    ("max_geodesic_iterations", 0), ("geodesic_iterations", 501), ("guidance_steps", 0),
    ("geodesic_learning_rate", 0.0), ("guidance_step_size", 2.0), ("guidance_noise", -1.0),
    ("guidance_class_weight", 5000.0), ("latent_ops_threads", 0), ("latent_ops_max_batch_rows", 0),
    ("refine_learning_rate", 1.5),
])
def test_config_range_checks(field, value):
    with pytest.raises(ValidationError, match=field):
        _config(**{field: value})


def test_geodesic_settings_defaults_caps_and_init():
    cfg = _config(max_geodesic_iterations=50, geodesic_iterations=20)
    s = lreq.geodesic_settings(cfg, GeodesicOptions())
    assert s == {"iterations": 20, "learning_rate": cfg.latent_ops.geodesic_learning_rate, "space": "pixel", "init": "lerp"}
    s = lreq.geodesic_settings(cfg, GeodesicOptions(iterations=50, learning_rate=0.1, space="probe",
                                                       init="slerp"))
    assert s == {"iterations": 50, "learning_rate": pytest.approx(0.1), "space": "probe", "init": "slerp"}
    for opts, fragment in [(GeodesicOptions(iterations=51), "Limits.max_geodesic_iterations"),
                           (GeodesicOptions(iterations=-1), "geodesic.iterations"),
                           (GeodesicOptions(learning_rate=-0.1), "must be > 0"),
                           (GeodesicOptions(learning_rate=float("nan")), "finite"),
                           (GeodesicOptions(space="latent"), "pixel, probe"),
                           (GeodesicOptions(init="geodesic"), "LERP or SLERP")]:
        with pytest.raises(ValidationError, match=fragment):
            lreq.geodesic_settings(cfg, opts)
    job = lreq.geodesic_job(1, lreq.geodesic_settings(cfg, GeodesicOptions(init="slerp")),
                            np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.zeros(5, np.int64), 0.0)
    assert job.path.shape == (5, 2) and job.rows == 3
    np.testing.assert_allclose(np.linalg.norm(job.path, axis=1), 1.0, atol=1e-6)  # slerp start
    np.testing.assert_allclose(job.reference[2], [0.5, 0.5])  # the lerp it is compared with


def test_guidance_settings_off_switches_and_factor_targets():
    cfg = _config()
    s = lreq.guidance_settings(cfg, pb.GuidanceOptions(class_weight=-1, noise=-1))
    assert s["class_weight"] == 0 and s["noise"] == 0 and s["steps"] == cfg.latent_ops.guidance_steps
    with pytest.raises(ValidationError, match="guidance.step_size"):
        lreq.guidance_settings(cfg, pb.GuidanceOptions(step_size=5))
    with pytest.raises(ValidationError, match="Limits.max_guidance_steps"):
        lreq.guidance_settings(cfg, pb.GuidanceOptions(steps=cfg.latent_ops.max_guidance_steps + 1))
    factors = [{"name": "scale", "low": 0.2, "high": 0.8}, {"name": "hue", "low": 0.0, "high": 1.0}]
    t, r = lreq.factor_targets({"scale": 0.5}, factors, ["scale", "x"], "m")
    assert t == {"scale": 0.5} and r == {"scale": pytest.approx(0.6)}
    with pytest.raises(ValidationError, match="does not read 'hue'"):
        lreq.factor_targets({"hue": 0.5}, factors, ["scale"], "m")
    with pytest.raises(ValidationError, match="outside the factor range"):
        lreq.factor_targets({"scale": 0.9}, factors, ["scale"], "m")


def test_refine_settings():
    cfg = _config(max_refine_steps=10)
    assert lreq.refine_settings(cfg, "gan", 10, pb.RefineOptions(feature_weight=0.5)) == {
        "steps": 10, "learning_rate": cfg.latent_ops.refine_learning_rate, "feature_weight": 0.5}
    with pytest.raises(ValidationError, match="already exact"):
        lreq.refine_settings(cfg, "flow", 3, pb.RefineOptions())
    with pytest.raises(ValidationError, match="Limits.max_refine_steps"):
        lreq.refine_settings(cfg, "vae", 11, pb.RefineOptions())
    with pytest.raises(ValidationError, match="feature_weight"):
        lreq.refine_settings(cfg, "gan", 3, pb.RefineOptions(feature_weight=-1))


def test_path_summary_figures():
    s = lreq.path_summary(np.array([1.0, 1.0, 2.0]), np.array([2.0, 2.0]), "probe", 7)
    assert s["path_length"] == 4.0 and s["lerp_path_length"] == 4.0 and s["lerp_evenness_cv"] == 0.0
    assert s["evenness_cv"] == pytest.approx(np.std([1, 1, 2]) / (4 / 3)) and s["space"] == "probe"


# ------------------------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    try:
        from conftest import _write_version  # the integration tests' tiny TorchScript + ONNX models
    finally:
        sys.path.pop(0)
    root = tmp_path_factory.mktemp("repo") / "repository"
    _write_version(root, "tiny-gan", 1, "gan", 8, seed=2)
    _write_version(root, "tiny-probe", 1, "probe", 0, seed=4)
    return root


def _geodesic(seed: int, iterations: int, steps: int = 6, space: str = "pixel") -> lops.GeodesicJob:
    rng = np.random.default_rng(seed)
    ends = rng.standard_normal((2, 8)).astype(np.float32)
    settings = {"iterations": iterations, "learning_rate": 0.05, "space": space, "init": "lerp"}
    return lreq.geodesic_job(1, settings, ends, np.zeros(steps, np.int64), 0.0)


def test_engine_batches_concurrent_jobs_and_drops_cancelled_ones(tiny_repo):
    # a budget big enough for the long job this test cancels
    engine = lops.LatentOpsEngine(_config(repository=str(tiny_repo), latent_ops_max_request_work=1 << 30), "tiny-gan")

    async def run():
        jobs = [_geodesic(s, 30) for s in range(3)]
        results = await asyncio.gather(*(engine.run(j) for j in jobs))
        assert all(r.iterations == 30 and r.latents.shape == (6, 8) for r in results)
        async def progressed(n: int) -> None:  # until the engine ran n more passes (the machine may be slow)
            target = engine.stats()["ops"]["geodesic"]["steps"] + n
            for _ in range(3000):
                if engine.stats()["ops"]["geodesic"]["steps"] >= target:
                    return
                await asyncio.sleep(0.01)

        long = asyncio.ensure_future(engine.run(_geodesic(9, 100_000)))
        await progressed(3)
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        for _ in range(100):  # the driver notices at its next tick
            if engine.stats()["active_jobs"] == 0:
                break
            await asyncio.sleep(0.02)
        expired = _geodesic(10, 100_000)
        expired.deadline = time.time() + 1.0
        with pytest.raises(Exception, match="deadline passed"):
            await engine.run(expired)

    try:
        asyncio.run(run())
        st = engine.stats()
        geo = st["ops"]["geodesic"]
        assert geo["max_jobs_per_step"] == 3 and geo["completed"] == 3
        assert geo["cancelled"] == 1 and geo["deadline"] == 1 and st["active_jobs"] == 0
        stopped = {r["outcome"]: r for r in st["recent"] if r["outcome"] in ("cancelled", "deadline")}
        assert 3 <= stopped["cancelled"]["iterations"] < stopped["cancelled"]["requested"]
        assert stopped["deadline"]["iterations"] < stopped["deadline"]["requested"]
    finally:
        engine.close()


def test_engine_row_budget_splits_batches(tiny_repo):
    engine = lops.LatentOpsEngine(_config(repository=str(tiny_repo), latent_ops_max_batch_rows=4), "tiny-gan")

    async def run():
        await asyncio.gather(*(engine.run(_geodesic(s, 5)) for s in range(3)))  # 4 inner rows each

    try:
        asyncio.run(run())
        assert engine.stats()["ops"]["geodesic"]["max_rows_per_step"] == 4
    finally:
        engine.close()


def test_engine_reports_a_missing_probe(tiny_repo, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo / "tiny-gan", repo / "tiny-gan")  # without tiny-probe
    engine = lops.LatentOpsEngine(_config(repository=str(repo)), "tiny-gan")
    try:
        with pytest.raises(ValidationError, match="geodesic interpolation in probe space needs the model's probe.*"
                                                  "not in the repository"):
            asyncio.run(engine.run(_geodesic(0, 3, space="probe")))
        assert asyncio.run(engine.run(_geodesic(0, 3))).iterations == 3  # pixel space needs no probe
    finally:
        engine.close()


def test_gradient_budget_refuses_by_rows_and_work_naming_the_field(tiny_repo):
    from latentserve.errors import OverloadedError

    cfg = _config(repository=str(tiny_repo), latent_ops_max_request_rows=8, latent_ops_max_request_work=100,
                  latent_ops_max_process_rows=8)
    engine = lops.LatentOpsEngine(cfg, "tiny-gan")
    guided = lops.GuidedJob(version=1, z0=np.zeros((9, 8), np.float32), labels=np.zeros(9, np.int64), steps=1,
                            step_size=0.1, class_weight=1.0, noise=0.0)
    with pytest.raises(OverloadedError, match=r"^n: 9 rows is over .* 8 rows per gradient request"):
        asyncio.run(engine.run(guided))
    with pytest.raises(OverloadedError, match=r"^steps x geodesic.iterations: 4 rows x 30 iterations = 120 .* 100"):
        asyncio.run(engine.run(_geodesic(0, 30)))

    engine.close()
    engine = lops.LatentOpsEngine(cfg.with_overrides(latent_ops_max_request_work=1 << 30), "tiny-gan")

    async def busy():  # a running job holds its rows: a second one over the process budget is refused
        long = asyncio.ensure_future(engine.run(_geodesic(1, 100_000, steps=10)))  # 8 rows
        for _ in range(300):
            if lops.PROCESS_ROWS.rows:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError, match=r"^steps: .* memory budget"):
            await engine.run(_geodesic(2, 5))
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        assert lops.PROCESS_ROWS.rows == 0  # released on cancel too

    asyncio.run(busy())
    engine.close()
