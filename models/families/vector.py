"""The vector family: a conditional GAN whose generator draws a few parametric layers (models/nets/vector.py).

Owns `VectorFamily`: the GAN family's training (models/families/gan.py: the mode-regularised recipe with the
joint encoder, the projection discriminator, EMA, standing statistics) with `VectorGenerator` in place of the
convolutional generator, its edges annealed from `edge_px_start` to `edge_px` over `edge_anneal_steps` (soft
edges early pass gradients from further away; the final width is what serving draws).

Export: the `decoder` graph outputs `image` at the native size (what eval, knob fitting, the label check and
the gradient latent ops use) plus `layers` (B,L,10) and `background` (B,3), and the manifest's `vector` block
names the layer kinds and the edge width, so serving draws the layers at any output size or writes them as
SVG with numpy (models/vector.py) without torch.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from latentserve.models import vector as vec
from latentserve.models.families.base import ExportGraph
from latentserve.models.families.gan import GANFamily
from latentserve.models.nets.vector import VectorConfig, VectorGenerator, rasterise


class _VectorDecoderGraph(nn.Module):
    """Export wrapper: (latent (B,Z), label (B,)) -> (image (B,3,S,S), layers (B,L,10), background (B,3))."""

    def __init__(self, generator: VectorGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.generator
        layers, background = g.parameters_of(latent, label)
        return rasterise(layers, background, g.kinds, g.image_size, g.edge_px), layers, background


class VectorFamily(GANFamily):
    name = "vector"
    config_cls = VectorConfig
    default_steps = 3000

    def __init__(self, config: VectorConfig | dict, data_meta: dict, device: torch.device | str = "cpu") -> None:
        if isinstance(config, dict):
            config = VectorConfig.from_dict(config)
        super().__init__(config, data_meta, device)

    def _build_generator(self, data_meta: dict) -> nn.Module:
        c = self.config
        return VectorGenerator(c.z_dim, self.n_classes, self.image_size, c.kinds(), c.g_hidden, c.g_depth,
                               c.g_embed, c.edge_px, gate=c.layer_gate(data_meta["class_names"]))

    def edge_px_at(self, step: int) -> float:
        """Edge width at `step`: linear from edge_px_start to edge_px (a function of the step: resumes continue)."""
        c = self.config
        frac = min(1.0, max(step, 0) / c.edge_anneal_steps)
        return c.edge_px_start + (c.edge_px - c.edge_px_start) * frac

    def train_step(self, x: torch.Tensor, y: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, float]:
        edge = self.edge_px_at(step)
        self.g.edge_px = self.g_ema.edge_px = edge
        return {**super().train_step(x, y, f, step), "edge_px": edge}

    def graphs(self) -> dict[str, ExportGraph]:
        """The GAN's graphs, with the decoder drawing at the served edge width and returning its layers."""
        graphs = super().graphs()
        g = copy.deepcopy(self.sampling_generator()).eval().requires_grad_(False)
        g.edge_px = self.config.edge_px
        dec = graphs["decoder"]
        graphs["decoder"] = ExportGraph(
            module=_VectorDecoderGraph(g).eval(), example_inputs=dec.example_inputs, input_names=dec.input_names,
            output_names=["image", "layers", "background"],
            doc="vector layers: latent (B,D) ~ N(0,I), label (B,) int64 -> image (B,3,H,W) in [-1,1] drawn from "
                "layers (B,L,10) [cx, cy, a11, a12, a21, a22, r, g, b, opacity] over background (B,3)",
        )
        return graphs

    def manifest_extra(self) -> dict:
        return {**super().manifest_extra(),
                "vector": {"layers": list(self.config.kinds()), "edge_px": float(self.config.edge_px),
                           "params": list(vec.PARAMS)}}
