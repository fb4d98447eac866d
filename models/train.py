"""The one training loop of every family (gan | vae | flow | probe): data order, checkpoints, resume, logs.

Owns `TrainConfig`, `train(cfg) -> run dir` and `load_checkpoint(path) -> (family, ckpt)`. A family
(models/families/*) owns its networks, optimisers and `train_step`; this loop owns everything around it:
seeded data order (a resumed run draws exactly the batches an uninterrupted one would), atomic
checkpoints (also on Ctrl-C / SIGTERM), a tqdm bar, `log.jsonl`, periodic `evaluate()` and PNG sample grids.

Run directory layout: checkpoint.pt, config.json, log.jsonl, samples/step_000500.png.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import latentserve
from latentserve.errors import IntegrityError, NotFoundError, ValidationError
from latentserve.models.data.base import Dataset, to_model, to_uint8
from latentserve.models.families import FAMILIES, get_family
from latentserve.models.families.base import Family
from latentserve.models.manifest import sha256_file

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
GRID_PER_CLASS = 8  # sample-grid columns: one row per class
FALLBACK_STEPS = 5000  # when neither the config nor the family (`default_steps`) says how long to train
_DATA_STREAM = 0x0DA7A  # random-stream id of the data order, independent of the model's torch RNG


@dataclass
class TrainConfig:
    """One training run. Everything here is saved in the checkpoint and checked on resume."""

    family: str  # gan | vae | flow | probe
    data: str = "shapes"  # dataset registry name: shapes | disks | digits | folder
    data_args: dict = field(default_factory=dict)  # kwargs of load_dataset (e.g. n_train, holdout); {} = defaults
    steps: int | None = None  # total optimisation steps; None = the family's recommended `default_steps`
    batch_size: int = 64  # images per step; 1..65536 and at most the number of training images
    seed: int = 0  # seeds torch, numpy, python and the data order. 0..2**32-1
    out: str | None = None  # run directory; None = runs/<data>-<family>
    ckpt_every: int = 500  # checkpoint every this many steps (and always at the end / on interrupt). >= 1
    eval_every: int | None = None  # print family.evaluate(test subset) every this many steps; None = ckpt_every
    grid_every: int | None = None  # write samples/step_XXXXXX.png every this many steps; None = ckpt_every
    threads: int | None = None  # torch intra-op threads; None = leave torch's default. 1..1024
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    family_args: dict = field(default_factory=dict)  # overrides of the family config's fields
    log_every: int = 50  # append mean losses over the last this-many steps to log.jsonl. >= 1
    eval_size: int = 1000  # test images used by the periodic evaluation (the first ones: fixed subset). >= 1
    # warm start (fine-tuning): a run directory or checkpoint of the same family whose module weights a fresh run
    # starts from wherever a parameter's name and shape match (warm_start); optimisers and the step start over.
    # Ignored when resuming this run's own checkpoint. None = fresh initialisation
    init_from: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.family not in FAMILIES:
            raise ValidationError(f"TrainConfig.family={self.family!r}; choose one of {', '.join(FAMILIES)}")
        if not isinstance(self.data, str) or not self.data:
            raise ValidationError(f"TrainConfig.data must be a dataset name, got {self.data!r}")
        for name in ("data_args", "family_args"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValidationError(f"TrainConfig.{name} must be a dict with string keys, got {value!r}")

        def check_int(name: str, lo: int, hi: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValidationError(f"TrainConfig.{name}={v!r} must be an int in [{lo}, {hi}]"
                                      + (" or None" if optional else ""))

        check_int("steps", 1, 10**9, optional=True)
        check_int("batch_size", 1, 65536)
        check_int("seed", 0, 2**32 - 1)
        check_int("ckpt_every", 1, 10**9)
        check_int("eval_every", 1, 10**9, optional=True)
        check_int("grid_every", 1, 10**9, optional=True)
        check_int("threads", 1, 1024, optional=True)
        check_int("log_every", 1, 10**9)
        check_int("eval_size", 1, 10**9)
        if self.out is not None and (not isinstance(self.out, (str, os.PathLike)) or not str(self.out)):
            raise ValidationError(f"TrainConfig.out must be a directory path, got {self.out!r}")
        if self.out is not None:
            self.out = str(self.out)
        if self.init_from is not None:
            if not isinstance(self.init_from, (str, os.PathLike)) or not str(self.init_from):
                raise ValidationError(f"TrainConfig.init_from must be a run directory or checkpoint path, "
                                      f"got {self.init_from!r}")
            self.init_from = str(self.init_from)
        dev = self.device
        if not isinstance(dev, str) or not (dev in ("auto", "cpu", "cuda")
                                            or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValidationError(f"TrainConfig.device={dev!r}; use auto, cpu, cuda or cuda:N")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{self.data}-{self.family}"


# -- helpers ---------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """auto -> cuda if available else cpu; an explicit cuda without a GPU is a ValidationError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValidationError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def build_family_config(family_cls: type, values: dict) -> Any:
    """family_cls.config_cls(**values), with unknown fields reported as a ValidationError."""
    config_cls = family_cls.config_cls
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValidationError(f"unknown {config_cls.__name__} field(s): {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
    try:
        return config_cls(**values)
    except TypeError as exc:  # e.g. a value of the wrong type that the config does not check itself
        raise ValidationError(f"{config_cls.__name__}: {exc}") from exc


def _plain(obj: Any) -> Any:
    """Plain Python containers/scalars only (numpy scalars -> Python, Path -> str), so checkpoints load
    with torch.load(weights_only=True) and configs compare equal after a round trip."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool):
        return obj
    for kind in (str, int, float):  # subclasses (e.g. torch's TorchVersion) are not weights_only-loadable
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _jsonable(obj: Any) -> Any:
    """Comparable JSON form (tuples -> lists, NaN kept as a string) for config checks and logs."""
    return json.loads(json.dumps(_plain(obj), default=str))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    """All global RNG states in plain types (numpy's array as a list) for a weights_only checkpoint."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextlib.contextmanager
def _side_effect_free(family: Family) -> Iterator[None]:
    """Evaluation / sampling must not change training: global RNG streams and every submodule's train/eval
    flag are restored afterwards, so a run with extra evaluations trains exactly like one without."""
    saved_rng = rng_state()
    flags = [(m, m.training) for module in family.modules().values() for m in module.modules()]
    for module in family.modules().values():
        module.eval()
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training
        set_rng_state(saved_rng)


class _Batches:
    """Seeded data order: epoch e is the permutation default_rng([seed, stream, e]) of the training set, cut
    into len // batch_size batches (the remainder of each epoch is dropped so every batch is full). Step s is
    therefore a pure function of (seed, s): resuming at any step draws the same batches."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, device: torch.device) -> None:
        self.split, self.batch_size, self.seed, self.device = dataset.train, batch_size, seed, device
        n = len(self.split)
        if batch_size > n:
            raise ValidationError(f"batch_size {batch_size} is larger than the training set ({n} images)")
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, _DATA_STREAM, epoch]).permutation(len(self.split))
            self._epoch = epoch
        idx = np.sort(self._perm[i * self.batch_size:(i + 1) * self.batch_size])  # sorted: faster gather
        x = torch.from_numpy(to_model(self.split.images[idx]))  # (B,3,H,W) float32 in [-1,1]
        y = torch.from_numpy(self.split.labels[idx].astype(np.int64))  # (B,)
        f = torch.from_numpy(self.split.factors[idx].astype(np.float32))  # (B,K), NaN = unknown
        return x.to(self.device), y.to(self.device), f.to(self.device)


class _StopRequest:
    """SIGINT / SIGTERM -> finish the current step, save a checkpoint, stop. A second signal stops at once
    (without saving; the previous checkpoint is intact). Only installable from the main thread."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after this step and saving a checkpoint "
              "(signal again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then os.replace: a crash at any point
    leaves either the old or the new checkpoint, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_grid(images: torch.Tensor, n_per_class: int, path: Path, pad: int = 2) -> None:
    """images (C*n, 3, H, W) in [-1,1], class-major -> PNG grid with one row per class."""
    from PIL import Image

    arr = to_uint8(images.detach().float().cpu().numpy())  # (C*n, H, W, 3)
    n, h, w, _ = arr.shape
    cols = n_per_class
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 32, np.uint8)  # dark grey gutters
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = arr[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _read_checkpoint(path: Path, device: torch.device | str) -> dict:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise NotFoundError(f"no checkpoint at {path}") from None
    except Exception as exc:  # truncated / foreign file
        raise IntegrityError(f"{path}: not a readable latentserve checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise IntegrityError(f"{path}: unsupported checkpoint format "
                             f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}")
    return ckpt


# Fields that define *what* is trained: a checkpoint of a run that differs in any of them is not resumable.
_IDENTITY = ("family", "data", "data_args", "batch_size", "seed")


def warm_start(family: Family, source: str | Path, device: torch.device | str = "cpu") -> tuple[str, str]:
    """Copy into `family`'s modules every tensor of another run's checkpoint (`source`: a run directory or
    checkpoint file of the same family) whose module, name and shape match; the rest keep their fresh values
    (e.g. a discriminator head the source run did not have). Returns a one-line summary naming what was kept
    fresh, and the source file's sha256 (logged, so the run records what it started from). A foreign family, or
    no tensor in common, is a ValidationError: a warm start that copies nothing is a mistake, not a fresh run."""
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    ckpt = _read_checkpoint(path, device)
    if ckpt.get("family") != family.name:
        raise ValidationError(f"init_from {source}: a {ckpt.get('family')!r} checkpoint cannot start a "
                              f"{family.name!r} run")
    copied, fresh = 0, []
    for name, module in family.modules().items():
        saved = ckpt["modules"].get(name, {})
        state = module.state_dict()
        for key, value in state.items():
            if key in saved and saved[key].shape == value.shape:
                value.copy_(saved[key])
                copied += 1
            else:
                fresh.append(f"{name}.{key}")
    if not copied:
        raise ValidationError(f"init_from {source}: no weight matches this run's modules")
    rest = f"; fresh: {', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}" if fresh else ""
    return f"warm start from {path} (step {ckpt['step']}): {copied} tensors copied{rest}", sha256_file(path)


def _check_resumable(ckpt: dict, cfg: TrainConfig, family_config: Any, path: Path) -> None:
    old = ckpt.get("train_config", {})
    diffs = [f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in _IDENTITY
             if _jsonable(old.get(k)) != _jsonable(getattr(cfg, k))]
    # compared with defaults filled in, so a field added to the config later does not orphan older runs
    saved = ckpt.get("family_config") or {}
    try:
        saved = asdict(type(family_config)(**dict(saved)))
    except (TypeError, ValidationError):
        pass  # an unknown or invalid saved field: compare as stored (and so report the difference)
    if _jsonable(saved) != _jsonable(asdict(family_config)):
        diffs.append("family config differs")
    if diffs:
        raise ValidationError(f"{path} belongs to a different run ({'; '.join(diffs)}); "
                              "use another --out, or --no-resume to start over")


def _log(fh, record: dict) -> None:
    fh.write(json.dumps(_jsonable(record)) + "\n")
    fh.flush()


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log records after the checkpoint's step (written by a run that was killed before saving)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a torn last line
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


# -- the loop --------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = True, progress: bool = True, dataset: Dataset | None = None) -> Path:
    """Train (or resume) one run; returns the run directory. `dataset` overrides load_dataset(cfg.data,
    **cfg.data_args) (tests, notebooks). Raises KeyboardInterrupt after saving when stopped by a signal."""
    from tqdm.auto import tqdm

    cfg.validate()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    family_cls = get_family(cfg.family)
    family_config = build_family_config(family_cls, cfg.family_args)
    steps = cfg.steps or int(getattr(family_cls, "default_steps", FALLBACK_STEPS))
    eval_every, grid_every = cfg.eval_every or cfg.ckpt_every, cfg.grid_every or cfg.ckpt_every
    run_dir = cfg.run_dir
    ckpt_path, log_path = run_dir / CHECKPOINT_NAME, run_dir / LOG_NAME
    say = tqdm.write if progress else print

    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = _read_checkpoint(ckpt_path, device)
        _check_resumable(ckpt, cfg, family_config, ckpt_path)
        if ckpt["step"] >= steps:
            say(f"{run_dir}: already trained to step {ckpt['step']} (>= {steps} requested); nothing to do")
            return run_dir

    if dataset is None:
        from latentserve.models.data import load_dataset

        dataset = load_dataset(cfg.data, **cfg.data_args)
    data_meta = _plain(dataset.meta())

    seed_everything(cfg.seed)
    family = family_cls(family_config, data_meta, device)
    start_step, elapsed_before, last_losses, init_sha = 0, 0.0, {}, None
    if ckpt is not None:
        for name, module in family.modules().items():
            module.load_state_dict(ckpt["modules"][name])
        for name, opt in family.optimizers().items():
            opt.load_state_dict(ckpt["optimizers"][name])
        set_rng_state(ckpt["rng"])
        start_step, elapsed_before = int(ckpt["step"]), float(ckpt.get("elapsed_seconds", 0.0))
        last_losses = dict(ckpt.get("last_losses", {}))
        _trim_log(log_path, start_step)
    elif cfg.init_from is not None:
        summary, init_sha = warm_start(family, cfg.init_from, device)
        say(summary)
    run_dir.mkdir(parents=True, exist_ok=True)
    if ckpt is None:  # a fresh start (or --no-resume): no log or sample grids of an earlier run
        log_path.unlink(missing_ok=True)
        for png in (run_dir / "samples").glob("step_*.png"):
            png.unlink()
    train_config = _plain({**asdict(cfg), "steps": steps})
    (run_dir / "config.json").write_text(json.dumps(
        {"train_config": train_config, "family_config": _plain(asdict(family_config)), "data_meta": data_meta},
        indent=2, default=str) + "\n")

    batches = _Batches(dataset, cfg.batch_size, cfg.seed, device)
    n_eval = min(cfg.eval_size, len(dataset.test))
    test = dataset.test
    eval_x = torch.from_numpy(to_model(test.images[:n_eval]))  # (E,3,H,W)
    eval_y = torch.from_numpy(test.labels[:n_eval].astype(np.int64))
    eval_f = torch.from_numpy(test.factors[:n_eval].astype(np.float32))

    t_start = time.perf_counter()
    step = start_step

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

    def save() -> None:
        _atomic_save({
            "format": CHECKPOINT_FORMAT,
            "family": cfg.family,
            "family_config": _plain(asdict(family_config)),
            "train_config": train_config,
            "data_meta": data_meta,
            "step": step,
            "modules": {name: m.state_dict() for name, m in family.modules().items()},
            "optimizers": {name: o.state_dict() for name, o in family.optimizers().items()},
            "rng": rng_state(),
            "elapsed_seconds": elapsed(),
            "last_losses": _plain(last_losses),
            "versions": {"torch": str(torch.__version__), "latentserve": str(latentserve.__version__)},
        }, ckpt_path)

    def evaluate() -> None:
        if n_eval == 0:
            return
        with _side_effect_free(family):
            figures = family.evaluate(eval_x.to(device), eval_y.to(device), eval_f.to(device))
        if figures:
            say(f"step {step} eval ({n_eval} test images): {_fmt(figures)}")
            _log(log_fh, {"kind": "eval", "step": step, "elapsed": round(elapsed(), 3), **figures})

    def grid() -> None:
        with _side_effect_free(family):
            images = family.sample_grid(n_per_class=GRID_PER_CLASS, seed=cfg.seed)
        if images is not None:
            _write_grid(images, GRID_PER_CLASS, run_dir / "samples" / f"step_{step:06d}.png")

    window: dict[str, list[float]] = {}
    t_window, n_window = 0.0, 0  # time spent in batching + train_step (not eval/grid/save), steps
    images_per_s = 0.0
    with open(log_path, "a") as log_fh, _StopRequest() as stop, \
            tqdm(total=steps, initial=start_step, disable=not progress, unit="step", dynamic_ncols=True,
                 desc=f"{cfg.family}/{cfg.data}") as bar:
        _log(log_fh, {"kind": "start", "step": start_step, "steps": steps, "resumed": ckpt is not None,
                      "device": str(device), "time": time.time(),
                      **({"init_from": cfg.init_from, "init_sha256": init_sha} if init_sha else {})})
        if ckpt is not None:
            say(f"resuming {run_dir} from step {start_step}")
        while step < steps:
            t_step = time.perf_counter()
            x, y, f = batches(step)
            losses = family.train_step(x, y, f, step)
            t_window += time.perf_counter() - t_step
            step += 1
            last_losses = {k: float(v) for k, v in losses.items()}
            for k, v in last_losses.items():
                window.setdefault(k, []).append(v)
            n_window += 1
            bar.update(1)
            if step % 10 == 0 or step == steps:
                images_per_s = n_window * cfg.batch_size / max(t_window, 1e-9)
                bar.set_postfix_str(f"{_fmt({k: v for k, v in last_losses.items() if k != 'lr'})} "
                                    f"img/s={images_per_s:.0f}", refresh=False)
            if step % cfg.log_every == 0 or step == steps:
                means = {k: float(np.mean(v)) for k, v in window.items()}
                _log(log_fh, {"kind": "train", "step": step, "elapsed": round(elapsed(), 3),
                              "images_per_s": round(images_per_s, 1), **means})
                window, t_window, n_window = {}, 0.0, 0
            if step % eval_every == 0 or step == steps:
                evaluate()
            if step % grid_every == 0 or step == steps:
                grid()
            if step % cfg.ckpt_every == 0 or step == steps or stop.requested:
                save()
            if stop.requested and step < steps:
                _log(log_fh, {"kind": "stop", "step": step, "signal": stop.requested})
                say(f"stopped by {stop.requested} at step {step}; checkpoint saved to {ckpt_path} "
                    "(run the same command again to resume)")
                raise KeyboardInterrupt
        _log(log_fh, {"kind": "done", "step": step, "elapsed": round(elapsed(), 3)})
    say(f"done: {cfg.family} on {cfg.data}, {steps} steps in {elapsed():.0f}s "
        f"({_fmt(last_losses)}); checkpoint {ckpt_path}")
    return run_dir


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Family, dict]:
    """Rebuild a family from a checkpoint alone (family_config + data_meta), load its modules, eval mode.

    `path` is a checkpoint file or a run directory holding checkpoint.pt. Optimiser state is not loaded
    (this is for export/eval); the full checkpoint dict is returned beside the family."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    device = resolve_device(str(device)) if str(device) == "auto" else torch.device(device)
    ckpt = _read_checkpoint(path, device)
    family_cls = get_family(ckpt["family"])
    family_config = build_family_config(family_cls, dict(ckpt["family_config"]))
    family = family_cls(family_config, ckpt["data_meta"], device)
    modules = family.modules()
    missing = sorted(set(modules) - set(ckpt["modules"]))
    if missing:
        raise IntegrityError(f"{path}: checkpoint has no state for module(s) {', '.join(missing)}")
    for name, module in modules.items():
        try:
            module.load_state_dict(ckpt["modules"][name])
        except RuntimeError as exc:
            raise IntegrityError(f"{path}: module {name!r} does not match its saved state: {exc}") from exc
        module.eval()
    return family, ckpt
