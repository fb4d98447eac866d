"""Networks of the conditional VAE family: `VAEConfig`, `VAEEncoder` and `VAEDecoder`.

The encoder is unconditional, q(z | x), plus a class head so an image can be encoded without a label; the
decoder is class-conditional, p(x | z, y). The KL term alone does not push the class out of z (it is worth at
most log C nats), so the family adds a class-consistency term (see `VAEConfig.consistency_weight`) that makes
the label, not z, decide the decoded class. The decoder output is linear during training (`decode_raw`) and
clamped to [-1, 1] in `forward` (what is exported). Both modules are plain feed-forward convnets: no
data-dependent Python control flow, so they trace with torch.jit.trace and export with torch.onnx.export
(dynamic batch axis).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from latentserve.errors import ValidationError

LIKELIHOODS = ("gaussian", "laplace")
DECODERS = ("feedforward", "pixelcnn")


@dataclass
class VAEConfig:
    """Recipe of the VAE family. The defaults are the measured recommendation for shapes 32x32.

    The reconstruction term is a per-pixel Gaussian (or Laplace) log-likelihood on [-1, 1] images with scale
    `recon_scale` (fixed unless `learn_scale`); with a fixed scale, `beta * 2 * recon_scale**2` is the
    effective weight of the KL against the squared error, so `beta` and `recon_scale` trade reconstruction
    sharpness against how well prior samples match the data.
    """

    z_dim: int = 32  # latent size D; 2..512
    widths: tuple[int, ...] = (32, 64, 128)  # conv channels per stride-2 stage (image_size / 2**len must be >= 2)
    res_blocks: int = 0  # 3x3 residual blocks per stage (encoder and decoder); 0..3
    # 128, not 256: the 2048->hidden layers are most of the weights, and the bundle must fit in 30 MB; measured on
    # shapes (1400 steps): 256 -> 12 MB, PSNR 24.2, knob R² x/y/hue .85/.71/.69; 128 -> 7 MB, PSNR 24.0, .90/.76/.85
    hidden: int = 128  # width of the fully-connected layer between the conv trunk and the latent heads
    embed_dim: int = 32  # size of the class embedding fed to the decoder
    beta: float = 1.0  # weight of KL(q(z|x) || N(0,I)); 0..100
    likelihood: str = "gaussian"  # "gaussian" | "laplace" output distribution per pixel
    # recon_scale measured on shapes (1400 steps, probe-scored): 0.1 -> PSNR 24.4 dB but prior samples in the
    # "prior hole" and a class head stuck at 48%; 0.25 -> PSNR 19.2, near-identical prior samples; 0.12 with
    # class_weight 5 -> PSNR 24.2, latent-GMM samples precision/recall 0.76/0.78, encoder class accuracy 99.9%
    recon_scale: float = 0.12  # std (gaussian) / scale (laplace) of the output distribution, [-1,1] units; (0, 1]
    learn_scale: bool = False  # learn one global log-scale instead of fixing `recon_scale` (its init)
    kl_warmup_steps: int = 400  # KL weight ramps linearly 0 -> beta over this many steps; 0 = no warm-up
    free_bits: float = 0.0  # nats per latent dim below which the KL of that dim is not penalised; 0..2
    # 5, not 1: with the sharp recon_scale the per-pixel ELBO gradients swamp the shared trunk and the class
    # head (also the judge of the consistency term below) stalled at chance (measured ce 0.90 after 1400 steps)
    class_weight: float = 5.0  # weight of the class-head cross-entropy (nats/image; the ELBO term is per pixel); >= 0
    # class consistency: images decoded from a real image's z with a random label y' must be classified as
    # y' by the (frozen for this term) class head. Without it the unconditional encoder keeps the shape in z
    # and the decoder ignores its label, so prior samples get the wrong class (measured ~40%).
    consistency_weight: float = 1.0  # nats/image weight, ramped in with the KL warm-up; 0 = off; >= 0
    consistency_frac: float = 0.5  # extra decoded images per step as a fraction of the batch; (0, 1]
    lr: float = 2e-3  # Adam learning rate; (0, 0.1]
    lr_final_frac: float = 0.05  # cosine decay of the lr to this fraction at `lr_decay_steps`; (0, 1]
    # 3000 (with 3000 training steps), not 1400: measured on shapes (probe-scored, same seed) test PSNR 24.0 -> 29.3
    # dB and latent-GMM samples recognisable 40% -> 55%. Tried and not adopted at 3000 steps: beta 3 (29.4 dB,
    # recognisable 57%, y knob R² 0.35 vs 0.68); a CVAE encoder q(z|x,y) (25.9 dB; prior samples degenerate:
    # near-black triangles that the probe still called triangles); CoordConv + a full-resolution conv in the
    # decoder (1400 steps: 22.8 vs 24.0 dB); res_blocks 1 (2.6x slower per step, no better per step)
    lr_decay_steps: int = 3000  # steps of the cosine schedule (constant lr_final_frac*lr after); >= 1
    grad_clip: float = 5.0  # max global grad norm; 0 = off
    # -- the autoregressive decoder (the thesis's VAE + PixelCNN; models/nets/pixelcnn.py) ----------------------
    # "feedforward": p(x|z,y) is the decoder's image with the `likelihood` above; "pixelcnn": a small PixelCNN
    # conditioned on that image models p(x|z,y) pixel by pixel (discretised logistic, bits/dim exact), and the
    # feed-forward image becomes an auxiliary head whose reconstruction loss keeps z informative
    decoder: str = "feedforward"
    ar_width: int = 32  # PixelCNN channels; 8..256
    ar_layers: int = 3  # 3x3 type-B masked layers after the 5x5 type-A one (margin = 2 + ar_layers); 1..8
    aux_weight: float = 1.0  # weight of the feed-forward head's reconstruction NLL beside the PixelCNN's; >= 0
    ar_temperature: float = 1.0  # scale of the logistic noise when sampling (1 = the model's own); (0, 2]

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        _check(2 <= self.z_dim <= 512, f"z_dim must be in 2..512, got {self.z_dim}")
        _check(1 <= len(self.widths) <= 5, f"widths must have 1..5 stages, got {self.widths}")
        _check(all(4 <= w <= 1024 for w in self.widths), f"each width must be in 4..1024, got {self.widths}")
        _check(0 <= self.res_blocks <= 3, f"res_blocks must be in 0..3, got {self.res_blocks}")
        _check(8 <= self.hidden <= 4096, f"hidden must be in 8..4096, got {self.hidden}")
        _check(1 <= self.embed_dim <= 512, f"embed_dim must be in 1..512, got {self.embed_dim}")
        _check(0.0 <= self.beta <= 100.0, f"beta must be in [0, 100], got {self.beta}")
        _check(self.likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        _check(0.0 < self.recon_scale <= 1.0, f"recon_scale must be in (0, 1], got {self.recon_scale}")
        _check(self.kl_warmup_steps >= 0, f"kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")
        _check(0.0 <= self.free_bits <= 2.0, f"free_bits must be in [0, 2] nats/dim, got {self.free_bits}")
        _check(self.class_weight >= 0.0, f"class_weight must be >= 0, got {self.class_weight}")
        _check(self.consistency_weight >= 0.0, f"consistency_weight must be >= 0, got {self.consistency_weight}")
        _check(0.0 < self.consistency_frac <= 1.0, f"consistency_frac must be in (0, 1], got {self.consistency_frac}")
        _check(0.0 < self.lr <= 0.1, f"lr must be in (0, 0.1], got {self.lr}")
        _check(0.0 < self.lr_final_frac <= 1.0, f"lr_final_frac must be in (0, 1], got {self.lr_final_frac}")
        _check(self.lr_decay_steps >= 1, f"lr_decay_steps must be >= 1, got {self.lr_decay_steps}")
        _check(self.grad_clip >= 0.0, f"grad_clip must be >= 0, got {self.grad_clip}")
        _check(self.decoder in DECODERS, f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        _check(8 <= self.ar_width <= 256, f"ar_width must be in 8..256, got {self.ar_width}")
        _check(1 <= self.ar_layers <= 8, f"ar_layers must be in 1..8, got {self.ar_layers}")
        _check(self.aux_weight >= 0.0, f"aux_weight must be >= 0, got {self.aux_weight}")
        _check(0.0 < self.ar_temperature <= 2.0, f"ar_temperature must be in (0, 2], got {self.ar_temperature}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    def check_image_size(self, image_size: int) -> int:
        """The spatial size at the bottom of the trunk; raises if `image_size` does not fit the stages."""
        factor = 2 ** len(self.widths)
        _check(
            image_size % factor == 0 and image_size // factor >= 2,
            f"image_size {image_size} must be a multiple of {factor} and >= {2 * factor} for widths {self.widths}",
        )
        return image_size // factor


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValidationError(f"VAEConfig: {msg}")


class _ResBlock(nn.Module):
    """3x3 residual block at constant resolution (adds capacity for sharp edges without more strides)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VAEEncoder(nn.Module):
    """image (B,3,H,W) in [-1,1] -> mean (B,D), logvar (B,D), class logits (B,C)."""

    def __init__(self, config: VAEConfig, image_size: int, n_classes: int) -> None:
        super().__init__()
        bottom = config.check_image_size(image_size)
        layers: list[nn.Module] = []
        c_in = 3
        for w in config.widths:  # each stage halves H and W
            layers += [nn.Conv2d(c_in, w, 4, stride=2, padding=1)]
            layers += [_ResBlock(w) for _ in range(config.res_blocks)]
            c_in = w
        layers += [nn.SiLU(), nn.Flatten()]
        self.trunk = nn.Sequential(*layers)
        flat = c_in * bottom * bottom
        self.fc = nn.Sequential(nn.Linear(flat, config.hidden), nn.SiLU())
        self.to_stats = nn.Linear(config.hidden, 2 * config.z_dim)
        self.to_logits = nn.Linear(config.hidden, n_classes)
        self.z_dim = config.z_dim

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.fc(self.trunk(image))  # (B, hidden)
        stats = self.to_stats(h)  # (B, 2D)
        mean = stats[:, : self.z_dim]  # (B, D)
        # soft clamp keeps exp(logvar) finite for any input at serving time without a hard kink in training
        logvar = 8.0 * torch.tanh(stats[:, self.z_dim :] / 8.0)  # (B, D) in (-8, 8)
        logits = self.to_logits(h)  # (B, C)
        return mean, logvar, logits


class VAEDecoder(nn.Module):
    """latent (B,D) + label (B,) int64 -> image (B,3,H,W) in [-1,1]."""

    def __init__(self, config: VAEConfig, image_size: int, n_classes: int) -> None:
        super().__init__()
        self.bottom = config.check_image_size(image_size)
        widths = list(reversed(config.widths))
        self.c0 = widths[0]
        self.embed = nn.Embedding(n_classes, config.embed_dim)
        self.fc = nn.Sequential(
            nn.Linear(config.z_dim + config.embed_dim, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, self.c0 * self.bottom * self.bottom),
        )
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):  # each stage doubles H and W
            w_out = widths[i + 1] if i + 1 < len(widths) else widths[-1]
            layers += [_ResBlock(w) for _ in range(config.res_blocks)]
            layers += [nn.SiLU(), nn.ConvTranspose2d(w, w_out, 4, stride=2, padding=1)]
        # linear output (no tanh): the shapes' pure-black background is exactly -1, where a tanh saturates
        # and its vanishing gradient stalls training (measured: stuck at ~15 dB PSNR)
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def decode_raw(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Unclamped mean image (B,3,H,W) (what the likelihood is trained on)."""
        h = torch.cat([latent, self.embed(label)], dim=1)  # (B, D + E)
        h = self.fc(h).reshape(-1, self.c0, self.bottom, self.bottom)  # (B, c0, h, w)
        return self.net(h)  # (B, 3, H, W)

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(latent, label).clamp(-1.0, 1.0)  # (B, 3, H, W) in [-1, 1]
