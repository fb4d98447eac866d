"""The conditional VAE family ("vae"): training step, prior sample grids, held-out figures and export graphs.

Owns the ELBO (reconstruction log-likelihood + beta-weighted KL with warm-up and optional free bits), the
class-head cross-entropy, the learning-rate schedule (derived from the step, so a resumed run continues the
same schedule), and the `encoder` / `decoder` graphs of the contract in docs/architecture.md.

With `VAEConfig.decoder = "pixelcnn"` (the thesis's VAE with an autoregressive decoder) p(x | z, y) is a small
PixelCNN conditioned on the feed-forward decoder's image (models/nets/pixelcnn.py); that image is trained by
an auxiliary reconstruction loss (`aux_weight`) so the latent keeps the global structure. The exported
`decoder` graph is then that feed-forward head, and `ar_context` / `ar_step` are sampled pixel by pixel
(models/pixel_ar.py), which is what Decode and Sample serve.
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
from latentserve.models.nets import pixelcnn as pcnn
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


_LN2 = math.log(2.0)


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
        self.pixelcnn: pcnn.PixelCNN | None = None
        if config.decoder == "pixelcnn":
            self.pixelcnn = pcnn.PixelCNN(pcnn.CONTEXT_CHANNELS, config.ar_width, config.ar_layers).to(device)
            params += list(self.pixelcnn.parameters())
        if config.learn_scale:
            params.append(self.log_scale)
        self.opt = torch.optim.Adam(params, lr=config.lr)

    # -- what the loop checkpoints ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        mods = {"encoder": self.encoder, "decoder": self.decoder, "scale": self.scale_holder}
        if self.pixelcnn is not None:
            mods["pixelcnn"] = self.pixelcnn
        return mods

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
        ar_nll = None
        if self.pixelcnn is not None:  # the PixelCNN is the likelihood; the feed-forward image an auxiliary head
            self.pixelcnn.train()
            ar_nll = self._ar_nll(x, xr).mean()  # nats / image (discrete)
            recon = ar_nll + c.aux_weight * recon
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
        ar = {} if ar_nll is None else {"ar_nats": ar_nll.item(),
                                         "bits_per_dim": (ar_nll.item() + kl.item()) / (n_pix * _LN2)}
        return {
            **ar,
            "loss": loss.item(),
            "recon_nats": recon.item(),
            "kl_nats": kl.item(),
            "kl_weight": klw,
            "ce": ce.item(),
            "consistency": cons.item(),
            "acc": acc,
            "psnr": _psnr(mse01),
        }

    def _ar_nll(self, x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        """-log p(x | context) of the PixelCNN, (B,) nats; xr (B,3,H,W) the feed-forward image (clamped, as the
        exported context graph clamps it)."""
        m = self.pixelcnn.margin
        mean, log_scale = self.pixelcnn(F.pad(x, (m,) * 4), pcnn.make_context(xr.clamp(-1.0, 1.0), m))
        return pcnn.discretized_logistic_nll(x, mean, log_scale).flatten(1).sum(1)

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
        if self.pixelcnn is not None:
            return torch.from_numpy(self.ar_sample(z.cpu().numpy(), labels.cpu().numpy())).to(self.device)
        with eval_mode(self.decoder):
            return self.decoder(z, labels)

    @torch.no_grad()
    def ar_sample(self, latents, labels):
        """The autoregressive decoder's images (N,3,H,W) numpy, by the same loop serving runs on the exported
        graphs (models/pixel_ar.py), here on eval-mode copies of the modules."""
        from latentserve.models.pixel_ar import ar_decode

        graphs = self.graphs()
        ctx, step = graphs["ar_context"].module, graphs["ar_step"].module
        dev = self.device

        def run_context(feeds):
            return {"context": ctx(torch.from_numpy(feeds["latent"]).to(dev),
                                   torch.from_numpy(feeds["label"]).to(dev)).cpu().numpy()}

        def run_step(feeds):
            mean, log_scale = step(torch.from_numpy(feeds["pixels"]).to(dev), torch.from_numpy(feeds["context"]).to(dev))
            return {"mean": mean.cpu().numpy(), "log_scale": log_scale.cpu().numpy()}

        return ar_decode(run_context, run_step, latents, labels, self.pixelcnn.margin, self.config.ar_temperature)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
        """Held-out figures: reconstruction PSNR (dB, [0,1] images, from the posterior mean and the true label,
        computed from the mean squared error over the whole set), KL (nats/image), ELBO terms, class accuracy."""
        sq, kl, recon, correct, n, nll = 0.0, 0.0, 0.0, 0, 0, 0.0
        gen = torch.Generator().manual_seed(0)
        mods = [m for m in (self.encoder, self.decoder, self.pixelcnn) if m is not None]
        with eval_mode(*mods):
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(self.device)
                yb = y[i : i + batch_size].to(self.device)
                mean, logvar, logits = self.encoder(xb)
                xr = self.decoder(mean, yb)
                nll += self._discrete_nll(xb, mean, logvar, yb, gen).sum().item()
                sq += ((xb - xr) * 0.5).square().flatten(1).mean(1).sum().item()
                kl += _kl_per_dim(mean, logvar).sum().item()
                recon += self._recon_nll(xb, xr).sum().item()
                correct += (logits.argmax(1) == yb).sum().item()
                n += len(xb)
        if n == 0:
            return {}
        return {
            # negative ELBO in bits per sub-pixel of the 8-bit image, one posterior sample per image
            "bits_per_dim": (nll + kl) / (n * x[0].numel() * _LN2),
            "psnr": _psnr(sq / n),
            "mse": sq / n,
            "kl_nats": kl / n,
            "recon_nats": recon / n,
            "class_acc": correct / n,
        }

    def _discrete_nll(self, x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor,
                      gen: torch.Generator) -> torch.Tensor:
        """-log p(x | z, y) (B,) nats of the 8-bit image x at z drawn from q(z|x): the PixelCNN's, or the
        feed-forward likelihood discretised to the 256 levels (a Gaussian; Laplace has no bits/dim here)."""
        eps = torch.randn(mean.shape, generator=gen).to(mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        xr = self.decoder.decode_raw(z, y)
        if self.pixelcnn is not None:
            return self._ar_nll(x, xr)
        if self.config.likelihood != "gaussian":
            return torch.full((len(x),), float("nan"), device=x.device)
        return pcnn.discretized_gaussian_nll(x, xr, torch.exp(self.log_scale)).flatten(1).sum(1)

    # -- export -------------------------------------------------------------------------------------------
    def graphs(self) -> dict[str, ExportGraph]:
        # frozen copies: exporting must not flip the training modules' modes or share their autograd state
        encoder = copy.deepcopy(self.encoder).eval().requires_grad_(False)
        decoder = copy.deepcopy(self.decoder).eval().requires_grad_(False)
        h = self.image_size
        image = torch.zeros(2, 3, h, h, device=self.device)
        latent = torch.zeros(2, self.config.z_dim, device=self.device)
        label = torch.zeros(2, dtype=torch.int64, device=self.device)
        out = {
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
                doc="p(x|z,y) mean image in [-1,1]" if self.pixelcnn is None else
                    "the feed-forward auxiliary head's image in [-1,1] (the served decoder is ar_context + ar_step)",
            ),
        }
        if self.pixelcnn is not None:
            m = self.pixelcnn.margin
            p = 2 * m + 1
            out["ar_context"] = ExportGraph(
                module=pcnn.ContextGraph(decoder, m).eval(), example_inputs=(latent, label),
                input_names=["latent", "label"], output_names=["context"],
                doc=f"the PixelCNN's context: feed-forward image + inside mask, padded by {m}")
            out["ar_step"] = ExportGraph(
                module=pcnn.StepGraph(copy.deepcopy(self.pixelcnn).eval().requires_grad_(False)).eval(),
                example_inputs=(torch.zeros(2, 3, p, p, device=self.device),
                                torch.zeros(2, pcnn.CONTEXT_CHANNELS, p, p, device=self.device)),
                input_names=["pixels", "context"], output_names=["mean", "log_scale"],
                doc=f"one PixelCNN step: the {p}x{p} patches around a pixel -> its discretised logistic")
        return out

    def manifest_extra(self) -> dict:
        extra = {"prior": {"type": "standard_normal"}, "latent_shape": [self.config.z_dim]}
        if self.pixelcnn is not None:  # read by models/pixel_ar.ar_settings
            extra["autoregressive"] = {"kind": "pixelcnn", "margin": self.pixelcnn.margin,
                                       "temperature": float(self.config.ar_temperature)}
        return extra
