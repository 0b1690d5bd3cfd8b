package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/egress/artifact"
	"github.com/kars-io/kars/internal/routerconfig"
)

// egressConfig turns the egress flags into the SignerPolicy and the
// blocklist configuration every router gets.
func egressConfig(c *config) (*controller.SignerPolicy, *routerconfig.Blocklist, error) {
	sp := &controller.SignerPolicy{}
	if c.signerKeys != "" {
		raw, err := os.ReadFile(c.signerKeys)
		if err != nil {
			return nil, nil, fmt.Errorf("--egress-signer-keys: %w", err)
		}
		if sp.Keys, err = artifact.ParsePublicKeys(raw); err != nil {
			return nil, nil, fmt.Errorf("--egress-signer-keys %s: %w", c.signerKeys, err)
		}
	}
	for _, h := range strings.Split(c.plainRegistries, ",") {
		if h = strings.TrimSpace(h); h != "" {
			sp.PlainHTTP = append(sp.PlainHTTP, h)
		}
	}
	var bl *routerconfig.Blocklist
	for _, s := range strings.Split(c.blocklist, ",") {
		s = strings.TrimSpace(s)
		switch {
		case s == "":
			continue
		case strings.HasPrefix(s, "https://"):
			bl = appendSource(bl, routerconfig.BlocklistSource{URL: s})
		case strings.HasPrefix(s, "oci://"):
			bl = appendSource(bl, routerconfig.BlocklistSource{OCI: strings.TrimPrefix(s, "oci://")})
		default:
			return nil, nil, fmt.Errorf("--egress-blocklist %q: want https://… or oci://REGISTRY/REPO:TAG", s)
		}
	}
	if bl != nil {
		if d, err := time.ParseDuration(c.blocklistRefresh); err != nil || d < time.Minute {
			return nil, nil, fmt.Errorf("--egress-blocklist-refresh %q: want a duration of at least 1m", c.blocklistRefresh)
		}
		bl.Refresh = c.blocklistRefresh
	}
	return sp, bl, nil
}

func appendSource(bl *routerconfig.Blocklist, s routerconfig.BlocklistSource) *routerconfig.Blocklist {
	if bl == nil {
		bl = &routerconfig.Blocklist{}
	}
	bl.Sources = append(bl.Sources, s)
	return bl
}
