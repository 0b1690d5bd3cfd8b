#!/usr/bin/env bash
# Reproduces bench/governance/RESULTS.md: policy evaluation and durable audit
# append benchmarks, each next to the baseline it is compared with.
# Usage: bench/governance/run.sh [count]   (from the repository root)
set -euo pipefail
count="${1:-5}"
cd "$(dirname "$0")/../.."
echo "## machine"
echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(uname -sr); $(go version)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "audit dir filesystem: $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}')"
echo
echo "## policy evaluation (100-rule profile)"
go test -run '^$' -bench 'Decide100Rules' -benchmem -count "$count" ./internal/governance/
echo
echo "## audit append (durable)"
# One pass per count, so that each benchmark's window=0s baseline runs right
# before its window=2ms variant every time, under the same neighbours' load.
for i in $(seq "$count"); do
  go test -run '^$' -bench 'AppendGroupCommit|AppendOpenLoop|AppendIdle|AppendWriteSyncBaseline|Seal' -benchtime 3s -count 1 ./internal/audit/
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
