"""Networks of the deterministic autoencoder family ("ae"): `AEConfig`, its regularisers' settings, and the two
Jacobian penalties (`contractive_penalty`, `smoothness_penalty`).

The encoder and decoder are the VAE's convnets (`models/nets/vae.py`, built from `AEConfig.net_config()`): the
AE uses the encoder's `mean` as its code and never reads its `logvar` half, so the two families differ only in
their losses, and a change to the trunk serves both.

Regularisers (`reg`):
- "contractive" (Rifai et al. 2011): ||J_enc(x)||_F^2, the squared Frobenius norm of the encoder's Jacobian
  dz/dx, per image. Exact with D backward passes (`jacobian_projections` = 0), or Hutchinson's unbiased estimate
  with k random projections: for v ~ N(0, I_D), E ||v^T J||^2 = tr(J J^T) = ||J||_F^2.
- "smooth" (the postdoc proposal's output smoothness): the decoder's output should change little when the code
  moves a little. D * ||D(z + eps u) - D(z)||^2 / eps^2 for u uniform on the unit sphere, an unbiased estimate
  (as eps -> 0) of ||J_dec(z)||_F^2, since E[u u^T] = I / D; one extra decoder pass per step.
Both are summed over output elements and averaged over the batch; `reg_weight` scales them against the
per-pixel reconstruction error.

Decorrelation (`decorrelate`, any `reg`): named factors own blocks of the code, see models/nets/ae_factors.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch

from latentserve.errors import ValidationError
from latentserve.models.nets.vae import VAEConfig

REGULARISERS = ("none", "contractive", "smooth")


@dataclass
class AEConfig:
    """Recipe of the AE family (shapes / disks at 16-32 px)."""

    z_dim: int = 32  # latent size D; 2..512
    widths: tuple[int, ...] = (32, 64, 128)  # conv channels per stride-2 stage (image_size / 2**len must be >= 2)
    res_blocks: int = 0  # 3x3 residual blocks per stage (encoder and decoder); 0..3
    hidden: int = 128  # width of the fully-connected layer between the conv trunk and the code
    embed_dim: int = 32  # size of the class embedding fed to the decoder
    reg: str = "none"  # "none" | "contractive" (encoder Jacobian) | "smooth" (decoder finite differences)
    reg_weight: float = 0.01  # weight of the penalty against the per-pixel squared error; 0..100
    # contractive only: 0 = exact ||J||_F^2 (D backward passes per step: fine for D <= ~8), k >= 1 = Hutchinson's
    # unbiased estimate with k projections (k backward passes)
    jacobian_projections: int = 4  # 0..64
    smooth_eps: float = 0.05  # smooth only: step of the finite difference along a unit direction; (0, 1]
    code_decay: float = 1e-3  # weight of the mean squared code (keeps codes near the origin, bounded); 0..10
    class_weight: float = 0.03  # weight of the class-head cross-entropy (nats/image) against the per-pixel error; >= 0
    lr: float = 2e-3  # Adam learning rate; (0, 0.1]
    lr_final_frac: float = 0.05  # cosine decay of the lr to this fraction at `lr_decay_steps`; (0, 1]
    lr_decay_steps: int = 3000  # steps of the cosine schedule (constant lr_final_frac*lr after); >= 1
    grad_clip: float = 5.0  # max global grad norm; 0 = off
    stats_momentum: float = 0.01  # EMA rate of the per-class code mean/variance (the exported Gaussian prior); (0, 1]
    # training-time decorrelation (models/nets/ae_factors.py): factors (names of the data's factors) that each own
    # `factor_dims` code units, read by a supervised linear head, with the decoder trained on codes whose blocks
    # are swapped between images; () = off. The blocks must fit in z_dim.
    decorrelate: tuple[str, ...] = ()
    factor_dims: int = 2  # code units per decorrelated factor; 1..16
    factor_weight: float = 1.0  # weight of the heads' squared error (factors scaled to [0, 1]); 0..100
    swap_weight: float = 1.0  # weight of the swapped codes' re-encoded squared error (decoder only); 0..100

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        names = self.decorrelate.split(",") if isinstance(self.decorrelate, str) else self.decorrelate
        self.decorrelate = tuple(str(n).strip() for n in names if str(n).strip())
        _check(self.reg in REGULARISERS, f"reg must be one of {REGULARISERS}, got {self.reg!r}")
        _check(0.0 <= self.reg_weight <= 100.0, f"reg_weight must be in [0, 100], got {self.reg_weight}")
        _check(0 <= self.jacobian_projections <= 64,
               f"jacobian_projections must be in 0..64, got {self.jacobian_projections}")
        _check(0.0 < self.smooth_eps <= 1.0, f"smooth_eps must be in (0, 1], got {self.smooth_eps}")
        _check(0.0 <= self.code_decay <= 10.0, f"code_decay must be in [0, 10], got {self.code_decay}")
        _check(self.class_weight >= 0.0, f"class_weight must be >= 0, got {self.class_weight}")
        _check(0.0 < self.stats_momentum <= 1.0, f"stats_momentum must be in (0, 1], got {self.stats_momentum}")
        _check(len(set(self.decorrelate)) == len(self.decorrelate), f"decorrelate names a factor twice: {self.decorrelate}")
        _check(1 <= self.factor_dims <= 16, f"factor_dims must be in 1..16, got {self.factor_dims}")
        _check(len(self.decorrelate) * self.factor_dims <= self.z_dim,
               f"decorrelate: {len(self.decorrelate)} factors x factor_dims {self.factor_dims} do not fit in "
               f"z_dim {self.z_dim}")
        _check(0.0 <= self.factor_weight <= 100.0, f"factor_weight must be in [0, 100], got {self.factor_weight}")
        _check(0.0 <= self.swap_weight <= 100.0, f"swap_weight must be in [0, 100], got {self.swap_weight}")
        try:  # the trunk's own bounds (z_dim, widths, res_blocks, hidden, embed_dim, lr, schedule, clip)
            self.net_config()
        except ValidationError as exc:
            raise ValidationError(str(exc).replace("VAEConfig:", "AEConfig:")) from exc

    def net_config(self) -> VAEConfig:
        """The VAE config whose encoder/decoder convnets this AE uses (VAE-only fields at their defaults)."""
        return VAEConfig(z_dim=self.z_dim, widths=self.widths, res_blocks=self.res_blocks, hidden=self.hidden,
                         embed_dim=self.embed_dim, lr=self.lr, lr_final_frac=self.lr_final_frac,
                         lr_decay_steps=self.lr_decay_steps, grad_clip=self.grad_clip)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["decorrelate"] = list(self.decorrelate)
        return d


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValidationError(f"AEConfig: {msg}")


def contractive_penalty(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, projections: int = 0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Batch mean of ||d encode(x_i) / d x_i||_F^2, differentiable (create_graph). `encode` maps (B, ...) ->
    (B, D) row by row (no batch statistics), so the gradient of sum_i v_i . z_i w.r.t. x gives every row's v_i^T J_i
    in one backward pass. projections 0: exact, one pass per latent unit; k >= 1: Hutchinson, k passes."""
    x = x.detach().requires_grad_(True)
    z = encode(x)  # (B, D)
    b, d = z.shape
    if projections == 0:
        vs = [torch.zeros_like(z).index_fill_(1, torch.tensor([k], device=z.device), 1.0) for k in range(d)]
    else:
        vs = [torch.randn(z.shape, generator=generator).to(z) for _ in range(projections)]
    total = z.new_zeros(())
    for v in vs:
        (g,) = torch.autograd.grad(z, x, grad_outputs=v, create_graph=True)  # (B, ...) rows v_i^T J_i
        total = total + g.flatten(1).square().sum(1).mean()
    return total if projections == 0 else total / projections


def smoothness_penalty(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, eps: float,
                       generator: torch.Generator | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
    """Batch mean of D * ||decode(z_i + eps u_i) - decode(z_i)||^2 / eps^2, u_i uniform on the unit sphere: an
    unbiased estimate of ||J_dec(z_i)||_F^2 up to O(eps) (see the module doc). `base` = decode(z) if at hand."""
    u = torch.randn(z.shape, generator=generator).to(z)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (B, D) unit rows
    y0 = decode(z) if base is None else base
    diff = (decode(z + eps * u) - y0).flatten(1)
    return z.shape[1] * diff.square().sum(1).mean() / (eps * eps)
