package cli

import (
	"os"
	"testing"

	"github.com/kars-io/kars/internal/up/aks/aztest"
)

// TestMain lets the test binary stand in for the az CLI (aztest.Install).
func TestMain(m *testing.M) {
	if aztest.Main() {
		return
	}
	os.Exit(m.Run())
}
