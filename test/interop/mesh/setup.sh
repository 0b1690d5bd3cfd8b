#!/usr/bin/env bash
# Installs the Agent Governance Toolkit's Python AgentMesh implementation
# (the `agentmesh` module of agent-governance-toolkit-core) with the extras
# its registry and relay servers need, into test/interop/mesh/.venv, pinned.
# Idempotent: a venv that already holds these exact versions is kept.
# CI runs this, then `KARS_REQUIRE_INTEROP=1 go test ./test/interop/mesh/`.
set -euo pipefail
cd "$(dirname "$0")"

PINS=(
  "agent-governance-toolkit-core==5.0.0"
  "fastapi==0.163.2"
  "uvicorn==0.54.0"
  "websockets==17.4"
)
STAMP=.venv/kars-pins
WANT="$(printf '%s\n' "${PINS[@]}")"

if [[ -x .venv/bin/python && -f $STAMP && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi
rm -rf .venv
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
.venv/bin/python -c 'import agentmesh.encryption.ratchet, agentmesh.relay.app, agentmesh.registry.app, websockets; print("agentmesh (agent-governance-toolkit-core 5.0.0) ready")'
printf '%s\n' "${PINS[@]}" > "$STAMP"
