"""A client-only install, for real: a fresh virtual environment (no system packages) gets this checkout with
only the `client` extra (`pip install '.[client]'`), has neither Ray nor ONNX Runtime, and its `latentserve
models` lists the session server's models. pip fetches grpcio, protobuf, numpy and pillow (from the configured
indexes), so this is the slow test of the suite."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what a source distribution of the package holds (the bundled model artefacts are not needed by a client)
SOURCE = ("pyproject.toml", "setup.py", "README.md", "latentserve", "models", "services", "protos")


def _copy_source(dest: Path) -> None:
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "repository", "*.egg-info", ".venv*")
    for name in SOURCE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_client_extra_alone_runs_latentserve_models(serve_app, tmp_path):
    if not (ROOT / "latentserve" / "v1" / "latent_pb2.py").exists():
        pytest.skip("generated gRPC code missing (python -m latentserve.protogen)")
    src, venv = tmp_path / "src", tmp_path / "venv"
    _copy_source(src)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {**os.environ, "LATENTSERVE_NO_CXX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[client]"], env=env,
                             capture_output=True, text=True, timeout=800)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    absent = subprocess.run([str(py), "-c", "import importlib.util as u; "
                             "print([m for m in ('ray', 'onnxruntime', 'torch') if u.find_spec(m)])"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr

    out = subprocess.run([str(venv / "bin" / "latentserve"), "models", "-t", serve_app.target, "--timeout", "60"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("tiny-gan", "tiny-vae", "tiny-flow"):
        assert name in out.stdout
