"""Registry of model families: name -> Family subclass, imported lazily (torch is heavy)."""
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
    "sgan": "latentserve.models.families.sgan:SGANFamily",  # textures of any size (trained; not served yet)
}
GENERATIVE = ("gan", "vae", "flow", "ae", "vector")


def get_family(name: str):
    """The Family subclass for `name` (gan | vae | flow | ae | probe | vector | sgan)."""
    if name not in FAMILIES:
        raise ValidationError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    module, _, attr = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
