package ingress

import (
	"crypto/tls"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/a2a/card"
	"github.com/kars-io/kars/internal/a2a/rpc"
	"github.com/kars-io/kars/internal/routerconfig"
)

// signedCards caches the cards of one A2A section: signing is cheap, but
// not free, and the section changes only on reloads.
type signedCards struct {
	key    string
	signed *card.Signed
}

// cardSpec is what the cards say about a sandbox.
func (i *Ingress) cardSpec(cfg *routerconfig.A2A) card.Spec {
	name := i.o.Sandbox
	if _, n, ok := strings.Cut(name, "/"); ok {
		name = n
	}
	s := card.Spec{Name: name, Description: "kars sandbox " + i.o.Sandbox + ": a governed agent; every call is checked and audited by its router",
		Version: i.o.Version, URL: cfg.PublicURL, Streaming: cfg.AllowStreaming}
	if s.Version == "" {
		s.Version = "0.0.0"
	}
	for _, sk := range cfg.Skills {
		s.Skills = append(s.Skills, card.Skill{Name: sk.Name, Description: sk.Description})
	}
	return s
}

// Cards returns the signed cards for cfg (cached while cfg's card content
// is unchanged).
func (i *Ingress) Cards(cfg *routerconfig.A2A) (*card.Signed, error) {
	s := i.cardSpec(cfg)
	key := s.Name + "\x00" + s.URL + "\x00" + s.Version + "\x00" + boolKey(s.Streaming)
	for _, sk := range s.Skills {
		key += "\x00" + sk.Name + "\x01" + sk.Description
	}
	if cur := i.cards.Load(); cur != nil && cur.key == key {
		return cur.signed, nil
	}
	signed, err := card.SignBoth(s, i.o.CardKey, strings.TrimSuffix(cfg.PublicURL, "/")+PathJWKS)
	if err != nil {
		return nil, err
	}
	i.cards.Store(&signedCards{key: key, signed: signed})
	return signed, nil
}

func boolKey(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// serveCard answers the card paths (GET only). The cards are served to
// the gateway, which hands them to allowed callers.
func (i *Ingress) serveCard(w http.ResponseWriter, r *http.Request, cfg *routerconfig.A2A) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		(&rpc.Error{Code: rpc.CodeInvalidRequest, Message: "the card is fetched with GET", Reason: "kars_method_not_allowed"}).Write(w, http.StatusMethodNotAllowed, nil)
		return
	}
	if !cfg.Open(i.now()) {
		(&rpc.Error{Code: rpc.CodeUnauthorized, Message: "this sandbox is not exposed to A2A callers", Reason: "kars_not_exposed"}).Write(w, http.StatusNotFound, nil)
		return
	}
	signed, err := i.Cards(cfg)
	if err != nil {
		(&rpc.Error{Code: rpc.CodeInternalError, Message: "signing the card: " + err.Error(), Reason: "kars_card_unavailable"}).Write(w, http.StatusInternalServerError, nil)
		return
	}
	var b []byte
	switch r.URL.Path {
	case PathCard:
		b = signed.V1
	case PathCardV03:
		b = signed.V03
	default:
		b = signed.JWKS
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}

// certCache holds the serving certificate, re-read when its files change
// (the controller renews the admin certificate the ingress shares).
type certCache struct {
	mu        sync.Mutex
	cert      *tls.Certificate
	certFile  string
	keyFile   string
	stamp     []time.Time
	checkedAt time.Time
}

func (cc *certCache) get(certFile, keyFile string, now time.Time) (*tls.Certificate, error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.cert != nil && cc.certFile == certFile && cc.keyFile == keyFile && now.Sub(cc.checkedAt) < 10*time.Second {
		return cc.cert, nil
	}
	stamp := []time.Time{modTime(certFile), modTime(keyFile)}
	cc.checkedAt = now
	if cc.cert != nil && cc.certFile == certFile && cc.keyFile == keyFile && slices.Equal(stamp, cc.stamp) {
		return cc.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cc.cert, cc.certFile, cc.keyFile, cc.stamp = &cert, certFile, keyFile, stamp
	return cc.cert, nil
}

func modTime(p string) time.Time {
	st, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}
