package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/egress/artifact"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/routerconfig"
)

// egressConfig turns the egress flags into the SignerPolicy and the
// blocklist configuration every router gets.
func egressConfig(c *config) (*controller.SignerPolicy, *routerconfig.Blocklist, *render.ConfigMapKey, error) {
	sp := &controller.SignerPolicy{}
	if c.signerKeys != "" {
		raw, err := os.ReadFile(c.signerKeys)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("--egress-signer-keys: %w", err)
		}
		if sp.Keys, err = artifact.ParsePublicKeys(raw); err != nil {
			return nil, nil, nil, fmt.Errorf("--egress-signer-keys %s: %w", c.signerKeys, err)
		}
	}
	for _, h := range strings.Split(c.plainRegistries, ",") {
		if h = strings.TrimSpace(h); h != "" {
			sp.PlainHTTP = append(sp.PlainHTTP, h)
		}
	}
	var bl *routerconfig.Blocklist
	var cm *render.ConfigMapKey
	for _, s := range strings.Split(c.blocklist, ",") {
		s = strings.TrimSpace(s)
		switch {
		case s == "":
			continue
		case strings.HasPrefix(s, "configmap:"):
			name, key, _ := strings.Cut(strings.TrimPrefix(s, "configmap:"), "/")
			if key == "" {
				key = "blocklist.txt"
			}
			if name == "" || cm != nil {
				return nil, nil, nil, fmt.Errorf("--egress-blocklist %q: want one configmap:NAME[/KEY]", s)
			}
			cm = &render.ConfigMapKey{Name: name, Key: key}
		case strings.HasPrefix(s, "https://"):
			bl = appendSource(bl, routerconfig.BlocklistSource{URL: s})
		case strings.HasPrefix(s, "oci://"):
			bl = appendSource(bl, routerconfig.BlocklistSource{OCI: strings.TrimPrefix(s, "oci://")})
		default:
			return nil, nil, nil, fmt.Errorf("--egress-blocklist %q: want https://…, oci://REGISTRY/REPO:TAG or configmap:NAME[/KEY]", s)
		}
	}
	if bl != nil || cm != nil {
		if d, err := time.ParseDuration(c.blocklistRefresh); err != nil || d < time.Minute {
			return nil, nil, nil, fmt.Errorf("--egress-blocklist-refresh %q: want a duration of at least 1m", c.blocklistRefresh)
		}
		if bl == nil {
			bl = &routerconfig.Blocklist{}
		}
		bl.Refresh = c.blocklistRefresh
	}
	return sp, bl, cm, nil
}

func appendSource(bl *routerconfig.Blocklist, s routerconfig.BlocklistSource) *routerconfig.Blocklist {
	if bl == nil {
		bl = &routerconfig.Blocklist{}
	}
	bl.Sources = append(bl.Sources, s)
	return bl
}
