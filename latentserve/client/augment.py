"""The client side of the Augment RPC: an augmentation spec -> AugmentRequest, AugmentBatch -> AugmentChunk.
Streams are consumed by `LatentClient.augment`; the resumable dataset writer is latentserve/client/augment_job.py."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from latentserve.client.messages import IMAGE_FORMATS, SAMPLE_SOURCES, images_from_protos
from latentserve.client.results import AugmentChunk
from latentserve.services.augment.spec import AugmentSpec, parse_spec
from latentserve.v1 import latent_pb2 as pb


def build_augment_request(spec: Any, shards: Sequence[int] | None = None,
                          allow_weak_knobs: bool = False) -> pb.AugmentRequest:
    """An AugmentSpec (services/augment/spec.py) or its dict form + shard indices (None = all) -> request.
    The spec is parsed (so every local check runs) before anything is sent. `allow_weak_knobs`: use factor
    knobs below their quality gate (a permission, not part of the spec)."""
    if not isinstance(spec, AugmentSpec):
        spec = parse_spec(spec)
    msg = pb.AugmentSpec(model=spec.model, version=spec.version, count=spec.count, seed=spec.seed,
                         source=SAMPLE_SOURCES[spec.source], temperature=spec.temperature,
                         format=IMAGE_FORMATS[spec.format], shard_size=spec.shard_size,
                         return_handles=spec.handles, class_check=spec.class_check)
    if spec.class_counts is not None:
        msg.class_counts.update(spec.class_counts)
    if spec.class_weights is not None:
        msg.class_weights.update(spec.class_weights)
    for f in spec.factors:
        fm = msg.factors.add(name=f.name)
        if f.kind == "value":
            fm.value = f.values[0]
        elif f.kind == "range":
            fm.range.low, fm.range.high = f.values
        elif f.kind == "grid":
            fm.grid.low, fm.grid.high = f.values
            fm.grid.steps = f.steps
        else:
            fm.list.values.extend(f.values)
    return pb.AugmentRequest(spec=msg, shards=[int(k) for k in (shards or [])],
                             allow_weak_knobs=bool(allow_weak_knobs))


def augment_chunk(m: pb.AugmentBatch, fmt: str) -> AugmentChunk:
    return AugmentChunk(
        shard=m.shard, start=m.start, images=images_from_protos(m.images, fmt),
        labels=np.fromiter(m.labels, dtype=np.int64, count=len(m.labels)),
        seeds=np.fromiter(m.seeds, dtype=np.uint64, count=len(m.seeds)),
        factors={c.name: np.array(c.values, dtype=np.float64) for c in m.factors}, handles=list(m.handles),
        shard_end=m.shard_end, num_shards=m.num_shards, count=m.count, model=m.model, version=m.version,
        class_confidence=np.array(m.class_confidence, dtype=np.float32) if len(m.class_confidence) else None)


