"""The vector family (issue #24, vector layers) through train -> export -> serve over real gRPC: a tiny run on
16 px shapes served next to the session app, Sample at its native size and at 4x, Decode as SVG, and the
output_size / SVG refusals (a raster model of the session app asked for another size or for SVG). Tiny nets and
3 training steps: the point is the pipeline; the figures of a real run are in models/repository/README.md."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentserve.client import LatentClient  # noqa: E402
from latentserve.errors import OverloadedError, ValidationError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DATA = {"image_size": 16, "n_train": 128, "n_test": 32, "seed": 0}
NET = {"z_dim": 8, "g_hidden": 16, "g_depth": 1, "d_width": 4, "e_width": 4, "e_hidden": 16}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, train_and_export):
    root = tmp_path_factory.mktemp("repo24v")
    train_and_export(root, tmp_path_factory.mktemp("runs24v"), "shapes-vector", "vector", "shapes", DATA, NET,
                     max_latent_fit=100)
    return root


def test_vector_model_draws_at_any_size_and_as_svg(repo, repository_app, serve_app, tmp_path):
    app = repository_app("vec24", repo, max_output_pixels=1 << 22)
    with app.client() as c:
        info = c.get_model("shapes-vector")
        assert info.family == "vector" and list(info.image_shape) == [3, 16, 16]
        assert (info.output_sizes.min_px, info.output_sizes.max_px, info.max_output_pixels) == (16, 1024, 1 << 22)
        native = c.sample("shapes-vector", 3, label=2, seed=5, format="uint8")
        assert native.images.shape == (3, 16, 16, 3)
        big = c.sample("shapes-vector", 3, label=2, seed=5, format="uint8", output_size=64)
        assert big.images.shape == (3, 64, 64, 3)
        np.testing.assert_array_equal(big.latents, native.latents)  # the same samples, drawn larger
        down = big.images.astype(np.float64).reshape(3, 16, 4, 16, 4, 3).mean(axis=(2, 4))
        assert np.abs(down - native.images).mean() < 8  # 8-bit levels: the same picture at 4x
        pngs = c.sample("shapes-vector", 1, label=0, seed=1, format="png", output_size=40)
        assert pngs.images[0][:8] == b"\x89PNG\r\n\x1a\n"

        svgs = c.decode("shapes-vector", native.latents, native.labels, format="svg", output_size=256)
        assert len(svgs) == 3
        root = ET.fromstring(svgs[0])
        assert root.tag.endswith("svg") and root.get("width") == "256"
        assert len(root.findall("{http://www.w3.org/2000/svg}g")) == 3  # ellipse, triangle, quad layers
        assert c.decode("shapes-vector", native.latents[:1], native.labels[:1], format="uint8",
                        output_size=1024).shape == (1, 1024, 1024, 3)

        for size in (8, 2048):
            with pytest.raises(ValidationError, match=r"output_size: .*\[16, 1024\]"):
                c.sample("shapes-vector", 1, output_size=size)
        with pytest.raises(OverloadedError, match="output_size: .*max_output_pixels"):
            c.sample("shapes-vector", 5, output_size=1024)  # 5 Mpx, over this app's 4 Mpx

    from latentserve.cli import main  # the CLI: decode at a size, and as SVG documents in a folder

    np.savez(tmp_path / "z.npz", latents=native.latents, labels=native.labels)
    conn = app.cli_args()
    assert main(["decode", "shapes-vector", str(tmp_path / "z.npz"), "--size", "48", "-o", str(tmp_path / "big"),
                 *conn]) == 0
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert main(["decode", "shapes-vector", str(tmp_path / "z.npz"), "--svg", "--size", "200",
                 "-o", str(tmp_path / "svg"), *conn]) == 0
    doc = ET.fromstring((tmp_path / "svg" / "0002.svg").read_bytes())
    assert doc.tag.endswith("svg") and doc.get("width") == "200"

    with LatentClient(serve_app.target, timeout=60) as c:  # a raster model: its own size only, no SVG
        with pytest.raises(ValidationError, match="output_size: tiny-gan is a gan model .raster."):
            c.sample("tiny-gan", 1, output_size=64)
        with pytest.raises(ValidationError, match="format: SVG needs a vector model"):
            c.decode("tiny-gan", np.zeros((1, 8), np.float32), [0], format="svg")
