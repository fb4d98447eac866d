"""Augmentation job specs: the one place a spec is parsed and checked, and the pure plan of a job.

Used by both sides: the CLI / client check a spec before contacting the server for what they can check
alone (`parse_spec`) and against the model's metadata from GetModel (`check_spec` with `ModelFacts`), and the
server checks the same way before generating anything (services/augment/stream.py). Each check reports every
error of the spec at once, one line each naming its field, e.g. `spec.factors.scale: 0.9 outside [0.3, 0.6]`
(the model checks run once the spec parses). numpy only; no protobuf (the wire conversions live in
latentserve/client/ and services/frontends/grpc/codec.py).

A spec (YAML / dict form, every key but `model` and `count` or `class_counts` optional):

    model: shapes-gan          version: 0 (= server default; a job records the version it ran with)
    count: 1000                total images (0 or absent with class_counts = their sum)
    class_counts: {ellipse: 400, square: 600}  exact images per class ... or
    class_weights: {ellipse: 1, square: 2}     classes drawn with these weights; neither = uniform
    factors:                   knob factors, in factor units, inside the factor's range:
      scale: 0.5                     a fixed value
      rotation: {range: [0, 90]}     uniform per image
      hue: {grid: [0.1, 0.9, 5]}     5 evenly spaced values (low, high, steps)
      shade: {values: [0.2, 0.4]}    these values
    source: prior | latent_gmm       seed: 7 (>= 1; absent = 1)       temperature: 0 (= model default)
    class_check: 0.9                 label check threshold in (0, 1); 0 / absent = model default, < 0 = off
    format: png | jpeg | uint8 | float32 (files: png or jpeg)   shard_size: 256   handles: true

The plan (`AugmentPlan`): image i of a job is a pure function of (spec, i):
- its class: class_counts -> the multiset of labels shuffled with the job seed; weights / uniform -> i.i.d.
  draws with the job seed (both vectorised over the whole job once: O(count));
- its per-image seed: splitmix64 of (job seed, i). The image's latent is `sample(label, default_rng(seed))`
  (the prior or the class's latent GMM, at the job's temperature), then every factor is set to its value
  with the knob (`LatentSpace.set_factor`), one image at a time so a batch never changes a row;
- its factor values: fixed values; range draws from splitmix64(seed, factor position) (so they too follow
  from the per-image seed); grid / list points combined (cartesian product, last factor fastest) and cycled
  over the image's rank within its class.
With the label check (models/class_check.py), image i's candidates are draws of its own generators:
default_rng(seed_i) first, then default_rng([seed_i, r]) for redraw r, so a checked image too depends only on
(spec, i) and the model, never on the batch it is made in.
Shards are consecutive index ranges of `shard_size` images: shard k = [k * shard_size, (k+1) * shard_size).
Same spec, same server code and numpy -> same bytes.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from latentserve.errors import ValidationError
from latentserve.models.class_check import requested_threshold
from latentserve.models.gates import refuse_weak_knob

DEFAULT_SHARD_SIZE = 256
MAX_COUNT = 10_000_000  # the plan holds a label (and a grid rank) per image: <= ~120 MB
MAX_SHARD_SIZE = 65_536
MAX_GRID_POINTS = 1_000_000
MAX_TEMPERATURE = 10.0
FORMATS = ("png", "jpeg", "uint8", "float32")
FILE_FORMATS = ("png", "jpeg")
SOURCES = ("prior", "latent_gmm")
FACTOR_KINDS = ("value", "range", "grid", "values")
SPEC_KEYS = ("model", "version", "count", "class_counts", "class_weights", "factors", "source", "seed",
             "temperature", "format", "shard_size", "handles", "class_check")


@dataclass
class FactorSpec:
    """One factor of a job. kind value: (v,); range: (low, high); grid: (low, high) + steps; values: points."""

    name: str
    kind: str
    values: tuple[float, ...]
    steps: int = 0

    def points(self) -> tuple[float, ...]:
        """The values a fixed / grid / list factor takes (a range has none: it is drawn per image)."""
        if self.kind == "grid":
            lo, hi = self.values
            return tuple(float(v) for v in np.linspace(lo, hi, self.steps)) if self.steps > 1 else (float(lo),)
        if self.kind == "range":
            return ()
        return tuple(self.values)

    def bounds(self) -> tuple[float, float]:
        """Smallest and largest value this factor can take."""
        return (min(self.values), max(self.values))

    def to_dict(self) -> Any:
        if self.kind == "value":
            return self.values[0]
        if self.kind == "grid":
            return {"grid": [self.values[0], self.values[1], self.steps]}
        return {self.kind: list(self.values)}


@dataclass
class AugmentSpec:
    """A parsed job spec (see the module docstring). `count` is resolved (class_counts' sum when 0)."""

    model: str
    count: int
    version: int = 0
    class_counts: dict[str, int] | None = None
    class_weights: dict[str, float] | None = None
    factors: list[FactorSpec] = field(default_factory=list)
    source: str = "prior"
    seed: int = 1
    temperature: float = 0.0
    format: str = "png"
    shard_size: int = DEFAULT_SHARD_SIZE
    handles: bool = True
    class_check: float = 0.0  # label-check threshold in (0, 1); 0 = the model's default for `source`, < 0 = off

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """[start, stop) global indices of shard `shard`."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.count)

    def to_dict(self) -> dict:
        """Canonical plain form (parse_spec(to_dict()) gives the same spec)."""
        out: dict[str, Any] = {"model": self.model, "version": self.version, "count": self.count}
        if self.class_counts is not None:
            out["class_counts"] = dict(sorted(self.class_counts.items()))
        if self.class_weights is not None:
            out["class_weights"] = dict(sorted(self.class_weights.items()))
        out["factors"] = {f.name: f.to_dict() for f in self.factors}
        out.update(source=self.source, seed=self.seed, temperature=self.temperature, format=self.format,
                   shard_size=self.shard_size, handles=self.handles)
        if self.class_check:  # only when set: specs written before the check existed keep their digest
            out["class_check"] = self.class_check
        return out

    def digest(self) -> str:
        """sha256 of the canonical JSON form: two specs with the same digest produce the same job."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------------------ parsing
def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValidationError(f"{where}: expected an integer, got {value!r}")
    value = int(value)
    if value < low:
        raise ValidationError(f"{where}: {value} is {'negative' if value < 0 <= low else f'below the minimum {low}'}")
    if value > high:
        raise ValidationError(f"{where}: {value} is over the maximum {high}")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValidationError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValidationError(f"{where}: must be finite, got {value}")
    return value


def _mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{where}: expected a mapping (name: value), got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str) or not k:
            raise ValidationError(f"{where}: names must be non-empty strings, got {k!r}")
    return value


def _numbers(value: Any, where: str, n: int | None = None) -> tuple[float, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValidationError(f"{where}: expected a list of numbers, got {value!r}")
    if n is not None and len(value) != n:
        raise ValidationError(f"{where}: expected {n} numbers, got {len(value)}")
    if not value:
        raise ValidationError(f"{where}: empty list")
    return tuple(_float(v, f"{where}[{i}]") for i, v in enumerate(value))


def parse_factor(name: str, value: Any, where: str) -> FactorSpec:
    """One `factors` entry: a number, or {range: [lo, hi]} | {grid: [lo, hi, steps]} | {values: [...]}."""
    if not isinstance(value, Mapping):
        return FactorSpec(name, "value", (_float(value, where),))
    if len(value) != 1 or next(iter(value)) not in FACTOR_KINDS[1:]:
        raise ValidationError(f"{where}: expected a number or one of {{range: [low, high]}}, "
                              f"{{grid: [low, high, steps]}}, {{values: [...]}}; got {dict(value)!r}")
    kind, arg = next(iter(value.items()))
    if kind == "range":
        lo, hi = _numbers(arg, f"{where}.range", 2)
        if lo > hi:
            raise ValidationError(f"{where}.range: low {lo} is above high {hi}")
        return FactorSpec(name, "range", (lo, hi))
    if kind == "grid":
        if isinstance(arg, Mapping):
            arg = [arg.get("low"), arg.get("high"), arg.get("steps")]
        if not isinstance(arg, Sequence) or isinstance(arg, str) or len(arg) != 3:
            raise ValidationError(f"{where}.grid: expected [low, high, steps], got {arg!r}")
        lo, hi = _numbers(arg[:2], f"{where}.grid")
        steps = _int(arg[2], f"{where}.grid.steps", 1, MAX_GRID_POINTS)
        if lo > hi:
            raise ValidationError(f"{where}.grid: low {lo} is above high {hi}")
        return FactorSpec(name, "grid", (lo, hi), steps)
    return FactorSpec(name, "values", _numbers(arg, f"{where}.values"))


class _Problems:
    """Collects every error of a spec, so one ValidationError reports them all: one line each, naming its field
    (a single error is its own one-line message)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def check(self, fn: Any, *args: Any, default: Any = None) -> Any:
        """fn(*args), or `default` after noting its ValidationError."""
        try:
            return fn(*args)
        except ValidationError as exc:
            self.lines.append(str(exc))
            return default

    def raise_any(self) -> None:
        if len(self.lines) == 1:
            raise ValidationError(self.lines[0])
        if self.lines:
            raise ValidationError(f"{self.where} has {len(self.lines)} errors:\n" + "\n".join(self.lines))


def parse_spec(data: Any, where: str = "spec") -> AugmentSpec:
    """Dict (YAML) form -> AugmentSpec, with every check that needs no model metadata (all errors at once)."""
    data = _mapping(data, where)
    problems = _Problems(where)
    for key in sorted(set(data) - set(SPEC_KEYS)):
        problems.add(f"{where}.{key}: unknown field; fields: {', '.join(SPEC_KEYS)}")
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        problems.add(f"{where}.model: required (a served model name)")
    version = problems.check(_int, data.get("version", 0) or 0, f"{where}.version", 0, 2**31 - 1, default=0)
    counts = weights = None
    counts_ok = True  # class_counts absent or valid: the count checks below may use their sum
    if data.get("class_counts") is not None and data.get("class_weights") is not None:
        problems.add(f"{where}.class_weights: give class_counts or class_weights, not both")
    elif data.get("class_counts") is not None:
        before = len(problems.lines)
        table = problems.check(_mapping, data["class_counts"], f"{where}.class_counts", default={})
        counts = {k: problems.check(_int, v, f"{where}.class_counts.{k}", 0, MAX_COUNT, default=0)
                  for k, v in table.items()}
        counts_ok = len(problems.lines) == before
    elif data.get("class_weights") is not None:
        table = problems.check(_mapping, data["class_weights"], f"{where}.class_weights")
        if table is not None:
            weights = {}
            for k, v in table.items():
                w = problems.check(_float, v, f"{where}.class_weights.{k}")
                if w is not None and w < 0:
                    problems.add(f"{where}.class_weights.{k}: {w} is negative")
                elif w is not None:
                    weights[k] = w
            if not table or (len(weights) == len(table) and sum(weights.values()) <= 0):
                problems.add(f"{where}.class_weights: at least one weight must be > 0")
    count = problems.check(_int, data.get("count", 0) or 0, f"{where}.count", 0, MAX_COUNT)
    if count is not None and counts_ok:
        if counts is not None:
            total = sum(counts.values())
            if count == 0:
                count = total
            elif count != total:
                problems.add(f"{where}.count: {count} but {where}.class_counts sum to {total}")
        if count < 1:
            problems.add(f"{where}.count: at least 1 image required (give count or class_counts)")
    table = problems.check(_mapping, data.get("factors") or {}, f"{where}.factors", default={})
    factors = [f for f in (problems.check(parse_factor, k, v, f"{where}.factors.{k}") for k, v in table.items())
               if f is not None]
    grid = math.prod(len(f.points()) for f in factors if f.kind in ("grid", "values"))
    if grid > MAX_GRID_POINTS:
        problems.add(f"{where}.factors: the grid has {grid} points, over the maximum {MAX_GRID_POINTS}")
    source = data.get("source", "prior") or "prior"
    if source not in SOURCES:
        problems.add(f"{where}.source: {source!r} is not a source; choose {' or '.join(SOURCES)}")
    fmt = data.get("format", "png") or "png"
    if fmt not in FORMATS:
        problems.add(f"{where}.format: {fmt!r} is not a format; choose one of {', '.join(FORMATS)}")
    temperature = problems.check(_float, data.get("temperature", 0.0) or 0.0, f"{where}.temperature", default=0.0)
    if not 0 <= temperature <= MAX_TEMPERATURE:
        problems.add(f"{where}.temperature: {temperature} outside [0, {MAX_TEMPERATURE}] (0 = model default)")
    handles = data.get("handles", True)
    if not isinstance(handles, bool):
        problems.add(f"{where}.handles: expected true or false, got {handles!r}")
    check = problems.check(lambda: requested_threshold(_float(data.get("class_check", 0.0) or 0.0,
                                                              f"{where}.class_check"), f"{where}.class_check"))
    seed = problems.check(_int, data.get("seed", 1), f"{where}.seed", 0, 2**64 - 1)
    if seed == 0:  # sample's "0 = a fresh random seed" cannot hold for a job: resumes and workers must agree
        problems.add(f"{where}.seed: 0 means a fresh random seed for `sample`, but a job must make the same images "
                     "when it is resumed or split over workers: give a fixed seed >= 1 (absent = 1)")
    shard_size = problems.check(_int, data.get("shard_size", DEFAULT_SHARD_SIZE) or DEFAULT_SHARD_SIZE,
                                f"{where}.shard_size", 1, MAX_SHARD_SIZE)
    problems.raise_any()
    return AugmentSpec(
        model=model.strip(), count=count, version=version, class_counts=counts, class_weights=weights,
        factors=factors, source=source, seed=seed, temperature=temperature, format=fmt, handles=handles,
        class_check=check, shard_size=shard_size,
    )


# ------------------------------------------------------------------------------------------ model checks
@dataclass(frozen=True)
class ModelFacts:
    """What a spec is checked against: from GetModel (client) or the served version (server)."""

    name: str
    version: int
    class_names: tuple[str, ...]
    knobs: Mapping[str, tuple[float, float, str]]  # factor knob name -> (low, high, unit)
    sources: tuple[str, ...]  # sample sources the model has (prior, latent_gmm)
    # factor knob name -> {r2, usable, judge}: the quality gate's verdict (models/gates.py); absent = not judged
    judged_knobs: Mapping[str, Mapping] = field(default_factory=dict)


def check_spec(spec: AugmentSpec, facts: ModelFacts, files: bool = False, where: str = "spec",
               allow_weak_knobs: bool = False) -> AugmentSpec:
    """Check a parsed spec against the model: classes, factors and their ranges, knobs below their quality
    gate (unless `allow_weak_knobs`), the sample source (and a file format when the images go to files).
    Returns the spec; else one ValidationError with every error, one line each naming its field."""
    problems = _Problems(where)
    names = list(facts.class_names)
    for what, table in (("class_counts", spec.class_counts), ("class_weights", spec.class_weights)):
        for k in table or {}:
            if k not in names:
                problems.add(f"{where}.{what}.{k}: unknown class; classes: {', '.join(names)}")
    seen = set()
    for f in spec.factors:  # at most one error per factor
        if f.name in seen:
            problems.add(f"{where}.factors.{f.name}: given twice")
            continue
        seen.add(f.name)
        knob = facts.knobs.get(f.name)
        if knob is None:
            problems.add(f"{where}.factors.{f.name}: unknown factor; factors of {facts.name}: "
                         f"{', '.join(facts.knobs) or '(none)'}")
            continue
        low, high, unit = knob
        outside = [v for v in (f.values if f.kind != "grid" else f.bounds()) if not low <= v <= high]
        if outside:
            unit = f" {unit}" if unit else ""
            problems.add(f"{where}.factors.{f.name}: {outside[0]:g} outside [{low:g}, {high:g}]{unit}")
            continue
        try:
            refuse_weak_knob(facts.name, facts.version, f.name, facts.judged_knobs, allow_weak_knobs)
        except ValidationError as exc:
            problems.add(f"{where}.factors.{f.name}: {exc}")
    if spec.source not in facts.sources:
        problems.add(f"{where}.source: {facts.name} v{facts.version} has no {spec.source!r} source; "
                     f"sources: {', '.join(facts.sources)}")
    if files and spec.format not in FILE_FORMATS:
        problems.add(f"{where}.format: {spec.format!r} cannot be written as image files; use png or jpeg")
    problems.raise_any()
    return spec


# ------------------------------------------------------------------------------------------ the plan
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic): a bijective 64-bit mixer."""
    x = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def image_seeds(job_seed: int, start: int, stop: int) -> np.ndarray:
    """Per-image seeds (uint64) of indices start..stop-1: splitmix64(splitmix64(job seed) + (i + 1) * golden)."""
    base = splitmix64(np.array([job_seed], dtype=np.uint64))[0]
    idx = np.arange(start, stop, dtype=np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        return splitmix64(base + idx * _GOLDEN)


def _uniform(seeds: np.ndarray, stream: int) -> np.ndarray:
    """A uniform [0, 1) float64 per seed for draw number `stream` (a pure function of the seed)."""
    with np.errstate(over="ignore"):
        bits = splitmix64(seeds + np.uint64(stream + 1) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class AugmentPlan:
    """Labels, seeds and factor values of a checked spec's images (see the module docstring)."""

    def __init__(self, spec: AugmentSpec, class_names: Sequence[str]) -> None:
        self.spec = spec
        self.class_names = list(class_names)
        c, n = len(self.class_names), spec.count
        if spec.class_counts is not None:
            per_class = np.array([spec.class_counts.get(name, 0) for name in self.class_names], dtype=np.int64)
            ordered = np.repeat(np.arange(c, dtype=np.int32), per_class)
            self.labels = ordered[np.random.default_rng([spec.seed, 1]).permutation(n)]
        else:
            weights = spec.class_weights or {name: 1.0 for name in self.class_names}
            p = np.array([weights.get(name, 0.0) for name in self.class_names], dtype=np.float64)
            self.labels = np.random.default_rng([spec.seed, 2]).choice(c, size=n, p=p / p.sum()).astype(np.int32)
        self._grid = [f for f in spec.factors if f.kind in ("grid", "values")]
        self._rank = np.zeros((0,), np.int64)
        if self._grid:  # rank of each image among the earlier images of its class
            self._rank = np.empty((n,), np.int64)
            for k in range(c):
                where = np.flatnonzero(self.labels == k)
                self._rank[where] = np.arange(len(where))

    def factor_values(self, start: int, stop: int, seeds: np.ndarray) -> dict[str, np.ndarray]:
        """The requested value of every factor (spec order) for images start..stop-1 -> name: float64 (n,)."""
        out: dict[str, np.ndarray] = {}
        n = stop - start
        sizes = [len(f.points()) for f in self._grid]
        point = self._rank[start:stop] % max(1, math.prod(sizes)) if self._grid else None
        digits: dict[str, np.ndarray] = {}
        for f, size in zip(reversed(self._grid), reversed(sizes)):  # mixed radix, last factor fastest
            digits[f.name] = point % size
            point = point // size
        for pos, f in enumerate(self.spec.factors):
            if f.kind == "value":
                out[f.name] = np.full((n,), f.values[0], dtype=np.float64)
            elif f.kind == "range":
                lo, hi = f.values
                out[f.name] = lo + (hi - lo) * _uniform(seeds, pos)
            else:
                out[f.name] = np.asarray(f.points(), dtype=np.float64)[digits[f.name]]
        return out

    def images(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(labels int32 (n,), seeds uint64 (n,), factor values) of images start..stop-1."""
        seeds = image_seeds(self.spec.seed, start, stop)
        return self.labels[start:stop], seeds, self.factor_values(start, stop, seeds)


def sample_latent(space: Any, source: str, label: int, seed: int, temperature: float,
                  targets: Mapping[str, float], attempt: int = 0) -> np.ndarray:
    """The latent (D,) float32 of one image: sample(label, default_rng(seed)), then every factor target set
    with its knob. One row at a time, so the result never depends on which other images share a batch.
    `attempt` r > 0 (a label-check redraw) draws from default_rng([seed, r]) instead."""
    rng = np.random.default_rng(int(seed) if attempt == 0 else [int(seed), int(attempt)])
    labels = np.array([label], dtype=np.int64)
    z = space.sample_gmm(labels, rng, temperature) if source == "latent_gmm" else space.sample_prior(labels, rng, temperature)
    for name, value in targets.items():
        z = space.set_factor(z, name, float(value), labels)
    return np.asarray(z[0], dtype=np.float32)


def check_shards(shards: Sequence[int], num_shards: int, where: str = "shards") -> list[int]:
    """Requested shard indices: strictly ascending, each in [0, num_shards); empty = all."""
    out = [int(s) for s in shards]
    if not out:
        return list(range(num_shards))
    for i, s in enumerate(out):
        if not 0 <= s < num_shards:
            raise ValidationError(f"{where}[{i}]: shard {s} outside [0, {num_shards}) (count / shard_size)")
        if i and s <= out[i - 1]:
            raise ValidationError(f"{where}: shard indices must be strictly ascending ({out[i - 1]}, then {s})")
    return out
