#!/usr/bin/env bash
# Installs latentserve from this checkout: Debian's grpc++ headers for the compiled gRPC transport (when absent,
# with apt), the package in editable mode with the `serve` extra plus the extras given as the first argument
# (e.g. `train,dev`), and the generated gRPC code. The README's first command, scripts/test.sh and CI all install through here.
# Without apt (not Debian/Ubuntu) the package installs without the compiled transport and serves over
# grpc.aio; set LATENTSERVE_REQUIRE_CXX=1 to make that an error instead (CI does).
# The interpreter is scripts/python.sh's (`python`, else `python3`). One that refuses pip installs outside a
# virtual environment (PEP 668: Debian's own python3) gets a virtual environment in the repo, .venv, and the
# package goes there; python.sh then picks .venv for test.sh and scripts/latentserve.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="serve${1:+,$1}"  # a checkout install serves; a client-only install is `pip install .[client]`
source scripts/python.sh

# One look at the interpreter: does pip refuse to install into it (PEP 668, as pip decides it), does it lack
# the headers the compiled transport builds against, or ensurepip (Debian ships it in python3-venv)?
read -r managed no_headers no_ensurepip < <("$PYTHON" -c 'import importlib.util, os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
managed = sys.prefix == sys.base_prefix and os.path.exists(marker) and not os.environ.get("PIP_BREAK_SYSTEM_PACKAGES")
headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
print(int(managed), int(not headers), int(importlib.util.find_spec("ensurepip") is None))')

missing=()
if ! pkg-config --exists grpc++ 2>/dev/null; then missing+=(libgrpc++-dev pkg-config g++); fi  # compiled transport
if [ "$no_headers" = 1 ]; then missing+=(python3-dev); fi
if [ "$managed" = 1 ] && [ "$no_ensurepip" = 1 ]; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    bash scripts/apt_install.sh "${missing[@]}"
  else
    echo "latentserve: no apt-get here to install ${missing[*]} (without libgrpc++-dev, grpc.aio serves)" >&2
  fi
fi

if [ "$managed" = 1 ]; then
  echo "latentserve: $PYTHON installs packages only into a virtual environment (PEP 668): creating $(pwd)/.venv" \
       "and installing there" >&2
  "$PYTHON" -m venv .venv || { rm -rf .venv; echo "latentserve: could not create .venv" >&2; exit 1; }
  PYTHON="$(pwd)/.venv/bin/python"
fi

"$PYTHON" -m pip install -q -e ".[$extras]"
"$PYTHON" -m latentserve.protogen
"$PYTHON" -c "from latentserve.services.frontends.grpc import transport as t; print('latentserve: gRPC transport', t.resolve('auto'))"
if [ "$PYTHON" = "$(pwd)/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
  echo "latentserve: installed into .venv: run 'bash scripts/latentserve COMMAND', or 'source .venv/bin/activate'" \
       "once to type 'latentserve COMMAND'"
fi
