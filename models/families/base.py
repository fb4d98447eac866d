"""The contract between the generic training loop (models/train.py) and one model family.

A family owns its networks, optimisers and the training step; the loop owns data order, checkpoints,
resume, progress and sample grids. Export only needs `graphs()`: eval-mode modules that follow the graph
contract in docs/architecture.md, so the serving side never knows which family it runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from latentserve.errors import ValidationError


@dataclass
class ExportGraph:
    """One exported graph: a module plus what ONNX/TorchScript export needs to know about it."""

    module: nn.Module  # eval mode; forward(*example_inputs) -> tuple of tensors in output_names order
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    doc: str = ""
    # axis 0 of every input and output is the dynamic batch axis
    extra: dict[str, Any] = field(default_factory=dict)


def cosine_decay(step: int, decay_steps: int, final_frac: float) -> float:
    """Factor on a learning rate: cosine from 1 to final_frac over decay_steps, then final_frac (a function of
    the step, so a resumed run continues its schedule)."""
    t = min(max(step, 0), decay_steps) / decay_steps
    return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * t))


class Family:
    """Base class of gan / vae / flow / probe. Subclasses set `name` and `config_cls`."""

    name: str = ""
    config_cls: type = object
    # export: fit the factor knobs on probe-labelled samples of this source ("prior" | "latent_gmm") instead of
    # encoded training images; None = encoded images (see models/export.ExportConfig.knob_source)
    knobs_from_samples: str | None = None

    def __init__(self, config: Any, data_meta: dict, device: torch.device) -> None:
        if not isinstance(config, self.config_cls):
            raise ValidationError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        self.config = config
        self.data_meta = data_meta  # Dataset.meta(): image_size, class_names, factors, ...
        self.device = device
        try:
            self.image_size = int(data_meta["image_size"])
            self.n_classes = len(data_meta["class_names"])
        except (KeyError, TypeError) as exc:
            raise ValidationError(f"data_meta needs 'image_size' and 'class_names' (Dataset.meta()): {exc}") from exc

    # -- what the loop checkpoints ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    # -- training -----------------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, float]:
        """One optimisation step. x (B,3,H,W) in [-1,1]; y (B,) int64; f (B,K) float32, NaN = unknown."""
        raise NotImplementedError

    @torch.no_grad()
    def sample_grid(self, n_per_class: int, seed: int) -> torch.Tensor | None:
        """Images (n_classes*n_per_class, 3, H, W) in [-1,1] for the PNG grid, or None (probe)."""
        return None

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> dict[str, float]:
        """Cheap held-out figures printed at checkpoints (e.g. bits/dim, PSNR, accuracy)."""
        return {}

    # -- export -------------------------------------------------------------------------------------------
    def graphs(self) -> dict[str, ExportGraph]:
        """Graphs to export, keyed 'encoder' / 'decoder' (generative) or 'probe'."""
        raise NotImplementedError

    def manifest_extra(self) -> dict:
        """Family-specific manifest fields (e.g. prior type, latent shape)."""
        return {}
