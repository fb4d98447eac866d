#!/usr/bin/env bash
# The README's test command: installs what the tests need (Debian's redis-server, prometheus and haproxy when absent,
# the package with its train+dev extras, the generated gRPC code), then runs the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python -m pip install -q -e '.[train,dev]'
python -m latentserve.protogen

set +e
python -m pytest "${@:-tests}"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure for us, not a pass.
exit $rc
