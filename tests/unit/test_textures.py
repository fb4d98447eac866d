"""Textures of any size (issue #22 part 4): the data set's crops, the classical texture judge on real textures,
and the spatial generator's output size and seamless tiling for several grid sizes."""
from __future__ import annotations

import numpy as np
import pytest

from latentserve.errors import ValidationError
from latentserve.models.data import load_dataset
from latentserve.models.data import textures as T
from latentserve.models.judges import texture as J


def _real(n: int, size: int, split: str = "train", seed: int = 0):
    labels, factors, offsets, seeds = T.sample_params(seed, split, n)
    ims = np.stack([T.render(int(labels[i]), *map(float, factors[i]), size, tuple(offsets[i]), int(seeds[i]))
                    for i in range(n)])
    return ims, labels, factors


def test_dataset_is_deterministic_and_crops_one_plane():
    a = load_dataset("textures", image_size=16, n_train=20, n_test=5, seed=3)
    b = load_dataset("textures", image_size=16, n_train=20, n_test=5, seed=3)
    assert np.array_equal(a.train.images, b.train.images) and a.train.images.shape == (20, 16, 16, 3)
    assert a.class_names == T.CLASS_NAMES and [f.name for f in a.factors] == ["period", "orientation", "hue"]
    assert set(np.unique(a.train.labels)) <= set(range(5))
    # a crop is a window of the same infinite texture: the 32 px render at offset o contains the 16 px one at o + 8
    big = T.render(0, 7.0, 30.0, 0.2, 32, (10.0, 20.0))
    small = T.render(0, 7.0, 30.0, 0.2, 16, (18.0, 28.0))
    assert np.abs(big[8:24, 8:24].astype(int) - small.astype(int)).max() <= 1
    with pytest.raises(ValidationError, match="image_size"):
        load_dataset("textures", image_size=4)


def test_judge_measures_real_textures():
    ims, labels, factors = _real(150, 64)
    period, orient = J.period_orientation(ims, labels)
    rel = np.abs(period - factors[:, 0]) / factors[:, 0]
    assert np.median(rel[labels != 4]) < 0.05  # the noise's band is wide; its period is a looser figure
    for c, mod in ((0, 180.0), (1, 90.0), (2, 90.0), (3, 180.0)):
        m = labels == c
        assert np.median(J.angle_error(orient[m], factors[m, 1] % mod, mod)) < 3.0, T.CLASS_NAMES[c]
    test, tl, _ = _real(150, 64, "test")
    clf = J.NearestCentroid(J.shape_stats(ims), labels, 5)
    assert (clf.predict(J.shape_stats(test)) == tl).mean() > 0.75
    st, st2 = J.invariant_stats(ims), J.invariant_stats(test)
    assert J.stat_distance(st[labels == 0], st2[tl == 0]) < 0.5
    assert J.stat_distance(st[labels == 0], st2[tl == 2]) > 1.0  # stripes vs dots


def test_seam_of_a_periodic_render_is_one_and_of_a_crop_more():
    # wave vector (-0.6, -0.8) / 12.8 px: -3 and -4 whole cycles over 64 px, so the render tiles seamlessly
    theta = float(np.degrees(np.arctan2(0.8, -0.6)))
    whole = T.render(0, 12.8, theta, 0.5, 64)
    assert J.seam(whole[None])[0] == pytest.approx(1.0, abs=0.05)
    cut = T.render(0, 11.0, theta, 0.5, 64)  # no whole number of cycles: steps at the seams
    assert J.seam(cut[None])[0] > 3.0


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("cells", [(1, 1), (2, 3), (4, 4), (7, 5)])
def test_generator_output_size_follows_the_noise_grid(cells):
    from latentserve.models.nets.sgan import SGANConfig, SpatialGenerator

    torch.manual_seed(0)
    c = SGANConfig(global_dim=4, local_dim=2, periodic=2, width=8, upsamplings=2)
    g = SpatialGenerator(c, n_classes=3)
    h, w = cells
    out = g(torch.rand(2, c.latent_dim), torch.tensor([0, 2]), torch.randn(2, 2, h, w), tile=True)
    assert out.shape == (2, 3, 4 * h, 4 * w) and out.abs().max() <= 1.0


def test_tiled_output_is_periodic_and_sizes_share_the_texture():
    """Circular padding and whole-cycle waves: the image is a function on the torus, so a 2x2 grid of the noise
    draws the 2x2 tiling of the image."""
    from latentserve.models.nets.sgan import SGANConfig, SpatialGenerator

    torch.manual_seed(1)
    c = SGANConfig(global_dim=4, local_dim=2, periodic=3, width=8, upsamplings=2)
    g = SpatialGenerator(c, n_classes=2)
    z, y, noise = torch.rand(1, c.latent_dim), torch.tensor([1]), torch.randn(1, 2, 3, 3)
    one = g(z, y, noise, tile=True)
    with torch.no_grad():
        big = g(z, y, noise.repeat(1, 1, 2, 2), tile=True)
    # the waves round to whole cycles over either size: 2x2 tiling keeps them only when the rounding agrees
    k = g.wave_vectors(z, y)
    same = torch.equal(torch.round(k * 12) / 12, torch.round(k * 24) / 24)
    if same:
        assert torch.allclose(big, one.repeat(1, 1, 2, 2), atol=1e-5)
    u8 = ((one[0].permute(1, 2, 0).detach().numpy() + 1) * 127.5).round().astype(np.uint8)
    assert J.seam(u8[None])[0] < 1.5


def test_family_trains_and_exports_a_size_free_decoder():
    from latentserve.models.families.sgan import SGANFamily
    from latentserve.models.nets.sgan import SGANConfig

    meta = {"image_size": 16, "class_names": T.CLASS_NAMES, "factors": []}
    fam = SGANFamily(SGANConfig(global_dim=4, local_dim=2, periodic=2, width=8, d_width=8, upsamplings=2,
                                d_layers=2), meta, torch.device("cpu"))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    out = fam.train_step(x, torch.tensor([0, 1, 2, 3]), torch.zeros(4, 0), 0)
    assert all(np.isfinite(v) for v in out.values())
    assert fam.sample_grid(1, seed=0).shape == (5, 3, 16, 16)
    g = fam.graphs()["decoder"]
    assert g.input_names == ["latent", "label", "noise"]
    for cells in (2, 8):
        img = g.module(torch.rand(1, 6), torch.tensor([4]), torch.randn(1, 2, cells, cells))
        assert img.shape == (1, 3, 4 * cells, 4 * cells)
    with pytest.raises(ValidationError, match="SGANConfig: upsamplings"):
        SGANFamily(SGANConfig(upsamplings=5), meta, torch.device("cpu"))
    with pytest.raises(ValidationError, match="SGANConfig: periodic"):
        SGANConfig(periodic=17)


def test_texture_report_rows_and_pictures(tmp_path, monkeypatch):
    from latentserve.models import texture_report as R
    from latentserve.models.families.sgan import SGANFamily
    from latentserve.models.nets.sgan import SGANConfig

    monkeypatch.setattr(R, "SIZES", (32,))
    monkeypatch.setattr(R, "PER_CLASS", {32: 3})
    monkeypatch.setattr(R, "REAL_PER_CLASS", {32: 4})
    fam = SGANFamily(SGANConfig(width=8, d_width=8), {"image_size": 32, "class_names": T.CLASS_NAMES, "factors": []},
                     torch.device("cpu"))
    rows = R.report(fam, tmp_path)
    assert [r["class"] for r in rows] == T.CLASS_NAMES and all(r["n"] == 3 for r in rows)
    assert all(0.5 < r["seam"] < 1.5 for r in rows)  # the generator tiles (waves rounded, circular padding)
    assert {p.name for p in tmp_path.iterdir()} == {"grid-32.png", "classes.png", "blend.png"}
    assert R.markdown(rows).count("\n") == 6


def test_decoder_exports_to_onnx_with_a_free_output_size(tmp_path):
    """One ONNX graph draws every size (the wave rounding reads the size from the noise's shape)."""
    ort = pytest.importorskip("onnxruntime")
    import warnings

    from latentserve.models.families.sgan import SGANFamily, draw_latent
    from latentserve.models.nets.sgan import SGANConfig

    torch.manual_seed(0)
    fam = SGANFamily(SGANConfig(global_dim=4, local_dim=2, periodic=2, width=8, d_width=8, upsamplings=2),
                     {"image_size": 16, "class_names": T.CLASS_NAMES, "factors": []}, torch.device("cpu"))
    g = fam.graphs()["decoder"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(g.module, g.example_inputs, str(tmp_path / "decoder.onnx"), input_names=g.input_names,
                          output_names=g.output_names, dynamic_axes=g.extra["dynamic_axes"], opset_version=17,
                          dynamo=False)
    sess = ort.InferenceSession(str(tmp_path / "decoder.onnx"), providers=["CPUExecutionProvider"])
    for cells in ((2, 2), (8, 8), (3, 5)):
        z, y, noise = draw_latent(2, fam.config), torch.tensor([0, 4]), torch.randn(2, 2, *cells)
        got = sess.run(None, {"latent": z.numpy(), "label": y.numpy(), "noise": noise.numpy()})[0]
        assert got.shape == (2, 3, 4 * cells[0], 4 * cells[1])
        assert np.abs(got - g.module(z, y, noise).numpy()).max() < 1e-4


def test_cli_lists_match_the_registries():
    """`latentserve train` takes its family choices from the registry and keeps its data set choices as literals
    (models.data imports numpy): both must name everything the registries know, textures and sgan included."""
    from latentserve.commands.train import DATASET_NAMES, FAMILY_NAMES
    from latentserve.models.data import DATASETS
    from latentserve.models.families import FAMILIES

    assert set(FAMILY_NAMES) == set(FAMILIES) and set(DATASET_NAMES) == set(DATASETS)
