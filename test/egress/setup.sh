#!/usr/bin/env bash
# Installs the Python HTTP clients the egress sandbox tests run inside a
# real local sandbox (httpx and requests, exact versions from
# requirements.txt) into test/egress/.venv, built on the system Python
# (/usr/bin/python3): the agent runs as UID 1000 and cannot reach a Python
# under /root. curl and Node (its built-in fetch) come from Debian.
# CI runs this, then `KARS_REQUIRE_EGRESS_CLIENTS=1 go test ./test/egress/`.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import httpx, requests' 2>/dev/null; then
  exit 0
fi
/usr/bin/python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -c 'import httpx, requests; print("httpx", httpx.__version__, "requests", requests.__version__)'
chmod -R a+rX .venv
