"""The conditional VAE family ("vae"): training step, prior sample grids, held-out figures and export graphs.

Owns the ELBO (reconstruction log-likelihood + beta-weighted KL with warm-up and optional free bits), the
class-head cross-entropy, the learning-rate schedule (derived from the step, so a resumed run continues the
same schedule), and the `encoder` / `decoder` graphs of the contract in docs/architecture.md.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from latentserve.errors import ValidationError
from latentserve.models.families.base import ExportGraph, Family, cosine_decay
from latentserve.models.nets.vae import VAEConfig, VAEDecoder, VAEEncoder

_LOG_2PI = math.log(2.0 * math.pi)


class VAEEncoderGraph(nn.Module):
    """Export wrapper: image (B,3,H,W) -> latent = posterior mean (B,D), logits (B,C), logvar (B,D)."""

    def __init__(self, encoder: VAEEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar, logits = self.encoder(image)
        return mean, logits, logvar


class VAEDecoderGraph(nn.Module):
    """Export wrapper: latent (B,D), label (B,) int64 -> image (B,3,H,W) in [-1,1]."""

    def __init__(self, decoder: VAEDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent, label)


def _kl_per_dim(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element, (B, D) nats."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules (and all their submodules) in eval mode, restoring every train/eval flag afterwards."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


def _psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error measured on [0, 1] images."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


class VAEFamily(Family):
    name = "vae"
    config_cls = VAEConfig
    # knobs fitted on probe-labelled latent-GMM samples: the VAE's N(0, I) prior samples fall in the "prior hole"
    # (encoded codes spread wider), so the GMM is where users sample from and where knobs must work
    knobs_from_samples = "latent_gmm"
    default_steps = 3000  # recommended steps at batch 64 (the loop's default batch size)

    def __init__(self, config: VAEConfig, data_meta: dict, device: torch.device) -> None:
        super().__init__(config, data_meta, device)  # type check, image_size, n_classes
        if self.n_classes < 1:
            raise ValidationError("VAEFamily: data_meta has no class_names")
        self.encoder = VAEEncoder(config, self.image_size, self.n_classes).to(device)
        self.decoder = VAEDecoder(config, self.image_size, self.n_classes).to(device)
        # one global log-scale of the output distribution; a parameter even when fixed so checkpoints match
        self.log_scale = nn.Parameter(torch.tensor(math.log(config.recon_scale), device=device),
                                      requires_grad=config.learn_scale)
        self.scale_holder = nn.Module()
        self.scale_holder.log_scale = self.log_scale
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        if config.learn_scale:
            params.append(self.log_scale)
        self.opt = torch.optim.Adam(params, lr=config.lr)

    # -- what the loop checkpoints ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "decoder": self.decoder, "scale": self.scale_holder}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    # -- training -----------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Cosine decay from lr to lr*lr_final_frac over lr_decay_steps (a function of the step: resume-safe)."""
        c = self.config
        return c.lr * cosine_decay(step, c.lr_decay_steps, c.lr_final_frac)

    def kl_weight_at(self, step: int) -> float:
        c = self.config
        if c.kl_warmup_steps == 0:
            return c.beta
        return c.beta * min(1.0, max(step, 0) / c.kl_warmup_steps)

    def _recon_nll(self, x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) summed over pixels, (B,) nats (continuous density on [-1,1] values)."""
        log_s = self.log_scale
        if self.config.likelihood == "gaussian":
            per = 0.5 * ((x - xr) * torch.exp(-log_s)).square() + log_s + 0.5 * _LOG_2PI
        else:  # laplace
            per = (x - xr).abs() * torch.exp(-log_s) + log_s + math.log(2.0)
        return per.flatten(1).sum(1)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, float]:
        c = self.config
        self.encoder.train()
        self.decoder.train()
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        mean, logvar, logits = self.encoder(x)  # (B,D), (B,D), (B,C)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)  # reparameterised sample (B,D)
        xr = self.decoder.decode_raw(z, y)  # (B,3,H,W), unclamped so pixels at -1/+1 keep a gradient
        recon = self._recon_nll(x, xr).mean()  # nats / image
        kl_dim = _kl_per_dim(mean, logvar).mean(0)  # (D,) batch-averaged nats per dim
        kl = kl_dim.sum()
        # free bits: dims under the floor get no KL gradient, so the posterior can use them cheaply
        kl_pen = torch.clamp(kl_dim, min=c.free_bits).sum() if c.free_bits > 0 else kl
        ce = F.cross_entropy(logits, y)
        n_pix = x[0].numel()
        klw = self.kl_weight_at(step)
        # the ELBO is normalised per pixel so lr and grad_clip do not depend on the image size; the class
        # cross-entropy is per image (dividing it by n_pix too would make the head learn ~3000x slower)
        loss = (recon + klw * kl_pen) / n_pix + c.class_weight * ce
        cons = torch.zeros(())
        ramp = klw / c.beta if c.beta > 0 else 1.0  # same warm-up as the KL: the judge must learn first
        if c.consistency_weight > 0 and ramp > 0:
            cons = self._consistency(z.detach())
            loss = loss + c.consistency_weight * ramp * cons
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip > 0:
            params = [p for g in self.opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        self.opt.step()
        with torch.no_grad():
            mse01 = ((x - xr) * 0.5).square().mean().item()  # on [0,1] images
            acc = (logits.argmax(1) == y).float().mean().item()
        return {
            "loss": loss.item(),
            "recon_nats": recon.item(),
            "kl_nats": kl.item(),
            "kl_weight": klw,
            "ce": ce.item(),
            "consistency": cons.item(),
            "acc": acc,
            "psnr": _psnr(mse01),
        }

    def _consistency(self, z_post: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the class head on images decoded from real images' z with a random label y'.

        This makes the label, not z, decide the class of a decoded image. Only the decoder learns from this
        term: z is detached and the encoder's weights are frozen for it, so the judge cannot learn to agree
        with bad images. Prior samples are deliberately not used: off the data manifold the decoder learns
        to fool the judge with one adversarial blob per class (measured).
        """
        n = max(1, round(self.config.consistency_frac * len(z_post)))
        z = z_post[:n]  # (n, D)
        y_new = torch.randint(0, self.n_classes, (n,), device=z.device)  # (n,)
        x_gen = self.decoder.decode_raw(z, y_new).clamp(-1.0, 1.0)  # (n,3,H,W), what serving returns
        params = list(self.encoder.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            _, _, logits = self.encoder(x_gen)
        finally:
            for p in params:
                p.requires_grad_(True)
        return F.cross_entropy(logits, y_new)

    # -- figures ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, n_per_class: int, seed: int) -> torch.Tensor:
        """Prior samples z ~ N(0, I), class-major: rows of n_per_class images for class 0, 1, ..."""
        gen = torch.Generator().manual_seed(int(seed))
        n = self.n_classes * n_per_class
        z = torch.randn(n, self.config.z_dim, generator=gen).to(self.device)  # (N, D)
        labels = torch.arange(self.n_classes).repeat_interleave(n_per_class).to(self.device)  # (N,)
        with eval_mode(self.decoder):
            return self.decoder(z, labels)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
        """Held-out figures: reconstruction PSNR (dB, [0,1] images, from the posterior mean and the true label,
        computed from the mean squared error over the whole set), KL (nats/image), ELBO terms, class accuracy."""
        sq, kl, recon, correct, n = 0.0, 0.0, 0.0, 0, 0
        with eval_mode(self.encoder, self.decoder):
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(self.device)
                yb = y[i : i + batch_size].to(self.device)
                mean, logvar, logits = self.encoder(xb)
                xr = self.decoder(mean, yb)
                sq += ((xb - xr) * 0.5).square().flatten(1).mean(1).sum().item()
                kl += _kl_per_dim(mean, logvar).sum().item()
                recon += self._recon_nll(xb, xr).sum().item()
                correct += (logits.argmax(1) == yb).sum().item()
                n += len(xb)
        if n == 0:
            return {}
        return {
            "psnr": _psnr(sq / n),
            "mse": sq / n,
            "kl_nats": kl / n,
            "recon_nats": recon / n,
            "class_acc": correct / n,
        }

    # -- export -------------------------------------------------------------------------------------------
    def graphs(self) -> dict[str, ExportGraph]:
        # frozen copies: exporting must not flip the training modules' modes or share their autograd state
        encoder = copy.deepcopy(self.encoder).eval().requires_grad_(False)
        decoder = copy.deepcopy(self.decoder).eval().requires_grad_(False)
        h = self.image_size
        image = torch.zeros(2, 3, h, h, device=self.device)
        latent = torch.zeros(2, self.config.z_dim, device=self.device)
        label = torch.zeros(2, dtype=torch.int64, device=self.device)
        return {
            "encoder": ExportGraph(
                module=VAEEncoderGraph(encoder).eval(),
                example_inputs=(image,),
                input_names=["image"],
                output_names=["latent", "logits", "logvar"],
                doc="q(z|x): latent = posterior mean, logvar = posterior log-variance, logits = class head",
            ),
            "decoder": ExportGraph(
                module=VAEDecoderGraph(decoder).eval(),
                example_inputs=(latent, label),
                input_names=["latent", "label"],
                output_names=["image"],
                doc="p(x|z,y) mean image in [-1,1]",
            ),
        }

    def manifest_extra(self) -> dict:
        return {"prior": {"type": "standard_normal"}, "latent_shape": [self.config.z_dim]}
