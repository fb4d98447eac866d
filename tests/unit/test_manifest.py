"""Manifest schema validation, canonical writing, checksums, and the repository's verified loading."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from latentserve.errors import IntegrityError, NotFoundError, ValidationError
from latentserve.models.manifest import (
    SCHEMA_VERSION,
    file_entries,
    read_manifest,
    sha256_file,
    validate_manifest,
    write_manifest,
)
from latentserve.models.repository import ModelRecord, Repository, default_repository_path


def _manifest(name: str = "toy", version: int = 1, family: str = "gan", files: dict | None = None) -> dict:
    """A minimal valid manifest for a generative model with D=4, C=2, 8x8 images."""
    files = files if files is not None else {
        f: {"sha256": "0" * 64, "bytes": 1}
        for f in ("encoder.onnx", "encoder.pt", "decoder.onnx", "decoder.pt", "latent_space.npz")
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "family": family,
        "created": "2025-01-01T00:00:00Z",
        "versions": {"latentserve": "0.1.0", "torch": "2.13.0", "onnx": "1.17", "onnxruntime": "1.20", "opset": 17},
        "image_shape": [3, 8, 8],
        "latent_shape": [4],
        "value_range": [-1.0, 1.0],
        "class_names": ["a", "b"],
        "factors": [{"name": "scale", "low": 0.2, "high": 0.9, "unit": "fraction", "doc": ""}],
        "prior": {"type": "standard_normal"},
        "knobs": [{"name": "scale", "kind": "factor", "unit": "fraction", "low": 0.2, "high": 0.9, "r2_fit": 0.8}],
        "gmm": {"components": 2, "covariance": "diag"},
        "graphs": {
            "encoder": {"onnx": "encoder.onnx", "torchscript": "encoder.pt",
                        "inputs": {"image": ["float32", ["batch", 3, 8, 8]]},
                        "outputs": {"latent": ["float32", ["batch", 4]], "logits": ["float32", ["batch", 2]]}},
            "decoder": {"onnx": "decoder.onnx", "torchscript": "decoder.pt", "input_names": ["latent", "label"],
                        "inputs": {"latent": ["float32", ["batch", 4]], "label": ["int64", ["batch"]]},
                        "outputs": {"image": ["float32", ["batch", 3, 8, 8]]}},
        },
        "latent_space": "latent_space.npz",
        "probe": "toy-probe",
        "files": files,
        "parity": {"encoder": {"onnx_max_abs": 1e-6, "torchscript_max_abs": 0.0},
                   "decoder": {"onnx_max_abs": 2e-6, "torchscript_max_abs": 0.0}},
        "training": {"family": family, "family_config": {"latent_dim": 4}, "train_config": {"steps": 3},
                     "data": {"name": "shapes"}, "steps": 3, "seconds": 1.5, "final_losses": {"g": 0.7}},
    }


def _make_version(root: Path, name: str, version: int) -> Path:
    """A version dir with small real files and a manifest whose checksums match them."""
    d = root / name / str(version)
    d.mkdir(parents=True)
    for i, f in enumerate(("encoder.onnx", "encoder.pt", "decoder.onnx", "decoder.pt", "latent_space.npz")):
        (d / f).write_bytes(bytes(range(i, i + 40)))
    write_manifest(d, _manifest(name, version, files=file_entries(d)))
    return d


# ----------------------------------------------------------------------------------------------- schema
def test_valid_manifest_passes_and_is_returned():
    m = _manifest()
    assert validate_manifest(m) is m
    validate_manifest(_manifest(family="flow") | {"prior": {"type": "class_gaussian", "sample_temperature": 0.7}})


def test_probe_manifest_without_generative_sections():
    m = _manifest(family="probe", files={f: {"sha256": "a" * 64, "bytes": 3} for f in ("probe.onnx", "probe.pt")})
    for k in ("latent_shape", "prior", "knobs", "gmm", "probe", "latent_space"):
        m.pop(k)
    m["graphs"] = {"probe": {"onnx": "probe.onnx", "torchscript": "probe.pt",
                             "inputs": {"image": ["float32", ["batch", 3, 8, 8]]},
                             "outputs": {"logits": ["float32", ["batch", 2]], "factors": ["float32", ["batch", 1]],
                                         "features": ["float32", ["batch", 16]]}}}
    m["parity"] = {"probe": {"onnx_max_abs": 0.0, "torchscript_max_abs": 0.0}}
    validate_manifest(m)
    # a data set without continuous factors (digits): the probe's factor output is (batch, 0)
    m["graphs"]["probe"]["outputs"]["factors"] = ["float32", ["batch", 0]]
    validate_manifest(m)
    m["graphs"]["probe"]["outputs"]["factors"] = ["float32", ["batch", -1]]
    with pytest.raises(ValidationError, match="ints >= 0"):
        validate_manifest(m)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda m: m.pop("name"), "name"),
        (lambda m: m.update(version="1"), "version"),
        (lambda m: m.update(version=0), "version"),
        (lambda m: m.update(schema_version=2), "schema_version"),
        (lambda m: m.update(family="diffusion"), "family"),
        (lambda m: m["versions"].pop("opset"), "versions.opset"),
        (lambda m: m.update(image_shape=[1, 8, 8]), "image_shape"),
        (lambda m: m.update(class_names=["a", "a"]), "class_names"),
        (lambda m: m["factors"][0].update(low=1.0), "factors[0]"),
        (lambda m: m.pop("latent_shape"), "latent_shape"),
        (lambda m: m["prior"].update(type="uniform"), "prior.type"),
        (lambda m: m["knobs"][0].update(kind="magic"), "knobs[0].kind"),
        (lambda m: m["gmm"].update(covariance="spherical"), "gmm.covariance"),
        (lambda m: m.pop("probe"), "probe"),
        (lambda m: m["files"]["encoder.onnx"].update(sha256="xyz"), "files.encoder.onnx.sha256"),
        (lambda m: m["files"].pop("decoder.pt"), "graphs.decoder.torchscript"),
        (lambda m: m["graphs"].pop("decoder"), "graphs"),
        (lambda m: m["graphs"]["encoder"]["inputs"].update(image=["float32", [3, 8, 8]]), "graphs.encoder.inputs.image"),
        (lambda m: m["graphs"]["encoder"]["outputs"].pop("logits"), "graphs.encoder.outputs"),
        (lambda m: m["graphs"]["decoder"]["inputs"].update(label=["int8", ["batch"]]), "graphs.decoder.inputs.label"),
        (lambda m: m["parity"]["encoder"].update(onnx_max_abs=-1.0), "parity.encoder.onnx_max_abs"),
        (lambda m: m["training"].update(family="vae"), "training.family"),
        (lambda m: m["graphs"]["decoder"].update(input_names=["latent"]), "graphs.decoder.input_names"),
        (lambda m: m["training"].pop("final_losses"), "training.final_losses"),
        (lambda m: m.update(latent_space="missing.npz"), "latent_space"),
    ],
)
def test_invalid_manifest_names_the_key(mutate, key):
    m = _manifest()
    mutate(m)
    with pytest.raises(ValidationError) as exc:
        validate_manifest(m)
    assert f"manifest: {key}:" in str(exc.value)


def test_write_is_canonical_and_roundtrips(tmp_path):
    m = _manifest()
    m["metrics"] = {"score": np.float32(0.5), "n": np.int64(3)}  # numpy scalars are accepted on write
    path = write_manifest(tmp_path, m)
    text = path.read_text()
    assert text.endswith("\n") and text.startswith('{\n  "class_names"')  # sorted keys, indent 2
    back = read_manifest(tmp_path)
    assert back["metrics"] == {"score": 0.5, "n": 3}
    assert json.loads(text) == back
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed away


def test_write_rejects_nan_and_read_rejects_garbage(tmp_path):
    m = _manifest()
    m["metrics"] = {"r2": float("nan")}
    with pytest.raises(ValidationError, match="NaN"):
        write_manifest(tmp_path, m)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        read_manifest(tmp_path)
    with pytest.raises(NotFoundError):
        read_manifest(tmp_path / "nowhere")


def test_sha256_and_file_entries(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"")
    (tmp_path / ".hidden").write_bytes(b"x")
    (tmp_path / "manifest.json").write_text("{}")
    assert sha256_file(tmp_path / "a.bin") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    entries = file_entries(tmp_path)
    assert sorted(entries) == ["a.bin", "sub/b.bin"]
    assert entries["a.bin"]["bytes"] == 3 and entries["sub/b.bin"]["bytes"] == 0


# ----------------------------------------------------------------------------------------------- repository
def test_versions_newest_pinned_and_not_found(tmp_path):
    for v in (1, 2, 10):
        _make_version(tmp_path, "toy", v)
    (tmp_path / "toy" / "latest").mkdir()  # non-integer dirs are ignored
    (tmp_path / "toy" / ".tmp-11-123").mkdir()  # an export in progress is invisible
    (tmp_path / "toy" / "03").mkdir()
    (tmp_path / "empty").mkdir()  # no versions: not a model
    repo = Repository(tmp_path)
    assert repo.names() == ["toy"]
    assert repo.versions("toy") == [1, 2, 10]  # numeric, not lexicographic
    assert repo.next_version("toy") == 11 and repo.next_version("new") == 1
    assert repo.resolve("toy")[0] == 10
    assert repo.resolve("toy", 2) == (2, tmp_path / "toy" / "2")
    rec = repo.load("toy")
    assert isinstance(rec, ModelRecord) and rec.version == 10 and rec.family == "gan"
    assert rec.graph_path("decoder") == tmp_path / "toy" / "10" / "decoder.onnx"
    assert rec.graph_path("encoder", "torchscript").name == "encoder.pt"
    assert rec.latent_dim == 4 and rec.class_names == ["a", "b"] and rec.has_latent_space
    with pytest.raises(NotFoundError, match=r"has no version 3; versions: 1, 2, 10"):
        repo.load("toy", 3)
    with pytest.raises(NotFoundError, match=r"no model 'nope'.*models: toy"):
        repo.load("nope")
    with pytest.raises(NotFoundError, match="has no graph 'probe'"):
        rec.graph_path("probe")
    with pytest.raises(NotFoundError, match="has no file"):
        rec.file("checkpoint.pt")
    with pytest.raises(ValidationError):
        rec.graph_path("encoder", "tflite")
    assert Repository(tmp_path / "missing").names() == []


def test_flipped_byte_raises_integrity_error_naming_the_file(tmp_path):
    d = _make_version(tmp_path, "toy", 1)
    p = d / "decoder.onnx"
    data = bytearray(p.read_bytes())
    data[5] ^= 0x01
    p.write_bytes(bytes(data))
    repo = Repository(tmp_path)
    with pytest.raises(IntegrityError) as exc:
        repo.load("toy")
    msg = str(exc.value)
    assert "decoder.onnx" in msg and "sha256 mismatch" in msg
    expected = json.loads((d / "manifest.json").read_text())["files"]["decoder.onnx"]["sha256"]
    assert expected in msg and sha256_file(p) in msg  # expected vs actual
    assert repo.load("toy", verify=False).version == 1  # an explicit opt-out still loads


def test_missing_or_truncated_file_raises_integrity_error(tmp_path):
    d = _make_version(tmp_path, "toy", 1)
    (d / "latent_space.npz").unlink()
    with pytest.raises(IntegrityError, match=r"latent_space.npz .*missing"):
        Repository(tmp_path).load("toy")
    d2 = _make_version(tmp_path, "toy", 2)
    (d2 / "encoder.pt").write_bytes(b"short")
    with pytest.raises(IntegrityError, match=r"encoder.pt has 5 bytes, the manifest expects 40"):
        Repository(tmp_path).load("toy", 2)


def test_broken_or_mismatched_manifest_is_an_integrity_error(tmp_path):
    d = _make_version(tmp_path, "toy", 1)
    m = read_manifest(d)
    bad = copy.deepcopy(m)
    del bad["graphs"]
    (d / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(IntegrityError, match="manifest: graphs"):
        Repository(tmp_path).load("toy")
    (tmp_path / "toy" / "1").rename(tmp_path / "toy" / "2")
    write_manifest(tmp_path / "toy" / "2", m)  # says v1, lives in 2/
    with pytest.raises(IntegrityError, match="renamed or copied"):
        Repository(tmp_path).load("toy")


def test_default_repository_is_the_package_folder():
    p = default_repository_path()
    assert p.name == "repository" and (p.parent / "repository.py").is_file()
    assert Repository().root == p
