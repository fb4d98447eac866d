"""Networks of the conditional GAN family: config, generator, projection discriminator and encoder.

Owns `GANConfig` (the recipe: sizes, losses, optimiser and encoder settings; its defaults ARE the recommended
recipe for the bundled `shapes-gan`) and three modules:

- `Generator`: (latent (B,Z), label (B,)) -> image (B,3,S,S) in [-1,1]. DCGAN-style transposed convolutions
  from 4x4 up to S (16, 32 or 64) with class-conditional batch norm (a per-class gain and bias after a
  parameter-free BatchNorm), so one network draws every class.
- `Discriminator`: strided CNN (BatchNorm or spectral norm) with a projection head (Miyato & Koyama 2018):
  score = psi(h) + <embed(y), h>. Training only; never exported.
- `MixedBatchDiscriminator` (models/nets/mixed_batch.py, `d_kind="mixed"`): the same trunk under a
  permutation-invariant set head that predicts the share of real images in a mixed set.
- `Encoder`: image (B,3,S,S) -> (latent (B,Z), logits (B,C)), trained to invert the generator so a real image
  can be encoded into the generator's N(0, I) latent space, plus a class head.

All forwards are straight-line tensor code (no data-dependent Python control flow), so they export with
torch.onnx.export (dynamic batch) and torch.jit.trace/script.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from latentserve.errors import ValidationError

SUPPORTED_SIZES = (16, 32, 64)
LOSSES = ("hinge", "nonsat")
G_ARCHS = ("dcgan", "decoder", "decoupled")
G_OUTS = ("tanh", "clamp")
D_NORMS = ("sn", "bn")
D_KINDS = ("standard", "mixed")
CAN_FORMS = ("none", "multiclass", "binary")


@dataclass
class GANConfig:
    """Recipe of the conditional GAN family. Defaults are the recommended recipe for 32x32 shapes.

    Image size and number of classes are not here: they come from the dataset (`Dataset.meta()`).
    """

    # -- sizes -----------------------------------------------------------------------------------------------
    z_dim: int = 64  # latent dimension D; prior N(0, I_D) (16 is too few for five factors and the detail). 2..512
    g_width: int = 32  # generator channels at S/2; doubles per halving of resolution (cap 8x). 4..256
    # "dcgan": transposed convs with class-conditional BatchNorm straight to RGB; "decoder": the class embedding
    # beside z, an MLP to 4x4, transposed convs with SiLU and no normalisation, then a 3x3 conv at full
    # resolution (the VAE's decoder shape: it learns to draw sharp outlines from a reconstruction term several
    # times faster, and no batch statistics are shared between reconstructions and prior samples)
    g_arch: str = "dcgan"
    g_embed: int = 32  # "decoder" only: size of the class embedding fed beside z. 1..512
    g_hidden: int = 128  # "decoder" only: width of the MLP between (z, embedding) and the 4x4 map. 8..4096
    # "decoder" only: output nonlinearity. "tanh"; or "clamp": linear while training, clamped to [-1, 1] in eval
    # mode (what is exported), as the VAE's decoder. A tanh must saturate to draw the pure background (-1) and
    # a full-value hue beside it, so the last pixel of a corner or tip learns slowest of all.
    g_out: str = "tanh"
    # "decoupled" (models/nets/decoupled.py; data whose classes are (shape, texture) pairs, e.g. `textured`): a
    # shape branch draws a mask from (z[:z_shape], shape class), a texture branch a texture from (z[z_shape:],
    # texture class), image = mask * texture + (1 - mask) * background. Each branch is a "decoder" generator.
    z_shape: int = 0  # "decoupled": latent dimensions of the shape branch (the rest: texture); 0 = half. 0..511
    d_width: int = 32  # discriminator channels at S/2; doubles per stride-2 conv (cap 8x). 4..256
    e_width: int = 32  # encoder channels at S/2; doubles per stride-2 conv (cap 4x). 4..256
    e_hidden: int = 128  # encoder MLP width between the flattened 4x4 features and the heads. 8..2048
    # -- GAN objective and optimisation ------------------------------------------------------------------------
    d_norm: str = "sn"  # discriminator normalisation: "sn" (spectral norm, SNGAN) | "bn" (batch norm, DCGAN)
    loss: str = "nonsat"  # "nonsat" (non-saturating logistic) | "hinge" (SNGAN)
    # "standard": one score per image (projection D); "mixed": the mixed-batch discriminator (Lucas et al. 2018,
    # models/nets/mixed_batch.py) predicts the share of real images in sets that mix real and generated ones,
    # which sees a set's variety and so penalises dropped modes (`loss` is then its cross-entropy; needs d_norm sn)
    d_kind: str = "standard"
    mix_set_size: int = 8  # "mixed": images per set (the batch gives batch // mix_set_size sets per step). 2..256
    lr_g: float = 1e-3  # Adam learning rate of the generator (high: the reconstruction term steadies it). (0, 1e-2]
    lr_d: float = 2e-4  # Adam learning rate of the discriminator. (0, 1e-2]
    beta1: float = 0.5  # Adam beta1 for G and D (0.0 or 0.5 are usual for GANs). [0, 1)
    beta2: float = 0.999  # Adam beta2 for G and D. [0, 1)
    n_dis: int = 1  # discriminator updates per generator update (each on the same real batch). 1..10
    ema_decay: float = 0.999  # decay of the EMA copy of G used for samples, the decoder and evaluation. [0, 1)
    ema_start: int = 0  # step from which the EMA tracks G (before it, it copies G). >= 0
    # -- joint G+E training (mode-regularised GAN; mode_reg = 0 switches to a plain GAN + post-hoc encoder) -----
    mode_reg: float = 10.0  # weight of ||G(E(x),y) - x||^2 on real images, trained into G and E. >= 0
    # annealing of mode_reg: linear from mode_reg to mode_reg_final over mode_reg_anneal_steps (then constant), so
    # the reconstruction term steadies early training and the adversarial term sharpens late; -1 = constant.
    mode_reg_final: float = 2.0
    mode_reg_anneal_steps: int = 3000  # >= 1
    w_latent: float = 1.0  # weight of ||E(G(z,y)) - z||^2 (mean over batch and dims). >= 0
    # w_class 1 (not 0.1): the class head must be right early, since it is also the AC-GAN classifier of G
    w_class: float = 1.0  # weight of the encoder's class cross-entropy on real images. >= 0
    w_ac: float = 5.0  # weight of CE(E_frozen(G(z,y)), y) on G: the encoder's class head as AC-GAN classifier. >= 0
    w_prior: float = 1.0  # weight of moment matching of real codes E(x) to N(0,I) (batch mean 0, variance 1). >= 0
    # adversarial loss where the model is sampled from: G(E(x) + recon_noise * eps, y) is shown to D as fake and G
    # is pushed to make it look real (as in VAE-GAN), so decoded codes near encoded images -- the anchor
    # mixture Sample draws from -- get the sharpness that plain reconstruction (an MSE) does not ask for. >= 0
    w_adv_recon: float = 0.0
    recon_noise: float = 0.0  # std of the Gaussian noise on E(x) in that term (code units). [0, 10]
    # std of Gaussian noise on E(x) in the reconstruction term G(E(x) + noise, y) ~ x (code units): every code
    # within that distance of an encoded image decodes to it, so the decoder is smooth where Sample draws (the
    # anchor mixture) and where knobs move codes, as a VAE's posterior noise makes it. [0, 10]
    recon_code_noise: float = 0.0
    # step from which the adversarial terms (D, G's adversarial loss, AC, latent regression E(G(z)) ~ z) train;
    # before it, G and E train as an autoencoder only (reconstruction, class head, moment matching), at a quarter
    # to a third of a full step's cost, so G learns to draw sharp outlines before a discriminator weighs in. 0 = from
    # the first step. >= 0 (mode_reg > 0 only)
    adv_start: int = 0
    # cosine decay of lr_g and lr_e to lr_final_frac of their value over lr_decay_steps (0: constant): late steps
    # with a small step size refine edges and corners that a constant rate keeps jittering. >= 0
    lr_decay_steps: int = 0
    lr_final_frac: float = 0.05  # (0, 1]
    lr_e: float = 1e-3  # Adam learning rate of the encoder. (0, 1e-2]
    # -- plain-GAN path only (mode_reg = 0): encoder inverting the frozen EMA generator -------------------------
    encoder_start: int = 0  # step from which the encoder trains (it trains on every step after). >= 0
    e_batch: int = 64  # generated (EMA G) images per encoder step for latent regression. 1..1024
    w_recon: float = 1.0  # weight of ||G_ema(E(x), y) - x||^2 on real images through the frozen EMA G. >= 0
    # -- creative sampling (CAN, Elgammal et al. 2017; models/nets/creative.py) ------------------------------
    # "none": the projection discriminator. "multiclass" | "binary": D's real/fake score is unconditional (as in
    # CAN) and D gets a class head trained on real images; G is pushed (can_weight) to leave that head uncertain
    # among the known classes, in the named form of the style-ambiguity loss, while still looking real.
    can_form: str = "none"
    can_weight: float = 0.0  # weight of the style-ambiguity loss on G (0 with a form: the same D, no push). >= 0
    w_d_class: float = 1.0  # weight of D's class cross-entropy on real images (with a CAN form). >= 0
    # step from which the push acts: before it D's class head learns the classes, so that its uncertainty means
    # "between the known classes" and not "untrained head". >= 0
    can_start: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def rng(name: str, lo: float, hi: float, lo_open: bool = False) -> None:
            v = getattr(self, name)
            bad = (v <= lo if lo_open else v < lo) or v > hi
            if isinstance(v, bool) or not isinstance(v, (int, float)) or bad:
                lb = "(" if lo_open else "["
                raise ValidationError(f"GANConfig.{name}={v!r} out of range {lb}{lo}, {hi}]")

        if self.g_arch not in G_ARCHS:
            raise ValidationError(f"GANConfig.g_arch={self.g_arch!r}; choose one of {', '.join(G_ARCHS)}")
        for name, lo, hi in (("z_dim", 2, 512), ("g_width", 4, 256), ("d_width", 4, 256), ("e_width", 4, 256),
                             ("g_embed", 1, 512), ("g_hidden", 8, 4096),
                             ("e_hidden", 8, 2048), ("n_dis", 1, 10), ("e_batch", 1, 1024), ("z_shape", 0, 511)):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValidationError(f"GANConfig.{name} must be an int, got {getattr(self, name)!r}")
            rng(name, lo, hi)
        for name in ("lr_g", "lr_d", "lr_e"):
            rng(name, 0.0, 1e-2, lo_open=True)
        for name in ("beta1", "beta2", "ema_decay"):
            rng(name, 0.0, 1.0 - 1e-12)
        for name in ("ema_start", "encoder_start", "adv_start", "can_start"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValidationError(f"GANConfig.{name} must be an int >= 0, got {getattr(self, name)!r}")
        for name in ("w_latent", "w_class", "w_recon", "w_prior", "mode_reg", "w_ac", "w_adv_recon", "can_weight",
                     "w_d_class"):
            rng(name, 0.0, 1e6)
        rng("recon_noise", 0.0, 10.0)
        rng("recon_code_noise", 0.0, 10.0)
        if self.g_out not in G_OUTS:
            raise ValidationError(f"GANConfig.g_out={self.g_out!r}; choose one of {', '.join(G_OUTS)}")
        if self.g_out != "tanh" and self.g_arch != "decoder":
            raise ValidationError(f"GANConfig.g_out={self.g_out!r} needs g_arch='decoder'")
        rng("lr_final_frac", 0.0, 1.0, lo_open=True)
        if not isinstance(self.lr_decay_steps, int) or isinstance(self.lr_decay_steps, bool) or self.lr_decay_steps < 0:
            raise ValidationError(f"GANConfig.lr_decay_steps must be an int >= 0, got {self.lr_decay_steps!r}")
        if self.mode_reg_final != -1.0:
            rng("mode_reg_final", 0.0, 1e6)
        if not isinstance(self.mode_reg_anneal_steps, int) or self.mode_reg_anneal_steps < 1:
            raise ValidationError(
                f"GANConfig.mode_reg_anneal_steps must be an int >= 1, got {self.mode_reg_anneal_steps!r}")
        if self.adv_start > 0 and self.mode_reg <= 0:
            raise ValidationError("GANConfig.adv_start > 0 needs mode_reg > 0 (an autoencoder phase needs the "
                                  "reconstruction term)")
        if self.d_norm not in D_NORMS:
            raise ValidationError(f"GANConfig.d_norm={self.d_norm!r}; choose one of {', '.join(D_NORMS)}")
        if self.d_kind not in D_KINDS:
            raise ValidationError(f"GANConfig.d_kind={self.d_kind!r}; choose one of {', '.join(D_KINDS)}")
        if not isinstance(self.mix_set_size, int) or isinstance(self.mix_set_size, bool):
            raise ValidationError(f"GANConfig.mix_set_size must be an int, got {self.mix_set_size!r}")
        rng("mix_set_size", 2, 256)
        if self.d_kind == "mixed" and self.d_norm != "sn":
            raise ValidationError("GANConfig.d_kind='mixed' needs d_norm='sn' (batch norm would share statistics "
                                  "across the sets it must tell apart)")
        if self.z_shape >= self.z_dim:
            raise ValidationError(f"GANConfig.z_shape={self.z_shape} must be below z_dim={self.z_dim} (texture needs some)")
        if self.can_form not in CAN_FORMS:
            raise ValidationError(f"GANConfig.can_form={self.can_form!r}; choose one of {', '.join(CAN_FORMS)}")
        if self.can_weight > 0 and self.can_form == "none":
            raise ValidationError("GANConfig.can_weight > 0 needs can_form 'multiclass' or 'binary'")
        if self.can_form != "none" and self.d_kind != "standard":
            raise ValidationError("GANConfig.can_form needs d_kind='standard' (the class head sits on a per-image D)")
        if self.loss not in LOSSES:
            raise ValidationError(f"GANConfig.loss={self.loss!r}; choose one of {', '.join(LOSSES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GANConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValidationError(f"unknown GANConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def _n_levels(image_size: int) -> int:
    """Number of x2 resolution steps between 4x4 and image_size."""
    if image_size not in SUPPORTED_SIZES:
        raise ValidationError(f"GAN image_size={image_size} unsupported; choose one of {SUPPORTED_SIZES}")
    return int(math.log2(image_size // 4))


def _check_classes(n_classes: int) -> None:
    if not isinstance(n_classes, int) or n_classes < 1:
        raise ValidationError(f"n_classes must be an int >= 1, got {n_classes!r}")


def _up_channels(width: int, n: int) -> list[int]:
    """DCGAN sizing of a generator: `width` channels at S/2, doubling per halving of resolution (cap 8x), for
    the n resolutions 4, 8, ..., S/2."""
    return [min(width * 2 ** (n - 1 - i), width * 8) for i in range(n)]


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, followed by a per-class gain and bias (embedding lookups)."""

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(n_classes, channels)
        self.bias = nn.Embedding(n_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, h: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        # h (B,C,H,W), label (B,) -> (B,C,H,W)
        g = self.gain(label).unsqueeze(-1).unsqueeze(-1)  # (B,C,1,1)
        b = self.bias(label).unsqueeze(-1).unsqueeze(-1)  # (B,C,1,1)
        return self.bn(h) * g + b


class Generator(nn.Module):
    """(latent (B,Z) f32, label (B,) i64) -> image (B,3,S,S) f32 in [-1,1]."""

    def __init__(self, z_dim: int, n_classes: int, image_size: int = 32, width: int = 32) -> None:
        super().__init__()
        _check_classes(n_classes)
        n = _n_levels(image_size)
        self.z_dim, self.n_classes, self.image_size = z_dim, n_classes, image_size
        chans = _up_channels(width, n)  # at 4, 8, ..., S/2
        self.c0 = chans[0]
        # (B,Z,1,1) -> (B,C0,4,4): a 4x4 transposed conv is a Linear layer whose output keeps a known channel
        # count (a reshape(-1, C0, 4, 4) makes the TorchScript-based ONNX exporter lose it before BatchNorm)
        self.fc = nn.ConvTranspose2d(z_dim, chans[0], 4, stride=1, padding=0)
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(c, n_classes) for c in chans])
        # ConvTranspose 4x4 stride 2 doubles the resolution at ~1/2 the cost of upsample + 3x3 conv
        outs = chans[1:] + [3]
        self.ups = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i], outs[i], 4, stride=2, padding=1, bias=(i == n - 1)) for i in range(n)]
        )

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        # latent (B,Z), label (B,) -> image (B,3,S,S)
        h = self.fc(latent.unsqueeze(-1).unsqueeze(-1))  # (B,C0,4,4)
        for norm, up in zip(self.norms, self.ups):
            h = up(F.relu(norm(h, label)))  # (B,C_i,r,r) -> (B,C_i+1,2r,2r); last: (B,3,S,S)
        return torch.tanh(h)  # (B,3,S,S)


class DecoderGenerator(nn.Module):
    """(latent (B,Z) f32, label (B,) i64) -> image (B,3,S,S) f32 in [-1,1]; `GANConfig.g_arch` "decoder"."""

    def __init__(self, z_dim: int, n_classes: int, image_size: int = 32, width: int = 32, embed: int = 32,
                 hidden: int = 128, out_channels: int = 3, out: str = "tanh") -> None:
        super().__init__()
        _check_classes(n_classes)
        self.out = out
        n = _n_levels(image_size)
        self.z_dim, self.n_classes, self.image_size = z_dim, n_classes, image_size
        chans = _up_channels(width, n)  # at 4, 8, ..., S/2
        self.c0 = chans[0]
        self.embed = nn.Embedding(n_classes, embed)
        self.fc = nn.Sequential(nn.Linear(z_dim + embed, hidden), nn.SiLU(), nn.Linear(hidden, chans[0] * 16))
        layers: list[nn.Module] = []
        for i in range(n):  # each stage doubles the resolution; the last keeps S/2's width at S
            layers += [nn.SiLU(), nn.ConvTranspose2d(chans[i], chans[i + 1] if i + 1 < n else chans[-1], 4, 2, 1)]
        layers += [nn.SiLU(), nn.Conv2d(chans[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def pre_activation(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B,Z), (B,) -> (B,out_channels,S,S) before the output nonlinearity (a branch of models/nets/decoupled.py)."""
        h = self.fc(torch.cat([latent, self.embed(label)], dim=1))  # (B, C0*16)
        return self.net(h.reshape(-1, self.c0, 4, 4))

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.pre_activation(latent, label)  # (B,3,S,S)
        if self.out == "tanh":
            return torch.tanh(h)
        # "clamp": the raw image while training (the losses keep their gradient outside [-1, 1]); in eval mode
        # (samples, evaluation, export) clamped. A module attribute, so the exported graph has no branch.
        return h if self.training else h.clamp(-1.0, 1.0)


def build_generator(config: "GANConfig", n_classes: int, image_size: int) -> nn.Module:
    """The generator `config.g_arch` names ("decoupled": models/nets/decoupled.build, which needs the data's
    class factors)."""
    if config.g_arch == "decoder":
        return DecoderGenerator(config.z_dim, n_classes, image_size, config.g_width, config.g_embed, config.g_hidden,
                                out=config.g_out)
    return Generator(config.z_dim, n_classes, image_size, config.g_width)


def _down_stack(chans: list[int], sn: bool, bn: bool, slope: float) -> nn.Sequential:
    """3 -> chans[0] -> ... : one 4x4 stride-2 conv per entry, halving the resolution each time."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate(chans):
        conv = nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=not (bn and i > 0))
        layers.append(spectral_norm(conv) if sn else conv)
        if bn and i > 0:  # no norm on the first layer (DCGAN): keeps the input's absolute colours
            layers.append(nn.BatchNorm2d(c))
        layers.append(nn.LeakyReLU(slope))
        c_in = c
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018): (image (B,3,S,S), label (B,)) -> scores (B,).

    norm="sn": spectral norm on every layer (SNGAN); norm="bn": BatchNorm after each conv but the first
    (DCGAN), with the 3x3 conv at 4x4 and the linear / projection heads kept spectrally normalised so the
    scores and the class term stay bounded."""

    def __init__(self, n_classes: int, image_size: int = 32, width: int = 32, norm: str = "sn",
                 class_head: bool = False) -> None:
        super().__init__()
        _check_classes(n_classes)
        if norm not in D_NORMS:
            raise ValidationError(f"discriminator norm {norm!r}; choose one of {', '.join(D_NORMS)}")
        n = _n_levels(image_size)
        chans = [min(width * 2 ** i, width * 8) for i in range(n)]  # at S/2, S/4, ..., 4
        self.body = _down_stack(chans, sn=norm == "sn", bn=norm == "bn", slope=0.1 if norm == "sn" else 0.2)
        # a 3x3 conv at 4x4 is cheap and lets D relate parts of the shape before pooling
        self.top = nn.Sequential(spectral_norm(nn.Conv2d(chans[-1], chans[-1], 3, padding=1)), nn.LeakyReLU(0.1))
        self.psi = spectral_norm(nn.Linear(chans[-1], 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, chans[-1]))
        # CAN (class_head=True): the real/fake score is unconditional and a class head reads the same features
        self.classes = nn.Linear(chans[-1], n_classes) if class_head else None

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        # image (B,3,S,S), label (B,) -> (B,)
        return self.score_and_class(image, label)[0]

    def score_and_class(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (B,) and, with a class head, class logits (B,C) (else None) from one trunk pass."""
        h = self.top(self.body(image)).sum(dim=(2, 3))  # (B,C) global sum pooling (SNGAN)
        if self.classes is not None:
            return self.psi(h).squeeze(1), self.classes(h)
        return self.psi(h).squeeze(1) + (self.embed(label) * h).sum(dim=1), None  # (B,)


class Encoder(nn.Module):
    """image (B,3,S,S) f32 in [-1,1] -> (latent (B,Z) f32, logits (B,C) f32)."""

    def __init__(self, z_dim: int, n_classes: int, image_size: int = 32, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        _check_classes(n_classes)
        n = _n_levels(image_size)
        chans = [min(width * 2 ** i, width * 4) for i in range(n)]  # at S/2, ..., 4
        # no BatchNorm: the encoder sees real and generated batches of different statistics during training,
        # and eval-mode running statistics of that mix mis-calibrate both codes and logits
        self.body = _down_stack(chans, sn=False, bn=False, slope=0.2)
        # flatten (not pool) the 4x4 map: position is what the latent must carry
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1] * 16, hidden), nn.LeakyReLU(0.2))
        self.to_latent = nn.Linear(hidden, z_dim)
        self.to_logits = nn.Linear(hidden, n_classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # image (B,3,S,S) -> latent (B,Z), logits (B,C)
        h = self.fc(self.body(image))  # (B,hidden)
        return self.to_latent(h), self.to_logits(h)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
