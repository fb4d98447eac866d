"""Fixtures of both test tiers."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tls_certs():
    """tests/tls_certs.py (real X.509 certificates made at test time), loaded by path once: the test folders
    are no packages, and its dataclasses need the module in sys.modules."""
    name = "latentserve_tests_tls_certs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("tls_certs.py"))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
