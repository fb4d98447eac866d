"""The decoupled shape / texture generator (`GANConfig.g_arch = "decoupled"`), for data whose classes are
(shape, texture) pairs (`textured`: label = shape * n_textures + texture, `Dataset.info["class_factors"]`).

(latent (B,D) f32, label (B,) i64) -> image (B,3,S,S) in [-1,1], the decoder graph's contract, composed from two
branches that never see each other's inputs:
- shape branch: (z[:, :z_shape], shape class) -> mask (B,1,S,S) in (0,1) (a sigmoid);
- texture branch: (z[:, z_shape:], texture class) -> texture (B,3,S,S) in (-1,1) (a tanh) over the whole frame;
- background: one learned colour (3,) (starts black, the data's background);
image = mask * texture + (1 - mask) * background. So changing the texture class or the texture latent cannot move
the outline, and the shape's cannot recolour it: an Edit that swaps the texture keeps the shape exactly, and
swapping back gives the first image again. Each branch is a "decoder" generator (models/nets/gan.py).
"""
from __future__ import annotations

import torch
from torch import nn

from latentserve.errors import ValidationError
from latentserve.models.nets.gan import DecoderGenerator, GANConfig

BRANCH_FACTORS = ("shape", "texture")  # the class factors, in label order (label = shape * n_textures + texture)
SHAPE_FACTORS = ("scale", "rotation", "x", "y")  # continuous factors the shape branch owns (the rest: texture's)


def class_factor_sizes(class_factors: dict | None, n_classes: int) -> tuple[int, int]:
    """(number of shapes, number of textures) from the data's class factors; ValidationError if they are not the
    two BRANCH_FACTORS or do not multiply to n_classes."""
    if not isinstance(class_factors, dict) or list(class_factors) != list(BRANCH_FACTORS):
        raise ValidationError(f"g_arch 'decoupled' needs data whose classes are (shape, texture) pairs (class "
                              f"factors {list(BRANCH_FACTORS)}, e.g. --data textured), got {class_factors!r}")
    n_shapes, n_textures = (len(class_factors[k]) for k in BRANCH_FACTORS)
    if n_shapes * n_textures != n_classes:
        raise ValidationError(f"class factors give {n_shapes} x {n_textures} classes, the data has {n_classes}")
    return n_shapes, n_textures


def latent_branches(z_dim: int, z_shape: int) -> dict[str, tuple[int, int]]:
    """{branch: (start, stop)} of the latent's coordinates (z_shape 0 = half)."""
    cut = z_shape or z_dim // 2
    return {"shape": (0, cut), "texture": (cut, z_dim)}


class DecoupledGenerator(nn.Module):
    """(latent (B,D) f32, label (B,) i64) -> image (B,3,S,S) f32 in [-1,1]; see the module doc."""

    def __init__(self, z_dim: int, z_shape: int, n_shapes: int, n_textures: int, image_size: int = 32,
                 width: int = 32, embed: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.z_dim, self.n_textures, self.image_size = z_dim, n_textures, image_size
        self.n_classes = n_shapes * n_textures
        self.cut = latent_branches(z_dim, z_shape)["shape"][1]
        self.shape = DecoderGenerator(self.cut, n_shapes, image_size, width, embed, hidden, out_channels=1)
        self.texture = DecoderGenerator(z_dim - self.cut, n_textures, image_size, width, embed, hidden)
        self.background = nn.Parameter(torch.full((3,), -3.0))  # tanh(-3) ~ -0.995: black

    def parts(self, latent: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mask (B,1,S,S) in (0,1), texture (B,3,S,S) in (-1,1), background (1,3,1,1) in (-1,1)."""
        shape = torch.div(label, self.n_textures, rounding_mode="floor")  # (B,)
        texture = label - shape * self.n_textures
        mask = torch.sigmoid(self.shape.pre_activation(latent[:, :self.cut], shape))
        tex = torch.tanh(self.texture.pre_activation(latent[:, self.cut:], texture))
        return mask, tex, torch.tanh(self.background).reshape(1, 3, 1, 1)

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        mask, tex, bg = self.parts(latent, label)
        return mask * tex + (1.0 - mask) * bg  # (B,3,S,S)


def build(config: GANConfig, n_classes: int, image_size: int, class_factors: dict | None) -> DecoupledGenerator:
    """The decoupled generator of a GANConfig with g_arch "decoupled" for data with these class factors."""
    n_shapes, n_textures = class_factor_sizes(class_factors, n_classes)
    return DecoupledGenerator(config.z_dim, config.z_shape, n_shapes, n_textures, image_size, config.g_width,
                              config.g_embed, config.g_hidden)
