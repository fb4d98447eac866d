"""Classifiers trained from scratch inside an evaluation: GAN-train, and the judge of data without geometry.

- `gan_train`: a fresh probe-architecture CNN trained ONLY on a model's samples, tested on real test images
  (Shmelkov et al. 2018). What an augmentation user gets from the synthetic data alone.
- `real_classifier_judge`: for data sets without a geometric judge (digits, folder), the judge is the same
  architecture trained ONLY on the real training split, never seen by any generator's training.

Both are seeded and deterministic on one thread; torch is imported lazily (evaluation without the `train`
extra records them as not measured).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from latentserve.models.data.base import to_model

GAN_TRAIN_STEPS = 1200  # enough for the probe CNN to reach >= 99% on 3000 real shapes images
BATCH = 64


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def train_classifier(images: np.ndarray, labels: np.ndarray, data_meta: dict, steps: int | None = None,
                     seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Train the probe CNN on uint8 (N,H,W,3) images with int labels (N,) (class head only) -> a function
    uint8 (M,H,W,3) -> predicted labels int64 (M,)."""
    posteriors = train_posterior_classifier(images, labels, data_meta, steps, seed)
    return lambda x: posteriors(x).argmax(1).astype(np.int64) if len(x) else np.zeros(0, np.int64)


def train_posterior_classifier(images: np.ndarray, labels: np.ndarray, data_meta: dict, steps: int | None = None,
                               seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """As `train_classifier`, but the function gives class posteriors float64 (M, C) (softmax of the logits)."""
    import torch

    from latentserve.models.families.probe import ProbeFamily
    from latentserve.models.nets.probe import ProbeConfig

    steps = GAN_TRAIN_STEPS if steps is None else int(steps)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        rng = np.random.default_rng(seed)
        family = ProbeFamily(ProbeConfig(lr_schedule_steps=steps, warmup_steps=min(100, steps // 10)), data_meta)
        k = len(data_meta.get("factors", []))
        for step in range(steps):
            rows = rng.integers(0, len(images), size=BATCH)
            f = torch.full((BATCH, k), float("nan"))  # factors unknown: the regressor head is masked out
            family.train_step(torch.from_numpy(to_model(images[rows])), torch.from_numpy(labels[rows].astype(np.int64)),
                              f, step)
        probe = family.modules()["probe"].eval()
    finally:
        torch.random.set_rng_state(state)

    n_classes = len(data_meta["class_names"])

    def predict(x: np.ndarray) -> np.ndarray:
        out = [np.zeros((0, n_classes))]
        with torch.no_grad():
            for i in range(0, len(x), 512):
                logits = probe(torch.from_numpy(to_model(x[i:i + 512])))[0]
                out.append(torch.softmax(logits.double(), dim=1).numpy())
        return np.concatenate(out)

    return predict


def gan_train(synthetic: np.ndarray, synthetic_labels: np.ndarray, real_test: np.ndarray, real_labels: np.ndarray,
              class_names: list[str], data_meta: dict, seed: int = 0) -> dict:
    """Accuracy on real test images of a classifier trained only on the synthetic images (per class, mean)."""
    predict = train_classifier(synthetic, synthetic_labels, data_meta, seed=seed)
    pred = predict(real_test)
    per_class = {c: float((pred[real_labels == i] == i).mean()) for i, c in enumerate(class_names)
                 if np.any(real_labels == i)}
    return {"accuracy": float((pred == real_labels).mean()), "per_class": per_class,
            "n_synthetic": int(len(synthetic)), "n_real_test": int(len(real_test))}
