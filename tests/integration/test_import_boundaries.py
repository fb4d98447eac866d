"""Import boundaries, checked in fresh interpreters (the test process has long imported torch and ray): plain
serving never imports torch, the client SDK and its CLI commands import neither Ray nor ONNX Runtime, and the
manifest / repository modules the serving side shares stay numpy-only. The static import graph (layers, no
cycles) is tests/unit/test_import_graph.py."""
from __future__ import annotations

import subprocess
import sys


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_plain_serving_modules_never_import_torch():
    out = _fresh("import sys; import latentserve.services.core.operations, latentserve.services.core.model_server, "
                 "latentserve.services.core.latent_ops, latentserve.services.core.latent_ops_settings, "
                 "latentserve.services.frontends.grpc.native, latentserve.services.frontends.serve_proxy, "
                 "latentserve.services.app; "
                 "assert 'torch' not in sys.modules, 'torch imported'")
    assert out.returncode == 0, out.stderr


def test_the_core_imports_no_transport():
    out = _fresh("import sys, latentserve.services.core.operations; "
                 "bad = [m for m in ('grpc', 'latentserve.v1', 'ray', 'fastapi') if m in sys.modules]; "
                 "print(bad); sys.exit(bool(bad))")
    assert out.returncode == 0, out.stdout + out.stderr


def test_client_and_its_commands_need_no_server_packages():
    out = _fresh("import sys, latentserve.client, latentserve.client.augment_job, latentserve.cli; "
                 "from latentserve.cli import build_parser; build_parser(); "
                 "import latentserve.commands.models, latentserve.commands.sample, latentserve.commands.augment; "
                 "bad = [m for m in ('ray', 'onnxruntime', 'torch', 'redis', 'prometheus_client') if m in sys.modules]; "
                 "print(bad); sys.exit(bool(bad))")
    assert out.returncode == 0, out.stdout + out.stderr


def test_manifest_and_repository_do_not_import_torch():
    # The serving side imports these two modules; they must stay numpy-only.
    out = _fresh("import sys, latentserve.models.manifest, latentserve.models.repository; "
                 "bad = [m for m in ('torch', 'onnx', 'sklearn') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    assert out.returncode == 0, out.stdout + out.stderr
