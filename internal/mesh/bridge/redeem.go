package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/kars-io/kars/internal/pairing"
)

// AdminRedeemPath is where `kars mesh auth` asks the router to redeem a
// pairing token with its mesh identity.
const AdminRedeemPath = "/admin/v1/mesh/redeem"

// Redeem presents token, with a proof signed by the router's identity, at
// the router's own kars-mesh, which redeems tokens its cluster issued and
// forwards the others to its federation peers: the router talks to no
// other mesh. The token's pairing is then bound to this router, and the
// result says who the issuer is. Only the router can sign the proof; the
// CLI never sees the identity key.
func (b *Bridge) Redeem(ctx context.Context, token string) (*pairing.Result, error) {
	if _, err := pairing.Parse(token); err != nil {
		return nil, err
	}
	body, _ := json.Marshal(pairing.NewRedemption(token, b.self, b.o.Now()))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(b.o.Registry, "/")+pairing.RedeemPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.client.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("redeeming at %s: %w", b.o.Registry, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Detail string `json:"detail"`
		}
		json.Unmarshal(raw, &e)
		return nil, fmt.Errorf("the registry at %s refused the token (%s): %s", b.o.Registry, resp.Status, e.Detail)
	}
	var res pairing.Result
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("the registry's answer: %w", err)
	}
	return &res, nil
}
