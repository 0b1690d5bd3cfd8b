package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/egress/sandboxca"
	"github.com/kars-io/kars/internal/router"
	"github.com/kars-io/kars/internal/routerconfig"
)

// trust is `kars-router trust`: the step that runs as the router (UID
// 1001) before the agent starts, in a sandbox with credentials bound to
// HTTPS hosts. It creates the sandbox's credential CA on the router's state
// volume if there is none — the key is generated here and never leaves that
// volume — issues its certificate for exactly the bound hosts, and writes
// the certificate and a trust bundle (system roots + CA) where the agent
// reads them (docs/credentials.md).
func trust(args []string) int {
	fs := flag.NewFlagSet("kars-router trust", flag.ContinueOnError)
	state := fs.String("state", "/var/lib/kars/state", "the router's state directory (the CA lives in its "+router.CADir+" folder), under $"+routerconfig.EnvRoot+" when set")
	out := fs.String("out", "/var/run/kars/trust", "where to write "+sandboxca.AgentCAFile+" and "+sandboxca.AgentBundleFile+" for the agent")
	hosts := fs.String("hosts", "", "comma-separated host names (or IP addresses) credentials are bound to over HTTPS")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var hs []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hs = append(hs, h)
		}
	}
	root := os.Getenv(routerconfig.EnvRoot)
	ca, err := sandboxca.Ensure(filepath.Join(routerconfig.UnderRoot(root, *state), router.CADir), hs, time.Now())
	if err != nil {
		fmt.Fprintf(os.Stderr, "kars-router trust: %v\n", err)
		return 1
	}
	roots, err := sandboxca.SystemRoots()
	if err != nil {
		// The agent still trusts the CA; it may have its own roots.
		fmt.Fprintf(os.Stderr, "kars-router trust: %v; the bundle holds the sandbox CA alone\n", err)
	}
	if err := sandboxca.Publish(ca, roots, *out); err != nil {
		fmt.Fprintf(os.Stderr, "kars-router trust: %v\n", err)
		return 1
	}
	fmt.Printf("sandbox credential CA for %s written to %s\n", strings.Join(hs, ", "), *out)
	return 0
}
