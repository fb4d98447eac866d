"""Network of the probe family: a small CNN classifier + factor regressor, the ruler that scores every model.

Owns `ProbeConfig` (architecture, optimiser and augmentation; its defaults are the recommended recipe for
32x32 shapes, ~0.2M parameters) and `Probe`: image (B,3,H,W) in [-1,1] -> (logits (B,C), factors (B,K) in
natural units, features (B,F)). The regression head is trained on standardised targets; the mean/std live
in buffers so the exported module speaks natural units. Straight-line tensor code: exports to ONNX and
TorchScript with a dynamic batch axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from latentserve.errors import ValidationError


@dataclass
class ProbeConfig:
    """Recipe of the probe family. Image size, classes and factors come from the dataset (`Dataset.meta()`).

    Recommended training: 1500 steps x batch 64 on 32x32 shapes (~9 steps/s on one idle CPU thread: ~3 min);
    measured there: test accuracy 1.000, R² scale 0.994, x 0.998, y 0.998, hue 0.995, rotation 0.92."""

    # -- architecture ----------------------------------------------------------------------------------------
    width: int = 32  # channels after the stem; doubled at every further downsampling. 4..256
    depth: int = 3  # stride-2 downsamplings (the stem is the first): 32 px -> 4x4 final map. 1..6
    head_channels: int = 32  # 1x1 conv before flattening: keeps the spatial layout (where things are). 1..512
    feature_dim: int = 128  # width of the `features` output (penultimate layer). 8..2048
    coord_channels: bool = True  # append x/y coordinate planes to the input (CoordConv): helps position regression
    dropout: float = 0.0  # dropout on the features during training. [0, 0.9]
    # -- optimisation --------------------------------------------------------------------------------------------
    lr: float = 3e-3  # peak AdamW learning rate. (0, 0.1]
    weight_decay: float = 1e-4  # AdamW decoupled weight decay. [0, 1]
    warmup_steps: int = 100  # linear learning-rate warm-up. >= 0
    lr_schedule_steps: int = 1500  # cosine decay from `lr` to `lr * min_lr_ratio` ends here; flat after. >= 1
    min_lr_ratio: float = 0.02  # final learning rate as a fraction of `lr`. [0, 1]
    factor_weight: float = 1.0  # weight of the masked MSE on standardised factors vs the cross-entropy. >= 0
    label_smoothing: float = 0.0  # cross-entropy label smoothing. [0, 0.5]
    # -- robustness augmentation (none of these moves, scales or recolours the shape, so factors stay valid) ------
    aug_noise: float = 0.06  # per-image Gaussian noise std drawn uniformly from [0, aug_noise] (in [-1,1] units). [0, 1]
    aug_blur_prob: float = 0.3  # probability that an image is blurred with a 3x3 Gaussian. [0, 1]
    aug_blur_sigma: float = 0.8  # largest sigma (px) of that blur; drawn uniformly from [0.3, aug_blur_sigma]. [0.3, 3]
    # Per-image intensity levels: contrast c ~ U[1 - aug_levels, 1] and a grey lift within the headroom, i.e.
    # a lifted background / dimmed highlights as in generated images. Keeps hue, size and position; set 0 for
    # data whose factors include brightness or contrast. [0, 0.5]
    aug_levels: float = 0.2

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: dict) -> "ProbeConfig":
        """Build from a dict (e.g. a checkpoint's family_config); unknown keys raise ValidationError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValidationError(f"unknown ProbeConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def validate(self) -> None:
        def check(name: str, lo: float, hi: float, integer: bool = False, lo_open: bool = False) -> None:
            v = getattr(self, name)
            ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type or not math.isfinite(v) or (v <= lo if lo_open else v < lo) or v > hi:
                kind = "an int" if integer else "a number"
                raise ValidationError(f"ProbeConfig.{name}={v!r} must be {kind} in {'(' if lo_open else '['}{lo}, {hi}]")

        for name, lo, hi in (("width", 4, 256), ("depth", 1, 6), ("head_channels", 1, 512),
                             ("feature_dim", 8, 2048), ("warmup_steps", 0, 10**9), ("lr_schedule_steps", 1, 10**9)):
            check(name, lo, hi, integer=True)
        check("lr", 0, 0.1, lo_open=True)
        for name, lo, hi in (("dropout", 0, 0.9), ("weight_decay", 0, 1), ("min_lr_ratio", 0, 1),
                             ("factor_weight", 0, 1e3), ("label_smoothing", 0, 0.5), ("aug_noise", 0, 1),
                             ("aug_blur_prob", 0, 1), ("aug_blur_sigma", 0.3, 3), ("aug_levels", 0, 0.5)):
            check(name, lo, hi)
        if not isinstance(self.coord_channels, bool):
            raise ValidationError(f"ProbeConfig.coord_channels must be true or false, got {self.coord_channels!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate at `step` (0-based): linear warm-up, cosine decay, then flat at lr * min_lr_ratio.
        A pure function of the step, so resuming needs no scheduler state."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.lr_schedule_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias: BatchNorm follows) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def factor_stats(factors: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardisation of each factor from its declared range, assuming a uniform spread over [low, high]:
    mean (K,), std (K,). Derived from the data meta alone, so a checkpoint rebuilds it without the data."""
    mean, std = [], []
    for f in factors:
        low, high = float(f["low"]), float(f["high"])
        if not (math.isfinite(low) and math.isfinite(high)):
            low, high = 0.0, 1.0
        mean.append((low + high) / 2.0)
        spread = (high - low) / math.sqrt(12.0)  # std of a uniform distribution on [low, high]
        std.append(spread if spread > 0 else 1.0)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


class Probe(nn.Module):
    """image (B,3,H,W) in [-1,1] -> (logits (B,C), factors (B,K) natural units, features (B,F))."""

    def __init__(self, config: ProbeConfig, image_size: int, n_classes: int, factors: list[dict]) -> None:
        super().__init__()
        if image_size < 4 or n_classes < 1:
            raise ValidationError(f"Probe needs image_size >= 4 and n_classes >= 1, got {image_size}, {n_classes}")
        c = config
        self.image_size, self.n_classes, self.n_factors = int(image_size), int(n_classes), len(factors)
        in_ch = 3
        if c.coord_channels:
            # Coordinate planes in [-1, 1], x along width and y along height: (1, 2, H, W).
            ramp = torch.linspace(-1.0, 1.0, image_size)
            coords = torch.stack([ramp.view(1, -1).expand(image_size, -1), ramp.view(-1, 1).expand(-1, image_size)])
            self.register_buffer("coords", coords.unsqueeze(0).contiguous(), persistent=False)
            in_ch += 2
        else:
            self.register_buffer("coords", None, persistent=False)
        layers = [_conv(in_ch, c.width, 2)]
        ch, size = c.width, math.ceil(image_size / 2)
        for _ in range(c.depth - 1):
            layers += [_conv(ch, ch, 1), _conv(ch, 2 * ch, 2)]
            ch, size = 2 * ch, math.ceil(size / 2)
        layers.append(nn.Sequential(nn.Conv2d(ch, c.head_channels, 1, bias=False), nn.BatchNorm2d(c.head_channels),
                                    nn.ReLU(inplace=True)))
        self.body = nn.Sequential(*layers)
        self.final_size = size  # spatial side of the last map
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c.head_channels * size * size, c.feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(c.dropout)
        self.class_head = nn.Linear(c.feature_dim, n_classes)
        self.factor_head = nn.Linear(c.feature_dim, self.n_factors) if self.n_factors else None
        mean, std = factor_stats(factors)
        self.register_buffer("factor_mean", mean)  # (K,)
        self.register_buffer("factor_std", std)  # (K,)

    def forward_standardized(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like forward, but factors in standardised units (what the loss sees)."""
        x = image  # (B,3,H,W)
        if self.coords is not None:
            x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)  # (B,5,H,W)
        features = self.fc(self.body(x))  # (B,F)
        h = self.dropout(features)
        logits = self.class_head(h)  # (B,C)
        if self.factor_head is not None:
            z = self.factor_head(h)  # (B,K) standardised
        else:
            z = features[:, :0]  # (B,0): a dataset without continuous factors
        return logits, z, features

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, z, features = self.forward_standardized(image)
        return logits, z * self.factor_std + self.factor_mean, features  # (B,C), (B,K), (B,F)
