#!/usr/bin/env bash
# The README's test command: installs what the tests need (Debian's redis-server, prometheus and haproxy when absent;
# the package with its train+dev extras, the compiled gRPC transport and the generated gRPC code through
# scripts/install.sh, which must build the transport here), then runs the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
bash scripts/apt_install.sh "${missing[@]}"

LATENTSERVE_REQUIRE_CXX=1 bash scripts/install.sh train,dev

set +e
python -m pytest "${@:-tests}"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us, not a pass.
exit $rc
