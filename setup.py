"""Builds the compiled gRPC transport (services/frontends/grpc/cxx/grpc_transport.cc) when grpc++ is installed.

Everything else of the package is pure Python and configured in pyproject.toml. The extension needs Debian's
libgrpc++-dev (found with pkg-config); without it the package still installs and the native frontend serves
over grpc.aio (`grpc_transport: auto`), unless LATENTSERVE_REQUIRE_CXX=1 asks the build to fail instead
(scripts/test.sh, hence CI, and the Docker image set it, so a missing build step cannot hide).
LATENTSERVE_NO_CXX=1 skips the extension (a client-only install, `pip install '.[client]'`, never serves).
"""
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup


def _pkg_config(*args: str) -> list[str] | None:
    try:
        out = subprocess.run(["pkg-config", *args, "grpc++"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


def _extensions() -> list[Extension]:
    if os.environ.get("LATENTSERVE_NO_CXX") == "1":
        return []
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    if cflags is None or libs is None:
        if os.environ.get("LATENTSERVE_REQUIRE_CXX") == "1":
            sys.exit("latentserve: grpc++ not found by pkg-config (install libgrpc++-dev), and LATENTSERVE_REQUIRE_CXX=1")
        print("latentserve: grpc++ not found (libgrpc++-dev); building without the compiled gRPC transport",
              file=sys.stderr)
        return []
    import pybind11

    return [Extension(
        "latentserve.services.frontends.grpc._grpc_transport",
        sources=["services/frontends/grpc/cxx/grpc_transport.cc"],
        include_dirs=[pybind11.get_include()],
        extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden", *cflags],
        extra_link_args=libs,
        language="c++",
    )]


setup(ext_modules=_extensions())
