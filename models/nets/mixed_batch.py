"""Mixed-batch discriminator (Lucas et al. 2018, "Mixed batches and symmetric discriminators for GAN training").

The discriminator does not score images one by one: it sees a *set* of m images, each real with probability p
(p ~ U(0, 1) drawn per set), and predicts the share of real ones. A generator that drops modes produces sets
whose statistics (how varied they are) differ from real sets, which a per-image discriminator cannot see and
a set discriminator can. The architecture is symmetric: per-image features, one permutation-equivariant
DeepSets layer (each element sees the set's mean), then mean and max pooling, so the output is exactly the
same for any order of the set's elements.

`GANConfig.d_kind = "mixed"` selects it; `mix_set_size` is m. Training only; never exported.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from latentserve.errors import ValidationError


class MixedBatchDiscriminator(nn.Module):
    """(images (S*m,3,H,W), labels (S*m,)) grouped in sets of m consecutive rows -> logits (S,) of the real share.

    The per-image trunk is the projection discriminator's (`body`, `top`, sum pooling) with the class entering
    as an embedding added to the features; the set head is permutation-invariant in the m rows of each set."""

    def __init__(self, body: nn.Module, top: nn.Module, channels: int, n_classes: int, set_size: int) -> None:
        super().__init__()
        if set_size < 2:
            raise ValidationError(f"mixed-batch set size must be >= 2, got {set_size}")
        self.body, self.top, self.set_size = body, top, int(set_size)
        self.embed = spectral_norm(nn.Embedding(n_classes, channels))
        self.phi_self = spectral_norm(nn.Linear(channels, channels))
        self.phi_set = spectral_norm(nn.Linear(channels, channels, bias=False))
        self.head = nn.Sequential(spectral_norm(nn.Linear(2 * channels, channels)), nn.LeakyReLU(0.1),
                                  spectral_norm(nn.Linear(channels, 1)))

    def features(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Per-image features (N,C), independent of the other rows (no batch statistics with d_norm "sn")."""
        return self.top(self.body(image)).sum(dim=(2, 3)) + self.embed(label)

    def forward(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        m = self.set_size
        if image.shape[0] % m:
            raise ValidationError(f"mixed-batch discriminator needs a multiple of {m} rows, got {image.shape[0]}")
        h = self.features(image, label).reshape(-1, m, self.phi_self.in_features)  # (S,m,C)
        # DeepSets equivariant layer: each element plus a function of the set's mean
        h = F.leaky_relu(self.phi_self(h) + self.phi_set(h.mean(1, keepdim=True)), 0.1)  # (S,m,C)
        pooled = torch.cat([h.mean(1), h.amax(1)], dim=1)  # (S,2C): symmetric in the m elements
        return self.head(pooled).squeeze(1)  # (S,)


def mix_sets(real: torch.Tensor, fake: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, set_size: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sets of `set_size` images mixing real and fake: (images (S*m,3,H,W), labels (S*m,), targets (S,)).

    real/fake (B,3,H,W) with labels (B,). S = B // m sets; slot j of set s holds pair k = s*m + j, taking the real
    image of the pair with probability p_s ~ U(0, 1), else the fake (each image used at most once). The target
    is the share of real images actually drawn into the set (not p_s)."""
    b, m = min(len(real), len(fake)), set_size
    n_sets = b // m
    if n_sets < 1:
        raise ValidationError(f"mixed batches of {m} images need a batch of at least {m}, got {b}")
    n = n_sets * m
    dev = real.device
    p = torch.rand(n_sets, 1, generator=generator).to(dev)  # (S,1)
    is_real = (torch.rand(n_sets, m, generator=generator).to(dev) < p)  # (S,m)
    pick = is_real.reshape(n, 1, 1, 1)
    images = torch.where(pick, real[:n], fake[:n])  # (S*m,3,H,W)
    labels = torch.where(is_real.reshape(n), y_real[:n], y_fake[:n])  # (S*m,)
    return images, labels, is_real.float().mean(1)  # targets (S,)


def d_loss(d: MixedBatchDiscriminator, real: torch.Tensor, fake: torch.Tensor, y_real: torch.Tensor,
           y_fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy between the predicted and the drawn real share of mixed sets, plus figures."""
    images, labels, target = mix_sets(real, fake, y_real, y_fake, d.set_size)
    logit = d(images, labels)  # (S,)
    loss = F.binary_cross_entropy_with_logits(logit, target)
    with torch.no_grad():
        mae = (torch.sigmoid(logit) - target).abs().mean()
    return loss, {"d_ratio_mae": float(mae)}


def fake_logits(d: MixedBatchDiscriminator, fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logits (S,) of the real share of sets made of fakes only (the first B // m * m rows)."""
    n = len(fake) // d.set_size * d.set_size
    if n == 0:
        raise ValidationError(f"mixed batches of {d.set_size} images need a batch of at least {d.set_size}")
    return d(fake[:n], y[:n])
