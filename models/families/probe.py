"""The probe family: trains the classifier + factor regressor that scores every generative model.

Owns `ProbeFamily`: a training step (cross-entropy + masked MSE on standardised factors, with noise/blur
augmentation that never moves, scales or recolours content, so factor targets stay valid), held-out
evaluation (accuracy, per-factor R² and MAE in natural units) and the `probe` export graph.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from latentserve.errors import ValidationError
from latentserve.models.families.base import ExportGraph, Family
from latentserve.models.nets.probe import Probe, ProbeConfig

_EVAL_BATCH = 512


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the entries where target is not NaN: pred, target (B,K) -> scalar.
    Zero (with a gradient path) when nothing is known, so a batch without factors still trains the classes."""
    known = ~torch.isnan(target)  # (B,K)
    diff = torch.where(known, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return diff.pow(2).sum() / known.sum().clamp(min=1)


def _gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """Normalised 3x3 Gaussian kernels for per-image sigmas (B,) -> (B,1,3,3)."""
    t = torch.tensor([-1.0, 0.0, 1.0], device=sigma.device)
    g = torch.exp(-(t[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))  # (B,3)
    k = g[:, :, None] * g[:, None, :]  # (B,3,3)
    return (k / k.sum(dim=(1, 2), keepdim=True)).unsqueeze(1)


def augment(x: torch.Tensor, config: ProbeConfig) -> torch.Tensor:
    """Robustness augmentation for generated-looking inputs: x (B,3,H,W) -> (B,3,H,W).

    Intensity levels (contrast + grey lift, the same for all channels, so HSV hue is unchanged), slight blur
    (some images), then additive Gaussian noise of a per-image strength. None of them moves, scales or
    recolours the content, so the factor targets stay exact. Uses the global torch RNG (seeded and
    checkpointed by the loop)."""
    b = x.shape[0]
    if config.aug_levels > 0:
        v = (x + 1.0) * 0.5  # (B,3,H,W) in [0,1]
        contrast = 1.0 - config.aug_levels * torch.rand(b, 1, 1, 1, device=x.device)  # (B,1,1,1)
        lift = (1.0 - contrast) * torch.rand(b, 1, 1, 1, device=x.device)  # stays within [0,1]
        x = (lift + contrast * v) * 2.0 - 1.0
    if config.aug_blur_prob > 0:
        blur = torch.rand(b, device=x.device) < config.aug_blur_prob  # (B,)
        sigma = 0.3 + (config.aug_blur_sigma - 0.3) * torch.rand(b, device=x.device)  # (B,)
        kernels = _gaussian_kernels(sigma)  # (B,1,3,3)
        # Depthwise conv with one kernel per image: fold the batch into the channel axis.
        h, w = x.shape[2], x.shape[3]
        padded = F.pad(x.reshape(1, b * 3, h, w), (1, 1, 1, 1), mode="replicate")
        blurred = F.conv2d(padded, kernels.repeat_interleave(3, dim=0), groups=b * 3).reshape(b, 3, h, w)
        x = torch.where(blur[:, None, None, None], blurred, x)
    if config.aug_noise > 0:
        strength = config.aug_noise * torch.rand(b, 1, 1, 1, device=x.device)  # (B,1,1,1)
        x = x + strength * torch.randn_like(x)
    return x.clamp(-1.0, 1.0)


class _ProbeGraph(nn.Module):
    """Export wrapper: image (B,3,H,W) f32 -> (logits (B,C), factors (B,K) natural units, features (B,F))."""

    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, factors, features = self.probe(image)
        return logits, factors, features


class ProbeFamily(Family):
    name = "probe"
    config_cls = ProbeConfig
    default_steps = 1500  # recommended training length for 32x32 shapes at batch 64 (see ProbeConfig)

    def __init__(self, config: ProbeConfig | dict, data_meta: dict, device: torch.device | str = "cpu") -> None:
        if isinstance(config, dict):
            config = ProbeConfig.from_dict(config)
        super().__init__(config, data_meta, torch.device(device))  # type check, image_size, n_classes
        config.validate()
        try:
            self.class_names = list(data_meta["class_names"])
            self.factors = [dict(f) for f in data_meta.get("factors", [])]
        except (KeyError, TypeError) as exc:
            raise ValidationError(f"data_meta needs 'image_size' and 'class_names' (Dataset.meta()): {exc}") from exc
        self.factor_names = [f["name"] for f in self.factors]
        self.net = Probe(config, self.image_size, len(self.class_names), self.factors).to(self.device)
        # No weight decay on BatchNorm parameters and biases (standard: decaying them only hurts).
        decay = [p for n, p in self.net.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.net.named_parameters() if p.ndim <= 1]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr_at(0),
        )

    # -- what the loop checkpoints ----------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"probe": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"probe": self.opt}

    # -- training ---------------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, float]:
        """x (B,3,H,W) in [-1,1]; y (B,) int64; f (B,K) natural units, NaN = unknown."""
        c = self.config
        x, y, f = x.to(self.device), y.to(self.device), f.to(self.device)
        if f.shape[1] != self.net.n_factors:
            raise ValidationError(f"probe expects {self.net.n_factors} factor columns, got {f.shape[1]}")
        lr = c.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.net.train()
        logits, pred, _ = self.net.forward_standardized(augment(x, c))  # (B,C), (B,K) standardised
        target = (f - self.net.factor_mean) / self.net.factor_std  # (B,K), NaN stays NaN
        ce = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
        mse = masked_mse(pred, target)
        loss = ce + c.factor_weight * mse
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        acc = (logits.detach().argmax(1) == y).float().mean()
        return {"loss": loss.item(), "ce": ce.item(), "mse": mse.item(), "acc": acc.item(), "lr": lr}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eval-mode forward in batches: x (N,3,H,W) -> logits (N,C), factors (N,K) natural units, features (N,F)."""
        was_training = self.net.training
        self.net.eval()
        outs = [self.net(x[i:i + _EVAL_BATCH].to(self.device)) for i in range(0, x.shape[0], _EVAL_BATCH)]
        self.net.train(was_training)
        if not outs:
            k, d = self.net.n_factors, self.config.feature_dim
            return (torch.zeros(0, len(self.class_names)), torch.zeros(0, k), torch.zeros(0, d))
        return tuple(torch.cat([o[j] for o in outs]).cpu() for j in range(3))  # type: ignore[return-value]

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> dict[str, float]:
        """Accuracy, and per factor R² (`r2_<name>`) and mean absolute error (`mae_<name>`, natural units) over
        the rows where that factor is known. x (N,3,H,W); y (N,); f (N,K)."""
        if x.shape[0] == 0:
            return {}
        logits, pred, _ = self.predict(x)
        y, f = y.cpu(), f.cpu().float()
        out = {"acc": float((logits.argmax(1) == y).float().mean())}
        for k, name in enumerate(self.factor_names):
            known = ~torch.isnan(f[:, k])
            if int(known.sum()) < 2:
                continue
            t, p = f[known, k].double(), pred[known, k].double()
            ss_tot = float(((t - t.mean()) ** 2).sum())
            out[f"r2_{name}"] = 1.0 - float(((t - p) ** 2).sum()) / ss_tot if ss_tot > 0 else math.nan
            out[f"mae_{name}"] = float((t - p).abs().mean())
        return out

    # -- export -----------------------------------------------------------------------------------------------
    def graphs(self) -> dict[str, ExportGraph]:
        """The `probe` graph on an eval-mode copy (export never disturbs the training state)."""
        net = copy.deepcopy(self.net).eval().requires_grad_(False)
        gen = torch.Generator(device="cpu").manual_seed(0)
        s = self.image_size
        example = (torch.rand(2, 3, s, s, generator=gen) * 2 - 1).to(self.device)  # batch 2: no batch-1 specialisation
        return {
            "probe": ExportGraph(
                module=_ProbeGraph(net).eval(),
                example_inputs=(example,),
                input_names=["image"],
                output_names=["logits", "factors", "features"],
                doc=f"probe: image (B,3,{s},{s}) in [-1,1] -> logits (B,{len(self.class_names)}), "
                    f"factors (B,{len(self.factor_names)}) natural units [{', '.join(self.factor_names)}], "
                    f"features (B,{self.config.feature_dim})",
            )
        }

    def manifest_extra(self) -> dict:
        return {"factor_names": list(self.factor_names), "feature_dim": self.config.feature_dim}
