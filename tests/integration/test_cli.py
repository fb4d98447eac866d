"""The client CLI commands against a real server: the session `serve_app` fixture of conftest.py (a Ray Serve
app on a free port serving the tiny repository: tiny-gan v1/v2, tiny-vae, tiny-flow; 3x8x8 images, classes
square/ellipse/triangle, a `brightness` knob in [-0.5, 0.5] and pca_0/pca_1).

Each command runs in-process through `latentserve.cli.main` (stdout/stderr captured); one check runs the real
console entry point in a subprocess to see the exit code and the one-line error as a user does. Grid sizes follow
`make_grid`: rows*(8+2)+2 high, cols*(8+2)+2 wide.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from latentserve.cli import main

H = W = 8


def grid_size(rows: int, cols: int) -> tuple[int, int]:
    """PIL (width, height) of a make_grid image of rows x cols 8x8 images with pad 2."""
    return cols * (W + 2) + 2, rows * (H + 2) + 2


@pytest.fixture(scope="module")
def samples(serve_app, tmp_path_factory):
    """6 ellipse samples from tiny-gan: (folder with grid.png + s.npz)."""
    d = tmp_path_factory.mktemp("samples")
    rc = main(["sample", "tiny-gan", "-n", "6", "--class", "ellipse", "--knob", "brightness=0.1", "--seed", "3",
               "-o", str(d / "grid.png"), "--save-latents", str(d / "s.npz"), "-t", serve_app.target,
               "--timeout", "60"])
    assert rc == 0
    return d


def test_models_table_and_details(cli):
    rc, out, err = cli("models")
    assert rc == 0, err
    for name in ("tiny-gan", "tiny-vae", "tiny-flow"):
        assert name in out
    rc, out, err = cli("models", "tiny-gan")
    assert rc == 0, err
    assert "brightness" in out and "ellipse" in out and "D=8" in out


def test_sample_writes_grid_and_latents(samples, cli, tmp_path):
    d = samples
    assert Image.open(d / "grid.png").size == grid_size(2, 3)  # ceil(sqrt(6)) = 3 columns
    with np.load(d / "s.npz") as f:
        assert f["latents"].shape == (6, 8) and f["labels"].tolist() == [1] * 6
    rc, out, err = cli("sample", "tiny-gan", "-n", "5", "--class-weights", "square=1,triangle=1", "--cols", "5",
                       "--source", "latent_gmm", "--seed", "1", "-o", str(tmp_path / "w.png"))
    assert rc == 0, err
    assert "5 samples of 8x8" in out and "ellipse" not in out
    assert Image.open(tmp_path / "w.png").size == grid_size(1, 5)
    # same seed and options -> same images
    rc, _, err = cli("sample", "tiny-gan", "-n", "5", "--class-weights", "square=1,triangle=1", "--cols", "5",
                     "--source", "latent_gmm", "--seed", "1", "-o", str(tmp_path / "w2.png"))
    assert rc == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "w.png")),
                                  np.asarray(Image.open(tmp_path / "w2.png")))


def test_encode_then_decode(cli, samples, tmp_path):
    d = samples
    from latentserve.client import save_png

    z_images = np.asarray(Image.open(d / "grid.png"))[2:2 + H, 2:2 + W]  # first cell of the grid
    save_png(z_images, str(tmp_path / "one.png"))
    rc, out, err = cli("encode", "tiny-gan", str(tmp_path / "one.png"), str(tmp_path / "one.png"),
                       "-o", str(tmp_path / "enc.npz"))
    assert rc == 0, err
    with np.load(tmp_path / "enc.npz") as f:
        assert f["latents"].shape == (2, 8) and f["confidence"].shape == (2,)
    rc, out, err = cli("decode", "tiny-gan", str(d / "s.npz"), "-o", str(tmp_path / "dec.png"))
    assert rc == 0, err
    assert Image.open(tmp_path / "dec.png").size == grid_size(2, 3)
    rc, out, err = cli("decode", "tiny-gan", str(d / "s.npz"), "--rows", "0,2", "-o", str(tmp_path / "frames"))
    assert rc == 0, err
    files = sorted((tmp_path / "frames").glob("*.png"))
    assert len(files) == 2 and Image.open(files[0]).size == (W, H)
    # a raster model draws at its own size only and has no SVG: one line, exit 2, nothing written
    for extra, field in ((["--size", "64"], "output_size"), (["--svg"], "format")):
        rc, out, err = cli("decode", "tiny-gan", str(d / "s.npz"), *extra, "-o", str(tmp_path / "no"))
        assert rc == 2 and len(err.strip().splitlines()) == 1 and f"INVALID_ARGUMENT: {field}" in err, err
        assert not (tmp_path / "no").exists()


def test_encode_shows_no_confidence_for_an_uncalibrated_class_head(cli, samples, tmp_path):
    cell = np.asarray(Image.open(samples / "grid.png"))[2:2 + H, 2:2 + W]
    Image.fromarray(cell).save(tmp_path / "cell.png")
    rc, out, err = cli("encode", "tiny-flow", str(tmp_path / "cell.png"), "-o", str(tmp_path / "f.npz"))
    assert rc == 0, err
    assert out.splitlines()[0].endswith("\t-") and "tiny-flow v1's class head is not calibrated (not evaluated)" in out
    with np.load(tmp_path / "f.npz") as f:
        assert "confidence" not in f.files and f["labels"].shape == (1,)


def test_interpolate_rows_per_method(cli, samples, tmp_path):
    d = samples
    rc, out, err = cli("interpolate", "tiny-gan", "--a", f"{d / 's.npz'}:0", "--b", f"{d / 's.npz'}:1",
                       "--steps", "5", "--method", "lerp,slerp", "-o", str(tmp_path / "strip.png"))
    assert rc == 0, err
    assert out.count("path length") == 2 and "evenness" in out
    assert Image.open(tmp_path / "strip.png").size == grid_size(2, 5)


def test_gradient_latent_ops_from_the_cli(cli, samples, tmp_path):
    d = samples
    rc, out, err = cli("interpolate", "tiny-gan", "--a", f"{d / 's.npz'}:0", "--b", f"{d / 's.npz'}:1",
                       "--steps", "5", "--method", "lerp,geodesic", "--geodesic-iterations", "20",
                       "--geodesic-space", "probe", "--geodesic-init", "slerp", "-o", str(tmp_path / "strip.png"))
    assert rc == 0, err
    assert "geodesic" in out and "(probe space)" in out and "(lerp:" in out and "shorter" in out
    assert Image.open(tmp_path / "strip.png").size == grid_size(2, 5)
    rc, out, err = cli("sample", "tiny-gan", "-n", "4", "--class", "square", "--seed", "2", "--source", "guided",
                       "--guidance-steps", "10", "--factor-target", "brightness=0.05", "-o", str(tmp_path / "g.png"))
    assert rc == 0, err
    assert "4 samples" in out and "square=4" in out
    rc, out, err = cli("encode", "tiny-gan", str(tmp_path / "g.png"), "--refine-steps", "5", "-o", str(tmp_path / "e.npz"))
    assert rc == 2 and err.count("\n") == 1 and "INVALID_ARGUMENT" in err  # the grid is not 8x8: one line
    cell = np.asarray(Image.open(tmp_path / "g.png"))[2:2 + H, 2:2 + W]
    Image.fromarray(cell).save(tmp_path / "cell.png")
    rc, out, err = cli("encode", "tiny-gan", str(tmp_path / "cell.png"), "--refine-steps", "5",
                       "-o", str(tmp_path / "e.npz"))
    assert rc == 0, err
    assert "refinement (5 steps): reconstruction MSE" in out and "mse " in out
    rc, out, err = cli("sample", "tiny-gan", "-n", "1", "--factor-target", "brightness=0.1")
    assert rc == 2 and "--source guided" in err


def test_edit_sweep(cli, samples, tmp_path):
    d = samples
    rc, out, err = cli("edit", "tiny-gan", "--input", f"{d / 's.npz'}:0", "--input", f"{d / 's.npz'}:1",
                       "--knob", "brightness", "--sweep", "-0.3:0.3:4", "-o", str(tmp_path / "sweep.png"))
    assert rc == 0, err
    assert "brightness targets" in out
    assert Image.open(tmp_path / "sweep.png").size == grid_size(2, 4)


@pytest.mark.parametrize("argv,code", [
    (["sample", "no-such-model", "-n", "2"], "NOT_FOUND"),
    (["sample", "tiny-gan", "-n", "100000"], "INVALID_ARGUMENT"),
    (["sample", "tiny-gan", "-n", "2", "--knob", "brightness=9"], "INVALID_ARGUMENT"),
])
def test_bad_request_prints_one_line(cli, tmp_path, argv, code):
    rc, out, err = cli(*argv, "-o", str(tmp_path / "x.png"))
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1, err
    assert lines[0].startswith(f"latentserve sample: error: {code}")
    assert not (tmp_path / "x.png").exists()


def test_console_script_exit_code_and_one_line(serve_app, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "latentserve", "sample", "no-such-model", "-n", "2",
                           "-t", serve_app.target, "-o", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "NOT_FOUND" in lines[0] and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ the Python clients directly
def test_sync_client_handles_and_formats(serve_app):
    from latentserve.client import LatentClient

    with LatentClient(serve_app.target, timeout=60) as c:
        assert c.health()
        info = c.get_model("tiny-gan")
        assert info.latent_dim == 8 and info.image_size == (8, 8) and "brightness" in [k.name for k in info.knobs]
        res = c.sample("tiny-gan", 3, class_name="square", seed=5, return_handles=True)
        assert res.images.shape == (3, 8, 8, 3) and res.labels.tolist() == [0, 0, 0] and len(res.handles) == 3
        again = c.decode("tiny-gan", handles=res.handles)
        np.testing.assert_array_equal(again, res.images)
        floats = c.decode("tiny-gan", res.latents, res.labels, format="float32")
        assert floats.shape == (3, 3, 8, 8) and floats.dtype == np.float32
        np.testing.assert_allclose((floats.transpose(0, 2, 3, 1) + 1) * 127.5, res.images, atol=1.0)
        pngs = c.decode("tiny-gan", res, format="png")
        assert len(pngs) == 3 and pngs[0].startswith(b"\x89PNG")
        enc = c.encode("tiny-gan", res.images, labels=res.labels)
        assert enc.latents.shape == (3, 8) and enc.labels.tolist() == [0, 0, 0]
        edited = c.edit("tiny-gan", res.handles[0], [("brightness", {"target": 0.3})])
        assert edited.images.shape == (1, 8, 8, 3)
        assert edited.images.astype(float).mean() > res.images[0].astype(float).mean()  # brighter


def test_async_client(serve_app):
    import asyncio

    from latentserve.client import AsyncLatentClient

    async def main():
        async with AsyncLatentClient(serve_app.target, timeout=60) as c:
            assert await c.health()
            names = [m.name for m in await c.list_models()]
            res = await c.sample("tiny-flow", 2, label=2, seed=1)
            frames = [f async for f in c.interpolate("tiny-flow", (res.latents[0], 2), (res.latents[1], 2),
                                                       steps=4, method="slerp")]
            imgs = await asyncio.gather(*(c.decode("tiny-flow", res.latents[i:i + 1], 2) for i in range(2)))
            return names, res, frames, imgs

    names, res, frames, imgs = asyncio.run(main())
    assert "tiny-flow" in names
    assert [f.index for f in frames] == [0, 1, 2, 3] and frames[-1].summary is not None
    assert frames[0].image.shape == (8, 8, 3)
    np.testing.assert_array_equal(np.concatenate(imgs), res.images)  # concurrent calls, same images


def test_cli_unreachable_server_prints_one_line(capsys):
    rc = main(["models", "-t", "127.0.0.1:1", "--timeout", "3"])  # nothing listens on port 1
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("latentserve models: error: UNAVAILABLE")
