"""Gradient-based latent operations (torch only): geodesic paths, guided Langevin sampling, encode refinement.

Pure optimisation math on torch modules and tensors, with no serving concepts: the serving engine
(services/core/latent_ops.py) keeps one *state* per request and advances many states of the same kind with one
forward/backward pass per iteration (`geodesic_step`, `guided_step`, `refine_step` take a list of states,
concatenate their rows, run the decoder (+ probe) once, and update every state in place). States can join
and leave between iterations, so every per-request quantity (learning rate, step size, weights, step count,
Adam moments, random generator) lives in the state, never in the batch.

Graph modules are the exported TorchScript artefacts (`torch.jit.load` of decoder.pt / probe.pt) or any
modules with the same signatures: decoder(latent (N, D) f32, label (N,) i64) -> image (N, 3, H, W) in
[-1, 1]; probe(image) -> (logits (N, C), factors (N, K), features (N, F)).

The operations:
- Geodesic interpolation (Shao et al. 2017, "The Riemannian geometry of deep generative models"): the inner
  latents of a discrete path with fixed ends minimise the path energy E = sum_i ||f(x_i+1) - f(x_i)||^2 / F,
  x_i = decode(z_i), f = the image ("pixel") or the probe's features ("probe", a feature-based metric in the
  spirit of Laine 2018); minimising the energy of a discrete path both shortens it and evens its steps
  (by Cauchy-Schwarz, length^2 <= (S-1) * E with equality iff the steps are equal). Adam per state.
- Guided sampling (Nguyen et al. 2016, PPGN MALA-approx): Langevin steps on
  U(z) = -log p(z) - w_c log p(y | decode(z)) + w_f sum_k ((r_k(decode(z)) - t_k) / range_k)^2,
  z <- z - eta grad U + noise sqrt(2 eta) eps; p(z) is the model's prior (standard normal or the flow's
  class Gaussian), p(y | x) the probe's classifier and r_k its factor regressor.
- Refinement (a warm-started StyleGAN2-style projector): from the encoder's latent, Adam on
  mean (decode(z) - x)^2 + w_feat mean (probe_features(decode(z)) - probe_features(x))^2, keeping each
  row's best latent, so the returned error is never above the encoder's.

Distances are RMS over elements (pixels on the [-1, 1] scale, or feature entries), the same scale as
InterpolateFrame.step_distance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

SPACES = ("pixel", "probe")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
# Langevin safety: the drift of one step is clipped to this many times sqrt(D) (a unit-variance latent has
# norm ~sqrt(D)), so a steep classifier gradient cannot throw a chain far off the prior in one step.
MAX_DRIFT_PER_SQRT_D = 0.5


# ------------------------------------------------------------------------------------------- graphs
@dataclass
class Graphs:
    """The torch modules of one model version (+ its probe) and its prior, on one device."""

    decoder: Any
    probe: Any = None
    prior_mean: torch.Tensor | None = None  # (C, D) class_gaussian prior; None = standard normal
    prior_std: torch.Tensor | None = None  # (C, D)
    factor_names: list[str] = field(default_factory=list)  # the probe's factor outputs, in order
    device: str = "cpu"

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, labels)

    def probe_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.probe is None:
            raise ValueError("this operation needs the model's probe, and none was loaded")
        logits, factors, features = self.probe(x)
        return logits, factors, features

    def embed(self, x: torch.Tensor, space: str) -> torch.Tensor:
        """Images (N, 3, H, W) -> (N, F) vectors in which distances are measured."""
        if space == "pixel":
            return x.reshape(x.shape[0], -1)
        if space == "probe":
            return self.probe_outputs(x)[2].reshape(x.shape[0], -1)
        raise ValueError(f"space {space!r} is not one of {', '.join(SPACES)}")

    def prior_energy(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """-log p(z) up to a constant, per row (N,)."""
        if self.prior_mean is None:
            return 0.5 * (z * z).sum(1)
        u = (z - self.prior_mean[labels]) / self.prior_std[labels]
        return 0.5 * (u * u).sum(1)


def load_graphs(decoder_path: str, probe_path: str | None = None, prior_mean: np.ndarray | None = None,
                prior_logstd: np.ndarray | None = None, factor_names: Sequence[str] = (),
                device: str = "cpu") -> Graphs:
    """TorchScript artefacts -> Graphs (parameters frozen: gradients flow to the latents only)."""
    def load(path: str):
        m = torch.jit.load(str(path), map_location=device).eval()
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    mean = std = None
    if prior_mean is not None:
        mean = torch.as_tensor(np.asarray(prior_mean, np.float32), device=device)
        std = torch.exp(torch.as_tensor(np.asarray(prior_logstd, np.float32), device=device))
    return Graphs(load(decoder_path), load(probe_path) if probe_path else None, mean, std, list(factor_names), device)


def graphs_for_record(repo: Any, record: Any, verify: bool = True, device: str = "cpu") -> tuple[Graphs, str]:
    """(Graphs of a generative model version with the probe its manifest names, '' or why there is no probe).

    `repo` is a models.repository.Repository; the newest version of the probe is used."""
    from latentserve.errors import NotFoundError
    from latentserve.models.evaluate import probe_factor_names

    space = repo.latent_space(record)
    probe_path, factor_names, problem = None, [], ""
    probe_name = record.manifest.get("probe")
    if not probe_name:
        problem = f"model {record.name} v{record.version} names no probe in its manifest"
    else:
        try:
            probe = repo.load(probe_name, None, verify=verify)
        except NotFoundError:
            problem = f"model {record.name} v{record.version} names probe {probe_name!r}, which is not in the repository"
        else:
            if probe.family != "probe" or probe.class_names != record.class_names:
                problem = f"probe {probe_name!r} is not a probe for {record.name}'s classes"
            else:
                probe_path, factor_names = probe.graph_path("probe", "torchscript"), probe_factor_names(probe)
    class_gaussian = space.prior_type == "class_gaussian"
    graphs = load_graphs(str(record.graph_path("decoder", "torchscript")), str(probe_path) if probe_path else None,
                         space.prior_mean if class_gaussian else None, space.prior_logstd if class_gaussian else None,
                         factor_names, device)
    return graphs, problem


# ------------------------------------------------------------------------------------------- helpers
def rms_steps(f: torch.Tensor) -> torch.Tensor:
    """(S, F) consecutive points -> (S-1,) RMS distances."""
    d = f[1:] - f[:-1]
    return torch.sqrt((d * d).mean(1))


def path_figures(steps: np.ndarray) -> tuple[float, float]:
    """(length, coefficient of variation) of a path's step distances (S-1,)."""
    steps = np.asarray(steps, dtype=np.float64)
    if steps.size == 0:
        return 0.0, 0.0
    mean = steps.mean()
    return float(steps.sum()), float(steps.std() / mean) if mean > 0 else 0.0


def adam(z: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, lr: float) -> None:
    """One Adam step in place (the state's own moments and step count t >= 1)."""
    b1, b2 = ADAM_BETAS
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    mhat = m / (1 - b1 ** t)
    vhat = v / (1 - b2 ** t)
    z.sub_(lr * mhat / (vhat.sqrt() + ADAM_EPS))


def _split(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    return list(torch.split(x, list(sizes)))


def _grad(loss: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, z)
    return g


# ------------------------------------------------------------------------------------------- geodesic
@dataclass
class PathState:
    """One geodesic request: fixed ends, optimised inner latents (S-2, D)."""

    ends: torch.Tensor  # (2, D)
    inner: torch.Tensor  # (S-2, D), updated in place
    labels: torch.Tensor  # (S,) int64, the label of every frame
    ends_f: torch.Tensor  # (2, F) embedded decoded ends (constant)
    space: str
    lr: float
    iterations: int
    t: int = 0
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None
    energy: float = float("nan")  # at the start of the last iteration

    @property
    def rows(self) -> int:
        return int(self.inner.shape[0])

    @property
    def done(self) -> bool:
        return self.t >= self.iterations or self.rows == 0

    def path(self) -> torch.Tensor:
        return torch.cat([self.ends[:1], self.inner, self.ends[1:]])


def init_path(graphs: Graphs, path: np.ndarray, labels: np.ndarray, space: str, lr: float,
              iterations: int) -> PathState:
    """A state from an initial path (S, D) (lerp or slerp) and its frame labels (S,)."""
    z = torch.as_tensor(np.asarray(path, np.float32), device=graphs.device)
    y = torch.as_tensor(np.asarray(labels, np.int64), device=graphs.device)
    with torch.no_grad():
        ends_f = graphs.embed(graphs.decode(z[[0, -1]], y[[0, -1]]), space)
    inner = z[1:-1].clone()
    return PathState(ends=z[[0, -1]].clone(), inner=inner, labels=y, ends_f=ends_f, space=space, lr=float(lr),
                     iterations=int(iterations), m=torch.zeros_like(inner), v=torch.zeros_like(inner))


def geodesic_step(graphs: Graphs, states: Sequence[PathState]) -> None:
    """One Adam iteration of every state (same space) with one decoder (+ probe) pass over all inner rows."""
    states = [s for s in states if not s.done]
    if not states:
        return
    sizes = [s.rows for s in states]
    z = torch.cat([s.inner for s in states]).requires_grad_(True)
    y = torch.cat([s.labels[1:-1] for s in states])
    f = graphs.embed(graphs.decode(z, y), states[0].space)  # (R, F)
    total = 0.0
    for s, fi in zip(states, _split(f, sizes)):
        chain = torch.cat([s.ends_f[:1], fi, s.ends_f[1:]])
        d = chain[1:] - chain[:-1]
        e = (d * d).mean(1).sum()
        s.energy = float(e.detach())
        total = total + e
    g = _grad(total, z)  # states are independent: d total / d inner_j = d E_j / d inner_j
    for s, gi in zip(states, _split(g, sizes)):
        s.t += 1
        adam(s.inner, gi, s.m, s.v, s.t, s.lr)


@torch.no_grad()
def path_result(graphs: Graphs, state_or_path: PathState | np.ndarray, labels: np.ndarray | None = None,
                space: str = "pixel") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latents (S, D), images (S, 3, H, W) float32, step distances (S-1,) in `space`) of a final state or of
    a given path (S, D) with frame labels (S,)."""
    if isinstance(state_or_path, PathState):
        z, y, space = state_or_path.path(), state_or_path.labels, state_or_path.space
    else:
        z = torch.as_tensor(np.asarray(state_or_path, np.float32), device=graphs.device)
        y = torch.as_tensor(np.asarray(labels, np.int64), device=graphs.device)
    x = graphs.decode(z, y)
    d = rms_steps(graphs.embed(x, space))
    return z.cpu().numpy(), x.cpu().numpy().astype(np.float32), d.cpu().numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------- guided sampling
@dataclass
class ChainState:
    """One guided-sampling request: n Langevin chains."""

    z: torch.Tensor  # (n, D), updated in place
    labels: torch.Tensor  # (n,) int64: the class each chain is guided to (and decoded with)
    targets: torch.Tensor  # (K,) factor targets in natural units (probe factor order); unused where mask = 0
    mask: torch.Tensor  # (K,) 1 = factor targeted
    scale: torch.Tensor  # (K,) factor ranges (high - low): the factor term is unit-free
    steps: int
    step_size: float
    class_weight: float
    factor_weight: float
    noise: float
    generator: torch.Generator  # per request: the same seed gives the same chains whatever the batch
    t: int = 0
    energy: float = float("nan")

    @property
    def rows(self) -> int:
        return int(self.z.shape[0])

    @property
    def done(self) -> bool:
        return self.t >= self.steps


def init_chains(graphs: Graphs, z0: np.ndarray, labels: np.ndarray, steps: int, step_size: float,
                class_weight: float, noise: float, factor_targets: dict[str, float] | None = None,
                factor_ranges: dict[str, float] | None = None, factor_weight: float = 0.0,
                seed: int = 0) -> ChainState:
    k = len(graphs.factor_names)
    targets = torch.zeros(k, device=graphs.device)
    mask = torch.zeros(k, device=graphs.device)
    scale = torch.ones(k, device=graphs.device)
    for name, value in (factor_targets or {}).items():
        i = graphs.factor_names.index(name)
        targets[i], mask[i] = float(value), 1.0
        scale[i] = max(float((factor_ranges or {}).get(name, 1.0)), 1e-6)
    gen = torch.Generator(device=graphs.device)
    gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return ChainState(z=torch.as_tensor(np.asarray(z0, np.float32), device=graphs.device).clone(),
                      labels=torch.as_tensor(np.asarray(labels, np.int64), device=graphs.device),
                      targets=targets, mask=mask, scale=scale, steps=int(steps), step_size=float(step_size),
                      class_weight=float(class_weight), factor_weight=float(factor_weight), noise=float(noise),
                      generator=gen)


def guided_energy(graphs: Graphs, z: torch.Tensor, labels: torch.Tensor, class_weight: torch.Tensor,
                  factor_weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
    """U(z) per row (N,) (see the module docstring); weights (N,), targets/mask/scale (N, K)."""
    x = graphs.decode(z, labels)
    u = graphs.prior_energy(z, labels)
    if bool((class_weight != 0).any()) or bool((factor_weight != 0).any()):
        logits, factors, _ = graphs.probe_outputs(x)
        logp = torch.log_softmax(logits, 1).gather(1, labels[:, None])[:, 0]
        err = ((factors - targets) / scale) ** 2 * mask
        u = u - class_weight * logp + factor_weight * err.sum(1)
    return u


def guided_step(graphs: Graphs, states: Sequence[ChainState]) -> None:
    """One Langevin step of every state, one decoder + probe pass over all chains."""
    states = [s for s in states if not s.done]
    if not states:
        return
    sizes = [s.rows for s in states]
    dev = graphs.device

    def per_row(values: list[float]) -> torch.Tensor:
        return torch.cat([torch.full((n,), v, device=dev) for n, v in zip(sizes, values)])

    z = torch.cat([s.z for s in states]).requires_grad_(True)
    y = torch.cat([s.labels for s in states])
    expand = lambda name: torch.cat([getattr(s, name)[None].expand(n, -1) for s, n in zip(states, sizes)])  # noqa: E731
    u = guided_energy(graphs, z, y, per_row([s.class_weight for s in states]),
                      per_row([s.factor_weight for s in states]), expand("targets"), expand("mask"), expand("scale"))
    g = _grad(u.sum(), z)
    max_drift = MAX_DRIFT_PER_SQRT_D * math.sqrt(z.shape[1])
    for s, gi, ui in zip(states, _split(g, sizes), _split(u.detach(), sizes)):
        drift = s.step_size * gi
        norm = drift.norm(dim=1, keepdim=True).clamp_min(1e-12)
        drift = drift * torch.clamp(max_drift / norm, max=1.0)
        s.z.sub_(drift)
        if s.noise > 0:
            eps = torch.randn(s.z.shape, generator=s.generator, device=dev)
            s.z.add_(eps, alpha=s.noise * math.sqrt(2.0 * s.step_size))
        s.energy = float(ui.mean())
        s.t += 1


# ------------------------------------------------------------------------------------------- refinement
@dataclass
class RefineState:
    """One refinement request: latents (n, D) pulled towards reconstructing `target` images."""

    z: torch.Tensor  # (n, D), updated in place
    labels: torch.Tensor  # (n,)
    target: torch.Tensor  # (n, 3, H, W) images in [-1, 1]
    target_f: torch.Tensor | None  # (n, F) probe features of the targets (feature_weight > 0)
    feature_weight: float
    lr: float
    steps: int
    t: int = 0
    m: torch.Tensor | None = None
    v: torch.Tensor | None = None
    best_z: torch.Tensor | None = None  # (n, D) best latent seen per row (by the objective)
    best_loss: torch.Tensor | None = None  # (n,)
    best_mse: torch.Tensor | None = None  # (n,) pixel MSE at best_z
    mse_before: torch.Tensor | None = None  # (n,) pixel MSE of the encoder's latent

    @property
    def rows(self) -> int:
        return int(self.z.shape[0])

    @property
    def done(self) -> bool:
        return self.t > self.steps  # steps updates, then one last evaluation


def init_refine(graphs: Graphs, z0: np.ndarray, labels: np.ndarray, images: np.ndarray, steps: int, lr: float,
                feature_weight: float = 0.0) -> RefineState:
    dev = graphs.device
    z = torch.as_tensor(np.asarray(z0, np.float32), device=dev).clone()
    target = torch.as_tensor(np.asarray(images, np.float32), device=dev)
    target_f = None
    if feature_weight > 0:
        with torch.no_grad():
            target_f = graphs.embed(target, "probe")
    return RefineState(z=z, labels=torch.as_tensor(np.asarray(labels, np.int64), device=dev), target=target,
                       target_f=target_f, feature_weight=float(feature_weight), lr=float(lr), steps=int(steps),
                       m=torch.zeros_like(z), v=torch.zeros_like(z), best_z=z.clone(),
                       best_loss=torch.full((z.shape[0],), float("inf"), device=dev),
                       best_mse=torch.full((z.shape[0],), float("inf"), device=dev))


def refine_step(graphs: Graphs, states: Sequence[RefineState]) -> None:
    """Evaluate every state's latents (keeping the best per row), then one Adam step; a state's last call
    (t == steps) only evaluates. All states share one decoder (+ probe) forward and backward."""
    states = [s for s in states if not s.done]
    if not states:
        return
    sizes = [s.rows for s in states]
    z = torch.cat([s.z for s in states]).requires_grad_(True)
    y = torch.cat([s.labels for s in states])
    x = graphs.decode(z, y)
    target = torch.cat([s.target for s in states])
    mse = ((x - target) ** 2).reshape(x.shape[0], -1).mean(1)  # (R,)
    loss = mse
    fw = [s.feature_weight for s in states]
    if any(w > 0 for w in fw):
        f = graphs.embed(x, "probe")
        tf = torch.cat([s.target_f if s.target_f is not None else torch.zeros(s.rows, f.shape[1], device=f.device)
                        for s in states])
        w = torch.cat([torch.full((n,), v, device=f.device) for n, v in zip(sizes, fw)])
        loss = loss + w * ((f - tf) ** 2).mean(1)
    g = _grad(loss.sum(), z)
    for s, gi, li, mi in zip(states, _split(g, sizes), _split(loss.detach(), sizes), _split(mse.detach(), sizes)):
        if s.mse_before is None:
            s.mse_before = mi.clone()
        better = li < s.best_loss
        s.best_loss = torch.where(better, li, s.best_loss)
        s.best_mse = torch.where(better, mi, s.best_mse)
        s.best_z[better] = s.z[better]
        if s.t < s.steps:
            adam(s.z, gi, s.m, s.v, s.t + 1, s.lr)
        s.t += 1


def run_to_end(step: Callable[[Graphs, Sequence[Any]], None], graphs: Graphs, states: Sequence[Any]) -> None:
    """Advance states with `step` until all are done (tools, tests and the report; the serving engine
    interleaves requests instead)."""
    while any(not s.done for s in states):
        step(graphs, states)
