package peer

import (
	"net/url"
	"strings"
	"testing"

	"github.com/kars-io/kars/internal/a2a/card"
)

// FuzzDescribe feeds describe what a foreign server may send as its card
// (after the signature check, which card.FuzzVerifyCard covers): it must
// not panic, must only ever name an https endpoint with a host, and must
// read the canonical form of a card the same way as the card itself.
func FuzzDescribe(f *testing.F) {
	f.Add([]byte(`{"name":"p","supportedInterfaces":[{"url":"https://p.example/a2a","protocolBinding":"JSONRPC","protocolVersion":"1.0"}],"skills":[{"id":"s"}]}`), "1.0")
	f.Add([]byte(`{"name":"p","url":"https://p.example:8443/rpc","protocolVersion":"0.3.0","preferredTransport":"JSONRPC","skills":[{"id":"a"},{"id":"b"}]}`), "0.3")
	f.Add([]byte(`{"url":"http://p.example/rpc"}`), "0.3")
	f.Add([]byte(`{"supportedInterfaces":[{"url":"https://","protocolBinding":"JSONRPC","protocolVersion":"1.0.1"}]}`), "1.0")
	f.Add([]byte(`{"skills":[{"id":1}]}`), "1.0")
	f.Add([]byte(`[]`), "")
	f.Fuzz(func(t *testing.T, raw []byte, version string) {
		v, err := describe(raw, version)
		if err != nil {
			return
		}
		u, err := url.Parse(v.Endpoint)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			t.Fatalf("describe accepted endpoint %q", v.Endpoint)
		}
		if !strings.HasPrefix(v.CardDigest, "sha256:") || len(v.CardDigest) != len("sha256:")+64 {
			t.Fatalf("digest %q", v.CardDigest)
		}
		canon, err := card.Canonical(raw)
		if err != nil {
			t.Fatalf("described a card that does not canonicalise: %v", err)
		}
		w, err := describe(canon, version)
		if err != nil {
			t.Fatalf("the canonical form of a described card is refused: %v", err)
		}
		if w.Endpoint != v.Endpoint || w.CardDigest != v.CardDigest || strings.Join(w.Skills, "\x00") != strings.Join(v.Skills, "\x00") {
			t.Fatalf("card and its canonical form read differently: %+v vs %+v", v, w)
		}
	})
}
