"""Evaluation of exported models: what is served is what is measured (ONNX Runtime on the repository files).

Owns `evaluate_model` (a generative model scored with a probe on the test split), `evaluate_probe` (the
ruler itself), `evaluate_record` (load, evaluate, write `manifest["metrics"]`, print a table) and the metric
functions. numpy + onnxruntime only; no torch.

Metrics (all images compared in the networks' [-1,1] space unless said otherwise):
- GAN-test: the probe's class accuracy on class-conditional samples, per class and mean, for samples from
  the source prior (flow: at its `prior.sample_temperature`) and from the per-class latent GMM; and the
  stricter "recognisable" share: classified as requested AND inside the k-NN manifold of the real test images
  of that class in the probe's feature space (the per-sample test of precision), since a classifier must
  name some class even for a blank or a blob.
- GAN-test and coverage with the label check (models/class_check.py) at its default threshold, per source:
  samples whose label the model's own class head gives less than the threshold are redrawn, with the share
  of draws accepted; and `class_check_defaults`, per source the threshold Sample and Augment then use by
  default (0 = off), with `class_check_default`, the entry of the model's default source.
- Knob R²: prior samples are moved with `LatentSpace.set_factor` to target values spread evenly over the
  factor's [low, high] (shuffled), decoded, and the probe's factor head measures them; R² (1 - SS_res/SS_tot)
  and MAE of measured vs requested, in the factor's natural units.
- Coverage: precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) with k=5
  nearest neighbours, in the probe's feature space, generated vs the same number of real test images (the
  generated labels are the real images' labels, so the class mix is identical).
- Reconstruction PSNR (vae, gan): decoder(encoder(x).latent, true label) vs x, both mapped to [0,1];
  per-image PSNR = 10 log10(1 / MSE), averaged over images (MSE floored at 1e-10, i.e. capped at 100 dB).
- Flow: round-trip max abs error of decoder(encoder(x)) on test images, and test bits/dim:
      bpd = ( -(log N(z; mu_y, sigma_y) + logdet) / D + ln 127.5 ) / ln 2,  D = 3*H*W,
  where x_m = (x_u8 + u - 1/2)/127.5 - 1 with u ~ U[0,1)^D (uniform dequantization centred on the 8-bit
  grid, as the flow family trains; fixed seed) is the encoder's input and z, logdet are its outputs. A pixel
  bin of width 1 is 1/127.5 wide in model space, so log P(x_u8) >= E_u[log p_m(x_m)] - D ln 127.5 (Theis et
  al. 2016), hence the + ln 127.5 = -ln(bin width 2/255) per dim. Reported
  conditional on the true label y (`bits_per_dim`, the model is class-conditional) and marginal over a
  uniform class prior (`bits_per_dim_marginal`, log-sum-exp over classes).
- For every model: the probe's accuracy on the real test split (sanity check of the ruler) and the
  encoder's class-head accuracy.
"""
from __future__ import annotations

import datetime as _dt
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from latentserve.errors import NotFoundError, ValidationError
from latentserve.models import class_check
from latentserve.models.coverage import PRDC_K, inside_manifold, prdc
from latentserve.models.gates import apply_gates, factor_knobs
from latentserve.models.latent import default_sample_source, latents_under_labels
from latentserve.models.manifest import GENERATIVE, read_manifest, write_manifest
from latentserve.models.pixel_ar import ar_decode, ar_settings
from latentserve.models.repository import ModelRecord, Repository

DEFAULT_N_PER_CLASS = 100
LATENT_SPACE_FILE = "latent_space.npz"


# ----------------------------------------------------------------------------------------------- runtime
def decoder_fn(record: ModelRecord, threads: int | None = 1):
    """(latents (N,D), labels (N,)) -> images (N,3,H,W) in [-1,1] as Decode serves them: the `decoder` graph, or
    for an autoregressive decoder the pixel-by-pixel loop over `ar_context` / `ar_step` (models/pixel_ar.py)."""
    ar = ar_settings(record.manifest)
    if ar is None:
        decoder = OnnxGraph(record, "decoder", threads)
        return lambda z, y: decoder(latent=z.astype(np.float32), label=y.astype(np.int64))["image"]
    ctx, step = OnnxGraph(record, "ar_context", threads), OnnxGraph(record, "ar_step", threads)
    step.chunk = 1 << 30  # one session call per pixel for the whole batch

    def decode(z: np.ndarray, y: np.ndarray, chunk: int = 512) -> np.ndarray:
        parts = [ar_decode(lambda f: ctx(**f), lambda f: step(**f), z[i:i + chunk], y[i:i + chunk], ar["margin"],
                           ar["temperature"]) for i in range(0, len(z), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, *record.manifest["image_shape"]), np.float32)
    return decode


class OnnxGraph:
    """One exported graph on ONNX Runtime (CPU), run in chunks so memory stays bounded."""

    def __init__(self, record: ModelRecord, graph: str, threads: int | None = 1, chunk: int = 256) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.graph = graph
        self.path = record.graph_path(graph, "onnx")
        self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.chunk = chunk

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValidationError(f"graph {self.graph} needs inputs {self.input_names}; missing {missing}")
        n = len(inputs[self.input_names[0]])
        parts: dict[str, list[np.ndarray]] = {o: [] for o in self.output_names}
        for i in range(0, n, self.chunk):
            feed = {k: inputs[k][i:i + self.chunk] for k in self.input_names}
            for name, out in zip(self.output_names, self.session.run(self.output_names, feed)):
                parts[name].append(out)
        if n == 0:
            return {o: np.zeros((0,)) for o in self.output_names}
        return {o: np.concatenate(v) for o, v in parts.items()}


def _images(split) -> np.ndarray:
    from latentserve.models.data.base import to_model

    return to_model(split.images)  # (N,3,H,W) float32 in [-1,1]


# ----------------------------------------------------------------------------------------------- metric functions
def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """1 - SS_res/SS_tot (NaN when y has no spread)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if len(y) < 2 or ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum((y - pred) ** 2)) / ss_tot


def psnr01(x: np.ndarray, y: np.ndarray) -> float:
    """Mean per-image PSNR (dB) of images in [-1,1] mapped to [0,1]; MSE floored at 1e-10 (<= 100 dB)."""
    a = (np.clip(x, -1, 1).astype(np.float64) + 1) / 2
    b = (np.clip(y, -1, 1).astype(np.float64) + 1) / 2
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)  # (N,)
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def _log_normal(z: np.ndarray, mean: np.ndarray, logstd: np.ndarray) -> np.ndarray:
    """log N(z; mean, diag exp(logstd)^2) summed over D -> (N,). z (N,D), mean/logstd (N,D) or (D,)."""
    z, mean, logstd = z.astype(np.float64), mean.astype(np.float64), logstd.astype(np.float64)
    return np.sum(-0.5 * ((z - mean) * np.exp(-logstd)) ** 2 - logstd - 0.5 * math.log(2 * math.pi), axis=1)


def flow_bits_per_dim(latent: np.ndarray, logdet: np.ndarray, labels: np.ndarray, prior_mean: np.ndarray,
                      prior_logstd: np.ndarray) -> tuple[float, float]:
    """(conditional bpd, marginal bpd over a uniform class prior) for dequantized inputs; see module doc."""
    per_class = np.stack([_log_normal(latent, prior_mean[c], prior_logstd[c]) for c in range(len(prior_mean))], 1)
    return flow_bits_per_dim_from_logits(per_class, logdet, labels, latent.shape[1])


def flow_bits_per_dim_from_logits(logits: np.ndarray, logdet: np.ndarray, labels: np.ndarray,
                                  dims: int) -> tuple[float, float]:
    """The same from the encoder's logits (N, C) and logdet (N,), logits_c + logdet = log p(x | c): the form a
    class-conditional map (one z per class) reports its likelihood in."""
    per_class = logits.astype(np.float64) + logdet.astype(np.float64)[:, None]  # (N, C) log p(x | c)
    cond = per_class[np.arange(len(labels)), labels]  # (N,)
    mx = per_class.max(1, keepdims=True)
    marg = (mx[:, 0] + np.log(np.exp(per_class - mx).sum(1))) - math.log(per_class.shape[1])  # (N,)

    def bpd(loglik: np.ndarray) -> float:
        return float(np.mean((-loglik / dims + math.log(127.5)) / math.log(2.0)))

    return bpd(cond), bpd(marg)


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


# ----------------------------------------------------------------------------------------------- evaluation
def _test_split(data):
    return data.test if hasattr(data, "test") else data


def _check_probe(record: ModelRecord, probe: ModelRecord) -> None:
    if probe.family != "probe":
        raise ValidationError(f"{probe.name} v{probe.version} is a {probe.family} model, not a probe")
    if probe.class_names != record.class_names:
        raise ValidationError(f"probe {probe.name} classes {probe.class_names} differ from {record.name}'s {record.class_names}")
    if tuple(probe.image_shape) != tuple(record.image_shape):
        raise ValidationError(f"probe {probe.name} images {probe.image_shape} differ from {record.name}'s {record.image_shape}")


def probe_factor_names(probe_record: ModelRecord) -> list[str]:
    """Names of the probe's factor-head outputs in order (manifest "factor_names", else its data factors)."""
    names = probe_record.manifest.get("factor_names")
    return list(names) if names else [f["name"] for f in probe_record.factors]


def _probe_factor_r2(pred: np.ndarray, split, names: list[str], data_factors: list[str] | None = None) -> dict:
    """R² of the probe's factor head per factor on a real split (rows with known values)."""
    out = {}
    for k, name in enumerate(names):
        j = data_factors.index(name) if data_factors and name in data_factors else k
        if j >= split.factors.shape[1]:
            continue
        known = np.isfinite(split.factors[:, j])
        if known.sum() >= 2:
            out[name] = r2_score(split.factors[known, j], pred[known, k])
    return out


def _probe_outputs(probe: OnnxGraph, images: np.ndarray) -> dict[str, np.ndarray]:
    return probe(image=images.astype(np.float32))


def evaluate_probe(probe_record: ModelRecord, data, threads: int | None = 1) -> dict:
    """The probe's own test figures: class accuracy, and R²/MAE of each factor head (rows with known values)."""
    split = _test_split(data)
    if len(split) == 0:
        raise ValidationError("the test split is empty")
    t0 = time.time()
    out = _probe_outputs(OnnxGraph(probe_record, "probe", threads), _images(split))
    acc = float((out["logits"].argmax(1) == split.labels).mean())
    per_class = {c: float((out["logits"].argmax(1)[split.labels == i] == i).mean()) if np.any(split.labels == i) else None
                 for i, c in enumerate(probe_record.class_names)}
    factors = {}
    data_factors = [f["name"] for f in probe_record.manifest["training"]["data"].get("factors", [])]
    for k, name in enumerate(probe_factor_names(probe_record)):
        j = data_factors.index(name) if name in data_factors else k
        if j >= split.factors.shape[1]:
            continue
        known = np.isfinite(split.factors[:, j])
        if known.sum() < 2:
            continue
        y, pred = split.factors[known, j], out["factors"][known, k]
        factors[name] = {"r2": r2_score(y, pred), "mae": float(np.mean(np.abs(y - pred))), "n": int(known.sum())}
    return {"test_accuracy": acc, "per_class_accuracy": per_class, "factors": factors, "n_test": len(split),
            "seconds": round(time.time() - t0, 3)}


def _balanced_labels(n_classes: int, n_per_class: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class)  # (C*n,)


def _latent_space(record: ModelRecord):
    from latentserve.models.latent import LatentSpace

    if record.has_latent_space:
        return LatentSpace.load(record.file(LATENT_SPACE_FILE))
    if record.manifest["prior"]["type"] == "standard_normal":  # exported without a latent fit: prior only
        return LatentSpace(prior_type="standard_normal", latent_dim=record.latent_dim, n_classes=len(record.class_names))
    raise NotFoundError(f"{record.name} v{record.version} has a class_gaussian prior but no latent_space.npz")


def _draw_fns(space, temperature: float) -> dict:
    """source -> draw(labels (N,), rng) -> latents (N, D): the prior at the model's sampling temperature, and
    the latent GMM when the model has one."""
    fns = {"prior": lambda y, g: space.sample_prior(y, g, temperature=temperature)}
    if space.gmm_weights is not None:
        fns["latent_gmm"] = lambda y, g: space.sample_gmm(y, g)
    return fns


def _gan_test(probe: "OnnxGraph", real_probe: dict, split, images: np.ndarray, labels: np.ndarray,
              classes: list[str]) -> dict:
    """GAN-test of generated images (N, 3, H, W) requested with `labels`: the probe's class accuracy per class
    and its "recognisable" share: classified as requested AND inside the probe-feature manifold of real images
    of that class. The classifier alone must say some class for any input, and a blank or blob image can land
    on the requested one (measured: a VAE whose triangle samples were near-black scored 100%)."""
    out = _probe_outputs(probe, images)
    pred = out["logits"].argmax(1)
    per_class = {c: float((pred[labels == i] == i).mean()) for i, c in enumerate(classes)}
    recog = {}
    for i, c in enumerate(classes):
        real_c = real_probe["features"][split.labels == i]
        rows = labels == i
        ok = pred[rows] == i
        recog[c] = (float((ok & inside_manifold(real_c, out["features"][rows], PRDC_K)).mean())
                    if len(real_c) > PRDC_K else None)  # None: too few real images of the class to tell
    known = [v for v in recog.values() if v is not None]
    return {"mean": float(np.mean(list(per_class.values()))), "per_class": per_class,
            "recognisable": {"mean": float(np.mean(known)) if known else None, "per_class": recog}}


def evaluate_model(record: ModelRecord, probe_record: ModelRecord, data, n_per_class: int = DEFAULT_N_PER_CLASS,
                   seed: int = 0, threads: int | None = 1) -> dict:
    """All metrics of one generative model (see the module doc) -> JSON-able dict (NaN -> None)."""
    if record.family not in GENERATIVE:
        raise ValidationError(f"{record.name} is a {record.family} model; evaluate it with evaluate_probe")
    if not isinstance(n_per_class, int) or isinstance(n_per_class, bool) or not 2 <= n_per_class <= 100_000:
        raise ValidationError(f"n_per_class must be an int in 2..100000, got {n_per_class!r}")
    _check_probe(record, probe_record)
    split = _test_split(data)
    if len(split) <= PRDC_K:
        raise ValidationError(f"the test split has {len(split)} images; evaluation needs more than {PRDC_K}")
    t0 = time.time()
    rng = np.random.default_rng(seed)
    classes = record.class_names
    n_classes = len(classes)
    space = _latent_space(record)
    temperature = float(record.manifest["prior"].get("sample_temperature", 1.0))
    encoder = OnnxGraph(record, "encoder", threads)
    decode = decoder_fn(record, threads)
    probe = OnnxGraph(probe_record, "probe", threads)

    metrics: dict[str, Any] = {
        "evaluated": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "probe": {"name": probe_record.name, "version": probe_record.version},
        "n_per_class": n_per_class, "seed": seed, "n_test": len(split),
    }
    real = _images(split)  # (N,3,H,W)
    real_probe = _probe_outputs(probe, real)
    metrics["probe"]["test_accuracy"] = float((real_probe["logits"].argmax(1) == split.labels).mean())

    # Samples per source: balanced labels for GAN-test.
    labels = _balanced_labels(n_classes, n_per_class)
    sources = {src: (lambda y, f=f: f(y, rng)) for src, f in _draw_fns(space, temperature).items()}
    metrics["gan_test"], metrics["coverage"] = {}, {}
    # Coverage: a real subset (same count as generated), its labels drive generation.
    n_cov = min(len(split), n_per_class * n_classes)
    cov_idx = np.sort(rng.choice(len(split), size=n_cov, replace=False))
    real_feat = real_probe["features"][cov_idx]
    for src, sample in sources.items():
        metrics["gan_test"][src] = _gan_test(probe, real_probe, split, decode(sample(labels), labels), labels, classes)
        y_cov = split.labels[cov_idx].astype(np.int64)
        fake_feat = _probe_outputs(probe, decode(sample(y_cov), y_cov))["features"]
        metrics["coverage"][src] = {**prdc(real_feat, fake_feat, PRDC_K), "n": int(n_cov), "k": PRDC_K}
    metrics["gan_test"]["prior"]["temperature"] = temperature

    # Knob R²: requested vs measured factor values, for knobs applied to samples of every source (the top-level
    # r2/mae are the prior's; a model whose prior samples fall off the data, e.g. a VAE's prior hole, is better
    # steered from its latent GMM, and users pick the source per request). One generator per source, so adding
    # a source does not change another's figures.
    probe_factors = probe_factor_names(probe_record)
    probe_r2 = _probe_factor_r2(real_probe["factors"], split, probe_factors, [f["name"] for f in record.factors])
    knob_sources = {src: (rng if src == "prior" else np.random.default_rng(seed + 2), f)
                    for src, f in _draw_fns(space, temperature).items()}
    metrics["knobs"] = {}
    for f in record.factors:
        name = f["name"]
        if name not in space.knobs or name not in probe_factors:
            continue
        k = probe_factors.index(name)
        y = labels
        by_source = {}
        for src, (gen, sample) in knob_sources.items():
            target = gen.permutation(np.linspace(f["low"], f["high"], len(y))).astype(np.float32)  # (n,)
            z = space.set_factor(sample(y, gen), name, target, y)
            measured = _probe_outputs(probe, decode(z, y))["factors"][:, k]
            by_source[src] = {"r2": r2_score(target, measured), "mae": float(np.mean(np.abs(target - measured)))}
        # probe_r2: how well the ruler itself reads this factor on real test images (a knob R² is only as
        # meaningful as this; e.g. a rotation factor with class-dependent symmetry reads poorly).
        metrics["knobs"][name] = {**by_source["prior"], "by_source": by_source, "n": int(len(y)),
                                  "unit": f.get("unit", ""), "probe_r2": probe_r2.get(name)}

    # Encoder figures on real test images.
    enc = encoder(image=real)
    metrics["encoder_accuracy"] = float((enc["logits"].argmax(1) == split.labels).mean())
    # The label check Sample applies (models/class_check.py), at its default threshold, for every source, with
    # its own generator so the unchecked figures above stay as they were; with encoder_accuracy above, these
    # decide, per source, whether the check is on by default (`class_check.recommend_per_source`).
    threshold = class_check.DEFAULT_THRESHOLD
    classify = lambda x: encoder(image=x.astype(np.float32))["logits"]  # noqa: E731
    checked_images = {}  # source -> checked samples requested as `labels`, judged again below
    for i, (src, draw_fn) in enumerate(sorted(_draw_fns(space, temperature).items())):
        gen = np.random.default_rng(seed + 3 + i)

        def checked(y: np.ndarray) -> class_check.Checked:
            loop = class_check.check_loop(lambda rows, r: draw_fn(y[rows], gen), y, threshold)
            return class_check.run_sync(loop, decode, classify)

        c = checked(labels)
        checked_images[src] = c.images
        metrics["gan_test"][src]["class_check"] = {
            **_gan_test(probe, real_probe, split, c.images, labels, classes), "threshold": threshold,
            "accepted": len(labels) / c.draws, "passed": c.passed / len(labels)}
        # and whether it costs diversity: the same coverage figures as above, of checked samples
        fake_feat = _probe_outputs(probe, checked(split.labels[cov_idx].astype(np.int64)).images)["features"]
        metrics["coverage"][src]["class_check"] = prdc(real_feat, fake_feat, PRDC_K)
    # the primary figures, by a judge no generator was trained against; they also decide the check's defaults
    metrics["judged"] = _judged(record, data, space, temperature, decode, checked_images, n_per_class, seed)
    # what Sample and Augment use by default, per source (ModelInfo.default_class_checks)
    metrics["class_check_defaults"] = class_check.recommend_per_source(metrics)
    metrics["class_check_default"] = metrics["class_check_defaults"].get(
        default_sample_source(record.family, space.gmm_weights is not None, space.gmm_kind), 0.0)
    recon = decode(latents_under_labels(enc, split.labels), split.labels)
    if record.family == "flow":
        roundtrip = float(np.max(np.abs(recon.astype(np.float64) - real)))
        flow: dict[str, Any] = {"roundtrip_max_abs": roundtrip, "roundtrip_psnr_db": psnr01(recon, real)}
        if space.prior_mean is not None:
            u = np.random.default_rng(seed + 1).random(real.shape, dtype=np.float32)  # dequantization noise
            x_deq = ((split.images.transpose(0, 3, 1, 2).astype(np.float32) + u - 0.5) / 127.5 - 1.0).astype(np.float32)
            e = encoder(image=x_deq)
            if "class_latents" in e:  # a class-conditional map: z differs per class, logits carry log p(x | c)
                cond, marg = flow_bits_per_dim_from_logits(e["logits"], e["logdet"], split.labels.astype(np.int64),
                                                           e["latent"].shape[1])
            else:
                cond, marg = flow_bits_per_dim(e["latent"], e["logdet"], split.labels.astype(np.int64),
                                               space.prior_mean, space.prior_logstd)
            flow.update(bits_per_dim=cond, bits_per_dim_marginal=marg)
        metrics["flow"] = flow
    else:
        metrics["reconstruction"] = {"psnr_db": psnr01(recon, real), "n": len(split)}
    metrics["seconds"] = round(time.time() - t0, 3)
    return _nan_to_none(metrics)


def _judged(record: ModelRecord, data, space, temperature: float, decode, checked_images: dict,
            n_per_class: int, seed: int) -> dict:
    """The primary figures: the model's samples scored by a judge it was never trained against
    (models/judges/scoring.py), per source, with and without the label check (`checked_images`: the checked
    samples the probe scored, per source), and GAN-train."""
    from latentserve.models.judges.scoring import Judge, judged_metrics

    return judged_metrics(
        data=data, judge=Judge(data, seed=seed), factor_specs=list(record.factors),
        draws=_draw_fns(space, temperature), decode=decode, space=space,
        default_source=default_sample_source(record.family, space.gmm_weights is not None, space.gmm_kind),
        checked=checked_images, n_per_class=n_per_class, seed=seed)


# ----------------------------------------------------------------------------------------------- records
def write_metrics(record: ModelRecord, metrics: dict) -> Path:
    """Rewrite only manifest["metrics"] of a version (the listed files, hence their checksums, are untouched)."""
    manifest = read_manifest(record.path)
    manifest["metrics"] = _nan_to_none(metrics)
    path = write_manifest(record.path, manifest)
    record.manifest = manifest
    return path


def load_test_data(record: ModelRecord):
    """The dataset a model was trained on (rebuilt from the manifest's training.data) — its test split is used."""
    from latentserve.models.data import load_dataset

    meta = record.manifest["training"]["data"]
    return load_dataset(meta["name"], **dict(meta.get("config", {})))


def evaluate_record(repository: Repository | str | Path | None, name: str, version: int | None = None,
                    probe: str | None = None, probe_version: int | None = None,
                    n_per_class: int = DEFAULT_N_PER_CLASS, seed: int = 0, data=None, write: bool = True,
                    threads: int | None = 1, verbose: bool = True) -> dict:
    """Load `name` (verified), evaluate it (a probe on its own test figures; a generative model with its probe,
    `probe` overriding manifest["probe"]), write manifest["metrics"] unless write=False, print a table."""
    repo = repository if isinstance(repository, Repository) else Repository(repository)
    record = repo.load(name, version)
    data = data if data is not None else load_test_data(record)
    if record.family == "probe":
        metrics = evaluate_probe(record, data, threads)
        metrics["evaluated"] = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    else:
        probe_name = probe or record.manifest.get("probe")
        if not probe_name:
            raise ValidationError(f"{record.name} names no probe; pass one (--probe NAME)")
        probe_record = repo.load(probe_name, probe_version)
        metrics = evaluate_model(record, probe_record, data, n_per_class=n_per_class, seed=seed, threads=threads)
    metrics = apply_gates(metrics, record.family, factor_knobs(record.manifest))
    if write:
        write_metrics(record, metrics)
    if verbose:
        print(format_table(record, metrics))
    return _nan_to_none(metrics)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def format_table(record: ModelRecord, metrics: dict) -> str:
    """A two-column text table of the headline figures (per-class details stay in the manifest)."""
    rows: list[tuple[str, str]] = []
    if record.family == "probe":
        rows.append(("test accuracy", _fmt(metrics.get("test_accuracy"))))
        for f, m in metrics.get("factors", {}).items():
            rows.append((f"factor {f} R2 / MAE", f"{_fmt(m['r2'])} / {_fmt(m['mae'])}"))
    else:
        rows += _judged_rows(metrics.get("judged") or {})
        p = metrics.get("probe", {})
        rows.append((f"second opinion: probe {p.get('name')} v{p.get('version')} (a CNN; test accuracy)",
                     _fmt(p.get("test_accuracy"))))
        for src, m in metrics.get("gan_test", {}).items():
            rows.append((f"GAN-test accuracy by the probe ({src})", _fmt(m["mean"])))
            if "recognisable" in m:
                rows.append((f"  recognisable: right class + on the real manifold ({src})",
                             _fmt(m["recognisable"]["mean"])))
            if "class_check" in m:
                c = m["class_check"]
                rows.append((f"  with the label check at {c['threshold']:g} ({src}; recognisable, draws accepted)",
                             f"{_fmt(c['mean'])} ({_fmt(c['recognisable']['mean'])}, {_fmt(c['accepted'])})"))
        for src, m in metrics.get("coverage", {}).items():
            for label, fig in ((src, m), (f"{src}, label check", m.get("class_check"))):
                if fig:
                    rows.append((f"P / R / D / C ({label}, k={m['k']}, n={m['n']})",
                                 " / ".join(_fmt(fig[x]) for x in ("precision", "recall", "density", "coverage"))))
        for f, m in metrics.get("knobs", {}).items():
            for src, fig in m.get("by_source", {"prior": m}).items():
                rows.append((f"knob {f} R2 / MAE ({src}; probe's own R2)",
                             f"{_fmt(fig['r2'])} / {_fmt(fig['mae'])} ({_fmt(m.get('probe_r2'))})"))
        rows.append(("encoder class accuracy", _fmt(metrics.get("encoder_accuracy"))))
        for src, threshold in (metrics.get("class_check_defaults") or {}).items():
            rows.append((f"label check by default, {src} (threshold; 0 = off)", _fmt(threshold)))
        if "reconstruction" in metrics:
            rows.append(("reconstruction PSNR (dB)", _fmt(metrics["reconstruction"]["psnr_db"])))
        if "flow" in metrics:
            fl = metrics["flow"]
            rows.append(("round-trip max abs error", f"{fl['roundtrip_max_abs']:.2e}"))
            if "bits_per_dim" in fl:
                rows.append(("test bits/dim (cond / marginal)",
                             f"{_fmt(fl['bits_per_dim'])} / {_fmt(fl['bits_per_dim_marginal'])}"))
    rows.append(("seconds", _fmt(metrics.get("seconds"))))
    width = max(len(r[0]) for r in rows)
    head = f"{record.name} v{record.version} ({record.family})"
    return "\n".join([head, "-" * max(len(head), width + 12)] + [f"{k:<{width}}  {v}" for k, v in rows])


def _judged_rows(judged: dict) -> list[tuple[str, str]]:
    """The primary figures of `metrics["judged"]` as table rows (class fidelity per class, knobs, GAN-train)."""
    if not judged:
        return []
    j = judged.get("judge")
    rows = [(f"judge: {j} (primary; default source {judged.get('default_source')})",
             f"real test images {_fmt((judged.get('real') or {}).get('class_accuracy', {}).get('mean'))}")]
    for src, m in (judged.get("sources") or {}).items():
        per = m["class_accuracy"]["per_class"]
        rows.append((f"class fidelity by the {j} judge ({src}; {' / '.join(per)})",
                     f"{_fmt(m['class_accuracy']['mean'])} ({' / '.join(_fmt(v) for v in per.values())})"))
        if m.get("class_accuracy_checked"):
            rows.append((f"  with the label check ({src})", _fmt(m["class_accuracy_checked"]["mean"])))
        if m.get("novelty") is not None:
            rows.append((f"  novelty: distance to the nearest training image / real test images' ({src})",
                         _fmt(m["novelty"])))
        if m.get("factor_coverage"):
            fc = m["factor_coverage"]
            rows.append((f"  P / R / D / C in judged factor space ({src})",
                         " / ".join(_fmt(fc[x]) for x in ("precision", "recall", "density", "coverage"))))
        for k, r2 in (m.get("knob_r2") or {}).items():
            kept = (m.get("knob_judged_share") or {}).get(k)
            leak = ((m.get("knob_leakage") or {}).get(k) or {}).get("max")
            rows.append((f"  knob {k}: judged R2 / kept class / leakage ({src})",
                         f"{_fmt(r2)} / {_fmt(kept)} / {_fmt(leak)}"))
    gt = judged.get("gan_train")
    if gt:
        rows.append((f"GAN-train: real test accuracy of a classifier trained on {gt['n_synthetic']} "
                     f"{gt['source']} samples", _fmt(gt["accuracy"])))
    return rows


def sheet_record(repository: Repository | str | Path | None, name: str, path: str | Path,
                 version: int | None = None, data=None, seed: int = 0) -> Path:
    """Write the picture of what `name` serves (models/judges/sheet.py): samples of its default source, framed by
    the primary judge's verdict, beside real test images, per class -> PNG at `path`."""
    from latentserve.models.judges.scoring import Judge
    from latentserve.models.judges.sheet import model_sheet

    repo = repository if isinstance(repository, Repository) else Repository(repository)
    record = repo.load(name, version)
    if record.family not in GENERATIVE:
        raise ValidationError(f"{record.name} is a {record.family} model; a sheet shows a generative model's samples")
    data = data if data is not None else load_test_data(record)
    space = _latent_space(record)
    source = default_sample_source(record.family, space.gmm_weights is not None, space.gmm_kind)
    draw = _draw_fns(space, float(record.manifest["prior"].get("sample_temperature", 1.0)))[source]
    decode = decoder_fn(record)
    return model_sheet(path, draw, decode, Judge(data, seed=seed), data, seed=seed)
