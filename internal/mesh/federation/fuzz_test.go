package federation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"testing"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/registry"
	"github.com/kars-io/kars/internal/mesh/relay"
	"github.com/kars-io/kars/internal/mesh/wire"
)

// FuzzLinkMessage: a peer is authenticated but not trusted with anything
// beyond its own agents. Whatever it sends, the link does not panic, the
// remote table holds only DIDs that name their announced keys and are not
// local, and nothing is stored for an agent that is not global here.
func FuzzLinkMessage(f *testing.F) {
	id, _ := identity.New(rand.Reader)
	ann, _ := json.Marshal(message{T: msgAnnounce, Agents: []announced{{DID: id.DID(), PublicKey: wire.B64(id.PublicKey())}}})
	fr, _ := json.Marshal(message{T: msgFrame, ID: "m1", Frame: json.RawMessage(`{"v":1,"type":"message","from":"` + id.DID() + `","to":"did:mesh:00112233445566778899aabbccddeeff","id":"m1","header":{"dh":"AA","pn":0,"n":0},"ciphertext":"AA"}`)})
	for _, s := range [][]byte{ann, fr, []byte(`{"t":"bundle","rid":1,"did":"did:mesh:x"}`), []byte(`{"t":"stored","id":"x"}`),
		[]byte(`{"t":"announce","agents":[{"did":"did:mesh:00112233445566778899aabbccddeeff","public_key":"AAAA"}]}`), []byte(`{"t":"result","rid":7}`)} {
		f.Add(s)
	}
	dir := f.TempDir()
	store, err := registry.OpenStore(dir)
	if err != nil {
		f.Fatal(err)
	}
	inbox, err := relay.OpenInbox(dir, relay.Quotas{PerRecipientMessages: 100, PerRecipientBytes: 1 << 20, TotalBytes: 1 << 24})
	if err != nil {
		f.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pool := x509.NewCertPool()
	fed, err := New(Options{Name: "a", Store: store, TLS: &tls.Config{Certificates: []tls.Certificate{{PrivateKey: key}}, RootCAs: pool, ClientCAs: pool}})
	if err != nil {
		f.Fatal(err)
	}
	rl := relay.New(inbox, relay.Options{Directory: store, RequireRegistered: true, Remote: fed})
	fed.Attach(rl)
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(func() { cancel(); rl.Close(); inbox.Close(); store.Close() })
	l := &link{f: fed, peer: "b", out: make(chan *message, 1024), notify: make(chan struct{}, 1), ctx: ctx,
		waitMu: make(chanMutex, 1), waiting: map[uint64]chan *message{}}
	go func() {
		for {
			select {
			case <-l.out:
			case <-ctx.Done():
				return
			}
		}
	}()
	f.Fuzz(func(t *testing.T, raw []byte) {
		var m message
		if json.Unmarshal(raw, &m) != nil {
			return
		}
		if m.T == msgRedeem {
			return // answered by the Redeem hook, tested with the server
		}
		l.handle(&m)
		fed.mu.Lock()
		defer fed.mu.Unlock()
		for did, a := range fed.remote {
			if identity.CheckDID(did, a.pub) != nil {
				t.Fatalf("remote table holds %s with a key it does not name", did)
			}
		}
		if n, _ := inbox.Queued("did:mesh:00112233445566778899aabbccddeeff"); n != 0 {
			t.Fatal("a frame was stored for an agent that is not a global agent of this mesh")
		}
	})
}
