"""Import boundaries, checked in fresh interpreters (the test process has long imported torch): plain serving
never imports torch, and the manifest / repository modules the serving side shares stay numpy-only."""
from __future__ import annotations

import subprocess
import sys


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_plain_serving_modules_never_import_torch():
    out = _fresh("import sys; import latentserve.services.core.operations, latentserve.services.core.model_server, "
                 "latentserve.services.core.latent_ops, latentserve.services.core.latent_ops_settings, latentserve.services.app; "
                 "assert 'torch' not in sys.modules, 'torch imported'")
    assert out.returncode == 0, out.stderr


def test_manifest_and_repository_do_not_import_torch():
    # The serving side imports these two modules; they must stay numpy-only.
    out = _fresh("import sys, latentserve.models.manifest, latentserve.models.repository; "
                 "bad = [m for m in ('torch', 'onnx', 'sklearn') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    assert out.returncode == 0, out.stdout + out.stderr
