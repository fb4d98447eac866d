"""A small conditional PixelCNN: the autoregressive decoder of the VAE's `decoder="pixelcnn"` option.

The thesis's first contribution (a VAE whose latent carries global structure while an autoregressive decoder
models local detail): p(x | z, y) = prod_i p(x_i | x_<i, c(z, y)) in raster order, each sub-pixel a
discretised logistic on the 256 levels of [-1, 1] (channels of one pixel independent given the context). The
context c is the feed-forward VAE decoder's image from (z, y), which an auxiliary reconstruction loss keeps
informative, so the latent is not ignored by a strong decoder.

Masked convolutions (van den Oord et al. 2016): the first is type A (a pixel never sees itself), the rest type B
(a position sees itself, i.e. what earlier layers computed from strictly earlier pixels). Every convolution is
*valid* (no padding) on an input padded once by `margin` zeros, so the network's output for pixel (r, c) is a
function of the (2 margin + 1)^2 patch around it alone: training runs it on whole padded images, sampling on
one patch per step (the exported `ar_step` graph) with identical results. An `inside` channel of the context
marks the real image (1) against the padding (0).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

FIRST_KERNEL = 5  # the type-A convolution's kernel
LOG_SCALE_RANGE = (-7.0, 2.0)  # logistic log-scales are clamped here: sharp enough for 8 bits, never degenerate


def causal_mask(kernel: int, mask_type: str) -> torch.Tensor:
    """(kernel, kernel) float mask of the positions a masked convolution may read, centre at kernel // 2:
    rows above the centre, and in the centre row the columns left of it (type A) or up to it (type B)."""
    k = kernel // 2
    mask = torch.zeros(kernel, kernel)
    mask[:k] = 1.0
    mask[k, :k + (1 if mask_type == "B" else 0)] = 1.0
    return mask


class MaskedConv2d(nn.Conv2d):
    """A valid (unpadded) convolution whose kernel is multiplied by `causal_mask` on every forward."""

    def __init__(self, c_in: int, c_out: int, kernel: int, mask_type: str) -> None:
        super().__init__(c_in, c_out, kernel, padding=0)
        self.register_buffer("mask", causal_mask(kernel, mask_type)[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias)


def _crop(t: torch.Tensor, k: int) -> torch.Tensor:
    return t[:, :, k:t.shape[2] - k, k:t.shape[3] - k] if k else t


class PixelCNN(nn.Module):
    """(pixels padded (B,3,H+2M,W+2M), context padded (B,Cc,H+2M,W+2M)) -> (mean, log_scale) (B,3,H,W) each,
    M = `margin`. For the output at pixel (r, c) only padded rows r..r+M-1 and row r+M left of column c+M of
    `pixels` matter (the causal past); `context` is read around the pixel freely."""

    def __init__(self, context_channels: int, width: int, layers: int) -> None:
        super().__init__()
        self.margin = FIRST_KERNEL // 2 + layers
        self.first = MaskedConv2d(3, width, FIRST_KERNEL, "A")
        self.first_context = nn.Conv2d(context_channels, width, FIRST_KERNEL)
        self.blocks = nn.ModuleList([MaskedConv2d(width, width, 3, "B") for _ in range(layers)])
        self.block_context = nn.ModuleList([nn.Conv2d(context_channels, width, 1) for _ in range(layers)])
        self.out = nn.Conv2d(width, 6, 1)
        self.out_context = nn.Conv2d(context_channels, 6, 1)

    def forward(self, pixels: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = FIRST_KERNEL // 2
        h = F.elu(self.first(pixels) + self.first_context(context))  # (B,W,H+2M-4,...)
        for i, (block, ctx) in enumerate(zip(self.blocks, self.block_context)):
            m += 1
            h = _crop(h, 1) + block(F.elu(h)) + ctx(_crop(context, m))  # residual, gated by the context
        out = self.out(F.elu(h)) + self.out_context(_crop(context, self.margin))  # (B,6,H,W)
        return out[:, :3], out[:, 3:].clamp(*LOG_SCALE_RANGE)


def discretized_logistic_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log P(x) per sub-pixel (same shape, nats) of x on the 256 levels of [-1, 1] under a logistic discretised
    to those levels (PixelCNN++), the two end levels taking the tails."""
    centred = x - mean
    inv_s = torch.exp(-log_scale)
    plus, minus = inv_s * (centred + 1.0 / 255.0), inv_s * (centred - 1.0 / 255.0)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the x = -1 level
    log_sf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): the x = +1 level
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * centred
    log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid) - math.log(127.5)  # when delta underflows
    inner = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_pdf_mid)
    return -torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_sf_minus, inner))


def discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """-log P(x) per sub-pixel of x on the 256 levels of [-1, 1] under N(mean, scale^2) discretised to them (the
    plain VAE's likelihood made discrete, so its bits/dim compare with the autoregressive decoder's)."""
    s = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    upper, lower = (x + 1.0 / 255.0 - mean) / s, (x - 1.0 / 255.0 - mean) / s
    log_cdf_up = torch.special.log_ndtr(upper)
    log_sf_low = torch.special.log_ndtr(-lower)
    delta = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    log_pdf = -0.5 * ((x - mean) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi) - math.log(127.5)
    inner = torch.where(delta > 1e-6, torch.log(delta.clamp_min(1e-12)), log_pdf)
    return -torch.where(x < -0.999, log_cdf_up, torch.where(x > 0.999, log_sf_low, inner))


class ContextGraph(nn.Module):
    """Export wrapper `ar_context`: (latent (B,D), label (B,)) -> context (B,4,H+2M,W+2M): the feed-forward
    decoder's image and the inside mask, padded by the margin (computed once per decode)."""

    def __init__(self, decoder: nn.Module, margin: int) -> None:
        super().__init__()
        self.decoder, self.margin = decoder, margin

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return make_context(self.decoder(latent, label), self.margin)


class StepGraph(nn.Module):
    """Export wrapper `ar_step`: (pixels (B,3,P,P), context (B,4,P,P)), P = 2M+1 -> (mean (B,3), log_scale (B,3))
    of the patch's centre pixel."""

    def __init__(self, net: PixelCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.net(pixels, context)  # (B,3,1,1) each
        return mean.flatten(1), log_scale.flatten(1)


def make_context(sketch: torch.Tensor, margin: int) -> torch.Tensor:
    """Feed-forward image (B,3,H,W) -> padded context (B,4,H+2M,W+2M): the image and a 1-inside mask."""
    inside = torch.ones_like(sketch[:, :1])
    return F.pad(torch.cat([sketch, inside], dim=1), (margin,) * 4)


CONTEXT_CHANNELS = 4
