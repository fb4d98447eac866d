"""The conditional GAN family: training step (D, G, EMA of G, encoder), sample grids, evaluation, export graphs.

Owns `GANFamily`. The recommended step (`mode_reg > 0`, the default) is a mode-regularised GAN (Che et al.
2017, "Mode Regularized Generative Adversarial Networks") with the encoder trained jointly. On a real batch
(x, y) with prior draws z ~ N(0, I):
1. the projection discriminator learns real x vs prior samples G(z, y);
2. G and the encoder E take one joint step on
   - the adversarial loss of G(z, y)                              (samples look real, for the right class),
   - `mode_reg` * ||G(E(x), y) - x||^2 on the real batch          (every real image is reachable: no mode
     collapse, fast progress on one CPU thread, faithful reconstructions),
   - `w_latent` * ||E(G(z, y)) - z||^2                             (E inverts G on prior samples; G keeps z
     identifiable, InfoGAN-like),
   - `w_class` * CE(E(x), y) on real images                        (the encoder's class head),
   - `w_ac` * CE(E_frozen(G(z, y)), y) into G only                  (AC-GAN: samples are drawn in their class),
   - `w_prior` * moment matching of E(x) to N(0, I)                (real codes live where the prior samples);
3. the EMA copy of G (`g_ema`) is updated; it is what samples, the exported decoder and evaluation use, because
   averaged weights give visibly cleaner samples than the raw G.
With `adv_start` > 0 the steps before it train G and E as an autoencoder only (`_autoencoder_step`).
With `w_adv_recon` > 0, G(E(x) + noise, y) is shown to D as fake too and G is pushed to make it look real:
the bundled model is sampled from codes near encoded images (an anchor mixture), so that is where the
adversarial loss has to act. The bundle's recipe and its judged figures are in models/bundle.py and
models/repository/README.md.

`mode_reg = 0` is a plain conditional GAN (`n_dis` D steps, one G step) with the encoder trained afterwards
(from `encoder_start`) to invert the frozen EMA generator: latent regression on its samples, class CE and
reconstruction of real images through it.

Creative sampling (CAN, `can_form` + `can_weight`): the discriminator's real/fake score is unconditional, its class
head learns the classes from real images (`w_d_class`), and from `can_start` `_g_adv` adds the style-ambiguity loss
of that head on G's images (models/nets/creative.py). `g_arch = "decoupled"` builds the shape / texture generator
(models/nets/decoupled.py) from the data's class factors; `knob_branches` tells export which latent coordinates
each factor knob may move.

BatchNorm statistics of the EMA generator: `sampling_generator()` re-estimates them on a copy from fixed-seed
generated batches ("standing statistics"), so samples and the exported decoder are a pure function of the EMA
weights and making them never changes training state.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from latentserve.errors import ValidationError
from latentserve.models.families.base import ExportGraph, Family, cosine_decay
from latentserve.models.nets import decoupled
from latentserve.models.nets import mixed_batch as mb
from latentserve.models.nets.creative import style_ambiguity
from latentserve.models.nets.gan import Discriminator, Encoder, GANConfig, Generator, build_generator

# batches of generated images used to re-estimate g_ema's BatchNorm statistics ("standing statistics")
_STATS_BATCHES = 8
_STATS_BATCH_SIZE = 128
_STATS_SEED = 20240917


def _moment_loss(latent: torch.Tensor) -> torch.Tensor:
    """Moment matching of a batch of codes (B,Z) to N(0, I): per-dim batch mean 0 and variance 1 (a zero that
    keeps the graph for B < 2, which has no variance)."""
    if latent.shape[0] < 2:
        return latent.sum() * 0.0
    return latent.mean(0).pow(2).mean() + (latent.var(0) - 1).pow(2).mean()


class _DecoderGraph(nn.Module):
    """Export wrapper: (latent (B,Z) f32, label (B,) i64) -> (image (B,3,S,S) f32,)."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.generator(latent, label)  # (B,3,S,S)


class _EncoderGraph(nn.Module):
    """Export wrapper: image (B,3,S,S) f32 -> (latent (B,Z) f32, logits (B,C) f32)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent, logits = self.encoder(image)
        return latent, logits


class GANFamily(Family):
    name = "gan"
    config_cls = GANConfig
    # The encoder's codes of real images and the N(0, I) prior occupy different regions, so Sample's knobs are
    # fitted on probe-labelled prior samples, where it draws.
    knobs_from_samples = "prior"
    # recommended steps at batch 64 for 32x32 shapes with the default (prior-sampled) recipe
    default_steps = 4000

    def __init__(self, config: GANConfig | dict, data_meta: dict, device: torch.device | str = "cpu") -> None:
        if isinstance(config, dict):
            config = GANConfig.from_dict(config)
        super().__init__(config, data_meta, torch.device(device))  # type check, image_size, n_classes
        config.validate()
        c = config
        self.g = self._build_generator(data_meta).to(self.device)
        self.d = Discriminator(self.n_classes, self.image_size, c.d_width, c.d_norm,
                               class_head=c.can_form != "none").to(self.device)
        if c.d_kind == "mixed":  # the same per-image trunk under a set head (models/nets/mixed_batch.py)
            self.d = mb.MixedBatchDiscriminator(self.d.body, self.d.top, self.d.psi.in_features, self.n_classes,
                                                c.mix_set_size).to(self.device)
        self.e = Encoder(c.z_dim, self.n_classes, self.image_size, c.e_width, c.e_hidden).to(self.device)
        self.g_ema = copy.deepcopy(self.g).requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=c.lr_g, betas=(c.beta1, c.beta2))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=c.lr_d, betas=(c.beta1, c.beta2))
        self.opt_e = torch.optim.Adam(self.e.parameters(), lr=c.lr_e)

    def _build_generator(self, data_meta: dict) -> nn.Module:
        """The generator `config.g_arch` names: "decoupled" has shape and texture branches over the data's class
        factors (models/nets/decoupled.py); the vector family overrides this to draw layers."""
        if self.config.g_arch == "decoupled":
            class_factors = (data_meta.get("info") or {}).get("class_factors")
            return decoupled.build(self.config, self.n_classes, self.image_size, class_factors)
        return build_generator(self.config, self.n_classes, self.image_size)

    # -- what the loop checkpoints ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.g, "discriminator": self.d, "encoder": self.e, "generator_ema": self.g_ema}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d, "encoder": self.opt_e}

    # -- training ---------------------------------------------------------------------------------------------
    def _d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        # real, fake: (B,) scores
        if self.config.loss == "hinge":
            return F.relu(1.0 - real).mean() + self._d_fake_loss(fake)
        return F.softplus(-real).mean() + self._d_fake_loss(fake)

    def _d_fake_loss(self, fake: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 + fake).mean() if self.config.loss == "hinge" else F.softplus(fake).mean()

    def _g_loss(self, fake: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "hinge":
            return -fake.mean()
        return F.softplus(-fake).mean()

    # the adversarial terms through whichever discriminator `d_kind` chose
    def _d_objective(self, x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """D's loss on the real batch x vs fake (both labelled y), and figures for the log."""
        if self.config.d_kind == "mixed":
            return mb.d_loss(self.d, x, fake, y, y)
        (d_real, cls_real), d_fake = self.d.score_and_class(x, y), self.d(fake, y)  # (B,), (B,C) | None, (B,)
        loss = self._d_loss(d_real, d_fake)
        figs = {"d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}
        if cls_real is not None:  # CAN: the class head learns the known classes from real images only
            loss = loss + self.config.w_d_class * F.cross_entropy(cls_real, y)
            figs["d_class_acc"] = float((cls_real.detach().argmax(1) == y).float().mean())
        return loss, figs

    def _d_on_fakes(self, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """D's loss for images it must call fake (the w_adv_recon term)."""
        if self.config.d_kind == "mixed":
            return F.softplus(mb.fake_logits(self.d, fake, y)).mean()  # cross-entropy to a real share of 0
        return self._d_fake_loss(self.d(fake, y))

    def _g_adv(self, fake: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """G's adversarial loss on its images (mixed: sets of fakes only should look all real), with CAN's push
        from `can_start`."""
        c = self.config
        if c.d_kind == "mixed":
            return F.softplus(-mb.fake_logits(self.d, fake, y)).mean()
        score, logits = self.d.score_and_class(fake, y)
        loss = self._g_loss(score)
        if c.can_weight > 0 and step >= c.can_start:  # CAN: real, yet no known class (models/nets/creative.py)
            loss = loss + c.can_weight * style_ambiguity(logits, c.can_form)
        return loss

    def _z(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.config.z_dim, generator=generator, device=self.device)  # (n,Z)

    def mode_reg_at(self, step: int) -> float:
        """Weight of the reconstruction term at `step` (a function of the step, so a resumed run continues it)."""
        c = self.config
        if c.mode_reg_final == -1.0:
            return c.mode_reg
        frac = min(1.0, step / c.mode_reg_anneal_steps)
        return c.mode_reg + (c.mode_reg_final - c.mode_reg) * frac

    def lr_scale_at(self, step: int) -> float:
        """Factor on lr_g and lr_e at `step`: cosine from 1 to lr_final_frac over lr_decay_steps (1 if 0)."""
        c = self.config
        return 1.0 if c.lr_decay_steps == 0 else cosine_decay(step, c.lr_decay_steps, c.lr_final_frac)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, float]:
        """x (B,3,S,S) in [-1,1]; y (B,) int64; f (B,K) unused (the GAN is unsupervised on factors)."""
        c = self.config
        x, y = x.to(self.device), y.to(self.device)
        b = x.shape[0]
        self.g.train()
        self.d.train()
        scale = self.lr_scale_at(step)
        for opt, lr in ((self.opt_g, c.lr_g), (self.opt_e, c.lr_e)):
            for group in opt.param_groups:
                group["lr"] = lr * scale

        if c.mode_reg > 0:
            return self._autoencoder_step(x, y, step) if step < c.adv_start else self._joint_step(x, y, step)

        # 1. discriminator; the last fake batch keeps its graph so the G step does not redo the forward
        for i in range(c.n_dis):
            fake = self.g(self._z(b), y)  # (B,3,S,S)
            d_loss, d_figs = self._d_objective(x, fake.detach(), y)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()

        # 2. generator through the updated discriminator (D params get grads but are not stepped here)
        self.d.requires_grad_(False)
        g_loss = self._g_adv(fake, y, step)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)

        # 3. EMA of generator weights (warm-up: short memory while G moves fast early on)
        self._update_ema(step)
        out = {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach()), **d_figs}
        # 4. encoder
        if step >= c.encoder_start:
            out.update(self._encoder_step(x, y))
        return out

    def _step_g_e(self, loss: torch.Tensor, step: int) -> None:
        """One optimiser step of G and E on `loss`, then the EMA of G."""
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.opt_e.step()
        self._update_ema(step)

    def _recon_codes(self, lat_real: torch.Tensor) -> torch.Tensor:
        """The codes the reconstruction term decodes: E(x), plus `recon_code_noise` Gaussian noise if set."""
        noise = self.config.recon_code_noise
        return lat_real + noise * torch.randn_like(lat_real) if noise else lat_real

    def _autoencoder_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
        """Before `adv_start`: G and E as an autoencoder, on the joint step's reconstruction, class and moment
        terms only (the discriminator does not train)."""
        c = self.config
        self.e.train()
        lat_real, logits_real = self.e(x)  # (B,Z), (B,C)
        recon_loss = F.mse_loss(self.g(self._recon_codes(lat_real), y), x)
        class_loss = F.cross_entropy(logits_real, y)
        prior_loss = _moment_loss(lat_real)
        loss = self.mode_reg_at(step) * recon_loss + c.w_class * class_loss + c.w_prior * prior_loss
        self._step_g_e(loss, step)
        return {"e_recon": float(recon_loss.detach()), "e_class": float(class_loss.detach()),
                "e_prior": float(prior_loss.detach())}

    def _joint_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> dict[str, float]:
        """Mode-regularised GAN step (Che et al. 2017): G and E are trained together on the adversarial loss
        of prior samples plus reconstruction of the real batch through G(E(x), y) and latent regression
        E(G(z, y)) ~ z. Reconstruction makes every real image reachable from the latent space, which stops
        mode collapse and gives the encoder for free."""
        c = self.config
        b = x.shape[0]
        self.e.train()
        z = self._z(b)  # (B,Z)
        lat_real, logits_real = self.e(x)  # (B,Z), (B,C)
        adv_rec = c.w_adv_recon > 0
        # one generator pass over prior and encoded latents (and, with w_adv_recon, encoded latents plus noise):
        # BN statistics see all of them, like at sampling time
        codes, labels = [z, self._recon_codes(lat_real)], [y, y]
        if adv_rec:
            codes.append(lat_real + c.recon_noise * torch.randn_like(lat_real))
            labels.append(y)
        out_g = self.g(torch.cat(codes), torch.cat(labels))  # (2B or 3B,3,S,S)
        fake, rec = out_g[:b], out_g[b:2 * b]
        near = out_g[2 * b:] if adv_rec else None  # (B,3,S,S) decoded near the real codes

        # 1. discriminator: real vs prior samples
        for i in range(c.n_dis):
            if i > 0:
                with torch.no_grad():
                    fake_i = self.g(self._z(b), y)
            else:
                fake_i = fake.detach()
            d_loss, d_figs = self._d_objective(x, fake_i, y)
            if adv_rec:
                d_loss = d_loss + c.w_adv_recon * self._d_on_fakes(near.detach(), y)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()

        # 2. generator + encoder
        self.d.requires_grad_(False)
        g_loss = self._g_adv(fake, y, step)
        if adv_rec:
            g_loss = g_loss + c.w_adv_recon * self._g_adv(near, y, step)
        self.d.requires_grad_(True)
        lat_fake, _ = self.e(fake)  # (B,Z)
        recon_loss = F.mse_loss(rec, x)
        latent_loss = F.mse_loss(lat_fake, z)  # trains E (inversion) and G (keeps z identifiable, InfoGAN-like)
        class_loss = F.cross_entropy(logits_real, y)  # the class head learns from real images only
        # AC-GAN term through a frozen copy of the encoder's weights: only G is pushed to draw class y, so the
        # classifier cannot learn to read a non-shape cue that G would be happy to provide
        frozen = {k: v.detach() for k, v in self.e.named_parameters()}
        _, logits_fake = torch.func.functional_call(self.e, frozen, (fake,))
        ac_loss = F.cross_entropy(logits_fake, y)
        prior_loss = _moment_loss(lat_real)
        loss = (g_loss + self.mode_reg_at(step) * recon_loss + c.w_latent * latent_loss + c.w_class * class_loss
                + c.w_ac * ac_loss + c.w_prior * prior_loss)
        self._step_g_e(loss, step)
        return {
            "d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach()), **d_figs,
            "e_recon": float(recon_loss.detach()), "e_latent": float(latent_loss.detach()),
            "e_class": float(class_loss.detach()), "g_ac": float(ac_loss.detach()),
            "e_prior": float(prior_loss.detach()),
        }

    @torch.no_grad()
    def _update_ema(self, step: int) -> None:
        c = self.config
        t = step - c.ema_start
        # before ema_start: copy G; then a warm-up (1+t)/(10+t) so early, fast-moving weights are forgotten
        decay = 0.0 if t < 0 else min(c.ema_decay, (1.0 + t) / (10.0 + t))
        for p_ema, p in zip(self.g_ema.parameters(), self.g.parameters()):
            p_ema.lerp_(p, 1.0 - decay)

    def _encoder_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        c = self.config
        # generated pairs from the EMA generator in train mode: batch statistics, and its running
        # statistics follow its own weights (so eval-mode g_ema = what the decoder graph exports)
        y_gen = torch.randint(0, self.n_classes, (c.e_batch,), device=self.device)  # (E,)
        z_gen = self._z(c.e_batch)  # (E,Z)
        self.g_ema.train()
        with torch.no_grad():
            x_gen = self.g_ema(z_gen, y_gen)  # (E,3,S,S)
        self.g_ema.eval()

        self.e.train()
        both = torch.cat([x_gen, x], dim=0)  # one encoder pass over generated + real: (E+B,3,S,S)
        latent, logits = self.e(both)  # (E+B,Z), (E+B,C)
        lat_gen, lat_real = latent[: c.e_batch], latent[c.e_batch:]
        latent_loss = F.mse_loss(lat_gen, z_gen)
        class_loss = F.cross_entropy(logits, torch.cat([y_gen, y]))
        loss = c.w_latent * latent_loss + c.w_class * class_loss
        out = {"e_latent": float(latent_loss.detach()), "e_class": float(class_loss.detach())}
        if c.w_recon > 0:
            # reconstruction of real images through the frozen EMA generator (eval mode: the exported map)
            recon = self.g_ema(lat_real, y)  # (B,3,S,S)
            recon_loss = F.mse_loss(recon, x)
            loss = loss + c.w_recon * recon_loss
            out["e_recon"] = float(recon_loss.detach())
        if c.w_prior > 0:
            loss = loss + c.w_prior * _moment_loss(lat_real)
        self.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_e.step()
        return out

    @torch.no_grad()
    def sampling_generator(self) -> Generator:
        """Eval-mode copy of g_ema whose BatchNorm statistics are re-estimated ("standing statistics") from
        fixed-seed generated batches: a pure function of the EMA weights, so samples and the exported decoder
        do not depend on when the last train-mode forward happened, and making it never touches training
        state. Costs ~1k generator forwards (a fraction of a second at 32x32)."""
        g = copy.deepcopy(self.g_ema)
        gen = torch.Generator(device="cpu").manual_seed(_STATS_SEED)
        for m in g.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches below
        g.train()
        for _ in range(_STATS_BATCHES):
            z = torch.randn(_STATS_BATCH_SIZE, self.config.z_dim, generator=gen).to(self.device)
            lab = torch.randint(0, self.n_classes, (_STATS_BATCH_SIZE,), generator=gen).to(self.device)
            g(z, lab)
        for m in g.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        return g.eval().requires_grad_(False)

    # -- outputs for people and the loop ------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, n_per_class: int, seed: int) -> torch.Tensor:
        """(n_classes*n_per_class, 3, S, S) in [-1,1] from the EMA generator; class-major order, seed-determined."""
        if n_per_class < 1:
            raise ValidationError(f"n_per_class must be >= 1, got {n_per_class}")
        g = self.sampling_generator()
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        z = torch.randn(self.n_classes * n_per_class, self.config.z_dim, generator=gen).to(self.device)
        labels = torch.arange(self.n_classes, device=self.device).repeat_interleave(n_per_class)  # (C*n,)
        return g(z, labels)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> dict[str, float]:
        """Encoder figures on held-out real images: reconstruction MSE / PSNR via G_ema(E(x), y), class accuracy."""
        x, y = x.to(self.device), y.to(self.device)
        g = self.sampling_generator()
        self.e.eval()
        mse_sum, correct, norm_sum, n = 0.0, 0, 0.0, 0
        for i in range(0, x.shape[0], 256):
            xb, yb = x[i:i + 256], y[i:i + 256]
            latent, logits = self.e(xb)
            recon = g(latent, yb)
            mse_sum += float(((recon - xb) ** 2).mean(dim=(1, 2, 3)).sum())
            correct += int((logits.argmax(1) == yb).sum())
            norm_sum += float(latent.pow(2).mean(dim=1).sum())
            n += xb.shape[0]
        if n == 0:
            return {}
        mse = mse_sum / n
        # PSNR for the [-1,1] range (peak-to-peak 2): 10 log10(4 / mse)
        return {
            "recon_mse": mse,
            "recon_psnr": 10.0 * math.log10(4.0 / max(mse, 1e-12)),
            "enc_class_acc": correct / n,
            "latent_ms": norm_sum / n,  # mean square of codes; ~1 when codes sit where the prior puts mass
        }

    # -- export -----------------------------------------------------------------------------------------------
    def graphs(self) -> dict[str, ExportGraph]:
        """Eval-mode copies (export never disturbs training state) of E and the EMA generator."""
        s, z, b = self.image_size, self.config.z_dim, 2  # example batch 2: batch 1 would invite specialisation
        g = copy.deepcopy(self.sampling_generator()).eval().requires_grad_(False)
        e = copy.deepcopy(self.e).eval().requires_grad_(False)
        gen = torch.Generator(device="cpu").manual_seed(0)
        example_image = (torch.rand(b, 3, s, s, generator=gen) * 2 - 1).to(self.device)
        example_latent = torch.randn(b, z, generator=gen).to(self.device)
        example_label = (torch.arange(b) % self.n_classes).to(self.device)
        return {
            "encoder": ExportGraph(
                module=_EncoderGraph(e).eval(),
                example_inputs=(example_image,),
                input_names=["image"],
                output_names=["latent", "logits"],
                doc="GAN inversion: image (B,3,H,W) in [-1,1] -> latent (B,D) in the N(0,I) space, class logits (B,C)",
            ),
            "decoder": ExportGraph(
                module=_DecoderGraph(g).eval(),
                example_inputs=(example_latent, example_label),
                input_names=["latent", "label"],
                output_names=["image"],
                doc="EMA generator: latent (B,D) ~ N(0,I), label (B,) int64 -> image (B,3,H,W) in [-1,1]",
            ),
        }

    def manifest_extra(self) -> dict:
        extra = {"prior": {"type": "standard_normal"}, "latent_shape": [self.config.z_dim]}
        if self.config.g_arch == "decoupled":
            extra["latent_branches"] = self.knob_branches()
        return extra

    def knob_branches(self) -> dict[str, dict] | None:
        """Decoupled generator: each factor knob moves only its branch's latent coordinates, {branch: {"latent":
        [start, stop], "factors": [...]}} (shape: the shape factors; texture: the others); else None."""
        if self.config.g_arch != "decoupled":
            return None
        spans = decoupled.latent_branches(self.config.z_dim, self.config.z_shape)
        names = [f["name"] for f in self.data_meta.get("factors", [])]
        shape_factors = [n for n in names if n in decoupled.SHAPE_FACTORS]
        return {"shape": {"latent": list(spans["shape"]), "factors": shape_factors},
                "texture": {"latent": list(spans["texture"]), "factors": [n for n in names if n not in shape_factors]}}
