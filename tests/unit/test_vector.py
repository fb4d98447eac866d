"""Vector layers (models/vector.py, models/nets/vector.py): the numpy renderer serving uses and the torch
rasteriser training uses agree; a drawing at two sizes agrees after downsampling; gradients reach every
parameter; the SVG is well-formed and an independent SVG renderer (cairosvg) draws the same picture."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from latentserve.errors import ValidationError
from latentserve.models import vector as vec
from latentserve.models.families.vector import VectorFamily
from latentserve.models.nets.vector import VectorConfig, VectorGenerator, rasterise

KINDS = ("ellipse", "polygon3", "polygon4")


def _layers(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random drawings: one layer of each kind per image, inside the frame, opaque enough to see."""
    torch.manual_seed(seed)
    g = VectorGenerator(8, 3, 32, KINDS)
    with torch.no_grad():
        g.head.weight.normal_(0.0, 1.0)
        g.head.bias.normal_(0.0, 0.5)
        layers, background = g.parameters_of(torch.randn(n, 8), torch.arange(n) % 3)
    layers[..., 9] = 0.5 + 0.5 * layers[..., 9]
    return layers.double().numpy(), background.double().numpy()


def test_numpy_renderer_equals_the_training_rasteriser():
    layers, bg = _layers()
    for size in (16, 32, 96):
        a = vec.render(layers, bg, KINDS, size, 0.25)
        b = rasterise(torch.from_numpy(layers), torch.from_numpy(bg), KINDS, size, 0.25).numpy()
        assert np.abs(a - b).max() < 1e-4, size


def test_two_resolutions_agree_after_downsampling():
    layers, bg = _layers()
    small = vec.render(layers, bg, KINDS, 32)
    big = vec.render(layers, bg, KINDS, 128).reshape(len(layers), 3, 32, 4, 32, 4).mean(axis=(3, 5))
    diff = np.abs(small - big)
    # only edge pixels differ (the sharper edge box-filtered vs the 32 px edge), by a fraction of a level
    assert diff.mean() < 0.01 and diff.max() < 0.25
    assert (diff > 0.05).mean() < 0.02


def test_edges_are_equally_sharp_in_pixels_at_every_size():
    # an axis-aligned square (the canonical diamond turned by 45 degrees): the 10-90% rise of its left edge is
    # ~1.1 px (2 ln 9 edge_px) at 32 px and at 512 px
    c = 0.3 * np.sqrt(0.5)
    layers = np.zeros((1, 1, 10))
    layers[0, 0] = [0.5, 0.5, c, -c, c, c, 1.0, 1.0, 1.0, 1.0]
    for size in (32, 512):
        row = (vec.render(layers, np.zeros((1, 3)), ("polygon4",), size)[0, 0, size // 2] + 1) / 2
        rise = np.interp([0.1, 0.9], row[: size // 2], np.arange(size // 2))
        assert 0.8 < rise[1] - rise[0] < 1.7, (size, rise)  # linear interpolation between pixel samples


def test_gradients_reach_every_parameter():
    layers, bg = _layers(3)
    lt = torch.from_numpy(layers).float().requires_grad_(True)
    bt = torch.from_numpy(bg).float().requires_grad_(True)
    target = torch.rand(3, 3, 32, 32) * 2 - 1
    ((rasterise(lt, bt, KINDS, 32, 0.5) - target) ** 2).mean().backward()
    assert torch.isfinite(lt.grad).all() and torch.isfinite(bt.grad).all()
    assert (lt.grad.abs() > 0).all(), "every layer parameter of every image gets a gradient"
    assert (bt.grad.abs() > 0).all()
    g = VectorGenerator(8, 3, 32, KINDS)
    ((g(torch.randn(4, 8), torch.arange(4) % 3) - target[:1]) ** 2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


def _cairo_render(svg: bytes) -> np.ndarray:
    cairosvg = pytest.importorskip("cairosvg", reason="the dev extra's cairosvg renders SVG independently")
    png = cairosvg.svg2png(bytestring=svg)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255.0


def test_svg_parses_and_renders_the_same_shapes():
    layers, bg = _layers()
    for i in range(len(layers)):
        svg = vec.to_svg(layers[i], bg[i], KINDS, 64)
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("width") == "64"
        assert [g.get("data-layer") for g in root.findall("{http://www.w3.org/2000/svg}g")] == list(KINDS)
        ours = (vec.render(layers[i:i + 1], bg[i:i + 1], KINDS, 64)[0].transpose(1, 2, 0) + 1) / 2
        theirs = _cairo_render(svg)
        diff = np.abs(ours - theirs).max(axis=2)
        # the same shapes: colours agree away from the edges (8-bit hex colours), edges anti-aliased differently
        assert np.median(diff) < 0.01 and (diff > 0.1).mean() < 0.03, (i, np.median(diff), (diff > 0.1).mean())


def test_bad_kinds_and_shapes_are_refused():
    with pytest.raises(ValidationError, match="polygon2"):
        vec.check_kinds(["ellipse", "polygon2"])
    with pytest.raises(ValidationError, match="layers must be"):
        vec.render(np.zeros((1, 2, 10)), np.zeros((1, 3)), KINDS, 32)
    with pytest.raises(ValidationError, match="edge_px"):
        VectorConfig(edge_px=0.0)


def test_family_exports_layers_beside_the_image():
    meta = {"image_size": 32, "class_names": ["square", "ellipse", "triangle"], "factors": []}
    fam = VectorFamily(VectorConfig(z_dim=8, g_hidden=16, g_depth=1, d_width=4, e_width=4, e_hidden=16), meta)
    x, y = torch.rand(8, 3, 32, 32) * 2 - 1, torch.arange(8) % 3
    out = fam.train_step(x, y, torch.zeros(8, 0), 0)
    assert out["edge_px"] == fam.config.edge_px_start
    dec = fam.graphs()["decoder"]
    assert dec.output_names == ["image", "layers", "background"]
    image, layers, background = dec.module(*dec.example_inputs)
    assert image.shape == (2, 3, 32, 32) and layers.shape == (2, 3, 10) and background.shape == (2, 3)
    drawn = vec.render(layers.numpy(), background.numpy(), KINDS, 32, fam.config.edge_px)
    assert np.abs(drawn - image.numpy()).max() < 1e-4  # the served drawing is the exported image
    assert fam.manifest_extra()["vector"] == {"layers": list(KINDS), "edge_px": 0.25, "params": list(vec.PARAMS)}


def test_class_layers_gate_the_opacity():
    """class_layers: only the named kinds draw a class (opacity 0 for the rest); unnamed classes keep every layer;
    a class or kind that does not exist is refused naming the field."""
    names = ["square", "ellipse", "triangle"]
    c = VectorConfig(layers="ellipse,polygon3,polygon4", class_layers="square:polygon4,triangle:polygon3")
    gate = c.layer_gate(names)
    assert gate.tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 0]]
    torch.manual_seed(0)
    g = VectorGenerator(8, 3, 32, KINDS, gate=gate)
    layers, _ = g.parameters_of(torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2]))
    visible = (layers[..., 9] > 0).int().tolist()
    assert visible == [[0, 0, 1], [1, 1, 1], [0, 1, 0]] * 2
    assert "gate" not in g.state_dict()  # derived from the config: old checkpoints load unchanged
    for bad in ("circle:ellipse", "square:polygon5", "square"):
        with pytest.raises(ValidationError, match="class_layers"):
            VectorConfig(class_layers=bad).layer_gate(names)
