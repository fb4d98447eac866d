"""Augmentation specs (services/augment/spec.py): parsing and model checks with one-line messages naming the
field, the pure index -> (class, factors, seed) plan, the wire round trip, and the server-side generator's
bounded prefetch (services/augment/stream.py) with a slow consumer."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from latentserve.errors import ValidationError
from latentserve.services.augment.spec import (
    AugmentPlan,
    ModelFacts,
    check_shards,
    check_spec,
    image_seeds,
    parse_spec,
    sample_latent,
)
from latentserve.services.augment.stream import AugmentStats, generate

CLASSES = ("circle", "square", "triangle")
FACTS = ModelFacts(name="m", version=3, class_names=CLASSES,
                   knobs={"scale": (0.3, 0.6, "fraction"), "rotation": (0.0, 90.0, "deg")}, sources=("prior",))


def spec(**kw):
    return parse_spec({"model": "m", "count": 10, **kw})


@pytest.mark.parametrize("data, message", [
    ({"count": -5}, "spec.count: -5 is negative"),
    ({"count": 0}, "spec.count: at least 1 image required"),
    ({"count": 2.5}, "spec.count: expected an integer"),
    ({"colour": 1}, "spec.colour: unknown field"),
    ({"class_counts": {"circle": -1}}, "spec.class_counts.circle: -1 is negative"),
    ({"count": 5, "class_counts": {"circle": 2}}, "spec.count: 5 but spec.class_counts sum to 2"),
    ({"class_counts": {"circle": 1}, "class_weights": {"circle": 1}}, "spec.class_weights: give class_counts or"),
    ({"class_weights": {"circle": 0}}, "spec.class_weights: at least one weight must be > 0"),
    ({"factors": {"scale": {"range": [0.6, 0.3]}}}, "spec.factors.scale.range: low 0.6 is above high 0.3"),
    ({"factors": {"scale": {"grid": [0.3, 0.6, 0]}}}, "spec.factors.scale.grid.steps: 0 is below the minimum 1"),
    ({"factors": {"scale": {"between": [0, 1]}}}, "spec.factors.scale: expected a number or one of"),
    ({"factors": {"scale": "big"}}, "spec.factors.scale: expected a number"),
    ({"seed": 0}, "spec.seed: 0 means a fresh random seed for `sample`, but a job must make the same images"),
    ({"seed": -1}, "spec.seed: -1 is negative"),
    ({"format": "gif"}, "spec.format: 'gif' is not a format"),
    ({"source": "guided"}, "spec.source: 'guided' is not a source"),
    ({"temperature": 11}, "spec.temperature: 11.0 outside [0, 10.0]"),
    ({"shard_size": -1}, "spec.shard_size: -1 is negative"),
    ({"class_check": 1.0}, "spec.class_check: 1.0 must be below 1"),
    ({"class_check": "high"}, "spec.class_check: expected a number"),
])
def test_parse_errors_name_the_field(data, message):
    with pytest.raises(ValidationError) as e:
        parse_spec({"model": "m", "count": 10, **data})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_every_parse_error_is_reported_at_once():
    with pytest.raises(ValidationError) as e:
        parse_spec({"count": -5, "colour": 1, "seed": 0, "format": "gif",
                    "factors": {"scale": {"range": [0.6, 0.3]}, "rotation": "big"}})
    lines = str(e.value).splitlines()
    assert lines[0] == "spec has 7 errors:", lines
    for field in ("spec.colour: unknown field", "spec.model: required", "spec.count: -5 is negative",
                  "spec.seed: 0 means", "spec.format: 'gif'", "spec.factors.scale.range: low 0.6",
                  "spec.factors.rotation: expected a number"):
        assert sum(line.startswith(field) for line in lines[1:]) == 1, (field, lines)


def test_every_model_check_error_is_reported_at_once():
    s = parse_spec({"model": "m", "class_counts": {"hexagon": 3, "circle": 2}, "source": "latent_gmm",
                    "factors": {"hue": 0.1, "scale": 0.9, "rotation": {"range": [0, 45]}}})
    with pytest.raises(ValidationError) as e:
        check_spec(s, FACTS, files=True)
    assert str(e.value).splitlines() == [
        "spec has 4 errors:",
        "spec.class_counts.hexagon: unknown class; classes: circle, square, triangle",
        "spec.factors.hue: unknown factor; factors of m: scale, rotation",
        "spec.factors.scale: 0.9 outside [0.3, 0.6] fraction",
        "spec.source: m v3 has no 'latent_gmm' source; sources: prior",
    ]


def test_model_required():
    with pytest.raises(ValidationError, match=r"^spec.model: required"):
        parse_spec({"count": 3})


@pytest.mark.parametrize("kw, files, message", [
    ({"class_counts": {"hexagon": 10}}, False, "spec.class_counts.hexagon: unknown class; classes: circle, square, triangle"),
    ({"class_weights": {"hexagon": 1}}, False, "spec.class_weights.hexagon: unknown class"),
    ({"factors": {"hue": 0.1}}, False, "spec.factors.hue: unknown factor; factors of m: scale, rotation"),
    ({"factors": {"scale": 0.9}}, False, "spec.factors.scale: 0.9 outside [0.3, 0.6] fraction"),
    ({"factors": {"scale": {"range": [0.2, 0.5]}}}, False, "spec.factors.scale: 0.2 outside [0.3, 0.6]"),
    ({"factors": {"rotation": {"grid": [0, 120, 4]}}}, False, "spec.factors.rotation: 120 outside [0, 90]"),
    ({"factors": {"rotation": {"values": [10, -1]}}}, False, "spec.factors.rotation: -1 outside [0, 90]"),
    ({"source": "latent_gmm"}, False, "spec.source: m v3 has no 'latent_gmm' source"),
    ({"format": "uint8"}, True, "spec.format: 'uint8' cannot be written as image files"),
])
def test_model_checks_name_the_field(kw, files, message):
    with pytest.raises(ValidationError) as e:
        check_spec(parse_spec({"model": "m", **({"count": 10} if "class_counts" not in kw else {}), **kw}), FACTS,
                   files=files)
    assert str(e.value).startswith(message), str(e.value)


def test_a_knob_below_its_quality_gate_is_refused_unless_allowed():
    from dataclasses import replace

    facts = replace(FACTS, judged_knobs={"rotation": {"r2": 0.12, "usable": False, "judge": "geometric"},
                                         "scale": {"r2": None, "usable": True, "judge": "geometric"}})
    weak = spec(factors={"scale": 0.4, "rotation": {"range": [0, 45]}})
    with pytest.raises(ValidationError) as e:
        check_spec(weak, facts)
    msg = str(e.value)
    assert msg.startswith("spec.factors.rotation: knob 'rotation' of m v3 is below its quality gate: R² 0.12 by "
                          "the geometric judge"), msg
    assert check_spec(weak, facts, allow_weak_knobs=True) is weak
    check_spec(spec(factors={"scale": 0.4}), facts)  # not judged: never refused


def test_a_valid_spec_passes_and_round_trips():
    s = check_spec(spec(class_weights={"circle": 1, "square": 3},
                        factors={"scale": {"range": [0.3, 0.5]}, "rotation": {"grid": [0, 90, 4]}}), FACTS, files=True)
    again = parse_spec(s.to_dict())
    assert again.to_dict() == s.to_dict() and again.digest() == s.digest()
    # key order of the YAML does not matter; any change of content does
    swapped = parse_spec({"count": 10, "model": "m", "factors": {"rotation": {"grid": [0, 90, 4]},
                          "scale": {"range": [0.3, 0.5]}}, "class_weights": {"square": 3, "circle": 1}})
    assert [f.name for f in swapped.factors] != [f.name for f in s.factors]  # factor order is part of the spec
    assert parse_spec({**s.to_dict(), "seed": 2}).digest() != s.digest()
    # the label check is part of the job when set; unset (the model's default) keeps digests of older specs
    assert "class_check" not in s.to_dict()
    checked = parse_spec({**s.to_dict(), "class_check": 0.9})
    assert checked.class_check == 0.9 and checked.digest() != s.digest()
    assert parse_spec(checked.to_dict()).digest() == checked.digest()
    assert parse_spec({**s.to_dict(), "class_check": -3}).class_check == -1.0  # any negative: off


def test_plan_is_a_pure_function_of_spec_and_index():
    s = spec(count=1000, shard_size=64, seed=5, class_weights={"circle": 1, "square": 1, "triangle": 2},
             factors={"scale": {"range": [0.3, 0.6]}, "rotation": {"values": [0, 45, 90]}})
    full = AugmentPlan(s, CLASSES).images(0, 1000)
    other = AugmentPlan(s, CLASSES)
    for start, stop in ((0, 64), (640, 704), (960, 1000), (17, 18)):
        labels, seeds, factors = other.images(start, stop)  # any range, any order, another plan object
        np.testing.assert_array_equal(labels, full[0][start:stop])
        np.testing.assert_array_equal(seeds, full[1][start:stop])
        for name in ("scale", "rotation"):
            np.testing.assert_array_equal(factors[name], full[2][name][start:stop])
    labels, seeds, factors = full
    assert len(set(seeds.tolist())) == 1000  # distinct per-image seeds
    assert 0.3 <= factors["scale"].min() and factors["scale"].max() <= 0.6 and factors["scale"].std() > 0.05
    assert abs((labels == 2).mean() - 0.5) < 0.07  # weights 1:1:2
    different = AugmentPlan(parse_spec({**s.to_dict(), "seed": 6}), CLASSES).images(0, 1000)
    assert (different[0] != labels).any() and not set(different[1].tolist()) & set(seeds.tolist())
    np.testing.assert_array_equal(image_seeds(5, 10, 20), seeds[10:20])


def test_class_counts_are_exact_and_grids_cover_each_class_evenly():
    s = parse_spec({"model": "m", "class_counts": {"circle": 30, "square": 12, "triangle": 0}, "seed": 3,
                    "factors": {"scale": {"grid": [0.3, 0.6, 3]}, "rotation": {"values": [0, 90]}}})
    labels, _, factors = AugmentPlan(s, CLASSES).images(0, s.count)
    assert s.count == 42 and np.bincount(labels, minlength=3).tolist() == [30, 12, 0]
    assert labels[:12].tolist() != sorted(labels[:12].tolist())  # shuffled, not class after class
    for k, n in ((0, 30), (1, 12)):
        pairs = list(zip(factors["scale"][labels == k].round(6), factors["rotation"][labels == k]))
        assert len(pairs) == n
        # the 6 grid points (3 x 2, last factor fastest) cycle over the class's images in index order
        assert pairs[:6] == [(0.3, 0.0), (0.3, 90.0), (0.45, 0.0), (0.45, 90.0), (0.6, 0.0), (0.6, 90.0)]
        assert pairs[6:12] == pairs[:6]


def test_sample_latent_depends_only_on_its_inputs():
    from latentserve.models.latent import Knob, LatentSpace

    w = np.random.default_rng(0).standard_normal(8).astype(np.float32)
    space = LatentSpace(prior_type="standard_normal", latent_dim=8, n_classes=3,
                        knobs={"scale": Knob(name="scale", weight=w, bias=0.4, r2=1.0, low=0.3, high=0.6)})
    z = sample_latent(space, "prior", 1, 1234, 1.0, {"scale": 0.5})
    assert z.shape == (8,) and z.dtype == np.float32
    assert abs(float(space.predict_factor(z, "scale")) - 0.5) < 1e-5
    np.testing.assert_array_equal(z, sample_latent(space, "prior", 1, 1234, 1.0, {"scale": 0.5}))
    assert not np.array_equal(z, sample_latent(space, "prior", 1, 1235, 1.0, {"scale": 0.5}))
    # label-check redraws: attempt 0 is the plain draw, later attempts are other (reproducible) draws
    np.testing.assert_array_equal(z, sample_latent(space, "prior", 1, 1234, 1.0, {"scale": 0.5}, attempt=0))
    again = sample_latent(space, "prior", 1, 1234, 1.0, {"scale": 0.5}, attempt=1)
    assert not np.array_equal(z, again) and abs(float(space.predict_factor(again, "scale")) - 0.5) < 1e-5
    np.testing.assert_array_equal(again, sample_latent(space, "prior", 1, 1234, 1.0, {"scale": 0.5}, attempt=1))


def test_shard_selection():
    assert check_shards([], 3) == [0, 1, 2]
    assert check_shards([0, 2], 3) == [0, 2]
    with pytest.raises(ValidationError, match=r"shards\[1\]: shard 3 outside \[0, 3\)"):
        check_shards([1, 3], 3)
    with pytest.raises(ValidationError, match="strictly ascending"):
        check_shards([2, 1], 3)
    s = spec(count=10, shard_size=4)
    assert s.num_shards == 3 and s.shard_range(2) == (8, 10)


def test_wire_round_trip():
    from latentserve.services.frontends.grpc import codec
    from latentserve.client import build_augment_request

    s = spec(class_counts=None, class_weights={"circle": 2.5}, factors={
        "scale": 0.4, "rotation": {"range": [0, 90]}, "hue": {"grid": [0, 1, 5]}, "x": {"values": [1, 2]}},
        source="latent_gmm", seed=2**64 - 1, temperature=0.5, format="jpeg", shard_size=7, handles=False,
        class_check=0.9)
    req = build_augment_request(s, shards=[1, 2])
    assert list(req.shards) == [1, 2]
    assert codec.augment_spec_from_pb(req.spec).digest() == s.digest()


def test_generator_stays_a_bounded_distance_ahead_of_a_slow_consumer():
    s = spec(count=200, shard_size=10, handles=False)
    plan = AugmentPlan(s, CLASSES)

    from latentserve.models.latent import LatentSpace

    space = LatentSpace(prior_type="standard_normal", latent_dim=4, n_classes=3, knobs={})
    stats = AugmentStats()

    async def render(z, labels):
        return [b"x"] * len(z)

    async def main():
        seen, ahead = [], []
        stream = generate(s, plan, list(range(s.num_shards)), space, 1.0, render, batch_size=5, stats=stats,
                          prefetch=2, parallel=2)
        async for batch in stream:
            seen.append((batch.shard, batch.start, len(batch.images), batch.shard_end))
            # a slow consumer: let the producer run ahead as far as it will (it makes latents on a thread)
            for _ in range(5000):
                if stats.batches - len(seen) >= 4 or stats.batches == 40:
                    break
                await asyncio.sleep(0.001)
            for _ in range(10):  # ... and give it more chances to overrun its bound
                await asyncio.sleep(0.001)
            ahead.append(stats.batches - len(seen))
        return seen, ahead

    seen, ahead = asyncio.run(main())
    assert [b[1] for b in seen] == list(range(0, 200, 5))  # every image once, in order, shard-aligned
    assert all(b[3] == ((b[1] + 5) % 10 == 0) for b in seen)
    # made but not consumed: at most prefetch (2 queued) + parallel (2 being made), and it gets there
    assert max(ahead) == 4
    assert stats.streams_active == 0 and stats.images == 200


def test_dataset_shards_cover_the_job_once_over_ranks_and_workers():
    from latentserve.client.dataset import AugmentDataset

    s = spec(count=1000, shard_size=30)  # 34 shards
    seen = []
    for rank in range(3):
        ds = AugmentDataset("127.0.0.1:1", s, rank=rank, world_size=3)  # no connection until iterated
        for worker in range(2):
            seen += ds.shards(worker, 2)
    assert sorted(seen) == list(range(s.num_shards))
    with pytest.raises(ValueError, match="rank must be in"):
        AugmentDataset("127.0.0.1:1", s, rank=3, world_size=3)
    with pytest.raises(ValidationError, match="spec.count: -1 is negative"):
        AugmentDataset("127.0.0.1:1", {"model": "m", "count": -1})
