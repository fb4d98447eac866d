"""Augmentation jobs over real gRPC (services/augment_*.py, `latentserve augment`): the session `serve_app`
(Ray Serve, tiny repository of conftest.py: tiny-gan v2 by default, 3x8x8 images, classes square / ellipse /
triangle, a `brightness` knob in [-0.5, 0.5]) and, for the tests that kill or pause a server, a standalone
serving process (services/frontends/grpc/native.py ServingProcess: the process a native replica runs) on its own port.

- an uninterrupted `augment` run (the reference): ImageFolder + labels.csv, class counts, factor values that
  the images really have, handles that decode to the written images;
- the client SIGKILLed mid-run, then the same command again -> byte-identical to the reference;
- the server SIGKILLed mid-stream and started again -> the running command reconnects and finishes,
  byte-identical to the reference, and the handles issued before the restart still resolve (Redis);
- backpressure: a consumer that stops reading stops generation (bounded server-side work);
- AugmentDataset with 2 DataLoader workers -> every image exactly once;
- invalid specs and a folder holding another job -> one-line errors naming the field, before any work.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from latentserve.cli import main

SPEC = {"model": "tiny-gan", "class_counts": {"square": 1200, "ellipse": 1000, "triangle": 800},
        "factors": {"brightness": {"range": [-0.3, 0.3]}}, "seed": 11, "shard_size": 100}
COUNT = 3000
LATENTSERVE = str(Path(sys.executable).with_name("latentserve"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_spec(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def committed_shards(out: Path) -> int:
    return len(list((out / ".augment" / "shards").glob("*.csv")))


def start_cli(spec: Path, out: Path, target: str) -> subprocess.Popen:
    return subprocess.Popen([LATENTSERVE, "augment", "--spec", str(spec), "--out", str(out), "-t", target,
                             "--no-progress", "--retry-timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_shards(out: Path, n: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    t_end = time.monotonic() + timeout_s
    while committed_shards(out) < n:
        assert proc.poll() is None, f"augment exited early: {proc.communicate()}"
        assert time.monotonic() < t_end, f"fewer than {n} shards committed after {timeout_s}s"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(serve_app, tmp_path_factory) -> Path:
    """An uninterrupted run of SPEC."""
    d = tmp_path_factory.mktemp("augment-ref")
    rc = main(["augment", "--spec", str(write_spec(d / "spec.yaml")), "--out", str(d / "out"), "--no-progress",
               "-t", serve_app.target])
    assert rc == 0
    return d / "out"


@pytest.fixture(scope="module")
def standalone(serve_app, tiny_repo, redis_server):
    """start() -> a serving process (the one a native replica runs) on a fixed port of its own, serving
    tiny-gan like the session app, handles in a real Redis (so they outlive the process); the one started
    before is stopped first (SO_REUSEPORT would let both listen), the last one at the end."""
    from latentserve.services.config import load_config
    from latentserve.services.frontends.grpc.native import ServingProcess

    config = load_config({"repository": str(tiny_repo), "grpc_port": _free_port(), "max_batch_size": 16,
                          "max_images_per_request": 64, "redis_url": redis_server.url(db=5),
                          "redis_key_prefix": "augment-test:"}, use_env=False)
    started: list = []

    def start() -> ServingProcess:
        while started:
            started.pop().stop(1.0)  # returns at once for one that was killed
        proc = ServingProcess(config, {"tiny-gan": 2})
        proc.start()
        started.append(proc)
        return proc

    start.target = f"127.0.0.1:{config.frontend.grpc_port}"
    yield start
    for proc in started:
        proc.stop(1.0)


# ------------------------------------------------------------------------------------------------ the job
def test_augment_writes_a_labelled_imagefolder(reference, serve_app):
    from latentserve.client import LatentClient, decode_image_bytes

    manifest = json.loads((reference / "augment.json").read_text())
    assert manifest["complete"] and manifest["version"] == 2 and manifest["count"] == COUNT
    assert not (reference / ".augment").exists()
    for name, n in SPEC["class_counts"].items():
        assert len(list((reference / name).glob("*.png"))) == n
    lines = (reference / "labels.csv").read_text().splitlines()
    assert lines[0] == "path,index,class,label,brightness,seed,handle,model,version,class_confidence"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[1]) for r in rows] == list(range(COUNT))
    # tiny-gan has no evaluated class head, so the label check is off by default: pinned off, no confidences
    assert manifest["class_check"] == -1.0
    assert all(r[0] == f"{r[2]}/{int(r[1]):06d}.png" and r[7:] == ["tiny-gan", "2", ""] for r in rows)
    brightness = np.array([float(r[4]) for r in rows])
    assert -0.3 <= brightness.min() and brightness.max() <= 0.3 and brightness.std() > 0.1
    # the knob is linear on the tiny models (up to the decoder's clamp): the images' mean pixel follows the
    # requested brightness
    measured = [(decode_image_bytes((reference / r[0]).read_bytes()) / 127.5 - 1.0).mean() for r in rows[::10]]
    assert np.corrcoef(measured, brightness[::10])[0, 1] > 0.9
    with LatentClient(serve_app.target) as client:  # handles decode to the written images
        for r in rows[:: COUNT // 12]:
            img = decode_image_bytes((reference / r[0]).read_bytes())
            np.testing.assert_array_equal(client.decode("tiny-gan", handles=[r[6]])[0], img)


def test_resume_after_the_client_is_killed_is_byte_identical(reference, serve_app, tmp_path, cli):
    out = tmp_path / "out"
    spec = write_spec(tmp_path / "spec.yaml")
    proc = start_cli(spec, out, serve_app.target)
    try:
        wait_for_shards(out, 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert not (out / "labels.csv").exists() and committed_shards(out) < COUNT // 100
    rc, stdout, err = cli("augment", "--spec", str(spec), "--out", str(out), "--no-progress")
    assert rc == 0, err
    assert "already there" in stdout
    assert tree(out) == tree(reference)
    rc, stdout, err = cli("augment", "--spec", str(spec), "--out", str(out))  # a finished job is left alone
    assert rc == 0 and "already complete" in stdout and tree(out) == tree(reference)


def test_the_job_survives_a_server_restart(reference, standalone, tmp_path):
    out = tmp_path / "out"
    server = standalone()
    proc = start_cli(write_spec(tmp_path / "spec.yaml"), out, standalone.target)
    try:
        # killed after the first committed shard: the stream of these small images may run far ahead of
        # the client's writes, and the kill must come before it has ended
        wait_for_shards(out, 1, proc)
        server.proc.send_signal(signal.SIGKILL)  # the serving process dies mid-stream ...
        server.proc.wait(10)
        done_at_kill = committed_shards(out)
        time.sleep(0.5)
        standalone()  # ... and a new one takes the port
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert done_at_kill < COUNT // 100 and "reconnect" in stdout
    assert tree(out) == tree(reference)
    # handles issued before the restart still resolve (Redis), to the images written
    from latentserve.client import LatentClient, decode_image_bytes

    rows = [line.split(",") for line in (out / "labels.csv").read_text().splitlines()[1:4]]
    with LatentClient(standalone.target) as client:
        images = client.decode("tiny-gan", handles=[r[6] for r in rows])
    for r, image in zip(rows, images):
        np.testing.assert_array_equal(image, decode_image_bytes((out / r[0]).read_bytes()))


def test_generation_follows_a_slow_consumer(standalone):
    from latentserve.client import LatentClient

    server = standalone()
    count, batch = 40_000, 16  # float32 8x8 images: 12 KB per batch, 30 MB in all
    with LatentClient(standalone.target) as client:
        before = server.call("stats")["augment"]["batches"]
        stream = client.augment({"model": "tiny-gan", "count": count, "seed": 2, "shard_size": batch,
                                 "format": "float32", "handles": False})
        next(stream)
        generated, stable_polls = -1, 0
        for _ in range(100):  # the consumer stops reading: generation must stop too
            time.sleep(0.2)
            now = server.call("stats")["augment"]
            stable_polls = stable_polls + 1 if now["batches"] == generated else 0
            generated = now["batches"]
            if stable_polls >= 5:
                break
        assert stable_polls >= 5, "generation never paused for a consumer that stopped reading"
        assert now["streams_active"] == 1 and now["max_queued"] <= 2
        # what ran ahead is bounded by the prefetch queue and the HTTP/2 flow-control window (a few MB)
        assert generated - before < count // batch // 4
        for _ in range(generated - before + 50):
            next(stream)
        assert server.call("stats")["augment"]["batches"] > generated  # reading again resumes generation
        stream.close()  # cancels the call: the server's producer stops
        for _ in range(50):
            if server.call("stats")["augment"]["streams_active"] == 0:
                break
            time.sleep(0.1)
        assert server.call("stats")["augment"]["streams_active"] == 0


# ------------------------------------------------------------------------------------------------ dataset
def test_dataset_with_two_workers_yields_every_image_once(serve_app):
    torch = pytest.importorskip("torch")
    from latentserve.client.dataset import AugmentDataset
    from latentserve.client import LatentClient

    spec = {"model": "tiny-gan", "count": 150, "seed": 5, "shard_size": 8, "format": "uint8", "handles": False,
            "class_weights": {"square": 1, "triangle": 3}}
    ds = AugmentDataset(serve_app.target, spec, with_info=True, prefetch=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    got = {}
    for image, label, info in loader:
        assert info["index"] not in got
        got[info["index"]] = (image.numpy(), label, info["seed"])
    assert sorted(got) == list(range(150))
    with LatentClient(serve_app.target) as client:
        for chunk in client.augment(spec, shards=[0, 18]):  # first and last shard, straight from the service
            for j, index in enumerate(chunk.indices):
                image, label, seed = got[index]
                np.testing.assert_array_equal(image, chunk.images[j])
                assert (label, seed) == (int(chunk.labels[j]), int(chunk.seeds[j]))
    assert {label for _, label, _ in got.values()} == {0, 2}


def test_async_client_streams_the_same_chunks(serve_app):
    import asyncio

    from latentserve.client import AsyncLatentClient, LatentClient

    spec = {"model": "tiny-gan", "count": 40, "seed": 9, "shard_size": 16, "format": "uint8",
            "factors": {"brightness": {"values": [-0.2, 0.2]}}}

    async def read():
        async with AsyncLatentClient(serve_app.target) as client:
            return [chunk async for chunk in client.augment(spec, shards=[1, 2])]

    got = asyncio.run(read())
    with LatentClient(serve_app.target) as client:
        want = list(client.augment(spec, shards=[1, 2]))
    assert [(c.shard, c.start, c.shard_end) for c in got] == [(1, 16, True), (2, 32, True)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.factors["brightness"], b.factors["brightness"])
        assert a.handles == b.handles and len(a.handles) == len(a.labels)


def test_label_checked_images_depend_only_on_the_spec_and_their_index(serve_app, cli, tmp_path):
    """With the label check every image is the first (or most confident) of its own candidate draws, so a
    resumed subset of shards has exactly the rows of the whole job, and the CLI pins the threshold."""
    from latentserve.client import LatentClient

    spec = {"model": "tiny-vae", "count": 40, "seed": 4, "shard_size": 16, "format": "uint8",
            "source": "latent_gmm", "class_check": 0.79}  # the tiny VAE's head: p(label) 0.74-0.82
    with LatentClient(serve_app.target) as client:
        whole = list(client.augment(spec))
        part = list(client.augment(spec, shards=[1, 2]))
        unchecked = list(client.augment({**spec, "class_check": -1}))
    assert all(c.class_confidence is not None and len(c.class_confidence) == len(c.labels) for c in whole)
    assert all(u.class_confidence is None for u in unchecked)
    conf = np.concatenate([c.class_confidence for c in whole])
    from latentserve.client.dataset import AugmentDataset  # training loops see it too

    items = sorted(AugmentDataset(serve_app.target, spec, with_info=True, transform=lambda x: x),
                   key=lambda item: item[2]["index"])
    np.testing.assert_array_equal([info["class_confidence"] for _, _, info in items], conf)
    assert 0 < conf.min() and conf.max() <= 1
    for a, b in zip(whole[1:], part):
        assert (a.shard, a.start) == (b.shard, b.start)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.class_confidence, b.class_confidence)
    # an image that passes at its first draw is the unchecked job's image; the others were redrawn
    first = np.concatenate([u.images for u in unchecked])
    got = np.concatenate([c.images for c in whole])
    same = np.all(got.reshape(len(got), -1) == first.reshape(len(first), -1), axis=1)
    assert same.any()
    out = tmp_path / "job"
    rc, _, err = cli("augment", "--spec", str(write_spec(tmp_path / "spec.yaml", **{**spec, "format": "png"},
                                                         class_counts=None, factors={})), "--out", str(out),
                     "--no-progress")
    assert rc == 0, err
    assert json.loads((out / "augment.json").read_text())["class_check"] == 0.79
    rows = [line.split(",") for line in (out / "labels.csv").read_text().splitlines()[1:]]
    np.testing.assert_allclose([float(r[-1]) for r in rows], conf, atol=1e-6)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("changes, message", [
    ({"class_counts": {"square": 5, "hexagon": 3}}, "spec.class_counts.hexagon: unknown class; classes: square, ellipse, triangle"),
    ({"factors": {"hue": 0.5}}, "spec.factors.hue: unknown factor; factors of tiny-gan: brightness"),
    ({"factors": {"brightness": {"grid": [0, 0.9, 3]}}}, "spec.factors.brightness: 0.9 outside [-0.5, 0.5] mean pixel value"),
    ({"class_counts": None, "count": -4}, "spec.count: -4 is negative"),
    ({"format": "float32"}, "spec.format: 'float32' cannot be written as image files; use png or jpeg"),
])
def test_invalid_specs_fail_before_any_work(cli, tmp_path, changes, message):
    out = tmp_path / "out"
    rc, _, err = cli("augment", "--spec", str(write_spec(tmp_path / "spec.yaml", **changes)), "--out", str(out))
    assert rc == 2
    assert err == f"latentserve augment: error: {message}\n"
    assert not out.exists()


def test_the_server_checks_specs_too(serve_app):
    from latentserve.errors import ValidationError
    from latentserve.client import LatentClient

    with LatentClient(serve_app.target) as client:  # local parsing passes; the model checks are the server's
        with pytest.raises(ValidationError, match=r"^INVALID_ARGUMENT: spec.factors.hue: unknown factor"):
            next(client.augment({"model": "tiny-gan", "count": 5, "factors": {"hue": 0.1}}))
        with pytest.raises(ValidationError, match=r"^INVALID_ARGUMENT: shards\[0\]: shard 9 outside \[0, 1\)"):
            next(client.augment({"model": "tiny-gan", "count": 5}, shards=[9]))


def test_console_script_one_line_error_and_foreign_folders(serve_app, reference, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", seed=12)
    r = subprocess.run([LATENTSERVE, "augment", "--spec", str(spec), "--out", str(reference), "-t", serve_app.target],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "holds another augment job" in r.stderr and "use another --out" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = subprocess.run([LATENTSERVE, "augment", "--spec", str(spec), "--out", str(other), "-t", serve_app.target],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is not empty and holds no augment job" in r.stderr
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
