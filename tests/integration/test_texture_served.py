"""The texture family (issue #22 part 4, sgan) through train -> export -> serve over real gRPC: a tiny run on
32 px texture crops served next to the session app; Sample at two sizes (the same latents, drawn larger), Decode
of those latents and of handles at a third size (the same pixels: the noise grid comes from each latent's
digest), Interpolate over one shared noise grid, Edit by class, ModelInfo's size range and the CLI; and the
refusals: Encode (no encoder), a size off the cell grid or out of range, a request over max_output_pixels.
Tiny nets and 3 training steps: the point is the pipeline; the figures of a real run are in docs/textures/."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from latentserve.errors import OverloadedError, ValidationError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DATA = {"image_size": 32, "n_train": 64, "n_test": 16, "seed": 0}
NET = {"global_dim": 4, "local_dim": 2, "periodic": 2, "width": 8, "d_width": 8, "upsamplings": 3, "d_layers": 2}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, train_and_export):
    root = tmp_path_factory.mktemp("repo22t")
    train_and_export(root, tmp_path_factory.mktemp("runs22t"), "tex", "sgan", "textures", DATA, NET, batch_size=8)
    return root


def test_texture_model_draws_any_size_over_grpc(repo, repository_app, tmp_path, capsys):
    app = repository_app("tex22", repo, max_output_pixels=1 << 20)
    with app.client() as c:
        info = c.get_model("tex")
        assert (info.family, info.prior, list(info.image_shape)) == ("sgan", "texture", [3, 32, 32])
        sizes = info.output_sizes
        assert (sizes.min_px, sizes.max_px, sizes.multiple_of_px) == (32, 512, 8)
        assert info.interpolation_methods == ("lerp",) and info.sample_sources == ("prior",)

        small = c.sample("tex", 3, seed=5, format="uint8", output_size=64)
        big = c.sample("tex", 3, seed=5, format="uint8", output_size=256, return_handles=True)
        assert small.images.shape == (3, 64, 64, 3) and big.images.shape == (3, 256, 256, 3)
        np.testing.assert_array_equal(big.latents, small.latents)  # the seed draws the latents, not the size
        assert np.all((big.latents[:, -2:] >= 0) & (big.latents[:, -2:] < 1))  # phases / 2 pi
        native = c.sample("tex", 3, seed=5, format="uint8")
        assert native.images.shape == (3, 32, 32, 3)

        again = c.decode("tex", small.latents, small.labels, format="uint8", output_size=64)
        np.testing.assert_array_equal(again, small.images)  # the noise grid is the latent's: same pixels
        from_handles = c.decode("tex", handles=big.handles, format="uint8", output_size=256)
        np.testing.assert_array_equal(from_handles, big.images)
        assert c.decode("tex", small.latents[:1], small.labels[:1], format="png", output_size=96)[0][:4] == b"\x89PNG"
        shifted = small.latents.copy()
        shifted[:, -2:] = (shifted[:, -2:] + 0.25) % 1.0  # other phases: not in the result cache
        with ThreadPoolExecutor(4) as pool:  # concurrent requests of two sizes: the runner batches each size apart
            got = list(pool.map(lambda s: c.decode("tex", shifted, small.labels, output_size=s), [64, 256] * 2))
        assert [g.shape for g in got] == [(3, 64, 64, 3), (3, 256, 256, 3)] * 2
        np.testing.assert_array_equal(got[0], got[2])
        np.testing.assert_array_equal(got[1], got[3])

        frames = list(c.interpolate("tex", (native.latents[0], 1), (native.latents[1], 1), steps=4))
        assert len(frames) == 4 and frames[0].image.shape == (32, 32, 3)
        assert all(f.label == 1 for f in frames)
        first = c.decode("tex", native.latents[:1], [1], format="uint8")[0]
        np.testing.assert_array_equal(frames[0].image, first)  # frame 0 = Decode(a): the shared grid is a's
        wide = list(c.interpolate("tex", (native.latents[0], 1), (native.latents[1], 1), steps=3, output_size=128))
        assert wide[1].image.shape == (128, 128, 3)
        np.testing.assert_array_equal(wide[0].image, c.decode("tex", native.latents[:1], [1], output_size=128)[0])

        edited = c.edit("tex", [(native.latents[0], int(native.labels[0]))], factor_classes={"texture": "dots"},
                        output_size=64)
        assert list(edited.labels) == [2] and edited.images.shape == (1, 64, 64, 3)
        np.testing.assert_array_equal(edited.latents[0], native.latents[0])  # same latent, another class
        np.testing.assert_array_equal(edited.images, c.decode("tex", native.latents[:1], [2], output_size=64))

        with pytest.raises(ValidationError, match=r"Encode: model tex is a sgan model .* has no encoder"):
            c.encode("tex", native.images)
        with pytest.raises(ValidationError, match=r"output_size: 36 is not a multiple of 8 px.*use 32 or 40"):
            c.sample("tex", 1, output_size=36)
        with pytest.raises(ValidationError, match=r"output_size: 1024 is outside \[32, 512\] px"):
            c.decode("tex", small.latents[:1], small.labels[:1], output_size=1024)
        with pytest.raises(OverloadedError, match="output_size: .*max_output_pixels"):
            c.sample("tex", 5, output_size=512)  # 1.3 Mpx, over this app's 1 Mpx
        with pytest.raises(ValidationError, match="method: SLERP is not offered by tex"):
            list(c.interpolate("tex", (native.latents[0], 1), (native.latents[1], 1), steps=4, method="slerp"))

    from latentserve.cli import main  # the CLI: sample at a size, and the size range in `models`

    conn = app.cli_args()
    assert main(["sample", "tex", "-n", "2", "--size", "128", "--seed", "3", "-o", str(tmp_path / "grid.png"),
                 *conn]) == 0
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        assert min(im.size) >= 128
    np.savez(tmp_path / "z.npz", latents=native.latents, labels=native.labels)
    assert main(["interpolate", "tex", "--a", f"{tmp_path / 'z.npz'}:0", "--b", f"{tmp_path / 'z.npz'}:1",
                 "--steps", "3", "--size", "64", "-o", str(tmp_path / "strip.png"), *conn]) == 0  # lerp: offered
    capsys.readouterr()
    assert main(["models", "tex", *conn]) == 0
    assert "--size 32..512 px in steps of 8 (one latent cell), 0 = native" in capsys.readouterr().out
    assert main(["sample", "tex", "-n", "1", "--size", "100", "-o", str(tmp_path / "bad.png"), *conn]) == 2
    assert "output_size: 100 is not a multiple of 8 px" in capsys.readouterr().err
