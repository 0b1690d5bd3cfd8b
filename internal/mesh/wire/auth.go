package wire

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/mesh/identity"
)

// AuthScheme is the §13.1 authorization scheme name.
const AuthScheme = "Ed25519-Timestamp"

// Window is how far a signed timestamp may be from the server's clock
// (§13.1: ±5 minutes).
const Window = 5 * time.Minute

// Auth is a parsed Ed25519-Timestamp header or connect proof: DID,
// timestamp text exactly as signed, and signature.
type Auth struct {
	DID       string
	Timestamp string
	Signature []byte
	Time      time.Time
}

// ErrAuth wraps every reason an authorization is refused.
var ErrAuth = errors.New("wire: authorization refused")

func authErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrAuth, fmt.Sprintf(format, a...))
}

// AuthHeader builds "Ed25519-Timestamp <did> <ts> <sig>" for now: the
// signature is Ed25519 over the UTF-8 timestamp text (§13.1).
func AuthHeader(id *identity.Identity, now time.Time) string {
	ts := now.UTC().Format(time.RFC3339Nano)
	return AuthScheme + " " + id.DID() + " " + ts + " " + B64(id.Sign([]byte(ts)))
}

// ParseAuthHeader splits an Authorization header value. It checks shape
// only; Verify checks the clock and the key.
func ParseAuthHeader(h string) (Auth, error) {
	rest, ok := strings.CutPrefix(h, AuthScheme+" ")
	if !ok {
		return Auth{}, authErr("Authorization is not %s", AuthScheme)
	}
	parts := strings.Split(rest, " ")
	if len(parts) != 3 {
		return Auth{}, authErr("want %s <did> <timestamp> <signature>", AuthScheme)
	}
	return parseAuth(parts[0], parts[1], parts[2])
}

func parseAuth(did, ts, sig string) (Auth, error) {
	if !identity.ValidDID(did) {
		return Auth{}, authErr("%q is not a DID", did)
	}
	if len(ts) > maxTSLen {
		return Auth{}, authErr("timestamp too long")
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		// RFC 3339 requires an offset; Python's isoformat() always
		// writes one for aware datetimes, and the toolkit refuses
		// naive ones too.
		return Auth{}, authErr("timestamp %q is not RFC 3339 with an offset", ts)
	}
	s, err := DecodeB64(sig)
	if err != nil || len(s) != ed25519.SignatureSize {
		return Auth{}, authErr("signature is not a base64 64-byte Ed25519 signature")
	}
	return Auth{DID: did, Timestamp: ts, Signature: s, Time: t}, nil
}

// Verify checks a's timestamp against now (±Window) and its signature
// against pub, which must be the key a.DID names.
func (a Auth) Verify(pub ed25519.PublicKey, now time.Time) error {
	if d := now.Sub(a.Time); d > Window || d < -Window {
		return authErr("timestamp %s is more than %s from the server clock %s", a.Timestamp, Window, now.UTC().Format(time.RFC3339))
	}
	if err := identity.CheckDID(a.DID, pub); err != nil {
		return authErr("%v", err)
	}
	if !ed25519.Verify(pub, []byte(a.Timestamp), a.Signature) {
		return authErr("signature over the timestamp does not verify")
	}
	return nil
}

// ConnectProof reads the proof in a connect frame, in either shape: the
// spec's auth{timestamp, signature} (§12.2) or the toolkit relay's
// top-level public_key, timestamp, signature. pub is the key the frame
// carries, nil for the spec shape (the relay looks it up).
func ConnectProof(f *Frame) (a Auth, pub ed25519.PublicKey, err error) {
	switch {
	case f.Auth != nil:
		a, err = parseAuth(f.From, f.Auth.Timestamp, f.Auth.Signature)
	case f.Timestamp != "" && f.Signature != "":
		a, err = parseAuth(f.From, f.Timestamp, f.Signature)
	default:
		return Auth{}, nil, authErr("connect frame carries no proof (auth, or public_key/timestamp/signature)")
	}
	if err != nil {
		return Auth{}, nil, err
	}
	if f.PublicKey != "" {
		k, ok := decodeFixed(f.PublicKey, ed25519.PublicKeySize)
		if !ok {
			return Auth{}, nil, authErr("public_key is not a base64 32-byte Ed25519 key")
		}
		pub = k
	}
	return a, pub, nil
}

// ConnectFrame builds a connect frame carrying both proof shapes, so the
// toolkit's relay and a spec relay each find the one they read.
func ConnectFrame(id *identity.Identity, now time.Time) *Frame {
	ts := now.UTC().Format(time.RFC3339Nano)
	sig := id.Sign([]byte(ts))
	return &Frame{
		V: Version, Type: TypeConnect, From: id.DID(), TS: ts,
		Auth:      &ConnectAuth{Timestamp: ts, Signature: B64(sig)},
		PublicKey: B64Std(id.PublicKey()), Timestamp: ts, Signature: B64Std(sig),
		SupportedVersions: []int{Version},
	}
}

// ReplayGuard remembers accepted (DID, timestamp) pairs for twice the
// window so a captured header or connect proof cannot be used again.
// Honest clients sign a fresh nanosecond timestamp per request.
type ReplayGuard struct {
	mu    sync.Mutex
	seen  map[string]time.Time
	sweep time.Time
}

// Use records a as used at now, failing if it was used before.
func (g *ReplayGuard) Use(a Auth, now time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.seen == nil {
		g.seen = map[string]time.Time{}
	}
	if now.Sub(g.sweep) > Window {
		for k, t := range g.seen {
			if now.Sub(t) > 2*Window {
				delete(g.seen, k)
			}
		}
		g.sweep = now
	}
	k := a.DID + " " + a.Timestamp
	if _, ok := g.seen[k]; ok {
		return authErr("this signed timestamp was already used; sign a fresh one per request")
	}
	g.seen[k] = now
	return nil
}
