# Sourced by install.sh, test.sh and scripts/latentserve: sets PYTHON, the interpreter latentserve is installed
# into. The repo's .venv when install.sh made one (for a Python that refuses pip installs outside a virtual
# environment, PEP 668: Debian's own python3) and no other virtual environment is active; else `python`, or
# `python3` where there is no `python` (plain Debian).
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x "$_repo/.venv/bin/python" ]; then
  PYTHON="$_repo/.venv/bin/python"
elif command -v python >/dev/null 2>&1; then
  PYTHON=python
else
  PYTHON=python3
fi
unset _repo
