"""Network of the normalizing-flow family: `FlowConfig` and `Flow`, a Glow-style multi-scale flow.

Per level: squeeze (C,H,W) -> (4C,H/2,W/2), then `steps` flow steps of [ActNorm -> invertible 1x1 conv (LU
parametrised) -> affine coupling], then half the channels are factored out (the last level keeps all) and
whitened by an affine map conditioned on the other half (Glow's learned split prior, written as a bijection
so it can live inside the map). The factored-out pieces, flattened and concatenated, are z (B, D=3*H*W). The prior is a class-conditional
diagonal Gaussian with a learned mean and log-std per class and dimension. By default the map x <-> z itself
does not depend on the label (the serving `decoder` takes a label only for a uniform signature); with
`FlowConfig.conditional` every coupling and split network also sees the label (a learned per-class bias), so
there is one exact map per class and `per_class` runs an image through all of them.

Everything in forward/inverse is fixed-shape tensor algebra (no data-dependent Python control flow): the
inverse of the 1x1 convolution weight is computed from its LU factors with products of nilpotent
matrices (plain matmuls), because ONNX has no matrix-inverse operator. ActNorm's data-dependent
initialisation is an explicit method (`Flow.initialize`), never a branch inside forward.

Units: the flow sees x in [-1, 1] (the network convention). Training dequantises 8-bit images by adding
uniform noise of one quantisation bin (width 2/255 in these units), so bits/dim of the discrete data is
`nll_nats / (D ln 2) + log2(127.5)` (see `bits_per_dim`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from latentserve.errors import ValidationError

_LOG_2PI = math.log(2.0 * math.pi)
BIN_WIDTH = 2.0 / 255.0  # one 8-bit quantisation bin in [-1, 1] units (to_model maps u -> u/127.5 - 1)
ADV_LOSSES = ("nonsat", "hinge")  # adversarial losses of the optional flow + adversarial hybrid


@dataclass
class FlowConfig:
    """Recipe of the flow family. The defaults are the measured recommendation for shapes 32x32."""

    levels: int = 3  # squeeze levels; image_size must be divisible by 2**levels; 1..5
    steps: tuple[int, ...] = (6, 6, 6)  # flow steps per level (one entry per level); each 1..32
    # (64, 80, 80), not (64, 96, 96): the bundle must fit in 30 MB; measured on shapes (1200 steps) the same
    # train bits/dim (0.915 vs 0.916) with 3.5 MB less in the repository
    hidden: tuple[int, ...] = (64, 80, 80)  # coupling-net width per level; each 8..512
    # Glow's learned split prior, written as part of the bijection: each factored-out half z_l is whitened by
    # an affine map conditioned on the half that continues, eps_l = (z_l - mu(h)) * exp(-log_sigma(h)), so the
    # manifest's fixed class-Gaussian prior over the flattened eps only has to model what is left
    split_coupling: bool = True
    scale_clamp: float = 2.0  # coupling log-scale = clamp * tanh(raw / clamp): |log s| < clamp keeps it stable
    # optional hybrid objective: + class_weight * cross-entropy of the Bayes-rule class posterior
    # softmax_c log N(z; mu_c, sigma_c). Maximum likelihood alone rewards class information in z by at most
    # log(C) nats per image (of ~10^4), so the class Gaussians stay nearly identical. Measured on shapes
    # (1200 steps): weight 1 reached 100% train / 56% test Bayes accuracy, test bits/dim 1.34 instead of 0.90,
    # and did not make samples more recognisable, so the recommendation is off.
    # class-conditional map: every coupling / split network also sees the label (a learned per-class bias on
    # its hidden layers), so x <-> z is a different bijection per class and z holds what the class does not
    # say (position, size, hue, ...). The encoder then runs once per class (Bayes rule over exact
    # likelihoods). False = one map for all classes, the class only in the prior. Measured on shapes (1200
    # steps, seed 0, probe-scored like the bundle): test bits/dim 0.924 (unconditional 0.917), Bayes class
    # accuracy 74% (33%), GAN-test 37.7% prior / 43.0% latent GMM (38.0% / 38.3%), recognisable 4.3% / 14.3%
    # (3.7% / 12.7%); at 2400 steps 0.887 bits/dim, 77% Bayes accuracy, GAN-test 48.3% / 40.0%, recognisable
    # 16.0% / 18.3%. The samples are still coloured blobs, so the recommendation stays off at this budget.
    conditional: bool = False
    class_weight: float = 0.0  # nats/image (the NLL term is per dim); 0 = pure maximum likelihood; >= 0
    lr: float = 2e-3  # Adam learning rate; (0, 0.1]
    warmup_steps: int = 100  # linear lr warm-up (flows diverge easily at the start); >= 0
    lr_final_frac: float = 0.1  # cosine decay to this fraction of lr at lr_decay_steps; (0, 1]
    lr_decay_steps: int = 1200  # length of the cosine schedule; >= 1
    # max global grad norm of the per-dim NLL loss (the hybrid's adversarial gradient: apart, same norm); 0 = off
    grad_clip: float = 50.0
    temperature: float = 0.7  # sampling temperature T for grids and the manifest: z = mu + T * sigma * eps; (0, 2]
    # -- optional flow + adversarial hybrid (Flow-GAN, Grover et al. 2018) -------------------------------------
    # Maximum likelihood covers the data (exact inversion, bits/dim) but spends its capacity on every pixel's
    # noise, so tempered samples are blobs; an adversarial loss on the flow's own samples (drawn with
    # gradients through `Flow.inverse`) pushes them towards what a discriminator accepts as real, while the
    # NLL term keeps the coverage. The discriminator (`models.nets.gan.Discriminator`, spectral norm,
    # projection head) is training-only: checkpointed, never exported; export is unchanged.
    # Weight of the adversarial loss, as a step size relative to the NLL's: the adversarial gradient gets its
    # own Adam on the flow's parameters with lr = adv_weight * the NLL's lr at that step. Not one Adam step on
    # NLL + w * adversarial: that broke the flow even at small w, because Adam rescales each parameter's step,
    # so a small adversarial gradient on a parameter the NLL is at rest on moves it a full lr step, and the
    # maximum-likelihood flow is very sharp along such directions (the NLL of real data explodes). With its
    # own Adam the adversarial drift per step is bounded by adv_weight * lr and the NLL can pull it back.
    # 0 = pure maximum likelihood (no discriminator is built: today's step, speed and checkpoints); [0, 10]
    adv_weight: float = 0.0
    adv_start: int = 300  # NLL-only steps before the adversarial term starts (the flow first learns the data); >= 0
    adv_ramp: int = 200  # linear ramp of the adversarial weight from 0 to adv_weight; 0 = at once; >= 0
    adv_batch: int = 32  # flow samples per step that the discriminator and the adversarial loss see; 1..1024
    # temperature of those samples; None = `temperature`, so the adversarial loss shapes what grids and the
    # manifest's sampler draw; (0, 2] or None
    adv_temperature: float | None = None
    adv_loss: str = "nonsat"  # "nonsat" (non-saturating logistic) | "hinge"
    d_width: int = 32  # discriminator channels at S/2 (doubling per stride-2 conv, cap 8x); 4..256
    d_conditional: bool = True  # projection head on the class: samples must look like their class; False = one head
    lr_d: float = 2e-4  # discriminator Adam learning rate (betas 0.5, 0.999, constant); (0, 1e-2]

    def __post_init__(self) -> None:
        self.steps = tuple(int(s) for s in self.steps)
        self.hidden = tuple(int(h) for h in self.hidden)
        _check(1 <= self.levels <= 5, f"levels must be in 1..5, got {self.levels}")
        _check(len(self.steps) == self.levels, f"steps needs one entry per level ({self.levels}), got {self.steps}")
        _check(len(self.hidden) == self.levels, f"hidden needs one entry per level ({self.levels}), got {self.hidden}")
        _check(all(1 <= s <= 32 for s in self.steps), f"each steps entry must be in 1..32, got {self.steps}")
        _check(all(8 <= h <= 512 for h in self.hidden), f"each hidden entry must be in 8..512, got {self.hidden}")
        _check(0.1 <= self.scale_clamp <= 10.0, f"scale_clamp must be in [0.1, 10], got {self.scale_clamp}")
        _check(self.class_weight >= 0.0, f"class_weight must be >= 0, got {self.class_weight}")
        _check(0.0 < self.lr <= 0.1, f"lr must be in (0, 0.1], got {self.lr}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(0.0 < self.lr_final_frac <= 1.0, f"lr_final_frac must be in (0, 1], got {self.lr_final_frac}")
        _check(self.lr_decay_steps >= 1, f"lr_decay_steps must be >= 1, got {self.lr_decay_steps}")
        _check(self.grad_clip >= 0.0, f"grad_clip must be >= 0, got {self.grad_clip}")
        _check(0.0 < self.temperature <= 2.0, f"temperature must be in (0, 2], got {self.temperature}")
        _check(_is_num(self.adv_weight) and 0.0 <= self.adv_weight <= 10.0,
               f"adv_weight must be in [0, 10], got {self.adv_weight!r}")
        for name, lo, hi in (("adv_start", 0, 10**9), ("adv_ramp", 0, 10**9), ("adv_batch", 1, 1024),
                             ("d_width", 4, 256)):
            v = getattr(self, name)
            _check(_is_int(v) and lo <= v <= hi, f"{name} must be an int in [{lo}, {hi}], got {v!r}")
        _check(self.adv_temperature is None or (_is_num(self.adv_temperature) and 0.0 < self.adv_temperature <= 2.0),
               f"adv_temperature must be in (0, 2] or None, got {self.adv_temperature!r}")
        _check(self.adv_loss in ADV_LOSSES, f"adv_loss must be one of {', '.join(ADV_LOSSES)}, got {self.adv_loss!r}")
        _check(isinstance(self.d_conditional, bool), f"d_conditional must be a bool, got {self.d_conditional!r}")
        _check(_is_num(self.lr_d) and 0.0 < self.lr_d <= 1e-2, f"lr_d must be in (0, 1e-2], got {self.lr_d!r}")

    @property
    def adv_sample_temperature(self) -> float:
        """Temperature of the samples the adversarial loss sees (`adv_temperature`, else `temperature`)."""
        return float(self.temperature if self.adv_temperature is None else self.adv_temperature)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps)
        d["hidden"] = list(self.hidden)
        return d

    def check_image_size(self, image_size: int) -> None:
        factor = 2**self.levels
        _check(image_size % factor == 0 and image_size >= factor,
               f"image_size {image_size} must be a multiple of 2**levels = {factor}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValidationError(f"FlowConfig: {msg}")


def bits_per_dim(nll_nats: torch.Tensor, dims: int) -> torch.Tensor:
    """Bits/dim of 8-bit data from the continuous NLL (nats/image) of the dequantised [-1,1] image.

    With uniform dequantisation over bins of width 2/255, -log2 P(u) <= -log2 p(x) - D log2(2/255), so the
    bound per dim is nll / (D ln 2) + log2(127.5).
    """
    return nll_nats / (dims * math.log(2.0)) - math.log2(BIN_WIDTH)


def squeeze(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """(B,c,h,w) -> (B,4c,h/2,w/2); shapes are Python ints so only the batch axis is dynamic."""
    x = x.reshape(-1, c, h // 2, 2, w // 2, 2)
    x = x.permute(0, 1, 3, 5, 2, 4)  # (B, c, 2, 2, h/2, w/2)
    return x.reshape(-1, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `squeeze`: (B,4c,h/2,w/2) -> (B,c,h,w)."""
    x = x.reshape(-1, c, 2, 2, h // 2, w // 2)
    x = x.permute(0, 1, 4, 2, 5, 3)  # (B, c, h/2, 2, w/2, 2)
    return x.reshape(-1, c, h, w)


class ActNorm(nn.Module):
    """Per-channel affine y = (x + loc) * exp(log_scale), initialised from the first batch (Glow)."""

    def __init__(self, channels: int, hw: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.hw = hw  # H*W of this level: each channel's log-scale counts once per pixel in the logdet

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Zero mean, unit variance per channel on batch x (B,C,H,W)."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = (x + self.loc) * torch.exp(self.log_scale)
        return y, self.hw * self.log_scale.sum()  # logdet is the same for every image: a scalar

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.loc


def _unit_triangular_inverse(n: torch.Tensor, size: int, eye: torch.Tensor | None = None) -> torch.Tensor:
    """(I + n)^-1 for a strictly triangular (hence nilpotent) n, exactly, with matmuls only.

    (I - m)(I + m)(I + m^2)(I + m^4)... = I - m^(2^k), and m^size = 0, so with m = -n the product of
    the factors (I + m^(2^j)), j < ceil(log2(size)), is the exact inverse.
    """
    # `eye`: pass a registered identity buffer when tracing for export; a fresh torch.eye per call becomes
    # one float64 constant per use in the ONNX graph (measured: 1.3 MB of the flow decoder's 4.8 MB)
    eye = torch.eye(size, dtype=n.dtype, device=n.device) if eye is None else eye.to(n.dtype)
    m = -n
    inv = eye + m
    for _ in range(max(0, math.ceil(math.log2(max(size, 2)))) - 1):  # static loop count: traces fine
        m = m @ m
        inv = inv @ (eye + m)
    return inv


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution W = P L (U + diag(sign * exp(log_s))) (Glow, LU parametrisation)."""

    def __init__(self, channels: int, hw: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=gen, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)  # q = p @ lower @ upper
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(torch.tril(lower, -1).float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        self.channels = channels
        self.hw = hw

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_lower = self.lower * self.lower_mask  # strictly lower (C,C)
        n_upper = self.upper * self.lower_mask.t()  # strictly upper (C,C)
        diag = self.sign_s * torch.exp(self.log_s)  # (C,)
        return n_lower, n_upper, diag

    def weight(self) -> torch.Tensor:
        n_lower, n_upper, diag = self._factors()
        return self.perm @ (self.eye + n_lower) @ (n_upper + self.eye * diag)  # (C,C); eye*diag = diag(d) (no aten::diag in ONNX)

    def inverse_weight(self) -> torch.Tensor:
        """W^-1 = (U)^-1 (I + N_L)^-1 P^T with U = diag(d) (I + diag(1/d) N_U); computed in float64."""
        n_lower, n_upper, diag = (t.double() for t in self._factors())
        eye = self.eye.double()
        inv_lower = _unit_triangular_inverse(n_lower, self.channels, eye)
        inv_d = 1.0 / diag
        inv_upper = _unit_triangular_inverse(inv_d[:, None] * n_upper, self.channels, eye) * inv_d[None, :]
        return (inv_upper @ inv_lower @ self.perm.double().t()).to(self.log_s.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight()
        y = F.conv2d(x, w.reshape(self.channels, self.channels, 1, 1))
        return y, self.hw * self.log_s.sum()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w_inv = self.inverse_weight()
        return F.conv2d(y, w_inv.reshape(self.channels, self.channels, 1, 1))


class AffineCoupling(nn.Module):
    """y_a = x_a; y_b = x_b * exp(log_s) + t with (log_s, t) = NN(x_a [, class]) and log_s soft-clamped by tanh.

    With `n_classes` > 0 the network is class-conditional: a learned per-class bias (an embedding, i.e. a
    one-hot input channel per class into each hidden layer) is added to both hidden layers."""

    def __init__(self, channels: int, hidden: int, clamp: float, n_classes: int = 0) -> None:
        super().__init__()
        self.c_a = channels // 2
        self.c_b = channels - self.c_a
        self.net = nn.Sequential(  # kept as one Sequential: checkpoints of unconditional flows keep their keys
            nn.Conv2d(self.c_a, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * self.c_b, 3, padding=1),
        )
        self.embed = nn.Embedding(n_classes, 2 * hidden) if n_classes > 0 else None
        if self.embed is not None:
            nn.init.zeros_(self.embed.weight)  # starts as the unconditional network
        # zero-initialised last layer: every coupling starts as the identity (stable start, Glow)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.hidden = hidden
        self.clamp = clamp

    def _scale_shift(self, x_a: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.embed is None:
            h = self.net(x_a)  # (B, 2*c_b, H, W)
        else:
            e = self.embed(y)[:, :, None, None]  # (B, 2*hidden, 1, 1)
            h = self.net[2](F.relu(self.net[0](x_a) + e[:, : self.hidden]))  # (B, hidden, H, W)
            h = self.net[4](F.relu(h + e[:, self.hidden :]))  # (B, 2*c_b, H, W)
        raw, t = h[:, : self.c_b], h[:, self.c_b :]
        log_s = self.clamp * torch.tanh(raw / self.clamp)  # |log s| < clamp
        return log_s, t

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.c_a], x[:, self.c_a :]
        log_s, t = self._scale_shift(x_a, y)
        y_b = x_b * torch.exp(log_s) + t
        return torch.cat([x_a, y_b], dim=1), log_s.flatten(1).sum(1)

    def inverse(self, out: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y_a, y_b = out[:, : self.c_a], out[:, self.c_a :]
        log_s, t = self._scale_shift(y_a, y)
        return torch.cat([y_a, (y_b - t) * torch.exp(-log_s)], dim=1)


class SplitCoupling(nn.Module):
    """Whitening of a factored-out half given the continuing half h [and the class]:
    eps = (z - mu(h, y)) * exp(-log_sigma(h, y)); the class enters as a learned per-class bias."""

    def __init__(self, c_keep: int, c_out: int, clamp: float, n_classes: int = 0) -> None:
        super().__init__()
        self.net = nn.Conv2d(c_keep, 2 * c_out, 3, padding=1)
        nn.init.zeros_(self.net.weight)  # identity at init
        nn.init.zeros_(self.net.bias)
        self.embed = nn.Embedding(n_classes, 2 * c_out) if n_classes > 0 else None
        if self.embed is not None:
            nn.init.zeros_(self.embed.weight)
        self.c_out = c_out
        self.clamp = clamp

    def _stats(self, h: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(h)  # (B, 2*c_out, H, W)
        if self.embed is not None:
            out = out + self.embed(y)[:, :, None, None]
        mu, raw = out[:, : self.c_out], out[:, self.c_out :]
        return mu, self.clamp * torch.tanh(raw / self.clamp)

    def forward(self, z: torch.Tensor, h: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self._stats(h, y)
        return (z - mu) * torch.exp(-log_sigma), -log_sigma.flatten(1).sum(1)

    def inverse(self, eps: torch.Tensor, h: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mu, log_sigma = self._stats(h, y)
        return eps * torch.exp(log_sigma) + mu


class FlowStep(nn.Module):
    """ActNorm -> invertible 1x1 conv -> affine coupling."""

    def __init__(self, channels: int, hw: int, hidden: int, clamp: float, seed: int, n_classes: int = 0) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels, hw)
        self.invconv = InvConv1x1(channels, hw, seed)
        self.coupling = AffineCoupling(channels, hidden, clamp, n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, ld1 = self.actnorm(x)
        x, ld2 = self.invconv(x)
        x, ld3 = self.coupling(x, y)
        return x, ld3 + (ld1 + ld2)  # (B,C,H,W), (B,)

    def inverse(self, out: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.actnorm.inverse(self.invconv.inverse(self.coupling.inverse(out, y)))


class Flow(nn.Module):
    """Multi-scale flow x (B,3,H,W) <-> z (B,D), D = 3*H*W, with a class-conditional Gaussian prior on z."""

    def __init__(self, config: FlowConfig, image_size: int, n_classes: int, channels: int = 3) -> None:
        super().__init__()
        config.check_image_size(image_size)
        if n_classes < 1:
            raise ValidationError(f"Flow: n_classes must be >= 1, got {n_classes}")
        self.config = config
        self.image_size = image_size
        self.n_classes = n_classes
        self.dim = channels * image_size * image_size
        self.levels = nn.ModuleList()
        self.splits = nn.ModuleList()  # one SplitCoupling (or Identity) per level but the last
        # static shape bookkeeping per level: (channels before squeeze, size before squeeze, channels factored out)
        self.shapes: list[tuple[int, int, int]] = []
        n_cond = n_classes if config.conditional else 0  # classes the couplings see (0 = unconditional map)
        self.conditional = bool(config.conditional)
        c, s = channels, image_size
        seed = 0
        for lvl in range(config.levels):
            c_sq, s_sq = 4 * c, s // 2
            steps = nn.ModuleList()
            for _ in range(config.steps[lvl]):
                steps.append(FlowStep(c_sq, s_sq * s_sq, config.hidden[lvl], config.scale_clamp, seed, n_cond))
                seed += 1
            self.levels.append(steps)
            last = lvl == config.levels - 1
            c_out = c_sq if last else c_sq // 2
            self.shapes.append((c, s, c_out))
            if not last:
                self.splits.append(SplitCoupling(c_sq - c_out, c_out, config.scale_clamp, n_cond)
                                   if config.split_coupling else nn.Identity())
            c, s = c_sq - c_out, s_sq
        self.z_sizes = [c_out * (s_ // 2) ** 2 for (_, s_, c_out) in self.shapes]
        assert sum(self.z_sizes) == self.dim, (self.z_sizes, self.dim)
        self.prior_mean = nn.Parameter(torch.zeros(n_classes, self.dim))  # (C, D)
        self.prior_logstd = nn.Parameter(torch.zeros(n_classes, self.dim))  # (C, D)
        self.register_buffer("class_ids", torch.arange(n_classes), persistent=False)  # (C,) for per_class
        # set by `initialize` (ActNorm data init); kept in the state dict so a resumed run does not redo it
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    # -- the bijection ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,3,H,W) [, labels y (B,) for a conditional flow] -> z (B,D), logdet (B,) = log|det dz/dx|."""
        y = self._cond(y)
        logdet = torch.zeros_like(x[:, 0, 0, 0])  # (B,)
        zs: list[torch.Tensor] = []
        h = x
        for lvl, (steps, (c, s, c_out)) in enumerate(zip(self.levels, self.shapes)):
            h = squeeze(h, c, s, s)
            for step in steps:
                h, ld = step(h, y)
                logdet = logdet + ld
            z_l, h = h[:, :c_out], h[:, c_out:]
            if lvl < len(self.splits) and isinstance(self.splits[lvl], SplitCoupling):
                z_l, ld = self.splits[lvl](z_l, h, y)
                logdet = logdet + ld
            zs.append(z_l.flatten(1))
        return torch.cat(zs, dim=1), logdet

    def inverse(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z (B,D) [, labels y (B,)] -> x (B,3,H,W), the exact inverse of forward (not clamped)."""
        y = self._cond(y)
        pieces = torch.split(z, self.z_sizes, dim=1)
        h = None
        for lvl in reversed(range(len(self.levels))):
            c, s, c_out = self.shapes[lvl]
            zi = pieces[lvl].reshape(-1, c_out, s // 2, s // 2)
            if h is not None and isinstance(self.splits[lvl], SplitCoupling):
                zi = self.splits[lvl].inverse(zi, h, y)
            h = zi if h is None else torch.cat([zi, h], dim=1)
            for step in reversed(self.levels[lvl]):
                h = step.inverse(h, y)
            h = unsqueeze(h, c, s, s)
        return h

    def _cond(self, y: torch.Tensor | None) -> torch.Tensor | None:
        """The labels the couplings see: y for a conditional flow (required), None otherwise."""
        if not self.conditional:
            return None
        if y is None:
            raise ValidationError("a conditional flow needs the class labels")
        return y

    def per_class(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B,3,H,W) through the map of every class: z (B,C,D), log p(x | c) (B,C) for the continuous
        density, and each map's logdet (B,C).

        One batched pass over B*C rows (fixed shapes: exports to ONNX with a dynamic batch axis)."""
        b, n = x.shape[0], self.n_classes
        xs = x[:, None].expand(-1, n, -1, -1, -1).reshape(-1, *x.shape[1:])  # (B*C,3,H,W), class-minor
        ys = self.class_ids[None].expand(b, -1).reshape(-1)  # (B*C,)
        z, logdet = self(xs, ys)
        logp = self.prior_log_prob(z, ys) + logdet  # (B*C,)
        return z.reshape(b, n, -1), logp.reshape(b, n), logdet.reshape(b, n)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Data-dependent ActNorm init from a batch x (B,3,H,W) [, labels y] (call once, before training)."""
        y = self._cond(y)
        h = x
        for steps, (c, s, c_out) in zip(self.levels, self.shapes):
            h = squeeze(h, c, s, s)
            for step in steps:
                step.actnorm.initialize(h)
                h, _ = step(h, y)
            h = h[:, c_out:]
        self.initialized.fill_(True)

    # -- the prior -------------------------------------------------------------------------------------
    def prior_log_prob(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log N(z; mu_y, sigma_y) summed over D: (B,)."""
        mu, ls = self.prior_mean[y], self.prior_logstd[y]  # (B, D)
        return (-0.5 * ((z - mu) * torch.exp(-ls)).square() - ls - 0.5 * _LOG_2PI).sum(1)

    def class_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu_c, sigma_c) summed over D for every class c: (B, C) (one z for all classes: an
        unconditional map)."""
        diff = (z[:, None, :] - self.prior_mean[None]) * torch.exp(-self.prior_logstd)[None]  # (B, C, D)
        return (-0.5 * diff.square() - self.prior_logstd[None] - 0.5 * _LOG_2PI).sum(2)

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log p(x | y) in nats per image, (B,), for the continuous density on [-1,1] values."""
        z, logdet = self(x, y)
        return -(self.prior_log_prob(z, y) + logdet)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """x = inverse(mu_y + T * sigma_y * eps [, y]), (B,3,H,W), not clamped."""
        eps = torch.randn(len(labels), self.dim, generator=generator).to(self.prior_mean.device)
        z = self.prior_mean[labels] + temperature * torch.exp(self.prior_logstd[labels]) * eps
        return self.inverse(z, labels)

    def prior_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(prior_mean, prior_logstd) as float32 numpy arrays (C, D) for the manifest / latent space."""
        return (self.prior_mean.detach().cpu().float().numpy().copy(),
                self.prior_logstd.detach().cpu().float().numpy().copy())
