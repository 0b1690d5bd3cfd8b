package pairing

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/wire"
)

// Redemption is what a redeemer presents: the token, its mesh identity,
// and a signature by that identity over the token's hash, the DID and a
// timestamp. The signature binds the redemption to the token and to the
// key, so a redemption seen in transit cannot bind another token or
// another identity.
type Redemption struct {
	Token     string `json:"token"`
	DID       string `json:"did"`
	PublicKey string `json:"public_key"`
	Timestamp string `json:"timestamp"`
	Signature string `json:"signature"`
}

// RedeemPath is where a kars-mesh registry redeems tokens (POST, a
// Redemption body, a Result answer).
const RedeemPath = "/v1/pairings/redeem"

// RedemptionWindow is how far a redemption's timestamp may be from the
// verifier's clock.
const RedemptionWindow = 5 * time.Minute

func redemptionMessage(hash, did, ts string) []byte {
	return []byte("kars-pair-redeem-v1\n" + hash + "\n" + did + "\n" + ts)
}

// NewRedemption signs a redemption of token by id at now.
func NewRedemption(token string, id *identity.Identity, now time.Time) Redemption {
	ts := now.UTC().Format(time.RFC3339Nano)
	return Redemption{Token: token, DID: id.DID(), PublicKey: wire.B64(id.PublicKey()), Timestamp: ts,
		Signature: wire.B64(id.Sign(redemptionMessage(Hash(token), id.DID(), ts)))}
}

// ErrProof reports a redemption whose proof of possession fails.
var ErrProof = errors.New("pairing: the redeemer's proof does not verify")

// Check verifies the redeemer's proof: the DID names the key, the
// signature verifies, the timestamp is within the window. It does not
// look at the token's own signature (Verify does).
func (r *Redemption) Check(now time.Time) (ed25519.PublicKey, error) {
	pub, err := wire.DecodeB64(r.PublicKey)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: public_key", ErrProof)
	}
	if err := identity.CheckDID(r.DID, pub); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProof, err)
	}
	ts, err := time.Parse(time.RFC3339Nano, r.Timestamp)
	if err != nil || ts.Sub(now).Abs() > RedemptionWindow {
		return nil, fmt.Errorf("%w: timestamp %q is not within %s of now", ErrProof, r.Timestamp, RedemptionWindow)
	}
	sig, err := wire.DecodeB64(r.Signature)
	if err != nil || !ed25519.Verify(pub, redemptionMessage(Hash(r.Token), r.DID, r.Timestamp), sig) {
		return nil, ErrProof
	}
	return pub, nil
}

// Result is what a redeemer learns: the pairing it now holds and where
// its peer (the issuing sandbox) is.
type Result struct {
	Pairing      string    `json:"pairing"`
	Name         string    `json:"name"`
	Sandbox      string    `json:"sandbox,omitempty"`
	Issuer       string    `json:"issuer,omitempty"`
	Registry     string    `json:"registry"`
	Relay        string    `json:"relay"`
	ExpiresAt    time.Time `json:"expiresAt"`
	Capabilities []string  `json:"capabilities"`
}

// Errors of a redemption, beyond the token's own and the proof's.
var (
	ErrUnknownToken    = errors.New("pairing: no pairing holds this token (never issued, or deleted)")
	ErrAlreadyRedeemed = errors.New("pairing: the token was already redeemed")
	ErrRevoked         = errors.New("pairing: the pairing was revoked")
)
