"""Integration fixtures for the serving side: a tiny real model repository and one shared Serve app.

`tiny_repo` (session): a repository with hand-built, deterministic ONNX + TorchScript models that follow the
graph contract exactly (docs/architecture.md), so the service is tested on real files in seconds:
- `tiny-flow` v1 (flow): encoder z = Q x (Q orthogonal, so the decoder Q^T x is its exact inverse),
  class-Gaussian prior centred on per-class templates, logits = class log-likelihoods, logdet = 0.
- `tiny-gan` v1 and v2 (gan): decoder x = clamp(0.3 A z + T[label]); encoder = its least-squares inverse
  with a nearest-template class head. v2 has another random A, so the two versions decode differently.
- `tiny-vae` v1 (vae): like the gan, plus logvar.
- `tiny-probe` v1 (probe): nearest-template classifier + the `brightness` factor (mean pixel value).
Every generative model has a `brightness` knob (exact for these linear maps), 2 PCA directions and a
2-component GMM per class. Images are 3x8x8, classes square/ellipse/triangle.

`serve_app` (session): ray.init(num_cpus=2, no dashboard) + serve.start + serve.run(build_app(config)) on a
free port, metrics recorded into a session directory (`config.observability.metrics_dir`); waits for grpc.health.v1 SERVING, dumps Serve logs when a test failed, shuts everything down at
the end. The frontend under test comes from LATENTSERVE_TEST_FRONTEND:
- `native` (default, the default frontend): the ingress replica serves gRPC itself; Serve's gRPC proxy also
  runs, on another port (`ServeInfo.proxy_target`), so serve-frontend apps can be deployed next to it;
- `serve`: Ray Serve's gRPC proxy -> ingress -> model-server deployments;
- `direct` (or LATENTSERVE_TEST_DIRECT=1): colocate + Ray Serve direct ingress; tests that need a second
  app skip (a direct-ingress replica serves one app per port).
`redis_factory` / `redis_server` (session): real redis-server processes (redis_fixture.py), for any module.
`http_server` (session): a real `latentserve serve` subprocess (its own local Ray) on the tiny repository with an
API token: gRPC + the HTTP/JSON API and explorer page; shared by test_http.py and test_explorer.py (browser).
`http_open` (session): the HTTP app without a token on the session's Serve instance (`serve_app`).
`extra_app` deploys further apps (token/queues, real exported families, rollout, the other frontend) and
deletes them afterwards: native apps get their own port, serve-frontend apps are reached through the proxy
with `application` metadata (Serve's proxy routes requests without it only while exactly one app runs).
"""
from __future__ import annotations

import datetime as _dt
import glob
import importlib.util
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

def _redis_fixture_module():
    """redis_fixture.py, loaded by path once under the name test_redis.py uses (this folder is no package)."""
    name = "latentserve_tests_redis_fixture"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("redis_fixture.py"))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


# the real-redis-server fixtures (redis_fixture.py), for every test module of this folder
redis_factory, redis_server = _redis_fixture_module().redis_factory, _redis_fixture_module().redis_server

IMAGE = (3, 8, 8)
P = 3 * 8 * 8  # pixels per image
CLASSES = ["square", "ellipse", "triangle"]
FACTORS = [{"name": "brightness", "low": -0.5, "high": 0.5, "unit": "mean pixel value", "doc": "mean of the [-1,1] image"}]
APP_NAME = "latentserve-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- tiny repository
def _templates(sign: float = 1.0) -> np.ndarray:
    """(C, P) zero-mean class patterns (so brightness is carried by the latent alone)."""
    yy, xx = np.mgrid[0:8, 0:8]
    pats = [(-1.0) ** (yy // 2 + xx // 2), (-1.0) ** yy, (-1.0) ** (xx // 4)]  # three distinct checkerboards
    out = np.stack([np.broadcast_to(p, (3, 8, 8)).reshape(-1) * 0.5 for p in pats]).astype(np.float32)
    out -= out.mean(axis=1, keepdims=True)
    return out * sign


def _build_modules(family: str, d: int, seed: int, sign: float):
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)
    T = torch.tensor(_templates(sign))  # (C, P)

    if family == "flow":
        q, _ = np.linalg.qr(rng.standard_normal((P, P)))
        Q = torch.tensor(q.astype(np.float32))  # (P, P) orthogonal
        mu = (T @ Q.T)  # class means in z: encoder(template)
        logstd = torch.full_like(mu, float(np.log(0.1)))

        class Enc(nn.Module):
            def forward(self, image):  # (B,3,8,8) -> latent (B,P), logits (B,C), logdet (B,)
                z = image.reshape(image.shape[0], -1) @ Q.T
                ll = -0.5 * (((z[:, None, :] - mu[None]) / torch.exp(logstd)[None]) ** 2).sum(-1) - logstd.sum(-1)[None]
                return z, ll, torch.zeros(image.shape[0])

        class Dec(nn.Module):
            def forward(self, latent, label):  # (B,P), (B,) -> (B,3,8,8); label unused by the exact inverse
                x = latent @ Q + 0.0 * label.to(latent.dtype)[:, None]
                return x.reshape(-1, *IMAGE)

        space = dict(prior_mean=mu.numpy(), prior_logstd=logstd.numpy())
        knob_w = (Q @ torch.full((P,), 1.0 / P)).numpy()  # brightness = mean(Q^T z) = (Q 1/P) . z
        return Enc().eval(), Dec().eval(), space, knob_w

    A = torch.tensor(rng.standard_normal((P, d)).astype(np.float32)) / np.sqrt(d)  # (P, D)
    A_pinv = torch.linalg.pinv(0.3 * A)  # (D, P)

    class GEnc(nn.Module):
        def forward(self, image):
            x = image.reshape(image.shape[0], -1)
            logits = -4.0 * ((x[:, None, :] - T[None]) ** 2).mean(-1)  # (B, C)
            t = torch.softmax(logits * 50.0, dim=1) @ T  # ~ template of the predicted class
            z = (x - t) @ A_pinv.T
            if family == "vae":
                return z, logits, torch.full_like(z, -4.0)
            return z, logits

    class GDec(nn.Module):
        def forward(self, latent, label):
            x = torch.clamp(0.3 * latent @ A.T + T[label], -1.0, 1.0)
            return x.reshape(-1, *IMAGE)

    knob_w = (0.3 * A.T @ torch.full((P,), 1.0 / P)).numpy()
    return GEnc().eval(), GDec().eval(), {}, knob_w


def _export(module, args, path_onnx: Path, path_pt: Path, inputs: list[str], outputs: list[str]) -> None:
    import torch

    torch.onnx.export(module, args, str(path_onnx), input_names=inputs, output_names=outputs,
                      dynamic_axes={n: {0: "batch"} for n in inputs + outputs}, opset_version=17, dynamo=False)
    torch.jit.trace(module, args, check_trace=False).save(str(path_pt))


def _spec(shape) -> list:
    return ["float32", ["batch", *shape]]


def _write_version(root: Path, name: str, version: int, family: str, d: int, seed: int, sign: float = 1.0,
                   metrics: dict | None = None) -> None:
    import onnx
    import onnxruntime
    import torch

    import latentserve
    from latentserve.models.latent import Knob, LatentSpace
    from latentserve.models.manifest import file_entries, write_manifest

    out = root / name / str(version)
    out.mkdir(parents=True)
    c = len(CLASSES)
    meta_graphs: dict = {}
    if family == "probe":
        T = torch.tensor(_templates())

        class Probe(torch.nn.Module):
            def forward(self, image):
                x = image.reshape(image.shape[0], -1)
                logits = -4.0 * ((x[:, None, :] - T[None]) ** 2).mean(-1)
                return logits, x.mean(1, keepdim=True), x

        _export(Probe().eval(), (torch.zeros(2, *IMAGE),), out / "probe.onnx", out / "probe.pt", ["image"],
                ["logits", "factors", "features"])
        meta_graphs["probe"] = {"onnx": "probe.onnx", "torchscript": "probe.pt", "inputs": {"image": _spec(IMAGE)},
                                "outputs": {"logits": _spec([c]), "factors": _spec([1]), "features": _spec([P])}}
        space = None
    else:
        enc, dec, prior, knob_w = _build_modules(family, d, seed, sign)
        extra = {"vae": ["logvar"], "flow": ["logdet"]}.get(family, [])
        _export(enc, (torch.zeros(2, *IMAGE),), out / "encoder.onnx", out / "encoder.pt", ["image"],
                ["latent", "logits", *extra])
        _export(dec, (torch.zeros(2, d), torch.zeros(2, dtype=torch.int64)), out / "decoder.onnx", out / "decoder.pt",
                ["latent", "label"], ["image"])
        enc_out = {"latent": _spec([d]), "logits": _spec([c])}
        if family == "vae":
            enc_out["logvar"] = _spec([d])
        if family == "flow":
            enc_out["logdet"] = ["float32", ["batch"]]
        meta_graphs["encoder"] = {"onnx": "encoder.onnx", "torchscript": "encoder.pt",
                                  "inputs": {"image": _spec(IMAGE)}, "outputs": enc_out}
        meta_graphs["decoder"] = {"onnx": "decoder.onnx", "torchscript": "decoder.pt",
                                  "inputs": {"latent": _spec([d]), "label": ["int64", ["batch"]]},
                                  "outputs": {"image": _spec(IMAGE)}}
        rng = np.random.default_rng(seed + 1)
        comps, _ = np.linalg.qr(rng.standard_normal((d, 2)))
        if family == "flow":
            means = np.repeat(prior["prior_mean"][:, None, :], 2, axis=1)
            gvars = np.full((c, 2, d), 0.01, np.float32)
        else:
            means = np.zeros((c, 2, d), np.float32)
            means[:, 1] += 0.5
            gvars = np.ones((c, 2, d), np.float32)
        space = LatentSpace(
            prior_type="class_gaussian" if family == "flow" else "standard_normal", latent_dim=d, n_classes=c,
            knobs={"brightness": Knob(name="brightness", weight=knob_w, bias=0.0, r2=1.0, low=-0.5, high=0.5,
                                      unit="mean pixel value", doc="mean of the [-1,1] image")},
            pca_components=comps.T, pca_mean=np.zeros(d), pca_std=np.ones(2), pca_explained=np.array([0.2, 0.1]),
            gmm_weights=np.full((c, 2), 0.5), gmm_means=means, gmm_vars=gvars, **prior,
        )
        space.save(out / "latent_space.npz")
    manifest = {
        "schema_version": 1, "name": name, "version": version, "family": family,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "versions": {"latentserve": latentserve.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "opset": 17},
        "image_shape": list(IMAGE), "value_range": [-1, 1], "class_names": CLASSES, "factors": FACTORS,
        "graphs": meta_graphs, "files": file_entries(out),
        "parity": {g: {"onnx_max_abs": 0.0, "torchscript_max_abs": 0.0} for g in meta_graphs},
        "training": {"family": family, "family_config": {}, "train_config": {}, "data": {"name": "tiny"},
                     "steps": 0, "seconds": 0.0, "final_losses": {}},
        "metrics": {"tiny": {"seed": float(seed)}, **(metrics or {})},
    }
    if space is not None:
        meta = space.meta()
        manifest.update(latent_shape=[d], prior=meta["prior"], knobs=meta["knobs"], gmm=meta["gmm"],
                        probe="tiny-probe", latent_space="latent_space.npz")
        if family == "flow":
            manifest["prior"]["sample_temperature"] = 1.0
    write_manifest(out, manifest)


def build_tiny_repository(root: Path) -> Path:
    """Write the tiny repository described in the module docstring under `root`; returns `root`."""
    import torch

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    _write_version(root, "tiny-flow", 1, "flow", P, seed=1)
    # v1 (served only when pinned) carries what evaluation records for a model whose label check helps one
    # source: checked by default from its latent GMM, not from its prior
    _write_version(root, "tiny-gan", 1, "gan", 8, seed=2,
                   metrics={"class_check_defaults": {"prior": 0.0, "latent_gmm": 0.5}, "class_check_default": 0.0})
    _write_version(root, "tiny-gan", 2, "gan", 8, seed=5)
    _write_version(root, "tiny-vae", 1, "vae", 8, seed=3)
    _write_version(root, "tiny-probe", 1, "probe", 0, seed=4)
    return root


def train_and_export(root: Path, runs: Path, name: str, family: str, data: str, data_args: dict, family_args: dict,
                     batch_size: int = 16, **export_kw) -> None:
    """A tiny real training run (3 steps, one thread, CPU) of `family` on `data` in `runs`, exported as `name` into
    the repository `root` (export_run's further options in `export_kw`): real exported families for the tests."""
    import torch

    from latentserve.models.data import load_dataset
    from latentserve.models.export import export_run
    from latentserve.models.train import TrainConfig, train

    torch.set_num_threads(1)
    dataset = load_dataset(data, **data_args)
    cfg = TrainConfig(family=family, data=data, data_args=dict(data_args), steps=3, batch_size=batch_size,
                      out=str(runs / name), ckpt_every=3, eval_every=3, grid_every=10**6, threads=1, device="cpu",
                      family_args=family_args, eval_size=16)
    export_run(train(cfg, progress=False, dataset=dataset), name, repo_root=root, data=dataset, **export_kw)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return build_tiny_repository(tmp_path_factory.mktemp("repo") / "repository")


# ---------------------------------------------------------------------------------------- the Serve app
@dataclass
class ServeInfo:
    target: str  # host:port the app's gRPC frontend listens on
    config: object  # ServeConfig
    app_name: str
    proxy_target: str | None = None  # Serve's gRPC proxy (None when the session runs none)
    http_port: int = 0  # Serve's HTTP proxy

    @property
    def frontend(self) -> str:
        return "direct" if self.config.frontend.direct_ingress else self.config.frontend.grpc_frontend


def wait_serving(target: str, timeout_s: float = 60.0, metadata=None, credentials=None) -> None:
    """Poll grpc.health.v1 Check until SERVING (raises TimeoutError with the last error); `credentials`: a TLS
    server's (grpc.ssl_channel_credentials)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline, last = time.time() + timeout_s, None
    with (grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.time() < deadline:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=5, metadata=metadata)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = f"status {r.status}"
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.3)
    raise TimeoutError(f"{target} not SERVING after {timeout_s}s (last: {last})")


@pytest.fixture(scope="session")
def probe(tiny_repo):
    """The tiny repository's probe on ONNX Runtime (tests score served images with it): uint8 (N,H,W,3) -> (class (N,), brightness (N,))."""
    import onnxruntime as ort

    from latentserve.models.data.base import to_model

    sess = ort.InferenceSession(str(tiny_repo / "tiny-probe" / "1" / "probe.onnx"), providers=["CPUExecutionProvider"])

    def run(images_u8):
        logits, factors, _ = sess.run(None, {"image": to_model(np.asarray(images_u8))})
        return logits.argmax(1), factors[:, 0]

    return run


@pytest.fixture(name="train_and_export", scope="session")
def train_and_export_fixture():
    """`train_and_export(root, runs, name, family, data, data_args, family_args, batch_size=16, **export_kw)` for
    tests (conftest is not importable as a module)."""
    return train_and_export


@pytest.fixture(name="wait_serving")
def wait_serving_fixture():
    """`wait_serving(target, timeout_s=60, metadata=None)` for tests (conftest is not importable as a module)."""
    return wait_serving


def dump_serve_logs(max_chars: int = 6000) -> None:
    """Print the tail of every Serve log file of the current Ray session (called when a test failed)."""
    try:
        import ray

        session_dir = ray._private.worker._global_node.get_session_dir_path()
    except Exception:  # noqa: BLE001 - best effort diagnostics
        session_dir = "/tmp/ray/session_latest"
    for path in sorted(glob.glob(os.path.join(session_dir, "logs", "serve", "*.log"))):
        text = Path(path).read_text(errors="replace")
        print(f"\n===== {path} (last {max_chars} chars) =====\n{text[-max_chars:]}")


@pytest.fixture(scope="session")
def serve_app(tiny_repo, request, tmp_path_factory):
    import ray
    from ray import serve

    from latentserve.services.app import build_app, grpc_options, ray_env
    from latentserve.services.config import load_config

    frontend = os.environ.get("LATENTSERVE_TEST_FRONTEND", "native")
    if os.environ.get("LATENTSERVE_TEST_DIRECT") == "1":
        frontend = "direct"
    if frontend not in ("native", "serve", "direct"):
        raise ValueError(f"LATENTSERVE_TEST_FRONTEND={frontend!r}: use native, serve or direct")
    direct = frontend == "direct"
    port = free_port()
    config = load_config({
        # Fractional CPUs: 4 replicas fit in 1 of the 2 CPUs, leaving room for the tests' extra apps.
        "repository": str(tiny_repo), "grpc_port": port, "max_batch_size": 16, "batch_wait_timeout_s": 0.02,
        "max_images_per_request": 64, "max_interpolation_steps": 16, "num_cpus": 0.25, "ingress_num_cpus": 0.25,
        # a cap high enough that a geodesic at the cap outlives any test deadline (cancellation tests)
        "max_geodesic_iterations": 20_000, "latent_ops_max_request_work": 16 * 20_000,
        "latent_ops_max_request_rows": 32,  # below max_images_per_request: test_bad_input sends one row over
        "app_name": APP_NAME, "grpc_frontend": "native" if frontend == "native" else "serve",
        "colocate": direct, "direct_ingress": direct, "proxy_grpc_port": free_port() if direct else 0,
        # every replica process records its metrics here (services/observability/metrics.py); tests read it directly
        # (observability.exporter.snapshot) or through an exporter + Prometheus (test_metrics.py)
        "metrics_dir": str(tmp_path_factory.mktemp("metrics")),
    }, use_env=False)
    # Serve's gRPC proxy: the app's own port for the serve frontend; for native its own port, so that
    # serve-frontend apps can run next to the native one.
    proxy_config = config if frontend != "native" else config.with_overrides(grpc_frontend="serve", grpc_port=free_port())
    saved_env = dict(os.environ)
    os.environ.update(ray_env(config))  # Ray's processes inherit the driver's environment
    # Serve's controller kills a proxy that does not answer its readiness check within 5 s, three times in a
    # row, and serve.start then fails: seen on an overloaded 2-core host (load 10-20). Startup only; no
    # request-path timeout changes.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
    failed_before = request.session.testsfailed
    try:
        http_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port}, grpc_options=grpc_options(proxy_config))
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        wait_serving(f"127.0.0.1:{port}")
        proxy = None if direct else f"127.0.0.1:{proxy_config.effective_proxy_grpc_port}"
        yield ServeInfo(target=f"127.0.0.1:{port}", config=config, app_name=APP_NAME, proxy_target=proxy,
                        http_port=http_port)
    except BaseException:
        dump_serve_logs()
        raise
    finally:
        if request.session.testsfailed > failed_before:
            dump_serve_logs()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            os.environ.clear()
            os.environ.update(saved_env)


@pytest.fixture
def cli(serve_app, capsys):
    """run(*argv) -> (exit code, stdout, stderr) of a `latentserve` command (in-process, through
    `latentserve.cli.main`) against the session app."""
    from latentserve.cli import main

    def run(*argv: str):
        capsys.readouterr()
        rc = main([*argv, "-t", serve_app.target, "--timeout", "60"])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


@pytest.fixture
def extra_app(serve_app):
    """`deploy(name, frontend=None, credentials=None, **overrides) -> (target, metadata, config)`: another app on the session's
    Serve instance, from the session config with `overrides` (frontend: "native" | "serve", default the
    session's). Native apps listen on a port of their own; serve-frontend apps are reached through Serve's
    gRPC proxy with `application` metadata. Every app deployed is deleted when the test ends, then the
    session app is checked to answer again."""
    from ray import serve

    from latentserve.services.app import build_app

    if serve_app.frontend == "direct":
        pytest.skip("extra apps need the native frontend or Serve's proxy (direct ingress serves one app per port)")
    deployed: list[str] = []

    def deploy(name: str, frontend: str | None = None, credentials=None, **overrides):
        frontend = frontend or serve_app.config.frontend.grpc_frontend
        native = frontend == "native"
        if not native and serve_app.proxy_target is None:
            pytest.skip("this session runs no Serve gRPC proxy")
        port = free_port() if native else int(serve_app.proxy_target.rsplit(":", 1)[1])
        cfg = serve_app.config.with_overrides(app_name=name, grpc_frontend=frontend, grpc_port=port,
                                              direct_ingress=False, proxy_grpc_port=0, **overrides)
        serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
        deployed.append(name)
        target = f"127.0.0.1:{port}" if native else serve_app.proxy_target
        metadata = () if native else (("application", name),)
        wait_serving(target, metadata=metadata or None, credentials=credentials)
        return target, metadata, cfg

    try:
        yield deploy
    finally:
        for name in deployed:
            try:
                serve.delete(name)
            except Exception:  # noqa: BLE001 - best effort; the session teardown shuts Serve down anyway
                pass
        if deployed:
            wait_serving(serve_app.target)  # with one app left, the proxy routes requests without metadata again


@dataclass
class RepositoryApp:
    """An app serving every model of a repository (`repository_app`): how the client and the CLI reach it."""

    target: str
    app_name: str | None  # the `application` metadata a serve-frontend app needs (None: native, its own port)

    def client(self, timeout: float = 120):
        from latentserve.client import LatentClient

        return LatentClient(self.target, timeout=timeout, app_name=self.app_name)

    def cli_args(self, timeout: float = 120) -> list[str]:
        return ["--target", self.target, "--timeout", str(timeout)] + (["--app", self.app_name] if self.app_name else [])


@pytest.fixture
def repository_app(extra_app):
    """`deploy(name, repository, **overrides) -> RepositoryApp`: every model of `repository` (real exported runs) as
    an extra app, co-located with small CPU shares so it fits beside the session app."""

    def deploy(name: str, repository, **overrides) -> RepositoryApp:
        settings = dict(models=[], colocate=True, num_cpus=0.25, ingress_num_cpus=0.25, **overrides)
        target, metadata, _ = extra_app(name, repository=str(repository), **settings)
        return RepositoryApp(target, name if metadata else None)

    return deploy


# ---------------------------------------------------------------------------------------- the HTTP door
@dataclass
class HttpServer:
    url: str  # http://127.0.0.1:PORT/ (the page; the API under api/v1/)
    grpc_target: str
    token: str  # "" = none
    log: Path

    def headers(self, **extra) -> dict:
        return {**({"Authorization": f"Bearer {self.token}"} if self.token else {}), **extra}


def _wait_http(url: str, proc=None, timeout_s: float = 240.0) -> None:
    import urllib.request

    deadline, last = time.time() + timeout_s, None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"latentserve serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} not serving after {timeout_s}s (last: {last})")


@pytest.fixture(scope="session")
def http_server(tiny_repo, tmp_path_factory, request):
    """`latentserve serve` as a user runs it (a subprocess with its own local Ray), token on, small CPU
    reservations so both ingress deployments fit on 2 cores. Its output is printed when a test failed."""
    import signal
    import subprocess

    log = tmp_path_factory.mktemp("http-server") / "serve.log"
    grpc_port, http_port, token = free_port(), free_port(), "explorer-t0ken"
    env = {**os.environ, "LATENTSERVE_API_TOKEN": token, "LATENTSERVE_NUM_CPUS": "0.25",
           "LATENTSERVE_INGRESS_NUM_CPUS": "0.25", "LATENTSERVE_MAX_INTERPOLATION_STEPS": "16",
           "LATENTSERVE_MAX_IMAGES_PER_REQUEST": "64", "LATENTSERVE_MAX_IMAGE_BYTES": "4096",
           "LATENTSERVE_HTTP_MAX_BODY_BYTES": str(1 << 20), "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
           "PYTHONWARNINGS": "ignore"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "latentserve", "serve", "--repo", str(tiny_repo),
                                 "--port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", "0",
                                 "--ray-cpus", "2"], stdout=out, stderr=subprocess.STDOUT, env=env)
    failed_before = request.session.testsfailed
    server = HttpServer(url=f"http://127.0.0.1:{http_port}/", grpc_target=f"127.0.0.1:{grpc_port}", token=token,
                        log=log)
    try:
        _wait_http(server.url, proc)
        wait_serving(server.grpc_target, timeout_s=120)
        yield server
    except BaseException:
        print(log.read_text(errors="replace")[-6000:])
        raise
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n===== latentserve serve output ({log}) =====\n" + log.read_text(errors="replace")[-6000:])
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def http_open(serve_app):
    """The HTTP app without a token on the session's Serve instance, behind its HTTP proxy: native = the HTTP
    application at /open/ (services.app.build_http_app), serve = the session's own ingress at /."""
    from ray import serve

    from latentserve.services.app import build_http_app

    base = f"http://127.0.0.1:{serve_app.http_port}/"
    app = build_http_app(serve_app.config)
    if app is not None:
        serve.run(app, name=f"{APP_NAME}-http", route_prefix="/open")
        base += "open/"
    _wait_http(base, timeout_s=120)
    yield HttpServer(url=base, grpc_target=serve_app.target, token="", log=Path("/dev/null"))
