"""Decoupled shape / texture: the textured data set, the two-branch generator (image = mask * texture + (1 - mask)
* background), per-branch knobs and the serving side's class factors."""
import numpy as np
import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.data import load_dataset, textured
from latentserve.models.families.gan import GANFamily
from latentserve.models.judges.geometric import judge_shapes
from latentserve.models.latent import Knob, restrict_knobs
from latentserve.models.nets.decoupled import DecoupledGenerator, class_factor_sizes
from latentserve.models.nets.gan import GANConfig
from latentserve.services.core import class_factors as cf


@pytest.fixture(scope="module")
def data():
    return load_dataset("textured", image_size=32, n_train=240, n_test=48)


def test_textured_data(data):
    assert data.class_names[:5] == ["square+solid", "square+stripes", "square+dots", "square+checks", "ellipse+solid"]
    assert data.info["class_factors"] == {"shape": textured.SHAPE_NAMES, "texture": textured.TEXTURE_NAMES}
    shape, texture = textured.split_labels(data.train.labels)
    f = data.train.factors
    names = textured.FACTOR_NAMES
    solid = texture == 0
    assert np.all(np.isnan(f[solid][:, names.index("period")])) and np.all(np.isfinite(f[~solid][:, names.index("period")]))
    assert np.all(np.isnan(f[texture == 2][:, names.index("orientation")]))
    # full-value colours sampled at pixel centres: the judge reads the shape of every textured real image
    verdict = judge_shapes(data.test.images)
    assert np.mean(verdict.labels == textured.split_labels(data.test.labels)[0]) >= 0.95
    # the patterned ones really show two colours inside the shape
    img = data.train.images[1].reshape(-1, 3)  # square+stripes
    assert len({tuple(p) for p in img[img.max(1) == 255]}) >= 2
    again = load_dataset("textured", image_size=32, n_train=240, n_test=48)
    assert np.array_equal(again.train.images, data.train.images)


def test_composition_is_mask_times_texture():
    torch.manual_seed(0)
    g = DecoupledGenerator(z_dim=8, z_shape=3, n_shapes=3, n_textures=4, image_size=16, width=8, embed=4, hidden=16)
    with torch.no_grad():
        g.background.copy_(torch.tensor([0.3, -0.2, 0.1]))  # not black, so the background term shows
    z, y = torch.randn(6, 8), torch.tensor([0, 5, 11, 3, 7, 8])
    mask, tex, bg = g.parts(z, y)
    assert mask.shape == (6, 1, 16, 16) and tex.shape == (6, 3, 16, 16) and bg.shape == (1, 3, 1, 1)
    image = g(z, y)
    assert torch.allclose(image, mask * tex + (1 - mask) * bg, atol=0, rtol=0)
    # the shape branch sees only z[:, :3] and the shape class: a new texture class / texture latent keeps the mask
    z2 = z.clone()
    z2[:, 3:] = torch.randn(6, 5)
    y2 = (y // 4) * 4 + (y + 1) % 4
    assert torch.equal(g.parts(z2, y2)[0], mask)
    assert not torch.allclose(g.parts(z2, y2)[1], tex)


def test_decoupled_family_needs_class_factors(data):
    cfg = GANConfig(z_dim=8, g_width=8, d_width=8, e_width=8, e_hidden=16, g_arch="decoupled")
    fam = GANFamily(cfg, data.meta())
    assert fam.knob_branches()["shape"] == {"latent": [0, 4], "factors": ["scale", "rotation", "x", "y"]}
    assert fam.knob_branches()["texture"]["factors"] == ["hue", "hue2", "period", "orientation"]
    x = torch.from_numpy(data.train.images[:8].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
    out = fam.train_step(x, torch.from_numpy(data.train.labels[:8]), torch.zeros(8, 8), 0)
    assert np.isfinite(out["g_loss"])
    shapes_meta = {"image_size": 16, "class_names": ["a", "b", "c"]}
    with pytest.raises(ValidationError, match="shape, texture"):
        GANFamily(cfg, shapes_meta)
    with pytest.raises(ValidationError, match="3 x 4"):
        class_factor_sizes({"shape": ["a", "b", "c"], "texture": list("wxyz")}, 10)


def test_restrict_knobs_to_branches():
    w = np.arange(1, 7, dtype=np.float32)
    knobs = {n: Knob(name=n, weight=w, bias=0.0, r2=0.9, low=0, high=1) for n in ("scale", "hue", "other")}
    out = restrict_knobs(knobs, {"shape": {"latent": [0, 2], "factors": ["scale"]},
                                 "texture": {"latent": [2, 6], "factors": ["hue"]}})
    assert out["scale"].weight.tolist() == [1, 2, 0, 0, 0, 0]
    assert out["hue"].weight.tolist() == [0, 0, 3, 4, 5, 6]
    assert out["other"].weight.tolist() == w.tolist()


def test_class_factors_sample_and_relabel():
    factors = {"shape": ["square", "ellipse", "triangle"], "texture": ["solid", "stripes", "dots", "checks"]}
    rng = np.random.default_rng(0)
    y = cf.sample_labels(factors, {"texture": "dots"}, 200, rng, "m v1")
    parts = cf.split(factors, y)
    assert np.all(parts["texture"] == 2) and set(parts["shape"].tolist()) == {0, 1, 2}
    y = cf.sample_labels(factors, {"shape": "triangle", "texture": "checks"}, 3, rng, "m v1")
    assert y.tolist() == [11, 11, 11]
    swapped = cf.relabel(factors, np.array([1, 6, 11]), {"texture": "solid"}, "m v1")
    assert swapped.tolist() == [0, 4, 8]
    assert cf.relabel(factors, swapped, {"texture": "stripes"}, "m v1").tolist() == [1, 5, 9]
    with pytest.raises(ValidationError, match=r"factor_classes: unknown class factor 'colour'"):
        cf.sample_labels(factors, {"colour": "red"}, 1, rng, "m v1")
    with pytest.raises(ValidationError, match=r"factor_classes\['texture'\]: unknown class 'plaid'"):
        cf.relabel(factors, np.array([0]), {"texture": "plaid"}, "m v1")
    with pytest.raises(ValidationError, match="factor_classes: model m v1 has no class factors"):
        cf.sample_labels({}, {"texture": "dots"}, 1, rng, "m v1")
    assert cf.of_manifest({"class_factors": factors}) == factors and cf.of_manifest({}) == {}


def test_factor_classes_on_the_wire():
    from latentserve.client.messages import build_edit_request, build_sample_request
    from latentserve.services.frontends.grpc import codec
    from latentserve.services.frontends.http import convert, schemas

    req = build_sample_request("m", 2, factor_classes={"texture": "dots"})
    assert codec.sample_call(req, 0.0).factor_classes == {"texture": "dots"}
    edit = build_edit_request("m", [(np.zeros(4, np.float32), 1)], [], factor_classes={"shape": "square"})
    call = codec.edit_call(edit)
    assert call.factor_classes == {"shape": "square"} and call.moves == []
    with pytest.raises(ValidationError, match="at least one move or factor_classes"):
        build_edit_request("m", [(np.zeros(4, np.float32), 1)], [])
    with pytest.raises(ValidationError, match="factor_classes"):
        build_sample_request("m", 1, label=0, factor_classes={"texture": "dots"})
    with pytest.raises(ValidationError, match="factor_classes must map"):
        build_sample_request("m", 1, factor_classes={"texture": 3})
    body = schemas.SampleRequest(n=2, factor_classes={"texture": "dots"})
    assert convert.sample_call("m", body, 0.0).factor_classes == {"texture": "dots"}
    body = schemas.EditRequest(inputs=[{"latent": {"values": [0.0, 1.0], "label": 1}}], factor_classes={"texture": "solid"})
    assert convert.edit_call("m", body).factor_classes == {"texture": "solid"}
