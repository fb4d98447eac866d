"""The spatial GAN family ("sgan", issue #22 part 4): periodic spatial GAN for textures of any size.

Networks in models/nets/sgan.py. Training step on a batch of real texture crops (x, y): draw global codes and
phases (the latent), a local noise grid of the crop's size / cell, the class of the real batch; one hinge-loss
step of the patch discriminator, one of the generator, then the EMA of the generator (what samples and export
use). Exported graphs:
- `decoder`: latent (B, global_dim + periodic), label (B,), noise (B, local_dim, h, w) -> image (B, 3, h*cell,
  w*cell) in [-1, 1], waves rounded to whole cycles over the image (it tiles seamlessly); h and w are dynamic,
  so one graph draws any size. The latent's prior is `texture`: global code ~ N(0, I), phases ~ U[0, 1).
There is no encoder (a texture GAN has no inverse here): Interpolate blends latents, Edit changes the class.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from latentserve.errors import ValidationError
from latentserve.models.families.base import ExportGraph, Family
from latentserve.models.nets.sgan import PatchDiscriminator, SGANConfig, SpatialGenerator
from latentserve.models.texture_grid import texture_spec


def draw_latent(n: int, config: SGANConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, latent_dim): global codes ~ N(0, I), phases / (2 pi) ~ U[0, 1)."""
    return torch.cat([torch.randn(n, config.global_dim, generator=generator),
                      torch.rand(n, config.periodic, generator=generator)], 1)


class TextureDecoderGraph(nn.Module):
    """Export wrapper: (latent, label, noise) -> tileable image (B, 3, h*cell, w*cell)."""

    def __init__(self, g: SpatialGenerator) -> None:
        super().__init__()
        self.g = g

    def forward(self, latent: torch.Tensor, label: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.g(latent, label, noise, tile=True)


class SGANFamily(Family):
    name = "sgan"
    config_cls = SGANConfig
    default_steps = 3000

    def __init__(self, config: SGANConfig, data_meta: dict, device: torch.device) -> None:
        super().__init__(config, data_meta, device)
        c = config
        if self.image_size % c.cell:
            raise ValidationError(f"SGANConfig: upsamplings {c.upsamplings} need image_size a multiple of {c.cell}, "
                                  f"got {self.image_size}")
        self.g = SpatialGenerator(c, self.n_classes).to(device)
        self.d = PatchDiscriminator(c, self.n_classes).to(device)
        self.g_ema = copy.deepcopy(self.g).requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=c.lr_g, betas=(c.beta1, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=c.lr_d, betas=(c.beta1, 0.999))

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.g, "discriminator": self.d, "generator_ema": self.g_ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def noise(self, n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, local_dim, size/cell, size/cell) standard normal local codes for a size x size output."""
        cells = size // self.config.cell
        return torch.randn(n, self.config.local_dim, cells, cells, generator=generator)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, float]:
        c, b = self.config, len(x)
        z = draw_latent(b, c).to(self.device)
        noise = self.noise(b, x.shape[-1]).to(self.device)
        fake = self.g(z, y, noise)
        d_real, d_fake = self.d(x, y), self.d(fake.detach(), y)
        loss_d = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        loss_g = -self.d(fake, y).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        with torch.no_grad():
            for pe, p in zip(self.g_ema.parameters(), self.g.parameters()):
                pe.lerp_(p, 1.0 - c.ema_decay)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "d_real": d_real.mean().item(),
                "d_fake": d_fake.mean().item()}

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, size: int, seed: int, tile: bool = True) -> torch.Tensor:
        """EMA generator's textures (N, 3, size, size) in [-1, 1] for the given classes (size a multiple of cell)."""
        gen = torch.Generator().manual_seed(int(seed))
        z = draw_latent(len(labels), self.config, gen).to(self.device)
        noise = self.noise(len(labels), size, gen).to(self.device)
        return self.g_ema(z, labels.to(self.device), noise, tile=tile)

    @torch.no_grad()
    def sample_grid(self, n_per_class: int, seed: int) -> torch.Tensor:
        labels = torch.arange(self.n_classes).repeat_interleave(n_per_class)
        return self.sample(labels, self.image_size, seed)

    def graphs(self) -> dict[str, ExportGraph]:
        g = copy.deepcopy(self.g_ema).eval().requires_grad_(False)
        c = self.config
        return {"decoder": ExportGraph(
            module=TextureDecoderGraph(g).eval(),
            example_inputs=(torch.zeros(2, c.latent_dim, device=self.device),
                            torch.zeros(2, dtype=torch.int64, device=self.device),
                            torch.zeros(2, c.local_dim, 3, 4, device=self.device)),
            input_names=["latent", "label", "noise"], output_names=["image"],
            doc="tileable texture of (h, w) = noise grid x cell",
            # ONNX dynamic axes beyond the batch: the noise grid's and so the image's height and width
            extra={"dynamic_axes": {"latent": {0: "batch"}, "label": {0: "batch"},
                                    "noise": {0: "batch", 2: "cells_h", 3: "cells_w"},
                                    "image": {0: "batch", 2: "height", 3: "width"}}})}

    def manifest_extra(self) -> dict:
        """The `texture` prior (what a Sample draws), the `texture` block (the sizes served: texture_spec) and
        the classes as one class factor, so Edit / Sample `factor_classes {"texture": name}` change the class of
        a latent (services/core/class_factors.py)."""
        c = self.config
        return {"prior": {"type": "texture", "global_dim": c.global_dim, "periodic": c.periodic,
                          "local_dim": c.local_dim, "cell_px": c.cell,
                          "doc": "latent = global code ~ N(0, I) (global_dim) + phases / 2 pi ~ U[0, 1) (periodic); "
                                 "the local noise grid (local_dim, size/cell_px, size/cell_px) ~ N(0, I) is drawn "
                                 "by the server from a seed per row (models/texture_grid.py)"},
                "texture": texture_spec(c.cell, c.global_dim, c.periodic, c.local_dim),
                "class_factors": {"texture": list(self.data_meta["class_names"])},
                "latent_shape": [c.latent_dim]}
