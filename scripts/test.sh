#!/usr/bin/env bash
# The README's test command: installs what the tests need (Debian's redis-server, prometheus, haproxy, chromium
# and chromium-driver when absent;
# the package with its train+dev extras, the compiled gRPC transport and the generated gRPC code through
# scripts/install.sh, which must build the transport here), then runs the whole suite.
# `--fast` runs the unit tier only (tests/unit: pure logic, no servers or subprocesses) and skips the Debian
# server packages. Other arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`, `--fast -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then fast=1; shift; fi

if [ "$fast" = 0 ]; then
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)          # the explorer page's browser tests
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  bash scripts/apt_install.sh "${missing[@]}"
fi

LATENTSERVE_REQUIRE_CXX=1 bash scripts/install.sh train,dev
source scripts/python.sh  # after install.sh, which may have made the repo's .venv

if [ "$fast" = 1 ]; then set -- tests/unit "$@"; fi
set +e
"$PYTHON" -m pytest "${@:-tests}"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us, not a pass.
exit $rc
