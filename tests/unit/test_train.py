"""Unit tests for the training loop (models/train.py) and `latentserve train` argument handling, with the
probe family on a tiny synthetic dataset (fast, CPU, one thread)."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from latentserve.errors import ValidationError
from latentserve.models.data.base import DataSplit, Dataset, Factor
from latentserve.models.families.probe import ProbeFamily
from latentserve.models.train import TrainConfig, _write_grid, load_checkpoint, train

SMALL = {"width": 4, "depth": 2, "head_channels": 4, "feature_dim": 8, "warmup_steps": 2, "lr_schedule_steps": 20}


def tiny_dataset(n_train: int = 40, n_test: int = 12, size: int = 8) -> Dataset:
    """Two classes of random 8x8 images with one factor (NaN for class 1): enough to exercise the loop."""
    rng = np.random.default_rng(0)

    def split(n: int) -> DataSplit:
        labels = np.arange(n, dtype=np.int64) % 2
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        brightness = images.mean((1, 2, 3)) / 255.0
        factors = np.where(labels == 0, brightness, np.nan)[:, None].astype(np.float32)
        return DataSplit(images, labels, factors)

    return Dataset(name="tiny", image_size=size, class_names=["a", "b"], factors=[Factor("brightness", 0.0, 1.0)],
                   train=split(n_train), test=split(n_test), config={"n_train": n_train})


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()  # the runs below set one thread; give the rest of the session its own back
    yield
    torch.set_num_threads(threads)


def _cfg(out, steps, **kw) -> TrainConfig:
    base = dict(family="probe", data="tiny", steps=steps, batch_size=8, seed=3, out=str(out), ckpt_every=4,
                threads=1, device="cpu", family_args=SMALL, log_every=2, eval_size=8)
    base.update(kw)
    return TrainConfig(**base)


def _params(run_dir) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return ckpt["modules"]["probe"]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=1e-6, rtol=0, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run (crosses an epoch boundary: 40 // 8 = 5 batches per epoch)."""
    out = tmp_path_factory.mktemp("ref")
    train(_cfg(out, 12), progress=False, dataset=tiny_dataset())
    return out


def test_resume_equals_uninterrupted(reference, tmp_path):
    ds = tiny_dataset()
    train(_cfg(tmp_path, 6), progress=False, dataset=ds)  # "interrupted" half-way (step 6 is not a ckpt_every multiple)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 6
    train(_cfg(tmp_path, 12), progress=False, dataset=ds)
    _assert_same(_params(reference), _params(tmp_path))
    ref = torch.load(reference / "checkpoint.pt", weights_only=True)["optimizers"]["probe"]["state"]
    got = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizers"]["probe"]["state"]
    _assert_same({f"{k}.{n}": v[n] for k, v in ref.items() for n in ("exp_avg", "exp_avg_sq")},
                 {f"{k}.{n}": v[n] for k, v in got.items() for n in ("exp_avg", "exp_avg_sq")})


def test_signal_saves_checkpoint_and_resume_matches(reference, tmp_path, monkeypatch):
    original = ProbeFamily.train_step

    def step_then_sigterm(self, x, y, f, step):
        out = original(self, x, y, f, step)
        if step == 6:  # the handler only sets a flag; the loop saves after this step and stops
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(ProbeFamily, "train_step", step_then_sigterm)
    ds = tiny_dataset()
    before = signal.getsignal(signal.SIGTERM)  # not necessarily SIG_DFL: e.g. ray.init() in the same process
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, 12), progress=False, dataset=ds)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 7
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    monkeypatch.setattr(ProbeFamily, "train_step", original)
    train(_cfg(tmp_path, 12), progress=False, dataset=ds)
    _assert_same(_params(reference), _params(tmp_path))
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert kinds.count("start") == 2 and "stop" in kinds and kinds[-1] == "done"


def test_checkpoint_contents_and_load_checkpoint(reference):
    ckpt = torch.load(reference / "checkpoint.pt", weights_only=True)  # plain types only: safe loading works
    assert ckpt["format"] == 1 and ckpt["family"] == "probe" and ckpt["step"] == 12
    assert set(ckpt) >= {"family_config", "train_config", "data_meta", "modules", "optimizers", "rng",
                         "elapsed_seconds", "last_losses", "versions"}
    assert ckpt["family_config"]["width"] == 4 and ckpt["train_config"]["batch_size"] == 8
    assert ckpt["data_meta"]["class_names"] == ["a", "b"] and set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    assert "loss" in ckpt["last_losses"] and ckpt["versions"]["torch"] == torch.__version__
    family, ck = load_checkpoint(reference)  # a run directory works as well as the file
    assert isinstance(family, ProbeFamily) and not family.net.training and ck["step"] == 12
    _assert_same(family.net.state_dict(), ckpt["modules"]["probe"])
    # The outputs of the rebuilt model are those of the saved weights.
    x = torch.zeros(2, 3, 8, 8)
    family2, _ = load_checkpoint(reference / "checkpoint.pt")
    torch.testing.assert_close(family.net(x)[0], family2.net(x)[0])
    assert not (reference / "samples").exists()  # the probe has no sample grid


def test_log_and_config_files(reference):
    records = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [2, 4, 6, 8, 10, 12]
    assert all("loss" in r and "images_per_s" in r for r in records if r["kind"] == "train")
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8, 12] and "acc" in evals[0] and "r2_brightness" in evals[0]
    config = json.loads((reference / "config.json").read_text())
    assert config["train_config"]["steps"] == 12 and config["family_config"]["feature_dim"] == 8


def test_finished_run_is_a_noop(reference, capsys):
    before = os.stat(reference / "checkpoint.pt").st_mtime_ns
    train(_cfg(reference, 12), progress=False, dataset=tiny_dataset())
    assert "nothing to do" in capsys.readouterr().out
    assert os.stat(reference / "checkpoint.pt").st_mtime_ns == before


def test_resume_refuses_a_different_run(reference, tmp_path):
    with pytest.raises(ValidationError, match="different run"):
        train(_cfg(reference, 20, seed=4), progress=False, dataset=tiny_dataset())
    with pytest.raises(ValidationError, match="family config differs"):
        train(_cfg(reference, 20, family_args={**SMALL, "width": 8}), progress=False, dataset=tiny_dataset())


def test_no_resume_starts_over(tmp_path):
    ds = tiny_dataset()
    train(_cfg(tmp_path, 4), progress=False, dataset=ds)
    train(_cfg(tmp_path, 2), resume=False, progress=False, dataset=ds)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2
    starts = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines() if '"start"' in x]
    assert len(starts) == 1  # a fresh log


def test_config_validation():
    with pytest.raises(ValidationError, match="family"):
        TrainConfig(family="diffusion")
    with pytest.raises(ValidationError, match="batch_size"):
        TrainConfig(family="probe", batch_size=0)
    with pytest.raises(ValidationError, match="device"):
        TrainConfig(family="probe", device="tpu")
    assert str(TrainConfig(family="probe").run_dir) == os.path.join("runs", "shapes-probe")
    with pytest.raises(ValidationError, match="unknown ProbeConfig field"):
        train(TrainConfig(family="probe", family_args={"widht": 3}, out="/nonexistent/x"), dataset=tiny_dataset())
    with pytest.raises(ValidationError, match="larger than the training set"):
        train(_cfg("/tmp/unused-run-dir-xyz", 2, batch_size=64), progress=False, dataset=tiny_dataset())


def test_write_grid(tmp_path):
    from PIL import Image

    images = torch.linspace(-1, 1, 3 * 8 * 3 * 4 * 4).reshape(24, 3, 4, 4)
    _write_grid(images, 8, tmp_path / "samples" / "step_000001.png", pad=2)
    img = Image.open(tmp_path / "samples" / "step_000001.png")
    assert img.size == (8 * 6 + 2, 3 * 6 + 2)  # (width, height): 8 columns, one row per class


def test_cli_arguments_map_to_train_config():
    from latentserve.cli import build_parser
    from latentserve.commands.train import config_from_args

    args = build_parser().parse_args([
        "train", "--family", "probe", "--data", "shapes", "--data-arg", "n_train=500", "--data-arg", "seed=2",
        "--holdout", "scale=0.4:0.5", "--steps", "30", "--batch-size", "16", "--set", "width=8",
        "--set", "coord_channels=false", "--set", "lr=0.001", "--threads", "1", "--out", "runs/x", "--no-resume", "--init-from", "runs/base",
    ])
    cfg = config_from_args(args)
    assert cfg.data_args == {"n_train": 500, "seed": 2, "holdout": {"scale": [0.4, 0.5]}}
    assert cfg.family_args == {"width": 8, "coord_channels": False, "lr": 0.001}
    assert cfg.steps == 30 and cfg.batch_size == 16 and cfg.threads == 1 and args.no_resume
    assert cfg.init_from == "runs/base"
    bad = build_parser().parse_args(["train", "--family", "probe", "--set", "width"])
    with pytest.raises(ValidationError, match="--set expects key=value"):
        config_from_args(bad)


def _fresh_probe(family_args: dict) -> ProbeFamily:
    from latentserve.models.train import build_family_config

    return ProbeFamily(build_family_config(ProbeFamily, family_args), tiny_dataset().meta(), "cpu")


def test_warm_start_copies_matching_tensors_and_leaves_the_rest_fresh(reference):
    from latentserve.models.train import warm_start

    saved = _params(reference)
    same = _fresh_probe(SMALL)
    summary, sha = warm_start(same, reference)
    assert "fresh" not in summary and len(sha) == 64
    _assert_same({k: v for k, v in same.modules()["probe"].state_dict().items()}, saved)

    wider = _fresh_probe({**SMALL, "feature_dim": 16})  # the feature layer and what reads it change shape
    before = {k: v.clone() for k, v in wider.modules()["probe"].state_dict().items()}
    summary, _ = warm_start(wider, reference / "checkpoint.pt")
    after = wider.modules()["probe"].state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    kept_fresh = {k for k in after if saved.get(k) is None or saved[k].shape != after[k].shape}
    assert kept_fresh and "fresh: probe." in summary
    assert all(torch.equal(after[k], before[k]) for k in kept_fresh)  # no partial copy into a mismatched tensor
    assert all(torch.equal(after[k], saved[k]) for k in after if k not in kept_fresh)
    assert changed  # and the matching ones did change


def test_warm_start_run_starts_at_step_zero_from_the_source_weights(reference, tmp_path):
    ds = tiny_dataset()
    train(_cfg(tmp_path, 1, init_from=str(reference), family_args={**SMALL, "warmup_steps": 5}), progress=False,
          dataset=ds)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["train_config"]["init_from"] == str(reference)
    start = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert start["init_from"] == str(reference) and len(start["init_sha256"]) == 64
    # one step from the source weights stays close to them; a fresh initialisation is far away
    new, old = ckpt["modules"]["probe"], _params(reference)
    near = max(float((new[k].float() - old[k].float()).abs().max()) for k in old if old[k].is_floating_point())
    assert near < 0.05


def test_warm_start_refuses_another_family_and_a_bad_path(reference, tmp_path):
    from latentserve.models.families.gan import GANFamily
    from latentserve.models.train import build_family_config, warm_start

    gan = GANFamily(build_family_config(GANFamily, {"z_dim": 4, "g_width": 4, "d_width": 4, "e_width": 4,
                                                    "e_hidden": 8, "e_batch": 4}), tiny_dataset(size=16).meta(), "cpu")
    with pytest.raises(ValidationError, match="'probe' checkpoint cannot start a 'gan' run"):
        warm_start(gan, reference)
    with pytest.raises(ValidationError, match="init_from"):
        TrainConfig(family="probe", init_from="")
