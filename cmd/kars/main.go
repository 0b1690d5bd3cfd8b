// Command kars is the kars CLI: local development (`kars dev`), sandboxes,
// models, credentials, audit and the operator views.
package main

import (
	"os"

	"github.com/kars-io/kars/internal/cli"
	"github.com/kars-io/kars/internal/sandbox/local"
)

func main() {
	// A sandbox stage re-executes this binary; it branches off here.
	local.InitMain()
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
