"""Export of small real nn.Modules that follow the graph contract: ONNX + TorchScript files, parity, manifest.

The toy families here (a gan-like encoder/decoder pair, an exactly invertible linear "flow" and a probe)
are also used by test_evaluate.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from latentserve.errors import NotFoundError, ValidationError
from latentserve.models.data.base import DataSplit, Dataset, Factor
from latentserve.models.export import ExportConfig, export_family
from latentserve.models.graph_files import (
    ExportError,
    check_parity,
    export_onnx,
    export_torchscript,
    legacy_exporter_available,
)
from latentserve.models.repository import Repository

torch.set_num_threads(1)
S, C, D = 8, 2, 6  # image side, classes, latent dim


# ----------------------------------------------------------------------------------------------- toy data/nets
def toy_dataset(n_train: int = 96, n_test: int = 40, seed: int = 0) -> Dataset:
    """Bright square of known size/position on a dark background; class = colour channel (0 red, 1 green)."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> DataSplit:
        labels = rng.integers(0, C, n).astype(np.int64)
        scale = rng.uniform(0.25, 0.75, n).astype(np.float32)
        images = np.zeros((n, S, S, 3), np.uint8)
        for i in range(n):
            w = max(1, int(round(scale[i] * S)))
            images[i, :w, :w, labels[i]] = 230
        images += rng.integers(0, 20, images.shape, dtype=np.uint8)
        return DataSplit(images=images, labels=labels, factors=scale[:, None])

    return Dataset(name="toy", image_size=S, class_names=["red", "green"],
                   factors=[Factor("scale", 0.25, 0.75, "fraction of side", "square side / image side")],
                   train=split(n_train), test=split(n_test), config={"seed": seed})


@dataclass
class ToyConfig:
    latent_dim: int = D
    width: int = 4


class ToyEncoder(nn.Module):
    """image (B,3,S,S) -> latent (B,D), logits (B,C)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.latent = nn.Linear(width * (S // 2) ** 2, D)
        self.logits = nn.Linear(width * (S // 2) ** 2, C)

    def forward(self, image: torch.Tensor):
        h = torch.relu(self.conv(image)).flatten(1)  # (B, width*S/2*S/2)
        return self.latent(h), self.logits(h)


class ToyDecoder(nn.Module):
    """latent (B,D), label (B,) -> image (B,3,S,S) in [-1,1]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(C, D)
        self.out = nn.Linear(D, 3 * S * S)

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(latent + self.embed(label))).view(-1, 3, S, S)


class ToyProbeNet(nn.Module):
    """image -> logits (B,C), factors (B,1), features (B,F=8)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                      nn.Linear(4 * (S // 2) ** 2, 8))
        self.logits = nn.Linear(8, C)
        self.factors = nn.Linear(8, 1)

    def forward(self, image: torch.Tensor):
        f = self.features(image)
        return self.logits(f), self.factors(f), f


class ToyFlowEncoder(nn.Module):
    """Exact linear bijection x -> z = A x + b on flattened images, logdet = log|det A|, Gaussian class logits."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, mean: torch.Tensor, logstd: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.register_buffer("logabsdet", torch.linalg.slogdet(a)[1])
        self.register_buffer("mean", mean)  # (C, 3SS)
        self.register_buffer("logstd", logstd)

    def forward(self, image: torch.Tensor):
        z = image.flatten(1) @ self.a.T + self.b  # (B, 3SS)
        ll = (-0.5 * ((z[:, None, :] - self.mean) / self.logstd.exp()) ** 2 - self.logstd).sum(-1)  # (B, C)
        logdet = self.logabsdet.expand(z.shape[0])  # (B,)
        return z, ll, logdet


class ToyFlowDecoder(nn.Module):
    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a_inv", torch.linalg.inv(a))
        self.register_buffer("b", b)

    def forward(self, latent: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return ((latent - self.b) @ self.a_inv.T).view(-1, 3, S, S)



def _from(family_name):
    from latentserve.models.families.base import ExportGraph, Family

    class ToyFamily(Family):
        name = family_name
        config_cls = ToyConfig

        def __init__(self, data: Dataset, seed: int = 0) -> None:
            super().__init__(ToyConfig(), data.meta(), torch.device("cpu"))
            torch.manual_seed(seed)
            self.n = 3 * S * S
            if family_name == "probe":
                self.net = ToyProbeNet().eval()
            elif family_name == "flow":
                g = torch.Generator().manual_seed(seed)
                self.a = torch.eye(self.n) * 0.8 + 0.02 * torch.randn(self.n, self.n, generator=g)
                self.b = 0.1 * torch.randn(self.n, generator=g)
                self.mean = 0.05 * torch.randn(C, self.n, generator=g)
                self.logstd = torch.full((C, self.n), -0.3)
            else:
                self.enc, self.dec = ToyEncoder().eval(), ToyDecoder().eval()

        def graphs(self):
            img = torch.zeros(2, 3, S, S)
            if family_name == "probe":
                return {"probe": ExportGraph(self.net, (img,), ["image"], ["logits", "factors", "features"])}
            if family_name == "flow":
                enc = ToyFlowEncoder(self.a, self.b, self.mean, self.logstd)
                dec = ToyFlowDecoder(self.a, self.b)
                lat = torch.zeros(2, self.n)
                outs = ["latent", "logits", "logdet"]
            else:
                enc, dec, lat, outs = self.enc, self.dec, torch.zeros(2, D), ["latent", "logits"]
            lab = torch.zeros(2, dtype=torch.int64)
            return {"encoder": ExportGraph(enc.eval(), (img,), ["image"], outs, doc="toy encoder"),
                    "decoder": ExportGraph(dec.eval(), (lat, lab), ["latent", "label"], ["image"], doc="toy decoder")}

        def manifest_extra(self):
            if family_name == "flow":
                return {"prior": {"type": "class_gaussian", "sample_temperature": 0.8,
                                  "prior_mean": self.mean, "prior_logstd": self.logstd}}
            if family_name == "probe":
                return {"factor_names": ["scale"], "feature_dim": 8}
            return {"prior": {"type": "standard_normal"}, "latent_shape": [D]}

    return ToyFamily


TRAINING = {"train_config": {"steps": 5, "batch_size": 8}, "steps": 5, "seconds": 0.25, "final_losses": {"loss": 1.5}}
FAST = ExportConfig(max_latent_fit=100, n_pca=2, gmm_components=2, knob_samples=100)


def export_toys(root, data: Dataset | None = None) -> dict:
    """Export toy gan, flow and probe models into `root`; returns {family: ModelRecord}."""
    data = data or toy_dataset()
    out = {}
    for fam, name in (("probe", "toy-probe"), ("gan", "toy-gan"), ("flow", "toy-flow")):
        out[fam] = export_family(_from(fam)(data), name, data, TRAINING, repo_root=root,
                                 probe="toy-probe" if fam != "probe" else None, config=FAST)
    return out


# ----------------------------------------------------------------------------------------------- tests
def test_export_gan_like_writes_a_verified_version(tmp_path):
    data = toy_dataset()
    rec = export_family(_from("gan")(data), "toy-gan", data, TRAINING, repo_root=tmp_path, config=FAST)
    assert rec.version == 1 and rec.path == tmp_path / "toy-gan" / "1"
    names = sorted(p.name for p in rec.path.iterdir())
    assert names == ["decoder.onnx", "decoder.pt", "encoder.onnx", "encoder.pt", "latent_space.npz", "manifest.json"]
    assert not [p for p in (tmp_path / "toy-gan").iterdir() if p.name.startswith(".")]  # temp dir renamed away
    m = rec.manifest
    assert m["graphs"]["decoder"]["inputs"] == {"latent": ["float32", ["batch", D]], "label": ["int64", ["batch"]]}
    assert m["graphs"]["encoder"]["outputs"]["logits"] == ["float32", ["batch", C]]
    assert m["graphs"]["decoder"]["input_names"] == ["latent", "label"]
    assert m["graphs"]["encoder"]["output_names"] == ["latent", "logits"]
    assert m["latent_shape"] == [D] and m["prior"] == {"type": "standard_normal"} and m["probe"] == "toy-probe"
    for g in ("encoder", "decoder"):
        assert 0 <= m["parity"][g]["onnx_max_abs"] <= 1e-4 and 0 <= m["parity"][g]["torchscript_max_abs"] <= 1e-4
    assert m["versions"]["opset"] >= 17 and m["versions"]["torch"] == torch.__version__
    assert m["training"]["family_config"] == {"latent_dim": D, "width": 4}
    assert m["training"]["data"]["name"] == "toy" and m["training"]["steps"] == 5
    assert [k["name"] for k in m["knobs"]] == ["scale", "pca_0", "pca_1"] and m["gmm"]["components"] == 2
    # The ONNX file is self-contained and runs at a batch size never seen during export.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(rec.graph_path("decoder")), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"latent": np.zeros((5, D), np.float32), "label": np.ones(5, np.int64)})[0]
    assert out.shape == (5, 3, S, S) and np.all(np.abs(out) <= 1)
    ts = torch.jit.load(str(rec.graph_path("encoder", "torchscript")))
    assert ts(torch.zeros(4, 3, S, S))[0].shape == (4, D)
    space = Repository(tmp_path).latent_space(rec)
    assert space.latent_dim == D and "scale" in space.knobs
    # The next export becomes version 2; an explicit existing version is refused.
    assert export_family(_from("gan")(data), "toy-gan", data, TRAINING, repo_root=tmp_path, config=FAST).version == 2
    with pytest.raises(ValidationError, match="already exists"):
        export_family(_from("gan")(data), "toy-gan", data, TRAINING, repo_root=tmp_path, version=1, config=FAST)


@pytest.mark.slow  # two flow exports (ONNX + TorchScript with parity checks)
def test_export_flow_like_keeps_prior_arrays_out_of_json(tmp_path):
    data = toy_dataset()
    rec = export_family(_from("flow")(data), "toy-flow", data, TRAINING, repo_root=tmp_path, config=FAST)
    m = rec.manifest
    assert m["prior"] == {"type": "class_gaussian", "sample_temperature": 0.8}
    assert m["graphs"]["encoder"]["outputs"]["logdet"] == ["float32", ["batch"]]
    space = Repository(tmp_path).latent_space(rec)
    fam = _from("flow")(data)
    np.testing.assert_allclose(space.prior_mean, fam.mean.numpy())
    np.testing.assert_allclose(space.prior_logstd, fam.logstd.numpy())
    assert json.loads((rec.path / "manifest.json").read_text())["latent_shape"] == [3 * S * S]
    # Without the latent fit the prior still ships (serving samples a flow from it); no knobs, no GMM.
    rec2 = export_family(fam, "toy-flow", data, TRAINING, repo_root=tmp_path,
                         config=ExportConfig(fit_latents=False))
    assert rec2.manifest["knobs"] == [] and rec2.manifest["gmm"] == {} and "latent_fit" not in rec2.manifest
    space2 = Repository(tmp_path).latent_space(rec2)
    assert space2.gmm_weights is None and not space2.knobs
    np.testing.assert_allclose(space2.prior_mean, fam.mean.numpy())


def test_export_probe(tmp_path):
    data = toy_dataset()
    rec = export_family(_from("probe")(data), "toy-probe", data, TRAINING, repo_root=tmp_path, config=FAST)
    m = rec.manifest
    assert sorted(m["graphs"]) == ["probe"] and "latent_space.npz" not in m["files"]
    assert m["graphs"]["probe"]["outputs"]["features"] == ["float32", ["batch", 8]]
    assert m["factor_names"] == ["scale"] and "prior" not in m and "probe" not in m


def test_parity_check_catches_a_different_module(tmp_path):
    torch.manual_seed(0)
    a, b = ToyDecoder().eval(), ToyDecoder().eval()
    inputs = (torch.randn(3, D), torch.tensor([0, 1, 0]))
    export_onnx(a, inputs, ["latent", "label"], ["image"], tmp_path / "d.onnx")
    export_torchscript(a, inputs, tmp_path / "d.pt")
    batches = [(torch.randn(1, D), torch.tensor([1])), (torch.randn(7, D), torch.arange(7) % C)]
    ok = check_parity(a, tmp_path / "d.onnx", tmp_path / "d.pt", batches, ["latent", "label"], ["image"])
    assert ok["onnx_max_abs"] <= 1e-5 and ok["torchscript_max_abs"] <= 1e-6
    with pytest.raises(ExportError, match=r"parity failed for d\.image \(onnx, batch 1\).*--parity-atol"):
        check_parity(b, tmp_path / "d.onnx", tmp_path / "d.pt", batches, ["latent", "label"], ["image"])


def test_batch_specialised_export_is_caught(tmp_path):
    class Specialised(nn.Module):
        """Correct in eager mode, but int(shape) makes tracing bake in the example batch size."""

        def forward(self, latent, label):
            b = int(latent.shape[0])
            return torch.tanh(latent[:, :1]).view(b, 1, 1, 1).expand(b, 3, S, S)

    m = Specialised()
    inputs = (torch.randn(3, D), torch.zeros(3, dtype=torch.int64))
    export_onnx(m, inputs, ["latent", "label"], ["image"], tmp_path / "s.onnx", exporter="legacy")
    export_torchscript(m, inputs, tmp_path / "s.pt")
    with pytest.raises(ExportError, match="fails at batch 1"):
        check_parity(m, tmp_path / "s.onnx", tmp_path / "s.pt", [(torch.randn(1, D), torch.zeros(1, dtype=torch.int64))],
                     ["latent", "label"], ["image"])


def _unused_pid() -> int:
    """A pid no process has now (an export's temp dir is stale when the OS knows no process with its pid)."""
    import os

    pid = 4_000_000  # above most systems' pid_max; searched downwards should one exist
    while True:
        try:
            os.kill(pid, 0)  # signal 0: existence check only
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def test_stale_temp_dir_of_a_killed_export_is_removed(tmp_path):
    stale = tmp_path / "toy-probe" / f".export-1-{_unused_pid()}-abcd1234"
    stale.mkdir(parents=True)
    (stale / "probe.onnx").write_bytes(b"half")
    data = toy_dataset()
    rec = export_family(_from("probe")(data), "toy-probe", data, TRAINING, repo_root=tmp_path, config=FAST)
    assert rec.version == 1 and not stale.exists()


def test_failed_export_leaves_no_version(tmp_path):
    data = toy_dataset()
    fam = _from("gan")(data)
    bad = fam.graphs
    fam.graphs = lambda: {**bad(), "decoder": bad()["decoder"].__class__(
        module=ToyDecoder().eval(), example_inputs=bad()["decoder"].example_inputs,
        input_names=["latent", "label"], output_names=["image", "extra"])}  # 2 names, 1 output
    with pytest.raises(ExportError):
        export_family(fam, "toy-gan", data, TRAINING, repo_root=tmp_path,
                      config=ExportConfig(max_latent_fit=100, exporter="legacy"))
    assert Repository(tmp_path).versions("toy-gan") == []
    assert list((tmp_path / "toy-gan").iterdir()) == []


def test_export_config_ranges():
    with pytest.raises(ValidationError, match="ExportConfig.opset"):
        ExportConfig(opset=9)
    with pytest.raises(ValidationError, match="ExportConfig.exporter"):
        ExportConfig(exporter="tf")
    with pytest.raises(ValidationError, match="max_latent_fit"):
        ExportConfig(max_latent_fit=10)


def test_legacy_exporter_is_detected():
    # torch 2.13 still ships dynamo=False (deprecated); export_onnx falls back to dynamo when it disappears.
    assert legacy_exporter_available() in (True, False)


def test_knobs_fitted_on_probe_labelled_prior_samples(tmp_path):
    """knob_source="samples" (InterFaceGAN): the knob predicts what the probe measures on decoded prior samples."""
    from latentserve.models.evaluate import OnnxGraph
    from latentserve.models.latent import LatentSpace

    data = toy_dataset()
    export_family(_from("probe")(data), "toy-probe", data, TRAINING, repo_root=tmp_path, config=FAST)
    enc = export_family(_from("gan")(data), "toy-gan", data, TRAINING, repo_root=tmp_path, probe="toy-probe",
                        config=FAST)  # auto: the toy family does not ask for samples
    assert enc.manifest["latent_fit"]["knobs"] == {"source": "encoded_training_images"}
    cfg = ExportConfig(max_latent_fit=400, n_pca=2, gmm_components=2, knob_source="samples", knob_samples=400)
    rec = export_family(_from("gan")(data), "toy-gan", data, TRAINING, repo_root=tmp_path, probe="toy-probe",
                        config=cfg)
    fit = rec.manifest["latent_fit"]["knobs"]
    assert fit["source"] == "prior_samples" and fit["probe"] == {"name": "toy-probe", "version": 1}
    assert fit["n_samples"] == 400
    space = LatentSpace.load(rec.file("latent_space.npz"))
    rng = np.random.default_rng(123)  # fresh samples, not the fit's
    y = np.arange(200) % C
    z = space.sample_prior(y, rng)
    img = OnnxGraph(rec, "decoder")(latent=z, label=y.astype(np.int64))["image"]
    measured = OnnxGraph(Repository(tmp_path).load("toy-probe"), "probe")(image=img)["factors"][:, 0]
    corr = np.corrcoef(measured, space.predict_factor(z, "scale"))[0, 1]
    # the encoded-image knob (fitted on other latents against true factors) predicts the probe less well here
    enc_space = LatentSpace.load(enc.file("latent_space.npz"))
    corr_enc = np.corrcoef(measured, enc_space.predict_factor(z, "scale"))[0, 1]
    assert corr > 0.8 and corr > corr_enc, (corr, corr_enc)


def test_knob_source_samples_needs_the_probe(tmp_path):
    data = toy_dataset()
    cfg = ExportConfig(max_latent_fit=100, n_pca=2, gmm_components=2, knob_source="samples")
    with pytest.raises(NotFoundError, match="needs the probe 'toy-probe'"):
        export_family(_from("gan")(data), "toy-gan", data, TRAINING, repo_root=tmp_path, probe="toy-probe", config=cfg)
    assert not (tmp_path / "toy-gan" / "1").exists()
    with pytest.raises(ValidationError, match="knob_source"):
        ExportConfig(knob_source="nope")


def test_knobs_fitted_on_latent_gmm_samples_when_the_family_asks(tmp_path):
    """A family with knobs_from_samples = "latent_gmm" (the VAE) gets knobs fitted where its GMM samples lie."""
    data = toy_dataset()
    export_family(_from("probe")(data), "toy-probe", data, TRAINING, repo_root=tmp_path, config=FAST)
    family = _from("vae")(data)
    type(family).knobs_from_samples = "latent_gmm"
    cfg = ExportConfig(max_latent_fit=300, n_pca=2, gmm_components=2, knob_samples=300)  # knob_source auto
    rec = export_family(family, "toy-vae", data, TRAINING, repo_root=tmp_path, probe="toy-probe", config=cfg)
    fit = rec.manifest["latent_fit"]["knobs"]
    assert fit["source"] == "latent_gmm_samples" and fit["n_samples"] == 300
    knobs = {k["name"]: k for k in rec.manifest["knobs"]}
    assert "scale" in knobs
    # read-outs are fitted on the same samples, stored with the latent space and named in the manifest
    assert knobs["scale"]["readout_r2"] is None or knobs["scale"]["readout_r2"] <= 1.0
    space = Repository(tmp_path).latent_space(rec)
    assert "readout_r2" in knobs["scale"] and space.knobs["scale"].readout is not None
