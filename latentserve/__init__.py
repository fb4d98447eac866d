"""latentserve: serving stack for latent generative image models.

Import names: `latentserve.models` (training side, folder models/), `latentserve.services` (serving side,
folder services/), `latentserve.v1` (generated gRPC code). Nothing heavy is imported here.
"""
__version__ = "0.1.0"
