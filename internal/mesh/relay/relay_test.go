package relay

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/wire"
	"github.com/kars-io/kars/internal/ratelimit"
)

func startRelay(t *testing.T, opt Options) (string, *Inbox, *Relay) {
	t.Helper()
	in, err := OpenInbox(t.TempDir(), Quotas{PerRecipientMessages: 100, PerRecipientBytes: 1 << 20, TotalBytes: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	r := New(in, opt)
	srv := httptest.NewServer(r)
	t.Cleanup(func() { r.Close(); srv.Close(); in.Close() })
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws", in, r
}

// dial sends first and returns the close status the relay ends with.
func closeStatus(t *testing.T, url string, first []byte) websocket.StatusCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if first != nil {
		ws.Write(ctx, websocket.MessageText, first)
	}
	for {
		if _, _, err := ws.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

func TestConnectRefusals(t *testing.T) {
	url, _, rel := startRelay(t, Options{})
	id, _ := identity.New(rand.Reader)
	other, _ := identity.New(rand.Reader)
	hb, _ := (&wire.Frame{V: 1, Type: wire.TypeHeartbeat}).Marshal()
	if got := closeStatus(t, url, hb); got != closeNotConnect {
		t.Errorf("heartbeat first: %d", got)
	}
	// A proof for another key than the DID names.
	f := wire.ConnectFrame(id, time.Now())
	f.From = other.DID()
	b, _ := f.Marshal()
	if got := closeStatus(t, url, b); got != closeProof {
		t.Errorf("foreign DID: %d", got)
	}
	// A stale proof.
	b, _ = wire.ConnectFrame(id, time.Now().Add(-10*time.Minute)).Marshal()
	if got := closeStatus(t, url, b); got != closeProof {
		t.Errorf("stale proof: %d", got)
	}
	// The same proof twice: the second is a replay.
	b, _ = wire.ConnectFrame(id, time.Now()).Marshal()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.Write(ctx, websocket.MessageText, b)
	defer ws.CloseNow()
	for !rel.Connected(id.DID()) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := closeStatus(t, url, b); got != closeProof {
		t.Errorf("replayed proof: %d", got)
	}
}

func TestIdleConnectionClosed(t *testing.T) {
	url, _, _ := startRelay(t, Options{IdleTimeout: 300 * time.Millisecond})
	id, _ := identity.New(rand.Reader)
	b, _ := wire.ConnectFrame(id, time.Now()).Marshal()
	start := time.Now()
	if got := closeStatus(t, url, b); got != closeIdle {
		t.Fatalf("idle connection closed with %d", got)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatal("closed before the idle timeout")
	}
}

func TestExpire(t *testing.T) {
	_, in, _ := startRelay(t, Options{})
	now := time.Now()
	in.Put("did:mesh:00000000000000000000000000000001", "s", "old", []byte("x"), now.Add(-73*time.Hour))
	in.Put("did:mesh:00000000000000000000000000000001", "s", "new", []byte("y"), now)
	if n := in.Expire(now.Add(-DefaultTTL)); n != 1 {
		t.Fatalf("expired %d, want 1", n)
	}
	got := in.After("did:mesh:00000000000000000000000000000001", 0, 10)
	if len(got) != 1 || got[0].id != "new" {
		t.Fatalf("left %v", got)
	}
}

func TestSendRateLimit(t *testing.T) {
	url, in, _ := startRelay(t, Options{SendRate: ratelimit.Limit{Events: 1, Per: time.Hour, Burst: 2}})
	id, _ := identity.New(rand.Reader)
	peer, _ := identity.New(rand.Reader)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	b, _ := wire.ConnectFrame(id, time.Now()).Marshal()
	ws.Write(ctx, websocket.MessageText, b)
	for i := range 3 {
		f := wire.Frame{V: 1, Type: wire.TypeKnock, From: id.DID(), To: peer.DID(), ID: fmt.Sprint("k", i), Intent: &wire.Intent{Action: "x"}}
		b, _ := f.Marshal()
		ws.Write(ctx, websocket.MessageText, b)
	}
	_, b, err = ws.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if f, _ := wire.Parse(b); f == nil || f.Type != wire.TypeError || f.ID != "k2" || !strings.Contains(f.Detail, "rate limit") {
		t.Fatalf("third frame answered with %s", b)
	}
	if n, _ := in.Queued(peer.DID()); n != 2 {
		t.Fatalf("%d frames queued, want the 2 within the burst", n)
	}
}

func TestTotalQuota(t *testing.T) {
	_, in, _ := startRelay(t, Options{}) // 1 MiB per recipient, 3 MiB in all
	big := make([]byte, 900<<10)
	for i := range 3 {
		if _, _, err := in.Put(fmt.Sprintf("did:mesh:%032d", i), "s", "m", big, time.Now()); err != nil {
			t.Fatalf("recipient %d: %v", i, err)
		}
	}
	if _, _, err := in.Put(fmt.Sprintf("did:mesh:%032d", 3), "s", "m", big, time.Now()); !errors.Is(err, ErrRelayFull) {
		t.Fatalf("fourth recipient: %v", err)
	}
	if _, _, err := in.Put(fmt.Sprintf("did:mesh:%032d", 0), "s", "m2", big, time.Now()); !errors.Is(err, ErrInboxFull) {
		t.Fatalf("second frame to a full recipient: %v", err)
	}
	in.Ack(fmt.Sprintf("did:mesh:%032d", 0), "m")
	if _, _, err := in.Put(fmt.Sprintf("did:mesh:%032d", 3), "s", "m", big, time.Now()); err != nil {
		t.Fatalf("after an ack freed room: %v", err)
	}
}

// Enough acked traffic compacts the journal in the background; a
// reopened inbox holds exactly the frames still queued, in order.
func TestCompactionKeepsQueuedFrames(t *testing.T) {
	dir := t.TempDir()
	in, err := OpenInbox(dir, Quotas{PerRecipientMessages: 1000, PerRecipientBytes: 1 << 20, TotalBytes: 1 << 24})
	if err != nil {
		t.Fatal(err)
	}
	const r = "did:mesh:00000000000000000000000000000001"
	for i := range 5 {
		in.Put(r, "s", fmt.Sprint("keep", i), []byte("k"), time.Now())
	}
	for i := range 20000 {
		id := fmt.Sprint("gone", i)
		in.Put(r, "s", id, []byte("frame"), time.Now())
		in.Ack(r, id)
	}
	in.Put(r, "s", "last", []byte("l"), time.Now())
	t0, _, _ := in.Put(r, "s", "sync", []byte("z"), time.Now())
	if err := in.Wait(t0); err != nil {
		t.Fatal(err)
	}
	for {
		in.mu.Lock()
		busy := in.compacting
		in.mu.Unlock()
		if !busy {
			break
		}
		time.Sleep(time.Millisecond)
	}
	size := in.log.Size()
	in.Close()
	if size > 1<<20 {
		t.Errorf("journal is %d bytes after 20,000 acked frames: not compacted", size)
	}
	in2, err := OpenInbox(dir, Quotas{PerRecipientMessages: 1000, PerRecipientBytes: 1 << 20, TotalBytes: 1 << 24})
	if err != nil {
		t.Fatal(err)
	}
	defer in2.Close()
	var ids []string
	for _, e := range in2.After(r, 0, 100) {
		ids = append(ids, e.id)
	}
	if got := strings.Join(ids, " "); got != "keep0 keep1 keep2 keep3 keep4 last sync" {
		t.Fatalf("after compaction and reopen: %s", got)
	}
}
