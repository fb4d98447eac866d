"""Networks of the spatial GAN family ("sgan", issue #22 part 4): textures of any size.

`SpatialGenerator` is fully convolutional and driven by a grid of latents (Jetchev et al. 2016, SGAN) with the
global and periodic components of PSGAN (Bergmann et al. 2017): at every cell of an h x w grid
- a global code (`global_dim`, the same at every cell) with the class embedding: what texture;
- a local code (`local_dim`, independent per cell): where its random details fall;
- `periodic` plane waves sin(2 pi k . x + phi): wave vectors k (cycles per pixel) computed from the global code
  and class by an MLP, one phase phi per wave and image; fed at every resolution, so stripes and lattices stay
  straight and in phase over any distance.
Each of `upsamplings` stages doubles the resolution (nearest + 3x3 convs), so the image is 2**upsamplings
times the grid. Every convolution pads circularly: the image is a function on a torus, and when the wave
vectors are rounded to whole cycles over the output (`tile=True`, what the exported decoder does) the texture
tiles seamlessly. Training uses unrounded waves on random crops.

The latent a caller holds is (global code, phases / (2 pi)): `latent_dim = global_dim + periodic`; the local
grid is a separate `noise` input whose spatial size sets the output size.
`PatchDiscriminator`: strided convolutions with spectral norm to a map of patch scores with a class projection
(Miyato & Koyama 2018) at every patch, averaged: it judges local texture, whatever the crop size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from latentserve.errors import ValidationError


@dataclass
class SGANConfig:
    """Recipe of the spatial GAN family (textures at 32 px crops)."""

    global_dim: int = 16  # global code size; 1..256
    local_dim: int = 8  # local code channels per grid cell; 0..64
    periodic: int = 4  # plane waves (PSGAN's periodic part); 0 = the plain SGAN; 0..16
    embed_dim: int = 8  # class embedding size (joins the global code); 1..64
    width: int = 16  # channels of the last stage; x2 per earlier stage (cap 8x); 8..256
    upsamplings: int = 3  # stages doubling the resolution: pixels per grid cell = 2**upsamplings; 1..5
    d_width: int = 16  # discriminator channels after its first conv; x2 per stride-2 conv (cap 8x); 8..256
    d_layers: int = 3  # discriminator stride-2 convs (patch = receptive field of ~2**(d_layers+1) px); 2..5
    lr_g: float = 2e-4  # Adam learning rate of G; (0, 0.01]
    lr_d: float = 2e-4  # Adam learning rate of D; (0, 0.01]
    beta1: float = 0.5  # Adam beta1 (G and D); [0, 1)
    ema_decay: float = 0.999  # EMA of G's weights (samples and export use the EMA); [0, 1)

    def __post_init__(self) -> None:
        for name, lo, hi in (("global_dim", 1, 256), ("local_dim", 0, 64), ("periodic", 0, 16), ("embed_dim", 1, 64),
                             ("width", 8, 256), ("upsamplings", 1, 5), ("d_width", 8, 256), ("d_layers", 2, 5)):
            v = getattr(self, name)
            _check(isinstance(v, int) and lo <= v <= hi, f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        for name in ("lr_g", "lr_d"):
            _check(0.0 < getattr(self, name) <= 0.01, f"{name} must be in (0, 0.01], got {getattr(self, name)}")
        _check(0.0 <= self.beta1 < 1.0, f"beta1 must be in [0, 1), got {self.beta1}")
        _check(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay}")

    @property
    def latent_dim(self) -> int:
        return self.global_dim + self.periodic

    @property
    def cell(self) -> int:
        """Pixels per grid cell along each axis."""
        return 2 ** self.upsamplings

    def to_dict(self) -> dict:
        return asdict(self)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValidationError(f"SGANConfig: {msg}")


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="circular")


def plane_waves(k: torch.Tensor, phase: torch.Tensor, h: int, w: int, step: float) -> torch.Tensor:
    """sin(2 pi (kx x + ky y) + phase) at the centres of an h x w map whose cells are `step` pixels apart:
    k (B, P, 2) cycles per pixel (x, y), phase (B, P) radians -> (B, P, h, w)."""
    ys = (torch.arange(h, dtype=k.dtype, device=k.device) + 0.5) * step  # (h,)
    xs = (torch.arange(w, dtype=k.dtype, device=k.device) + 0.5) * step  # (w,)
    arg = k[..., 0, None, None] * xs[None, None, None, :] + k[..., 1, None, None] * ys[None, None, :, None]
    return torch.sin(2 * math.pi * arg + phase[..., None, None])


class SpatialGenerator(nn.Module):
    """(latent (B, global_dim + periodic), label (B,), noise (B, local_dim, h, w)) -> image (B, 3, h*cell, w*cell)
    in [-1, 1]; `tile` rounds the waves to whole cycles over the image (seamless tiling)."""

    def __init__(self, config: SGANConfig, n_classes: int) -> None:
        super().__init__()
        c = config
        self.config = c
        self.embed = nn.Embedding(n_classes, c.embed_dim)
        cond = c.global_dim + c.embed_dim
        self.waves = nn.Sequential(nn.Linear(cond, 64), nn.LeakyReLU(0.2), nn.Linear(64, 2 * c.periodic)) \
            if c.periodic else None
        widths = [c.width * min(2 ** (c.upsamplings - i), 8) for i in range(c.upsamplings + 1)]  # coarse -> fine
        self.stem = _conv(cond + c.local_dim + c.periodic, widths[0])
        self.stages = nn.ModuleList(
            nn.ModuleList([_conv(widths[i] + c.periodic, widths[i + 1]), _conv(widths[i + 1], widths[i + 1])])
            for i in range(c.upsamplings))
        self.to_rgb = _conv(widths[-1], 3)

    def wave_vectors(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B, P, 2) cycles per pixel, each component within +-0.5 (Nyquist at full resolution)."""
        c = self.config
        cond = torch.cat([latent[:, : c.global_dim], self.embed(label)], 1)
        return 0.5 * torch.tanh(self.waves(cond)).view(-1, c.periodic, 2)

    def forward(self, latent: torch.Tensor, label: torch.Tensor, noise: torch.Tensor, tile: bool = False
                ) -> torch.Tensor:
        c = self.config
        b, _, h, w = noise.shape
        cond = torch.cat([latent[:, : c.global_dim], self.embed(label)], 1)  # (B, G + E)
        x = torch.cat([cond[:, :, None, None].expand(b, cond.shape[1], h, w), noise], 1)
        if c.periodic:
            k = self.wave_vectors(latent, label)  # (B, P, 2)
            if tile:  # whole cycles over the output: kx * W and ky * H integers; the size is read as a tensor from
                # the noise's shape, so a traced / exported graph keeps it dynamic
                size = torch._shape_as_tensor(noise)[2:].flip(0).to(k.dtype) * c.cell  # (2,) = (W, H) px
                k = torch.round(k * size) / size
            phase = 2 * math.pi * latent[:, c.global_dim:]  # (B, P)
            x = torch.cat([x, plane_waves(k, phase, h, w, float(c.cell))], 1)
        x = F.leaky_relu(self.stem(x), 0.2)
        for i, (conv1, conv2) in enumerate(self.stages):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if c.periodic:
                step = float(c.cell) / 2 ** (i + 1)
                x = torch.cat([x, plane_waves(k, phase, x.shape[2], x.shape[3], step)], 1)
            x = F.leaky_relu(conv2(F.leaky_relu(conv1(x), 0.2)), 0.2)
        return torch.tanh(self.to_rgb(x))


class PatchDiscriminator(nn.Module):
    """image (B, 3, H, W), label (B,) -> score (B,): the mean over patches of psi(h) + <embed(y), h>."""

    def __init__(self, config: SGANConfig, n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(config.d_layers):
            c_out = config.d_width * min(2 ** i, 8)
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c_in = c_out
        layers += [spectral_norm(nn.Conv2d(c_in, c_in, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.psi = spectral_norm(nn.Conv2d(c_in, 1, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, c_in))

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.body(image)  # (B, C, h, w)
        proj = (self.embed(label)[:, :, None, None] * h).sum(1, keepdim=True)  # (B, 1, h, w)
        return (self.psi(h) + proj).mean(dim=(1, 2, 3))
