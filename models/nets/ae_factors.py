"""Training-time decorrelation of factors for the AE family (issue #22, part 3b): `AEConfig.decorrelate`.

When two factors rise together in every training image (shapes with `correlate={"hue": "scale"}`), nothing
tells the decoder which latent direction should render which factor: it may draw the hue from wherever the
scale is coded, and then every knob moves both. The option makes each named factor own a block of latent
units and trains the decoder to render combinations the data never shows:

- supervised blocks: factor k owns units [k*m, (k+1)*m) of the code (m = `factor_dims`); a linear head on the
  block alone is fitted to the factor (scaled to [0, 1] by its range; unknown = NaN rows are skipped);
- swap consistency: codes of the batch are mixed block by block (each factor's block taken, with probability
  1/2, from another image of the batch; the other units and the label stay the row's own), decoded, and
  re-encoded; each block's head must read the factor of the image that block came from. The encoder and the
  heads are the referee here (their parameters get no gradient from this term, and the mixed codes are
  detached), so only the decoder learns to take each factor from its own block and nothing else from it.

Why not the simpler penalties: a cross-covariance penalty between the blocks' codes cannot reach zero while
each block still codes its factor (the factors themselves are correlated, 0.92 in the shapes variant), and an
orthogonality penalty between per-factor linear read-outs constrains only the encoder: the decoder has seen
scale and hue move together in every image and is free to keep drawing one from the other's direction. Only
decoding unseen combinations gives the decoder a reason to separate them (the idea of swap / cycle consistency
in disentangling autoencoders, e.g. Mathieu et al. 2016, Szabo et al. 2018).
Exported graphs are unchanged (the heads are training-only), so knobs, Sample and Edit serve the model as any AE.
"""
from __future__ import annotations

import torch
from torch import nn

from latentserve.errors import ValidationError


class FactorBlocks(nn.Module):
    """Linear heads reading factor k from code units [k*m, (k+1)*m); factor targets scaled to [0, 1]."""

    def __init__(self, names: list[str], factor_meta: list[dict], dims: int) -> None:
        super().__init__()
        known = [f["name"] for f in factor_meta]
        for name in names:
            if name not in known:
                raise ValidationError(f"AEConfig: decorrelate: unknown factor {name!r}; the data's factors: "
                                      f"{', '.join(known) or 'none'}")
        self.names = list(names)
        self.dims = int(dims)
        self.columns = [known.index(n) for n in names]  # columns of the loop's factor tensor f (B, K)
        self.register_buffer("low", torch.tensor([float(factor_meta[i]["low"]) for i in self.columns]))
        self.register_buffer("span", torch.tensor([float(factor_meta[i]["high"]) - float(factor_meta[i]["low"])
                                                   for i in self.columns]))
        self.heads = nn.ModuleList(nn.Linear(self.dims, 1) for _ in names)

    def targets(self, f: torch.Tensor) -> torch.Tensor:
        """(B, F) the named factors of f (B, K) scaled to [0, 1] by their ranges (NaN stays NaN)."""
        return (f[:, self.columns] - self.low) / self.span

    def read(self, z: torch.Tensor) -> torch.Tensor:
        """(B, F) each head's reading of its own block of z (B, D)."""
        m = self.dims
        return torch.cat([h(z[:, k * m:(k + 1) * m]) for k, h in enumerate(self.heads)], dim=1)

    def loss(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the heads' readings of z against targets t (B, F), over the known entries."""
        known = torch.isfinite(t)
        if not known.any():
            return z.new_zeros(())
        return (self.read(z) - torch.nan_to_num(t)).square()[known].mean()

    def mix(self, z: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed codes (B, D), their targets (B, F)): each factor's block of each row taken with probability 1/2
        from another row (one random permutation of the batch), the target following its block."""
        b = z.shape[0]
        perm = torch.randperm(b, generator=generator).to(z.device)  # (B,)
        take = (torch.rand(b, len(self.names), generator=generator) < 0.5).to(z.device)  # (B, F)
        return mix_blocks(z, t, perm, take, self.dims)


def mix_blocks(z: torch.Tensor, t: torch.Tensor, perm: torch.Tensor, take: torch.Tensor, dims: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """z (B, D) with block k of row i replaced by row perm[i]'s where take[i, k]; targets t (B, F) likewise."""
    zm, tm = z.clone(), t.clone()
    for k in range(take.shape[1]):
        rows = take[:, k]
        zm[rows, k * dims:(k + 1) * dims] = z[perm[rows], k * dims:(k + 1) * dims]
        tm[rows, k] = t[perm[rows], k]
    return zm, tm
