// Command runtimes prepares every runtime adapter's environment in the
// runtime cache (internal/runtimeenv), so that tests and `kars dev` find
// them installed: `make runtimes`. Prepared environments are skipped; the
// first run installs from PyPI and npm (about 4–5 minutes on 2 cores).
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/kars-io/kars/internal/runtimeenv"
	"github.com/kars-io/kars/runtimes"
)

func main() {
	o := runtimeenv.Options{Progress: func(s string) { fmt.Fprintln(os.Stderr, "  "+s) }}
	start := time.Now()
	for _, id := range runtimes.MustLoad().IDs() {
		env, err := runtimeenv.Prepare(context.Background(), o, id)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%-28s %s\n", id, env.Dir)
	}
	fmt.Fprintf(os.Stderr, "runtime environments ready in %s (cache %s)\n", time.Since(start).Round(time.Second), runtimeenv.DefaultRoot())
}
