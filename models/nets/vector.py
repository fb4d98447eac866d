"""Networks of the vector family: its config, the layer generator and the differentiable rasteriser.

- `VectorConfig`: the GAN recipe (models/nets/gan.py `GANConfig`: discriminator, encoder, mode-regularised
  joint training, EMA) plus what the generator draws: `layers` (kinds, in compositing order), `edge_px` (the
  edge's softness in output pixels) and its annealing for training.
- `VectorGenerator`: (latent (B,Z), label (B,)) -> image (B,3,S,S) in [-1,1], drawn from its layers (B,L,10)
  and background (B,3) (`parameters_of`). An MLP of (z, class embedding) outputs, per layer, a centre, a rotation, two axis lengths and a
  second rotation (A = R(theta) diag(sx, sy) R(phi): any affine map with positive, bounded axis lengths, so A
  is never singular), an RGB colour and an opacity; plus a background colour. `rasterise` draws them.
- `rasterise`: the torch twin of models/vector.py `render` (same formulas; that module documents the layer
  layout and why serving draws with numpy). Coverage is sigmoid(-distance / edge_px) with the distance in output
  pixels, so gradients reach every parameter (centre, matrix, colour, opacity, background) from every pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from latentserve.errors import ValidationError
from latentserve.models import vector as vec
from latentserve.models.nets.gan import GANConfig

AXIS_RANGE = (0.02, 0.62)  # a layer's axis lengths (image fractions): from a speck to past the frame's half


@dataclass
class VectorConfig(GANConfig):
    """GANConfig + the layers. The GAN fields keep their meaning (g_arch / g_width / g_embed are unused: the
    generator is `VectorGenerator`; g_hidden is its MLP width)."""

    # layer kinds in compositing order (models/vector.py): ellipse | polygon3 .. polygon12, comma-separated
    layers: str = "ellipse,polygon3,polygon4"
    edge_px: float = vec.DEFAULT_EDGE_PX  # edge softness (logistic scale) in output pixels, served. (0.05, 4]
    # training starts with softer edges (gradients from further away) and anneals linearly to edge_px. >= edge_px
    edge_px_start: float = 1.0
    edge_anneal_steps: int = 1500  # >= 1
    g_hidden: int = 256  # MLP width of the layer generator. 8..4096
    g_depth: int = 3  # hidden layers of the MLP. 1..8
    # which layer kinds may draw each class, "class:kind,class:kind" (e.g. "square:polygon4,ellipse:ellipse,
    # triangle:polygon3"): the other layers' opacity is 0 for that class. Empty or an unnamed class: every layer.
    # A prior the user states, not a learned choice: without it, reconstruction settles in a local optimum where
    # one ellipse approximates every class (a disc) and the polygon layers never become visible.
    class_layers: str = ""

    def validate(self) -> None:
        super().validate()
        vec.check_kinds(self.kinds())
        for name, lo, hi in (("edge_px", 0.05, 4.0), ("edge_px_start", self.edge_px, 8.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValidationError(f"VectorConfig.{name}={v!r} out of range [{lo}, {hi}]")
        for name, lo, hi in (("edge_anneal_steps", 1, 10**7), ("g_depth", 1, 8)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValidationError(f"VectorConfig.{name} must be an int in [{lo}, {hi}], got {v!r}")

    def kinds(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in str(self.layers).split(",") if k.strip())

    def layer_gate(self, class_names) -> torch.Tensor:
        """(C, L) 0/1: layer l may draw class c (class_layers, checked against the data's class names)."""
        kinds, names = self.kinds(), list(class_names)
        gate = torch.ones(len(names), len(kinds))
        for item in (i.strip() for i in str(self.class_layers).split(",") if i.strip()):
            cls, sep, kind = (v.strip() for v in item.partition(":"))
            if not sep or cls not in names or kind not in kinds:
                raise ValidationError(f"VectorConfig.class_layers entry {item!r}: use class:kind with a class of "
                                      f"{names} and a kind of {list(kinds)}")
            row = gate[names.index(cls)]  # a view: writes go into gate
            if row.all():  # the first entry for a class replaces 'every layer'
                row.zero_()
            row[[i for i, k in enumerate(kinds) if k == kind]] = 1.0
        return gate


def _signed_distance(kind: str, p: torch.Tensor, c: torch.Tensor, a: torch.Tensor, size: int) -> torch.Tensor:
    """Signed distance in output pixels (> 0 outside) of the pixel centres p (P, 2) to one layer per row:
    c (B, 2), a (B, 2, 2) -> (B, P). Same formulas as models/vector.py `_signed_distance`."""
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]  # > 0 by construction
    inv = torch.stack([torch.stack([a[:, 1, 1], -a[:, 0, 1]], -1),
                       torch.stack([-a[:, 1, 0], a[:, 0, 0]], -1)], 1) / det[:, None, None]  # (B, 2, 2)
    q = torch.einsum("bij,bpj->bpi", inv, p[None] - c[:, None])  # (B, P, 2) canonical coordinates
    if kind == "ellipse":
        rad = torch.sqrt((q ** 2).sum(-1) + 1e-12)  # (B, P)
        grad = torch.einsum("bpi,bij->bpj", q / rad[..., None], inv)  # A^-T q/|q|
        return (rad - 1.0) / torch.sqrt((grad ** 2).sum(-1) + 1e-12) * size
    sides = int(kind[len("polygon"):])
    normals = torch.as_tensor(vec.polygon_normals(sides), dtype=p.dtype, device=p.device)  # (K, 2)
    h = q @ normals.T - math.cos(math.pi / sides)  # (B, P, K)
    scale = torch.sqrt((torch.einsum("ki,bij->bkj", normals, inv) ** 2).sum(-1))  # (B, K)
    return (h / scale[:, None]).amax(-1) * size


def rasterise(layers: torch.Tensor, background: torch.Tensor, kinds, size: int, edge_px: float) -> torch.Tensor:
    """layers (B, L, 10), background (B, 3) in [0, 1] -> image (B, 3, size, size) in [-1, 1]."""
    t = (torch.arange(size, dtype=layers.dtype, device=layers.device) + 0.5) / size
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    p = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)  # (P, 2), row-major pixels
    img = background[:, :, None].expand(-1, -1, size * size)  # (B, 3, P)
    for i, kind in enumerate(kinds):
        layer = layers[:, i]
        d = _signed_distance(kind, p, layer[:, 0:2], layer[:, 2:6].reshape(-1, 2, 2), size)  # (B, P)
        m = (layer[:, 9:10] * torch.sigmoid(-d / edge_px))[:, None]  # (B, 1, P)
        img = img * (1.0 - m) + layer[:, 6:9, None] * m
    return (img * 2.0 - 1.0).reshape(-1, 3, size, size)


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (..., 2, 2)


class VectorGenerator(nn.Module):
    """(latent (B,Z), label (B,)) -> image (B,3,S,S) in [-1,1] (what the GAN recipe trains on);
    `parameters_of` gives the layers (B,L,10) and background (B,3) the image is drawn from."""

    RAW_PER_LAYER = 10  # centre 2, rotations 2, log-axes 2, colour 3, opacity 1

    def __init__(self, z_dim: int, n_classes: int, image_size: int, kinds, hidden: int = 256, depth: int = 3,
                 embed: int = 32, edge_px: float = vec.DEFAULT_EDGE_PX, gate: torch.Tensor | None = None) -> None:
        super().__init__()
        self.kinds = vec.check_kinds(kinds)
        self.z_dim, self.n_classes, self.image_size = z_dim, n_classes, image_size
        self.edge_px = float(edge_px)  # training anneals it (VectorFamily); export uses the config's value
        self.embed = nn.Embedding(n_classes, embed)
        layers: list[nn.Module] = []
        width = z_dim + embed
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        # (C, L) which layers may draw each class (VectorConfig.layer_gate); derived from the config, not saved
        gate = torch.ones(n_classes, len(self.kinds)) if gate is None else gate
        if tuple(gate.shape) != (n_classes, len(self.kinds)):
            raise ValidationError(f"layer gate of shape {tuple(gate.shape)}; expected {(n_classes, len(self.kinds))}")
        self.register_buffer("gate", gate.float(), persistent=False)
        self.head = nn.Linear(hidden, len(self.kinds) * self.RAW_PER_LAYER + 3)
        with torch.no_grad():  # start from small centred layers of mid opacity, not saturated sigmoids
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def parameters_of(self, latent: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layers (B, L, 10), background (B, 3)) in the layout of models/vector.py."""
        raw = self.head(self.body(torch.cat([latent, self.embed(label)], 1)))
        n = len(self.kinds)
        r = raw[:, : n * self.RAW_PER_LAYER].reshape(-1, n, self.RAW_PER_LAYER)  # (B, L, 10)
        centre = 0.5 + 0.45 * torch.tanh(r[..., 0:2])  # (B, L, 2) image fractions
        lo, hi = AXIS_RANGE
        axes = lo + (hi - lo) * torch.sigmoid(r[..., 4:6] - 1.0)  # (B, L, 2)
        # R(theta) diag(axes) R(phi); scaling R(theta)'s columns is the diagonal product (exports to any opset)
        a = (_rotation(math.pi * r[..., 2]) * axes[..., None, :]) @ _rotation(math.pi * r[..., 3])  # (B,L,2,2)
        colour = torch.sigmoid(r[..., 6:9])
        opacity = torch.sigmoid(r[..., 9:10]) * self.gate[label][..., None]  # (B, L, 1)
        layers = torch.cat([centre, a.reshape(-1, n, 4), colour, opacity], -1)  # (B, L, 10)
        background = torch.sigmoid(raw[:, n * self.RAW_PER_LAYER:] - 2.0)  # (B, 3), dark to start
        return layers, background

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        layers, background = self.parameters_of(latent, label)
        return rasterise(layers, background, self.kinds, self.image_size, self.edge_px)
