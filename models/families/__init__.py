"""Registry of model families: name -> Family subclass, imported lazily (torch is heavy).

The one list of families: the manifest schema, the quality gates, the serving side and the `train` command's
choices derive theirs from FAMILIES / EXPORTED / GENERATIVE here. Imports nothing heavy (serving-safe).
"""
from __future__ import annotations

import importlib

from latentserve.errors import ValidationError

FAMILIES = {
    "gan": "latentserve.models.families.gan:GANFamily",
    "vae": "latentserve.models.families.vae:VAEFamily",
    "flow": "latentserve.models.families.flow:FlowFamily",
    "ae": "latentserve.models.families.ae:AEFamily",
    "probe": "latentserve.models.families.probe:ProbeFamily",
    "vector": "latentserve.models.families.vector:VectorFamily",
    "sgan": "latentserve.models.families.sgan:SGANFamily",  # textures of any size (decoder only, no encoder)
}
# Families whose runs export a model (a manifest names one of these): every family.
EXPORTED = tuple(FAMILIES)
# Exported families that generate images (decode, sample, knobs, gates); the probe only scores images.
GENERATIVE = tuple(name for name in EXPORTED if name != "probe")


def get_family(name: str):
    """The Family subclass for `name` (gan | vae | flow | ae | probe | vector | sgan)."""
    if name not in FAMILIES:
        raise ValidationError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    module, _, attr = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
