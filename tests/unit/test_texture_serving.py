"""Serving the texture family (issue #22 part 4): the size rules, the noise grid built from each row's digest,
the texture prior, the blend Interpolate uses, the manifest's texture block, ModelInfo.output_sizes on the wire
and in `latentserve models`, and the export of a tiny model (one decoder graph, ONNX and TorchScript, drawing
every size)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from latentserve.errors import OverloadedError, ValidationError
from latentserve.models import texture_grid as tg
from latentserve.models.latent import LatentSpace
from latentserve.models.manifest import _check_texture
from latentserve.services.core import images as imgs
from latentserve.services.core import output

SPEC = tg.texture_spec(8, 16, 4, 8)
TEX = SimpleNamespace(name="tex", family="sgan", image_shape=(3, 32, 32), record=SimpleNamespace(manifest={"texture": SPEC}))
BIG = 1 << 30


def test_texture_spec_rounds_the_range_inwards_to_whole_cells():
    assert SPEC == {"cell_px": 8, "min_output_px": 32, "max_output_px": 512, "global_dim": 16, "periodic": 4,
                    "local_dim": 8}
    assert tg.texture_spec(24, 4, 0, 2)["min_output_px"] == 48 and tg.texture_spec(24, 4, 0, 2)["max_output_px"] == 504
    _check_texture(SPEC)
    with pytest.raises(ValidationError, match="manifest: texture: .*multiples of cell_px 8"):
        _check_texture({**SPEC, "min_output_px": 36})
    with pytest.raises(ValidationError, match="manifest: texture.cell_px"):
        _check_texture({**SPEC, "cell_px": 0})


def test_sizes_are_whole_cells_in_range_else_invalid_argument_naming_output_size():
    for size in (32, 40, 128, 512):
        out = output.resolve(TEX, imgs.PNG, size, 2, BIG)
        assert out.size == size and out.native == (size == 32)
    assert output.resolve(TEX, imgs.RAW_UINT8, 0, 1, BIG).size == 32  # 0 = the training crop size
    with pytest.raises(ValidationError, match=r"^output_size: 36 is not a multiple of 8 px.*; use 32 or 40$"):
        output.resolve(TEX, imgs.PNG, 36, 1, BIG)
    with pytest.raises(ValidationError, match=r"^output_size: 510 .*; use 504 or 512$"):
        output.resolve(TEX, imgs.PNG, 510, 1, BIG)
    odd = SimpleNamespace(**{**vars(TEX), "record": SimpleNamespace(manifest={"texture": tg.texture_spec(24, 4, 0, 2)})})
    with pytest.raises(ValidationError, match=r"^output_size: 500 is not a multiple of 24 px.*; use 480 or 504$"):
        output.resolve(odd, imgs.PNG, 500, 1, BIG)
    for bad in (16, 520, -8):
        with pytest.raises(ValidationError, match=r"^output_size: .* outside \[32, 512\] px for texture model tex"):
            output.resolve(TEX, imgs.PNG, bad, 1, BIG)
    with pytest.raises(OverloadedError, match=r"^output_size: 5 images of 512x512 px .*Limits.max_output_pixels"):
        output.resolve(TEX, imgs.PNG, 512, 5, 1 << 20)
    with pytest.raises(ValidationError, match="format: SVG needs a vector model"):
        output.resolve(TEX, imgs.SVG, 64, 1, BIG)
    assert output.sizes("sgan", 32, {"texture": SPEC}) == {"min_px": 32, "max_px": 512, "multiple_of_px": 8}
    assert output.sizes("gan", 32, {}) == {"min_px": 32, "max_px": 32, "multiple_of_px": 32}


def test_noise_grid_is_a_function_of_the_latent_only():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 20)).astype(np.float32)
    seeds = tg.row_seeds(z)
    assert seeds.dtype == np.uint64 and len(set(seeds.tolist())) == 4
    assert np.array_equal(tg.row_seeds(z[2:3]), seeds[2:3])  # the same in any batch
    z2 = z.copy()
    z2[1, 0] = np.nextafter(z2[1, 0], np.float32(9))  # one ulp: another texture
    assert tg.row_seeds(z2)[1] != seeds[1] and tg.row_seeds(z2)[0] == seeds[0]
    grid = tg.noise_grid(seeds, 8, 6)
    assert grid.shape == (4, 8, 6, 6) and grid.dtype == np.float32
    assert np.array_equal(tg.noise_grid(seeds[3:], 8, 6)[0], grid[3])
    assert np.array_equal(tg.noise_grid(seeds, 8, 6), grid)  # deterministic
    big = tg.noise_grid(seeds, 8, 64)
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02  # standard normal local codes


def test_blend_lerps_codes_and_takes_phases_the_short_way_round():
    a = np.array([0.0, 1.0, 0.9, 0.2], np.float32)
    b = np.array([2.0, -1.0, 0.1, 0.4], np.float32)
    path = tg.blend(a, b, 5, periodic=2)
    np.testing.assert_allclose(path[:, 0], [0, 0.5, 1, 1.5, 2], atol=1e-6)
    np.testing.assert_allclose(path[:, 2], [0.9, 0.95, 0.0, 0.05, 0.1], atol=1e-6)  # across 1 -> 0, not back
    np.testing.assert_allclose(path[:, 3], [0.2, 0.25, 0.3, 0.35, 0.4], atol=1e-6)
    assert path.min() >= -1 and np.all((path[:, 2:] >= 0) & (path[:, 2:] < 1))
    np.testing.assert_allclose(tg.blend(a, b, 3, periodic=0)[1], (a + b) / 2, atol=1e-6)


def test_texture_prior_draws_phases_uniformly_and_round_trips(tmp_path):
    space = LatentSpace(prior_type="texture", latent_dim=6, n_classes=5, periodic=2)
    z = space.sample_prior(np.zeros(4000, np.int64), np.random.default_rng(1), temperature=0.5)
    assert z.shape == (4000, 6)
    assert abs(z[:, :4].std() - 0.5) < 0.03  # the temperature scales the global code
    assert z[:, 4:].min() >= 0 and z[:, 4:].max() < 1 and abs(z[:, 4:].mean() - 0.5) < 0.02  # phases U[0, 1)
    loaded = LatentSpace.load(space.save(tmp_path / "ls.npz"))
    assert loaded.prior_type == "texture" and loaded.periodic == 2
    assert space.meta()["prior"] == {"type": "texture", "periodic": 2}
    with pytest.raises(ValidationError, match="periodic"):
        LatentSpace(prior_type="standard_normal", latent_dim=6, n_classes=5, periodic=2)


def test_model_info_output_sizes_on_the_wire_and_in_the_cli():
    from latentserve.client.messages import model_info_from_proto
    from latentserve.commands.models import _sizes_line
    from latentserve.v1 import latent_pb2 as pb

    m = pb.ModelInfo(name="tex", family="sgan", output_sizes=pb.OutputSizes(min_px=32, max_px=512, multiple_of_px=8))
    info = model_info_from_proto(m)
    assert info.output_sizes.accepts(48) and not info.output_sizes.accepts(52) and not info.output_sizes.accepts(520)
    assert _sizes_line(info) == "--size 32..512 px in steps of 8 (one latent cell), 0 = native"
    assert _sizes_line(model_info_from_proto(pb.ModelInfo(name="g"))) == "native size only"  # an older server
    assert pb.ModelInfo.DESCRIPTOR.fields_by_name["output_sizes"].number == 23


def test_tiny_export_has_one_decoder_for_every_size(tmp_path):
    """Export without an encoder: the texture prior, the texture block and the class factor in the manifest, and
    the ONNX and TorchScript decoders draw grids of sizes they were not traced at."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from latentserve.models.data import load_dataset
    from latentserve.models.export import export_family
    from latentserve.models.families.sgan import SGANFamily, draw_latent
    from latentserve.models.nets.sgan import SGANConfig

    torch.manual_seed(0)
    data = load_dataset("textures", image_size=16, n_train=16, n_test=12, seed=0)
    fam = SGANFamily(SGANConfig(global_dim=4, local_dim=2, periodic=2, width=8, d_width=8, upsamplings=2, d_layers=2),
                     data.meta(), torch.device("cpu"))
    rec = export_family(fam, "tex", data, {"steps": 0}, repo_root=tmp_path)
    m = rec.manifest
    assert sorted(m["graphs"]) == ["decoder"] and m["graphs"]["decoder"]["input_names"] == ["latent", "label", "noise"]
    assert m["prior"]["type"] == "texture" and m["prior"]["periodic"] == 2 and m["latent_shape"] == [6]
    assert m["texture"] == tg.texture_spec(4, 4, 2, 2) and m["probe"] == "" and m["knobs"] == [] and m["gmm"] == {}
    assert m["class_factors"] == {"texture": list(data.class_names)}
    g = fam.graphs()["decoder"].module
    sess = ort.InferenceSession(str(rec.graph_path("decoder", "onnx")), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(rec.graph_path("decoder", "torchscript")))
    for cells in (2, 9):
        z, y = draw_latent(2, fam.config), torch.tensor([1, 3])
        noise = torch.from_numpy(tg.noise_grid(tg.row_seeds(z.numpy()), 2, cells))
        want = g(z, y, noise).detach().numpy()
        assert want.shape == (2, 3, 4 * cells, 4 * cells)
        got = sess.run(None, {"latent": z.numpy(), "label": y.numpy(), "noise": noise.numpy()})[0]
        assert np.abs(got - want).max() < 1e-4
        assert np.abs(ts(z, y, noise).detach().numpy() - want).max() < 1e-4
    assert LatentSpace.load(rec.path / "latent_space.npz").periodic == 2


def test_interpolate_and_edit_carry_output_size():
    from latentserve.client.messages import build_edit_request, build_interpolate_request
    from latentserve.services.frontends.grpc import codec
    from latentserve.v1 import latent_pb2 as pb

    req = build_interpolate_request("tex", ([0.0, 0.5], 1), ([1.0, 0.2], 1), steps=3, output_size=96)
    assert req.output_size == 96 and codec.interpolate_call(req, 0.0).output_size == 96
    req = build_edit_request("tex", [([0.0, 0.5], 1)], [], factor_classes={"texture": "dots"}, output_size=64)
    assert req.output_size == 64 and codec.edit_call(req).output_size == 64
    with pytest.raises(ValidationError, match="output_size"):
        build_interpolate_request("tex", ([0.0], 1), ([1.0], 1), output_size=-8)
    assert pb.InterpolateRequest.DESCRIPTOR.fields_by_name["output_size"].number == 10
    assert pb.EditRequest.DESCRIPTOR.fields_by_name["output_size"].number == 10
