"""A generative model's samples scored by a judge no generator was trained against -> `metrics["judged"]`.

The judge is geometric for procedural data (models/judges/geometric.py) and a classifier trained only on
real images otherwise (models/judges/classifier.py). Per sample source (prior, latent GMM) it measures:
- class fidelity: the share of samples requested as class c that the judge calls c (unjudgeable = wrong),
  without and with the label check;
- knob R²: samples moved to evenly spread target values of one factor, then measured by the judge (on
  samples judged in the requested class; rotation compared circularly within the class's period), and the
  leakage: how far the other factors moved, as a fraction of their range;
- coverage in the judge's own factor space: precision / recall / density / coverage of (class, factors) of
  samples vs real test images (geometric judge only);
- novelty: how far samples are from their nearest training image, relative to real test images (copies of
  the training set score near 0);
and once for the default source GAN-train: a classifier trained only on samples, tested on real images.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from latentserve.models.coverage import pairwise_distances, prdc
from latentserve.models.judges import classifier
from latentserve.models.judges.geometric import PERIOD, Judgement, factor_r2, judge_for

GAN_TRAIN_SAMPLES = 3000
NOVELTY_TRAIN = 5000  # training images searched for each sample's nearest one
Decode = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (latents (N,D), labels (N,)) -> images (N,3,H,W) in [-1,1]
Draw = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # (labels (N,), rng) -> latents (N,D)


def to_u8(images: np.ndarray) -> np.ndarray:
    """Network images float (N,3,H,W) in [-1,1] -> uint8 (N,H,W,3), as served."""
    x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255)
    return np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1)


def _accuracy(pred: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    per = {c: float((pred[labels == i] == i).mean()) for i, c in enumerate(classes) if np.any(labels == i)}
    return {"mean": float(np.mean(list(per.values()))) if per else None, "per_class": per}


class Judge:
    """What scoring needs of a judge: labels for uint8 images and, where it has them, measured factors."""

    def __init__(self, data, seed: int = 0) -> None:
        self.classes = list(data.class_names)
        self.geometric = judge_for(data.name, dict(data.config))
        self.name = "geometric" if self.geometric is not None else "real_classifier"
        self.factor_names: list[str] = []
        self._classify = None
        if self.geometric is None:
            if not classifier.torch_available():
                raise RuntimeError("the real-image classifier judge needs torch (the `train` extra)")
            self._classify = classifier.train_classifier(data.train.images, data.train.labels, data.meta(), seed=seed)
        self.doc = ("geometric: foreground fitted to each ideal shape at its best pose, factors measured classically "
                    "(no learned weights)" if self.geometric is not None else
                    "real_classifier: the probe CNN trained from scratch on the real training split only")

    def __call__(self, images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """-> judged labels int (N,) (-1 = no class), factors float (N,F) or None."""
        if self.geometric is not None:
            j: Judgement = self.geometric(images_u8)
            self.factor_names = list(j.factor_names)
            return j.labels, j.factors
        return self._classify(images_u8), None


def _prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    if len(real) <= k or len(fake) <= k:
        return {"precision": None, "recall": None, "density": None, "coverage": None}
    return prdc(real, fake, k)


def _factor_features(factors: np.ndarray, labels: np.ndarray, names: list[str], specs: dict, periods,
                     n_classes: int) -> np.ndarray:
    """Judged factors -> comparable features: each factor scaled to its range, rotation as a point on the
    circle of its class's period (so 0 and the period meet), the class one-hot scaled to dominate."""
    cols = []
    for j, name in enumerate(names):
        v = factors[:, j].astype(np.float64)
        if name == "rotation" and periods is not None:
            ang = 2 * np.pi * v / np.asarray(periods)[labels]
            cols += [0.5 * np.cos(ang), 0.5 * np.sin(ang)]
        else:
            lo, hi = specs[name]["low"], specs[name]["high"]
            cols.append((v - lo) / max(hi - lo, 1e-9))
    onehot = np.eye(n_classes)[labels] * 10.0  # every class's column, even one no accepted sample has
    return np.concatenate([np.stack(cols, 1), onehot], 1) if cols else onehot


def judged_metrics(*, data, judge: Judge, factor_specs: list[dict], draws: dict[str, Draw], decode: Decode,
                   space, default_source: str, checked: dict[str, np.ndarray] | None,
                   n_per_class: int, seed: int = 0, gan_train: bool = True) -> dict:
    """All judged figures of one model (see the module doc) -> JSON-able dict. `checked`: per source, samples
    (network images) drawn with the label check for the same labels, n_per_class per class in class order."""
    classes = judge.classes
    c = len(classes)
    split = data.test
    specs = {f["name"]: f for f in factor_specs}
    periods = [PERIOD[name] for name in classes] if all(name in PERIOD for name in classes) else None
    labels = np.repeat(np.arange(c, dtype=np.int64), n_per_class)
    real_pred, real_f = judge(split.images)
    train = data.train.images[:NOVELTY_TRAIN]
    test = split.images[:len(labels)]
    real_nearest = float(np.median(_nearest(test, train))) if len(train) and len(test) else 0.0
    out: dict = {"judge": judge.name, "judge_doc": judge.doc, "default_source": default_source,
                 "n_per_class": n_per_class, "real": {"class_accuracy": _accuracy(real_pred, split.labels, classes)},
                 "sources": {}}
    if real_f is not None:
        out["real"]["factor_r2"] = {
            name: factor_r2(name, real_f[:, j], split.factors[:, j], split.labels, classes)
            for j, name in enumerate(judge.factor_names)}
    for i, (src, draw) in enumerate(sorted(draws.items())):
        rng = np.random.default_rng([seed, 11, i])
        images = to_u8(decode(draw(labels, rng), labels))
        pred, fac = judge(images)
        entry: dict = {"class_accuracy": _accuracy(pred, labels, classes), "unjudgeable": float((pred < 0).mean()),
                       "novelty": _novelty(images, train, real_nearest)}
        if checked is not None and src in checked:
            cpred, _ = judge(to_u8(checked[src]))
            entry["class_accuracy_checked"] = _accuracy(cpred, labels, classes)
        if fac is not None:
            ok = pred == labels
            real_ok = real_pred == split.labels
            fr = _factor_features(real_f[real_ok], split.labels[real_ok], judge.factor_names, specs, periods,
                                  len(classes))
            ff = _factor_features(fac[ok], labels[ok], judge.factor_names, specs, periods, len(classes))
            entry["factor_coverage"] = _prdc(fr, ff)
            entry["knob_r2"], entry["knob_leakage"], entry["knob_judged_share"] = _knobs(
                judge, space, draw, decode, labels, specs, classes, np.random.default_rng([seed, 12, i]))
        out["sources"][src] = entry
    if gan_train and classifier.torch_available() and default_source in draws:
        n = GAN_TRAIN_SAMPLES // c
        y = np.repeat(np.arange(c, dtype=np.int64), n)
        syn = to_u8(decode(draws[default_source](y, np.random.default_rng([seed, 13])), y))
        out["gan_train"] = {**classifier.gan_train(syn, y, split.images, split.labels, classes, data.meta(), seed),
                            "source": default_source}
    return out



def _novelty(images: np.ndarray, train: np.ndarray, real_nearest: float) -> float | None:
    """Median distance of samples to their nearest training image over `real_nearest`, the same median for
    real test images: about 1 when samples are as new as fresh real data, near 0 for copies of the training
    set (memorisation)."""
    if len(train) == 0 or not real_nearest > 0:
        return None
    return float(np.median(_nearest(images, train)) / real_nearest)


def _nearest(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Pixel distance (N,) of each uint8 image in x to its nearest in ref."""
    return pairwise_distances(x.reshape(len(x), -1), ref.reshape(len(ref), -1)).min(1)


def _knobs(judge: Judge, space, draw: Draw, decode: Decode, labels: np.ndarray, specs: dict, classes: list[str],
           rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """Per factor knob of `space` that the judge measures: R² of measured vs requested, the leakage into the
    other factors (mean |change| / range, largest over them) and the share of moved samples judged in class."""
    names = judge.factor_names
    r2, leak, share = {}, {}, {}
    z0 = draw(labels, rng)
    _, base = judge(to_u8(decode(z0, labels)))
    for name in names:
        if name not in space.knobs or name not in specs:
            continue
        f = specs[name]
        if name == "rotation" and all(c in PERIOD for c in classes):  # inside each class's own period
            period = np.array([PERIOD[c] for c in classes])[labels]
            target = (rng.permutation(np.linspace(0.0, 1.0, len(labels), endpoint=False)) * period).astype(np.float32)
        else:
            target = rng.permutation(np.linspace(f["low"], f["high"], len(labels))).astype(np.float32)
        z = space.set_factor(z0, name, target, labels)
        pred, measured = judge(to_u8(decode(z, labels)))
        ok = (pred == labels) & np.isfinite(measured[:, names.index(name)])
        share[name] = float(ok.mean())
        j = names.index(name)
        r2[name] = factor_r2(name, measured[ok, j], target[ok], labels[ok], classes) if ok.sum() > 2 else None
        moved = {}
        for k, other in enumerate(names):
            if other == name or other == "rotation" or other not in specs:
                continue
            both = ok & np.isfinite(base[:, k])
            span = max(specs[other]["high"] - specs[other]["low"], 1e-9)
            moved[other] = float(np.mean(np.abs(measured[both, k] - base[both, k])) / span) if both.any() else None
        known = [v for v in moved.values() if v is not None]
        leak[name] = {"max": max(known) if known else None, "by_factor": moved}
    return r2, leak, share
