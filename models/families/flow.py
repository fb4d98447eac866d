"""The normalizing-flow family ("flow"): NLL training with dequantisation, tempered prior sample grids,
bits/dim and round-trip figures, and the `encoder` / `decoder` export graphs of docs/architecture.md.

The flow's map does not depend on the label; the class lives only in the prior (a learned Gaussian per
class over z), so the encoder's `logits` are the class-conditional prior log-densities of z (Bayes rule with
a uniform class prior) and the decoder keeps its `label` input only for the uniform graph signature.

Optional flow + adversarial hybrid (`FlowConfig.adv_weight` > 0; Flow-GAN, Grover et al. 2018): after
`adv_start` NLL-only steps, each step also draws `adv_batch` tempered prior samples through `Flow.inverse`
with gradients, takes one step of a spectrally normalised discriminator (projection head on the class unless
`d_conditional` is off) on the dequantised real batch vs those samples (clamped to [-1, 1]), and the samples'
adversarial loss takes its own Adam step on the flow (lr = the ramped adv_weight times the NLL's lr; why not
one step on the sum: `FlowConfig.adv_weight`). The discriminator and that optimiser are training-only (in
`modules()` / `optimizers()` for checkpoints, not in `graphs()`), so the exported encoder / decoder are the
same exact maps.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from latentserve.errors import ValidationError
from latentserve.models.families.base import ExportGraph, Family, cosine_decay
from latentserve.models.families.vae import eval_mode
from latentserve.models.nets.gan import SUPPORTED_SIZES, Discriminator
from latentserve.models.nets.flow import BIN_WIDTH, Flow, FlowConfig, bits_per_dim


class FlowEncoderGraph(nn.Module):
    """image (B,3,H,W) -> latent z (B,D), logits (B,C), logdet (B,) with logits_c + logdet = log p(x | c).

    Unconditional map: one z, logits = log N(z; mu_c, sigma_c). Conditional map (`FlowConfig.conditional`):
    the image goes through every class's map; latent and logdet are those of the most likely class, logits_c =
    log p(x | c) - logdet, and `class_latents` (B,C,D) holds z under each class's map (encode with a given
    label picks its row; decoding that row with that label is the exact inverse)."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.flow.conditional:
            z, logdet = self.flow(image)
            return z, self.flow.class_log_probs(z), logdet
        z_all, logp, logdets = self.flow.per_class(image)  # (B,C,D), (B,C), (B,C)
        best = logp.argmax(1, keepdim=True)  # (B,1)
        logdet = logdets.gather(1, best)  # (B,1)
        latent = z_all.gather(1, best[:, :, None].expand(-1, -1, z_all.shape[2]))[:, 0]  # (B,D)
        return latent, logp - logdet, logdet[:, 0], z_all


class FlowDecoderGraph(nn.Module):
    """latent (B,D), label (B,) int64 -> image (B,3,H,W) = clamp(inverse(latent [, label]), -1, 1).

    An unconditional map does not read the label; `0 * label` is added so exporters keep it as a graph input.
    """

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = self.flow.inverse(latent, label if self.flow.conditional else None)  # (B,3,H,W)
        keep = (label.to(x.dtype) * 0.0).reshape(-1, 1, 1, 1)  # (B,1,1,1) zeros, ties `label` to the graph
        return torch.clamp(x + keep, -1.0, 1.0)


class FlowFamily(Family):
    name = "flow"
    config_cls = FlowConfig
    default_steps = 1200  # recommended steps at batch 64 (the loop's default batch size)

    def __init__(self, config: FlowConfig, data_meta: dict, device: torch.device) -> None:
        super().__init__(config, data_meta, device)  # type check, image_size, n_classes
        self.flow = Flow(config, self.image_size, self.n_classes).to(device)
        self.opt = torch.optim.Adam(self.flow.parameters(), lr=config.lr)
        # the hybrid's discriminator exists only when it is used: a pure-ML flow keeps today's modules,
        # checkpoints and RNG stream
        self.d: Discriminator | None = None
        self.opt_d: torch.optim.Optimizer | None = None
        self.opt_adv: torch.optim.Optimizer | None = None
        if config.adv_weight > 0:
            if self.image_size not in SUPPORTED_SIZES:
                raise ValidationError(f"FlowConfig.adv_weight > 0 needs an image size the discriminator supports "
                                      f"({', '.join(map(str, SUPPORTED_SIZES))}), got {self.image_size}")
            # built under a forked RNG, so the NLL-only steps before adv_start draw exactly a pure-ML run's noise
            with torch.random.fork_rng(devices=[]):
                self.d = Discriminator(self.n_classes if config.d_conditional else 1, self.image_size,
                                       config.d_width, "sn").to(device)
            self.opt_d = torch.optim.Adam(self.d.parameters(), lr=config.lr_d, betas=(0.5, 0.999))
            # the flow's adversarial update has its own Adam, lr = adv_weight_at(step) * lr_at(step) set per step
            # (why not one step on NLL + adversarial: FlowConfig.adv_weight)
            self.opt_adv = torch.optim.Adam(self.flow.parameters(), lr=config.lr, betas=(0.5, 0.999))

    # -- what the loop checkpoints ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"flow": self.flow, **({"discriminator": self.d} if self.d is not None else {})}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self.d is None:
            return {"opt": self.opt}
        return {"opt": self.opt, "discriminator": self.opt_d, "flow_adv": self.opt_adv}

    # -- training -----------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to lr*lr_final_frac (a function of the step: resume-safe)."""
        c = self.config
        if c.warmup_steps > 0 and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        return c.lr * cosine_decay(step, c.lr_decay_steps, c.lr_final_frac)

    @staticmethod
    def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform dequantisation: x + U(-1/2, 1/2) bins, x (B,3,H,W) in [-1,1] on the 8-bit grid."""
        noise = torch.rand(x.shape, generator=generator).to(x.device) - 0.5
        return x + noise * BIN_WIDTH

    def adv_weight_at(self, step: int) -> float:
        """adv_weight at `step`: 0 before adv_start, then a linear ramp over adv_ramp steps to adv_weight (a
        function of the step: resume-safe). The adversarial update's lr is this times `lr_at(step)`."""
        c = self.config
        if c.adv_weight <= 0 or step < c.adv_start:
            return 0.0
        if c.adv_ramp == 0:
            return float(c.adv_weight)
        return float(c.adv_weight) * min(1.0, (step - c.adv_start + 1) / c.adv_ramp)

    def _d_labels(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.config.d_conditional else torch.zeros_like(y)

    def _adversarial(self, x_real: torch.Tensor, y_real: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        """One discriminator step on x_real (B,3,H,W) vs fresh flow samples, then the generator's adversarial
        loss on those samples through the updated discriminator, with its graph into the flow (None, and no D
        step, when a sample is not finite: an exploding inverse must not reach either network)."""
        c = self.config
        n = c.adv_batch
        labels = torch.randint(0, self.n_classes, (n,), device=self.device)  # (n,)
        eps = torch.randn(n, self.flow.dim, device=self.device)  # (n,D)
        z = self.flow.prior_mean[labels] + c.adv_sample_temperature * torch.exp(self.flow.prior_logstd[labels]) * eps
        x_fake = self.flow.inverse(z, labels)  # (n,3,H,W), with gradients into the flow and its prior
        if not bool(torch.isfinite(x_fake).all()):
            return None, {"adv_skipped": 1.0}
        x_fake = x_fake.clamp(-1.0, 1.0)  # what the decoder graph serves; D never sees out-of-range values
        d_fake_labels, d_real_labels = self._d_labels(labels), self._d_labels(y_real)
        d_real = self.d(x_real, d_real_labels)  # (B,)
        d_fake = self.d(x_fake.detach(), d_fake_labels)  # (n,)
        if c.adv_loss == "hinge":
            d_loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        else:
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        self.d.requires_grad_(False)  # the generator's loss must not leave gradients in D
        score = self.d(x_fake, d_fake_labels)  # (n,)
        self.d.requires_grad_(True)
        g_adv = -score.mean() if c.adv_loss == "hinge" else F.softplus(-score).mean()
        return g_adv, {"d_loss": float(d_loss.detach()), "g_adv": float(g_adv.detach()),
                       "d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}

    def train_step(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, float]:
        """NLL of the dequantised batch (+ class_weight * Bayes-rule CE), one Adam step. With the hybrid on, from
        adv_start also a discriminator step, and the adversarial loss of flow samples takes its own Adam step
        on the flow (lr = adv_weight_at(step) * lr_at(step)); either flow step is skipped when its gradient is
        not finite (`skipped`, `adv_skipped`)."""
        c = self.config
        self.flow.train()
        xd = self.dequantize(x)
        if not bool(self.flow.initialized):  # ActNorm data init on the first batch (also a fresh resume-less run)
            self.flow.initialize(xd, y)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        if self.flow.conditional and c.class_weight > 0:
            _, class_lp, _ = self.flow.per_class(xd)  # (B,C) log p(x | c): every class's map
        else:
            # one pass (a conditional flow: through the true class's map only, since the per-class passes
            # cost C times as much; its acc then reads the prior's Gaussians alone, a rough figure)
            z, logdet = self.flow(xd, y)  # (B,D), (B,)
            class_lp = self.flow.class_log_probs(z) + logdet[:, None]  # (B,C) log N(z; mu_c, sigma_c) + logdet
        nll = -class_lp.gather(1, y[:, None])[:, 0].mean()  # nats / image of -log p(x | y)
        ce = F.cross_entropy(class_lp, y)  # Bayes rule with a uniform class prior
        # the NLL per dim keeps lr and grad_clip independent of the image size; the class term is per image
        loss = nll / self.flow.dim + c.class_weight * ce
        hybrid = self.d is not None
        w, adv, adv_grads = self.adv_weight_at(step), {}, None
        if w > 0:
            self.d.train()
            g_adv, adv = self._adversarial(xd, y)
            if g_adv is not None:  # taken before the NLL step changes the parameters in place
                adv_grads = torch.autograd.grad(g_adv, list(self.flow.parameters()), allow_unused=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = 0.0
        if c.grad_clip > 0 or hybrid:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.flow.parameters(), c.grad_clip or math.inf))
        skipped = hybrid and not math.isfinite(grad_norm)
        if not skipped:
            self.opt.step()
        if adv_grads is not None:
            adv.update(self._adversarial_update(adv_grads, w * self.lr_at(step)))
        with torch.no_grad():
            acc = (class_lp.argmax(1) == y).float().mean().item()
        out = {"loss": loss.item(), "bpd": bits_per_dim(nll.detach(), self.flow.dim).item(), "ce": ce.item(),
               "acc": acc, "grad_norm": grad_norm}
        if hybrid:
            out.update(adv_w=w, skipped=float(skipped), **adv)
        return out

    def _adversarial_update(self, grads: tuple[torch.Tensor | None, ...], lr: float) -> dict[str, float]:
        """One step of the flow's adversarial Adam on `grads` (clipped to grad_clip), at learning rate `lr`."""
        params = list(self.flow.parameters())
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.contiguous()  # autograd.grad may hand back expanded views
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip or math.inf))
        skipped = not math.isfinite(norm)
        if not skipped:
            for group in self.opt_adv.param_groups:
                group["lr"] = lr
            self.opt_adv.step()
        for p in params:
            p.grad = None
        return {"adv_grad_norm": norm, "adv_skipped": float(skipped)}

    # -- figures ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, n_per_class: int, seed: int, temperature: float | None = None) -> torch.Tensor:
        """Tempered prior samples, class-major (n_per_class images of class 0, then class 1, ...), in [-1,1]."""
        gen = torch.Generator().manual_seed(int(seed))
        labels = torch.arange(self.n_classes).repeat_interleave(n_per_class).to(self.device)  # (N,)
        t = self.config.temperature if temperature is None else float(temperature)
        with eval_mode(self.flow):
            return self.flow.sample(labels, t, gen).clamp(-1.0, 1.0)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, batch_size: int = 250) -> dict[str, float]:
        """Test bits/dim (dequantised with a fixed seed), round-trip max abs error decode(encode(x)) - x on the
        undequantised images, and the Bayes-rule class accuracy of the class-conditional prior."""
        gen = torch.Generator().manual_seed(0)
        nll_sum, rt_max, correct, n = 0.0, 0.0, 0, 0
        with eval_mode(self.flow):
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(self.device)
                yb = y[i : i + batch_size].to(self.device)
                nll_sum += self.flow.nll(self.dequantize(xb, gen), yb).sum().item()
                if self.flow.conditional:
                    z_all, class_lp, _ = self.flow.per_class(xb)  # (B,C,D), (B,C)
                    z = z_all[torch.arange(len(yb)), yb]  # under the true class's map
                else:
                    z, _ = self.flow(xb)
                    class_lp = self.flow.class_log_probs(z)
                rt_max = max(rt_max, (self.flow.inverse(z, yb) - xb).abs().max().item())
                correct += (class_lp.argmax(1) == yb).sum().item()
                n += len(xb)
        if n == 0:
            return {}
        nll = nll_sum / n
        return {
            "bpd": float(bits_per_dim(torch.tensor(nll), self.flow.dim)),
            "nll_nats": nll,
            "roundtrip_max_abs": rt_max,
            "class_acc": correct / n,
        }

    # -- export -------------------------------------------------------------------------------------------
    def graphs(self) -> dict[str, ExportGraph]:
        # frozen copies (one per graph): exporting must not flip the training flow's mode
        frozen = [copy.deepcopy(self.flow).eval().requires_grad_(False) for _ in range(2)]
        h = self.image_size
        image = torch.zeros(2, 3, h, h, device=self.device)
        latent = torch.zeros(2, self.flow.dim, device=self.device)
        label = torch.zeros(2, dtype=torch.int64, device=self.device)
        return {
            "encoder": ExportGraph(
                module=FlowEncoderGraph(frozen[0]).eval(),
                example_inputs=(image,),
                input_names=["image"],
                output_names=["latent", "logits", "logdet"] + (["class_latents"] if self.flow.conditional else []),
                doc=("exact x -> z under each class's map (class_latents); latent, logdet of the most likely "
                     "class; logits_c + logdet = log p(x | c)" if self.flow.conditional else
                     "exact x -> z; logits = log N(z; mu_c, sigma_c) per class; logdet = log|det dz/dx|"),
            ),
            "decoder": ExportGraph(
                module=FlowDecoderGraph(frozen[1]).eval(),
                example_inputs=(latent, label),
                input_names=["latent", "label"],
                output_names=["image"],
                doc=("exact z -> x under the label's map, clamped to [-1,1]" if self.flow.conditional else
                     "exact z -> x (label unused by the map), clamped to [-1,1]"),
            ),
        }

    def manifest_extra(self) -> dict:
        mean, logstd = self.flow.prior_arrays()
        return {
            "prior": {"type": "class_gaussian"},
            "prior_mean": mean,  # (C, D)
            "prior_logstd": logstd,  # (C, D)
            "sample_temperature": float(self.config.temperature),
            "latent_shape": [self.flow.dim],
        }
