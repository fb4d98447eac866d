#!/usr/bin/env bash
# Installs latentserve from this checkout: Debian's grpc++ headers for the compiled gRPC transport (when absent,
# with apt), the package in editable mode with the extras given as the first argument (e.g. `train,dev`), and
# the generated gRPC code. The README's first command, scripts/test.sh and CI all install through here.
# Without apt (not Debian/Ubuntu) the package installs without the compiled transport and serves over
# grpc.aio; set LATENTSERVE_REQUIRE_CXX=1 to make that an error instead (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if ! pkg-config --exists grpc++ 2>/dev/null; then
  if command -v apt-get >/dev/null 2>&1; then
    bash scripts/apt_install.sh libgrpc++-dev pkg-config g++  # for the compiled gRPC transport
  else
    echo "latentserve: no apt-get here; installing without the compiled gRPC transport (grpc.aio serves)" >&2
  fi
fi

python -m pip install -q -e ".${extras:+[$extras]}"
python -m latentserve.protogen
python -c "from latentserve.services import grpc_transport as t; print('latentserve: gRPC transport', t.resolve('auto'))"
