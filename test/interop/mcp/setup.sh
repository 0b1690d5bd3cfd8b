#!/usr/bin/env bash
# Installs what the MCP gateway interop tests drive, pinned:
#   - npm: @modelcontextprotocol/server-everything 2026.8.31 (the reference
#     MCP server, run as an McpServer) and @modelcontextprotocol/conformance
#     0.1.16 (the conformance suite run against the router's MCP endpoint),
#     exact versions from package-lock.json, into node_modules;
#   - PyPI: the official Python SDK, mcp 2.3.0, into .venv.
# Idempotent and fast when nothing changed: each half is skipped when its
# stamp matches its pins. CI runs this, then
# `KARS_REQUIRE_INTEROP=1 go test ./test/interop/mcp/`.
set -euo pipefail
cd "$(dirname "$0")"

PY_PINS=("mcp==2.3.0")
PY_STAMP=.venv/kars-pins
PY_WANT="$(printf '%s\n' "${PY_PINS[@]}")"
if [[ ! -x .venv/bin/python || ! -f $PY_STAMP || "$(cat "$PY_STAMP")" != "$PY_WANT" ]]; then
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${PY_PINS[@]}"
  .venv/bin/python -c 'import importlib.metadata as m; print("python mcp", m.version("mcp"))'
  printf '%s\n' "${PY_PINS[@]}" > "$PY_STAMP"
fi

NPM_STAMP=node_modules/.kars-lock-sha256
NPM_WANT="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f $NPM_STAMP || "$(cat "$NPM_STAMP")" != "$NPM_WANT" ]]; then
  # --prefer-offline: a warm npm cache (~/.npm) serves the tarballs, Node 24
  # among them, without revalidating each with the registry.
  npm ci --prefer-offline --no-audit --no-fund --loglevel=error
  node -e 'for (const p of ["server-everything", "conformance"]) console.log("npm @modelcontextprotocol/" + p, require("@modelcontextprotocol/" + p + "/package.json").version)'
  echo "$NPM_WANT" > "$NPM_STAMP"
fi
