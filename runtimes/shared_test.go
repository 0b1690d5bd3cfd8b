package runtimes

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// calcCases are the default calculator's answers, the same in the Python
// and Node contract modules: free text, as the offline model sends it
// with a runtime's context around it, reduced to one arithmetic run.
var calcCases = map[string]string{
	"6*7":                        "42",
	"use the calculator for 6*7": "42",
	"[Sun 2026-12-07 00:31 UTC] use the calculator for 6*7":                                "42",
	"use the calculator for 6*7\n[OpenClaw 2026.9.6] Sun 2026-12-07 00:47 UTC, 3 sessions": "42",
	"System: 1.2.3 at 12:30 - use the calculator for 2+3":                                  "5",
	"(2 + 3) * 4":     "20",
	"-3 - -2":         "-1",
	"10 / 4":          "2.5",
	"1/0":             "ERR",
	"(1+2":            "ERR",
	"no numbers here": "ERR",
	strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100): "ERR",
}

func runCalc(t *testing.T, argv ...string) {
	t.Helper()
	if _, err := exec.LookPath(argv[0]); err != nil {
		t.Skipf("%s not installed", argv[0])
	}
	for in, want := range calcCases {
		out, err := exec.Command(argv[0], append(slices.Clone(argv[1:]), in)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != want {
			t.Errorf("%s: calculate(%q) = %q, want %q", argv[0], in, got, want)
		}
	}
}

func TestPythonCalculator(t *testing.T) {
	runCalc(t, "python3", "-c", `import sys; sys.path.insert(0, "python"); import kars_runtime as k
try: print(k.calculate(sys.argv[1]))
except Exception: print("ERR")`)
}

func TestNodeCalculator(t *testing.T) {
	runCalc(t, "node", "--input-type=module", "-e", `import { calculate } from "./node/kars-runtime.mjs";
try { console.log(calculate(process.argv[1])); } catch { console.log("ERR"); }`, "--")
}
