"""The deterministic autoencoder family ("ae"): plain, contractive or smooth (`AEConfig.reg`), see models/nets/ae.py.

Training step: per-pixel squared reconstruction error of the decoder's (unclamped) output + `class_weight` *
the class head's cross-entropy + `code_decay` * mean squared code + `reg_weight` * the chosen Jacobian penalty.
With `decorrelate` (models/nets/ae_factors.py), + `factor_weight` * the factor heads' squared error on their
code blocks, and a second backward pass for the decoder alone: `swap_weight` * the heads' error on re-encoded
decodes of block-swapped codes. An AE has no prior of its own, so the family keeps an exponential moving average of each class's code mean
and variance and exports it as a `class_gaussian` prior (Sample's PRIOR source); the default Sample source is
the per-class latent GMM fitted at export on encoded training images (models/latent.default_sample_source), the
"workable parametric probabilistic model fitted to the latent space". Graphs: `encoder` (latent = code, logits)
and `decoder`, the contract of docs/architecture.md.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from latentserve.models.families.base import ExportGraph, Family, cosine_decay
from latentserve.models.families.vae import VAEDecoderGraph, _psnr, eval_mode
from latentserve.models.nets.ae import AEConfig, contractive_penalty, smoothness_penalty
from latentserve.models.nets.ae_factors import FactorBlocks
from latentserve.models.nets.vae import VAEDecoder, VAEEncoder


class AEEncoderGraph(nn.Module):
    """Export wrapper: image (B,3,H,W) -> latent = code (B,D), logits (B,C)."""

    def __init__(self, encoder: VAEEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code, _, logits = self.encoder(image)
        return code, logits


class CodeStats(nn.Module):
    """Per-class EMA of the code's mean and variance (buffers, so checkpoints carry them)."""

    def __init__(self, n_classes: int, z_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_classes, z_dim))
        self.register_buffer("var", torch.ones(n_classes, z_dim))

    @torch.no_grad()
    def update(self, z: torch.Tensor, y: torch.Tensor, momentum: float) -> None:
        for c in torch.unique(y).tolist():
            zc = z[y == c]
            self.mean[c].lerp_(zc.mean(0), momentum)
            if len(zc) > 1:
                self.var[c].lerp_(zc.var(0), momentum)


class AEFamily(Family):
    name = "ae"
    config_cls = AEConfig
    # knobs fitted on probe-labelled latent-GMM samples, where Sample draws by default (as the VAE's)
    knobs_from_samples = "latent_gmm"
    default_steps = 3000

    def __init__(self, config: AEConfig, data_meta: dict, device: torch.device) -> None:
        super().__init__(config, data_meta, device)
        net = config.net_config()
        self.encoder = VAEEncoder(net, self.image_size, self.n_classes).to(device)
        self.decoder = VAEDecoder(net, self.image_size, self.n_classes).to(device)
        self.stats = CodeStats(self.n_classes, config.z_dim).to(device)
        self.blocks = (FactorBlocks(list(config.decorrelate), list(data_meta.get("factors") or []),
                                    config.factor_dims).to(device) if config.decorrelate else None)
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        params += list(self.blocks.parameters()) if self.blocks is not None else []
        self.opt = torch.optim.Adam(params, lr=config.lr)

    def modules(self) -> dict[str, nn.Module]:
        mods = {"encoder": self.encoder, "decoder": self.decoder, "stats": self.stats}
        return {**mods, "blocks": self.blocks} if self.blocks is not None else mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def _code(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

    def penalty(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        """The configured regulariser on this batch (0 for reg = none); see models/nets/ae.py."""
        c = self.config
        if c.reg == "contractive":
            return contractive_penalty(self._code, x, c.jacobian_projections)
        if c.reg == "smooth":
            return smoothness_penalty(lambda zz: self.decoder.decode_raw(zz, y), z, c.smooth_eps, base=xr)
        return torch.zeros((), device=x.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, float]:
        c = self.config
        self.encoder.train()
        self.decoder.train()
        for group in self.opt.param_groups:
            group["lr"] = c.lr * cosine_decay(step, c.lr_decay_steps, c.lr_final_frac)
        z, _, logits = self.encoder(x)  # (B, D), -, (B, C)
        xr = self.decoder.decode_raw(z, y)  # (B, 3, H, W), unclamped so pixels at -1/+1 keep a gradient
        mse = (x - xr).square().mean()
        ce = F.cross_entropy(logits, y)
        pen = self.penalty(x, y, z, xr)
        n_pix = x[0].numel()
        # the penalties are sums over the Jacobian's entries per image: divided by the pixel count, per pixel like
        # the squared error
        loss = mse + c.class_weight * ce + c.code_decay * z.square().mean() + c.reg_weight * pen / n_pix
        extra = {}
        if self.blocks is not None:
            t = self.blocks.targets(f.to(z.device))  # (B, F) in [0, 1], NaN = unknown
            extra["factor"] = self.blocks.loss(z, t)
            loss = loss + c.factor_weight * extra["factor"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.blocks is not None and c.swap_weight > 0:
            extra["swap"] = self._swap_backward(z.detach(), t, y)
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.opt.param_groups[0]["params"], c.grad_clip)
        self.opt.step()
        self.stats.update(z.detach(), y, c.stats_momentum)
        with torch.no_grad():
            acc = (logits.argmax(1) == y).float().mean().item()
        return {"loss": loss.item(), "mse": mse.item(), "ce": ce.item(), "penalty": pen.item(), "acc": acc,
                "psnr": _psnr(mse.item() / 4.0), **{k: float(v.detach()) for k, v in extra.items()}}

    def _swap_backward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Accumulates the decoder's gradient of swap_weight * the swap-consistency error (models/nets/ae_factors.py);
        the encoder and heads judge with their gradients off. Returns the error (detached)."""
        zm, tm = self.blocks.mix(z, t)
        referee = [p for m in (self.encoder, self.blocks) for p in m.parameters()]
        for p in referee:
            p.requires_grad_(False)
        try:
            err = self.blocks.loss(self.encoder(self.decoder.decode_raw(zm, y))[0], tm)
            (self.config.swap_weight * err).backward()
        finally:
            for p in referee:
                p.requires_grad_(True)
        return err.detach()

    @torch.no_grad()
    def sample_grid(self, n_per_class: int, seed: int) -> torch.Tensor:
        """Draws of each class's Gaussian of codes (the exported prior), class-major."""
        gen = torch.Generator().manual_seed(int(seed))
        labels = torch.arange(self.n_classes).repeat_interleave(n_per_class)  # (N,)
        eps = torch.randn(len(labels), self.config.z_dim, generator=gen)
        z = self.stats.mean.cpu()[labels] + self.stats.var.cpu()[labels].sqrt() * eps
        with eval_mode(self.decoder):
            return self.decoder(z.to(self.device), labels.to(self.device))

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
        """Held-out reconstruction PSNR (dB, [0,1] images, true label) and class accuracy."""
        sq, correct, n = 0.0, 0, 0
        with eval_mode(self.encoder, self.decoder):
            for i in range(0, len(x), batch_size):
                xb, yb = x[i : i + batch_size].to(self.device), y[i : i + batch_size].to(self.device)
                z, _, logits = self.encoder(xb)
                sq += ((xb - self.decoder(z, yb)) * 0.5).square().flatten(1).mean(1).sum().item()
                correct += (logits.argmax(1) == yb).sum().item()
                n += len(xb)
        return {"psnr": _psnr(sq / n), "mse": sq / n, "class_acc": correct / n} if n else {}

    def graphs(self) -> dict[str, ExportGraph]:
        encoder = copy.deepcopy(self.encoder).eval().requires_grad_(False)
        decoder = copy.deepcopy(self.decoder).eval().requires_grad_(False)
        h = self.image_size
        return {
            "encoder": ExportGraph(
                module=AEEncoderGraph(encoder).eval(), example_inputs=(torch.zeros(2, 3, h, h, device=self.device),),
                input_names=["image"], output_names=["latent", "logits"], doc="code = E(x), logits = class head"),
            "decoder": ExportGraph(
                module=VAEDecoderGraph(decoder).eval(),
                example_inputs=(torch.zeros(2, self.config.z_dim, device=self.device),
                                torch.zeros(2, dtype=torch.int64, device=self.device)),
                input_names=["latent", "label"], output_names=["image"], doc="D(z, y) image in [-1,1]"),
        }

    def manifest_extra(self) -> dict:
        return {"prior": {"type": "class_gaussian"},
                "prior_mean": self.stats.mean.cpu().numpy(),  # (C, D)
                "prior_logstd": 0.5 * self.stats.var.clamp_min(1e-8).log().cpu().numpy(),  # (C, D)
                "latent_shape": [self.config.z_dim]}
