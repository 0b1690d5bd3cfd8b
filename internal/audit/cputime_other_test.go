//go:build !linux

package audit

import "time"

// processCPU is not measured off Linux; benchmarks then omit CPU per entry.
func processCPU() time.Duration { return 0 }
