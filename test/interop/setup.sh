#!/usr/bin/env bash
# Installs the official OpenAI clients that the interop tests drive against
# kars-router: the Python SDK into test/interop/.venv and the npm SDK into
# test/interop/node_modules (exact versions from package-lock.json).
# CI runs this, then `KARS_REQUIRE_INTEROP=1 go test ./test/interop/`.
set -euo pipefail
cd "$(dirname "$0")"

OPENAI_PYTHON_VERSION=3.57.0

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "openai==${OPENAI_PYTHON_VERSION}"
.venv/bin/python -c 'import openai; print("python openai", openai.__version__)'

npm ci --no-audit --no-fund --loglevel=error
node --input-type=module -e 'import { VERSION } from "openai/version"; console.log("npm openai", VERSION)'
