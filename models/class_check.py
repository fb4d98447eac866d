"""Label check of sampled images: a candidate whose label the model's own class head does not recognise is redrawn.

A conditional sample (latent z, label y) is decoded to x = D(z, y) and re-encoded by the model's own encoder;
its confidence is the class head's probability of y, softmax(E(x).logits)[y]. Rows below `threshold` are
redrawn (new latents for the same labels) for at most `rounds` draws in all; a row that never passes keeps
its most confident draw. The default threshold is high (0.99): labelled data is what the check is for, and a
stricter check costs only a few more draws per image. The check rejects what falls between the classes, so it
is only as good as the class head, and it cannot catch what the decoder was trained to pass it (the GAN's AC
term trains G against its encoder's head). Evaluation turns it on by default, per sample source
(`recommend_per_source`, read back by `default_thresholds`), only for models whose head classifies the real
test images well and on the sources where it raises the judged class accuracy.

`check_loop` is the algorithm as a generator (it asks for decodes and encodes and is sent their results), so
the serving side drives it with awaits and evaluation drives it with plain calls, one implementation for both.
numpy only (and the project's errors).
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator

import numpy as np

from latentserve.errors import ValidationError

DEFAULT_THRESHOLD = 0.99  # the class head's probability of the label a sample must reach
DEFAULT_ROUNDS = 8  # draws per image at most (the first included)
# a class head that classifies fewer of the real test images than this is no judge (a flow's class
# Gaussians: 33% on shapes); the check is then off unless a request asks for it
MIN_HEAD_ACCURACY = 0.95
# and it is on by default only where it measurably helps: each draw costs an encoder pass, which buys nothing
# on the bundled GAN's prior (GAN-test 97.3% -> 97.0%, 99.7% of draws accepted)
MIN_GAIN = 0.01

# (latents (k, D), labels (k,)) asked for; (images (k, 3, H, W) float32, logits (k, C)) sent back
Ask = tuple[np.ndarray, np.ndarray]
Draw = Callable[[np.ndarray, int], np.ndarray]  # (rows (k,), round) -> latents (k, D) for those rows


@dataclass
class Checked:
    """Result of a label check of N samples."""

    latents: np.ndarray  # float32 (N, D): the kept draw of each row
    images: np.ndarray  # float32 (N, 3, H, W) in [-1, 1]: their decoded images
    confidence: np.ndarray  # float32 (N,): the class head's probability of each row's label
    draws: int  # candidates decoded in all (>= N)
    passed: int  # rows whose kept draw reached the threshold


def recommend(metrics: dict, source: str) -> float:
    """The default threshold evaluation records for one sample source (`metrics.class_check_defaults[source]`):
    DEFAULT_THRESHOLD when the model's class head classifies at least MIN_HEAD_ACCURACY of the real test images
    and the check raises class fidelity on that source by at least MIN_GAIN, else 0 (off). Fidelity is the primary
    judge's (`metrics.judged`) where evaluation measured it, else the probe's GAN-test (older manifests)."""
    accuracy = metrics.get("encoder_accuracy")
    if not isinstance(accuracy, (int, float)) or accuracy < MIN_HEAD_ACCURACY:
        return 0.0
    judged = ((metrics.get("judged") or {}).get("sources") or {}).get(source) or {}
    if (judged.get("class_accuracy_checked") or {}).get("mean") is not None:  # the primary judge decides
        before, after = judged["class_accuracy"]["mean"], judged["class_accuracy_checked"]["mean"]
        return DEFAULT_THRESHOLD if after - before >= MIN_GAIN else 0.0
    scores = (metrics.get("gan_test") or {}).get(source) or {}
    checked = scores.get("class_check") or {}
    if "mean" not in checked:
        return 0.0
    return DEFAULT_THRESHOLD if checked["mean"] - scores["mean"] >= MIN_GAIN else 0.0


def recommend_per_source(metrics: dict) -> dict[str, float]:
    """`recommend` for every sample source evaluation scored with the check ({source: threshold}): one
    threshold per source, because the check helps where a source's samples fall between the classes (the
    bundled GAN's latent GMM: 78% -> 96%) and only costs where they do not (its prior: 97% either way)."""
    return {src: recommend(metrics, src) for src, scores in sorted((metrics.get("gan_test") or {}).items())
            if isinstance(scores, dict) and "class_check" in scores}


def default_thresholds(manifest: dict, default_source: str) -> dict[str, float]:
    """{sample source: the threshold a request for it gets when it leaves the check unset} as evaluation
    recommended (`metrics.class_check_defaults`); a manifest evaluated before there was one per source has only
    `metrics.class_check_default`, which was chosen on `default_source` (so the other sources are off).
    Empty for a model that was not evaluated (off everywhere)."""
    metrics = manifest.get("metrics") or {}
    per_source = metrics.get("class_check_defaults")
    if not isinstance(per_source, dict):
        one = metrics.get("class_check_default")
        per_source = {default_source: one} if one is not None else {}
    return {str(src): _threshold(v) for src, v in per_source.items()}


def _threshold(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and 0.0 < value < 1.0 else 0.0


def requested_threshold(value: float, where: str = "class_check") -> float:
    """A threshold as requests and specs give it, checked: 0 = the model's default (kept as 0), any negative
    value = off (-1), else a probability below 1. The one check of SampleRequest, specs and the client."""
    value = float(value)
    if not math.isfinite(value) or value >= 1.0:
        raise ValidationError(f"{where}: {value} must be below 1 (a probability; 0 = the model's default, "
                              "< 0 = off)")
    return -1.0 if value < 0 else value


def label_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """softmax(logits (N, C))[i, labels[i]] -> float32 (N,), computed stably in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=1, keepdims=True)
    return p[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)].astype(np.float32)


def check_loop(draw: Draw, labels: np.ndarray, threshold: float,
               rounds: int = DEFAULT_ROUNDS) -> Generator[Ask, tuple[np.ndarray, np.ndarray], Checked]:
    """Yields (latents, labels) to decode and classify; is sent (images, logits) for them; returns Checked.

    Round r draws `draw(rows, r)` for the rows still below `threshold` (round 0: every row). Deterministic
    when `draw` is: which rows are redrawn depends only on the model's outputs."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    best = np.full((n,), -1.0, dtype=np.float32)
    latents: np.ndarray | None = None
    images: np.ndarray | None = None
    rows = np.arange(n)
    draws = 0
    for r in range(rounds):
        if r and not len(rows):
            break
        z = np.asarray(draw(rows, r), dtype=np.float32)  # (k, D)
        x, logits = yield z, labels[rows]
        x = np.asarray(x, dtype=np.float32)  # (k, 3, H, W)
        draws += len(rows)
        if latents is None:
            latents, images = z.copy(), x.copy()
        conf = label_probability(logits, labels[rows])  # (k,)
        better = conf > best[rows]
        keep = rows[better]
        latents[keep], images[keep], best[keep] = z[better], x[better], conf[better]
        rows = rows[best[rows] < threshold]
    assert latents is not None and images is not None
    return Checked(latents, images, best, draws, int((best >= threshold).sum()))


def _step(loop: Generator[Ask, Any, Checked], value: Any) -> tuple[Ask | None, Checked | None]:
    """Advance `check_loop` (value None: start it) -> (the next request, None) or (None, the result). The
    result comes back as a value because StopIteration cannot cross an executor future."""
    try:
        return (next(loop) if value is None else loop.send(value)), None
    except StopIteration as stop:
        return None, stop.value


def run_sync(loop: Generator[Ask, Any, Checked], decode: Callable[[np.ndarray, np.ndarray], np.ndarray],
             classify: Callable[[np.ndarray], np.ndarray]) -> Checked:
    """Drive `check_loop` with plain functions: decode(z, y) -> images, classify(images) -> logits."""
    ask, done = _step(loop, None)
    while done is None:
        x = decode(*ask)
        ask, done = _step(loop, (x, classify(x)))
    return done


async def run_async(loop: Generator[Ask, Any, Checked], decode: Callable[[np.ndarray, np.ndarray], Awaitable],
                    classify: Callable[[np.ndarray], Awaitable], offload: bool = False) -> Checked:
    """Drive `check_loop` with coroutine functions (the serving side: batched model calls). `offload` runs the
    loop's own steps (its `draw` calls) in the event loop's default executor, for draws too slow for the loop."""

    async def advance(value: Any) -> tuple[Ask | None, Checked | None]:
        if offload:
            return await asyncio.get_running_loop().run_in_executor(None, _step, loop, value)
        return _step(loop, value)

    ask, done = await advance(None)
    while done is None:
        x = await decode(*ask)
        ask, done = await advance((x, await classify(x)))
    return done
