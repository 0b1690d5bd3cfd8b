package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/audit"
	"github.com/kars-io/kars/internal/governance"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/mesh/identity"
	"github.com/kars-io/kars/internal/mesh/policy"
	"github.com/kars-io/kars/internal/offload"
	"github.com/kars-io/kars/internal/ratelimit"
	"github.com/kars-io/kars/internal/trust"
)

// OffloadOptions turn on cloud offload (docs/offload.md): the controller
// runs the offload broker, a mesh endpoint of its own that offload
// pairings' peers talk to, and reconciles offload pairings and their
// sandboxes.
type OffloadOptions struct {
	// Dir holds the broker's state: its mesh sessions, audit log and
	// trust scores (the identity itself lives in a Secret, so that a lost
	// folder costs sessions, not the identity tokens name). It must
	// persist across restarts.
	Dir string
	// Registry and Relay are kars-mesh as the controller reaches it;
	// empty means the environment's (Env.Mesh).
	Registry, Relay string
	// Dial, when set, opens the broker's connections to kars-mesh.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives the broker's log; nil means slog.Default().
	Logger *slog.Logger
}

// Names of the broker's identity objects in the system namespace: a
// Secret with the Ed25519 seed (only the controller reads it) and a
// ConfigMap with its DID and public key, which `kars pair generate` puts
// into offload tokens as their issuer.
const (
	OffloadIdentityName = "kars-offload"
	OffloadDIDKey       = "did"
	offloadSeedKey      = "seed"
	offloadPublicKeyKey = "publicKey"
	offloadBrokerAgent  = "offload-broker"
)

// Audit rules of the broker's own decisions.
const (
	ruleOffload = "kars-offload"
)

// offloadRequestRate bounds what one pairing's peer may ask of the broker.
var offloadRequestRate = ratelimit.Limit{Events: 60, Per: time.Minute, Burst: 20}

// offloadBroker is the cluster's end of the offload protocol.
type offloadBroker struct {
	c    client.Client
	live client.Reader
	sys  string
	oo   OffloadOptions
	now  func() time.Time
	log  *slog.Logger

	admin  offloadAdmin
	bridge *bridge.Bridge
	audit  *audit.Writer
	trust  *trust.Store
	up     chan struct{} // closed once the bridge is open

	mu       sync.Mutex
	explain  map[string]string // refused DIDs → why
	buckets  map[string]*ratelimit.Bucket
	revoked  map[string]bool // pairings whose revocation was announced
	lastPeer map[string]policy.Peer
}

// offloadAdmin is what the broker and the reconciler read from an offload
// sandbox's router. HTTPSProber implements it.
type offloadAdmin interface {
	MeshStatus(ctx context.Context, t RouterTarget) (RouterMesh, error)
	AuditHead(ctx context.Context, t RouterTarget) (AuditHead, error)
	Budget(ctx context.Context, t RouterTarget) (RouterBudget, error)
	AuditTail(ctx context.Context, t RouterTarget, n int) ([]audit.Entry, error)
}

// RouterBudget is a router's GET /admin/v1/budget answer (the fields the
// controller uses).
type RouterBudget struct {
	Ledger struct {
		// Lifetime is every token the router has metered.
		Lifetime int64 `json:"lifetime"`
	} `json:"ledger"`
}

// Budget reads a router's token ledger.
func (p *HTTPSProber) Budget(ctx context.Context, t RouterTarget) (RouterBudget, error) {
	var b RouterBudget
	_, err := p.get(ctx, t, "/admin/v1/budget", &b)
	return b, err
}

// AuditTail reads a router's last n audit entries, oldest first.
func (p *HTTPSProber) AuditTail(ctx context.Context, t RouterTarget, n int) ([]audit.Entry, error) {
	var es []audit.Entry
	_, err := p.get(ctx, t, "/admin/v1/audit/tail?n="+strconv.Itoa(n), &es)
	return es, err
}

// brokerGov is the broker bridge's governance: the pairing is the
// consent, so every message with a paired, admitted peer is allowed; each
// is audited in the broker's own log.
type brokerGov struct{ w *audit.Writer }

func (brokerGov) Decide(action string) governance.Decision {
	return governance.Decision{Verdict: governance.Allow, Rule: ruleOffload, Reason: "an offload pairing's peer and the broker"}
}

func (g brokerGov) Audit(ctx context.Context, rec audit.Record) error {
	rec.Sandbox, rec.Agent = "", offloadBrokerAgent
	_, err := g.w.Append(ctx, rec)
	return err
}

func (g brokerGov) AuditFailing() bool { return g.w.Err() != nil }

// Start implements manager.Runnable: it opens the broker's state, keeps
// its mesh endpoint connected and answers requests until ctx ends.
func (b *offloadBroker) Start(ctx context.Context) error {
	wait := time.Second
	for {
		err := b.open(ctx)
		if err == nil {
			break
		}
		b.log.Error("offload broker not started; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
	defer func() {
		b.bridge.Close()
		b.audit.Close()
		b.trust.Close()
	}()
	close(b.up)
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		b.bridge.Run(ctx)
	}()
	if err := b.syncPolicy(ctx); err != nil {
		b.log.Warn("offload broker: first policy sync failed", "err", err)
	}
	for ctx.Err() == nil {
		for _, m := range b.bridge.Take(ctx, 16, 25*time.Second) {
			b.handle(ctx, m)
		}
	}
	<-runDone
	return nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: one
// broker answers for the cluster.
func (b *offloadBroker) NeedLeaderElection() bool { return true }

// ready reports whether the broker is open.
func (b *offloadBroker) ready() bool {
	select {
	case <-b.up:
		return true
	default:
		return false
	}
}

// open loads the identity (creating it the first time), the audit log,
// the trust store and the bridge, and publishes the DID.
func (b *offloadBroker) open(ctx context.Context) error {
	seed, err := b.ensureIdentity(ctx)
	if err != nil {
		return err
	}
	defer clear(seed)
	id, err := identity.FromSeed(seed)
	if err != nil {
		return err
	}
	meshDir := filepath.Join(b.oo.Dir, "mesh")
	if err := os.MkdirAll(meshDir, 0o700); err != nil {
		return err
	}
	// The bridge keeps its identity in its folder: put the Secret's there,
	// and start the folder afresh when it held another identity (its
	// sessions were with that one).
	seedPath := filepath.Join(meshDir, "identity.seed")
	if cur, err := os.ReadFile(seedPath); err == nil && string(cur) != string(seed) {
		b.log.Warn("offload broker: the state folder held another identity; starting its sessions afresh", "dir", meshDir)
		if err := os.RemoveAll(meshDir); err != nil {
			return err
		}
		if err := os.MkdirAll(meshDir, 0o700); err != nil {
			return err
		}
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.WriteFile(seedPath, seed, 0o600); err != nil {
		return err
	}
	key, err := loadSeedFile(filepath.Join(b.oo.Dir, "audit-checkpoint.seed"))
	if err != nil {
		return err
	}
	w, err := audit.Open(audit.Options{Dir: filepath.Join(b.oo.Dir, "audit"), Sandbox: b.sys + "/" + offloadBrokerAgent, SigningKey: key, Now: b.now})
	if err != nil {
		return fmt.Errorf("offload broker audit log: %w", err)
	}
	ts, err := trust.Open(filepath.Join(b.oo.Dir, "trust.json"), trust.DefaultConfig(), trust.WithClock(b.now))
	if err != nil {
		w.Close()
		return err
	}
	br, err := bridge.Open(bridge.Options{Dir: meshDir, Registry: b.oo.Registry, Relay: b.oo.Relay, Dial: b.oo.Dial,
		Self: []string{b.sys + "/" + offloadBrokerAgent}, Threshold: trust.DefaultConfig().Threshold,
		Gov: brokerGov{w: w}, Trust: ts, Logger: b.log, Explain: b.explainRefusal, Now: b.now})
	if err != nil {
		w.Close()
		ts.Close()
		return err
	}
	if br.DID() != id.DID() {
		br.Close()
		w.Close()
		ts.Close()
		return fmt.Errorf("offload broker: the bridge opened identity %s, want %s", br.DID(), id.DID())
	}
	if err := b.publishIdentity(ctx, id); err != nil {
		br.Close()
		w.Close()
		ts.Close()
		return err
	}
	b.bridge, b.audit, b.trust = br, w, ts
	b.log.Info("offload broker open", "did", id.DID(), "registry", b.oo.Registry, "relay", b.oo.Relay)
	return nil
}

// ensureIdentity returns the broker's Ed25519 seed from its Secret,
// creating it the first time; two controllers racing create one.
func (b *offloadBroker) ensureIdentity(ctx context.Context) ([]byte, error) {
	sec := &corev1.Secret{}
	err := b.live.Get(ctx, client.ObjectKey{Namespace: b.sys, Name: OffloadIdentityName}, sec)
	if apierrors.IsNotFound(err) {
		id, err := identity.New(rand.Reader)
		if err != nil {
			return nil, err
		}
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: OffloadIdentityName, Namespace: b.sys, Labels: map[string]string{"app.kubernetes.io/part-of": "kars"}},
			Type: corev1.SecretTypeOpaque, Data: map[string][]byte{offloadSeedKey: id.Seed()}}
		if err := b.c.Create(ctx, sec); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("offload identity Secret %s/%s: %w", b.sys, OffloadIdentityName, err)
		}
		return b.ensureIdentity(ctx)
	}
	if err != nil {
		return nil, err
	}
	seed := sec.Data[offloadSeedKey]
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("offload identity Secret %s/%s holds no %d-byte seed", b.sys, OffloadIdentityName, ed25519.SeedSize)
	}
	return append([]byte(nil), seed...), nil
}

func (b *offloadBroker) publishIdentity(ctx context.Context, id *identity.Identity) error {
	want := map[string]string{OffloadDIDKey: id.DID(), offloadPublicKeyKey: base64.StdEncoding.EncodeToString(id.PublicKey())}
	cm := &corev1.ConfigMap{}
	err := b.live.Get(ctx, client.ObjectKey{Namespace: b.sys, Name: OffloadIdentityName}, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: OffloadIdentityName, Namespace: b.sys, Labels: map[string]string{"app.kubernetes.io/part-of": "kars"}}, Data: want}
		if err := b.c.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		return nil
	case err != nil:
		return err
	case cm.Data[OffloadDIDKey] == want[OffloadDIDKey] && cm.Data[offloadPublicKeyKey] == want[offloadPublicKeyKey]:
		return nil
	}
	patch := client.MergeFrom(cm.DeepCopy())
	cm.Data = want
	return b.c.Patch(ctx, cm, patch)
}

// loadSeedFile reads a 32-byte Ed25519 seed, creating it the first time.
func loadSeedFile(path string) (ed25519.PrivateKey, error) {
	seed, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		seed = make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, seed, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s holds %d bytes, want a %d-byte Ed25519 seed", path, len(seed), ed25519.SeedSize)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// isOffloadPairing reports whether kp pairs kars with a host for offload
// (a token pairing with no sandbox), as opposed to kars ↔ kars.
func isOffloadPairing(kp *karsv1.KarsPairing) bool {
	return kp.Spec.SandboxRef == nil && kp.Spec.PeerSandbox == ""
}

// syncPolicy makes the bridge admit exactly the peers of live offload
// pairings, and remembers why the others are refused. A peer whose
// pairing was revoked is told so, on its live session, before it is cut.
func (b *offloadBroker) syncPolicy(ctx context.Context) error {
	if !b.ready() {
		return nil
	}
	var list karsv1.KarsPairingList
	if err := b.c.List(ctx, &list); err != nil {
		return err
	}
	now := b.now()
	var pol policy.Policy
	explain := map[string]string{}
	names := map[string]int{}
	for i := range list.Items {
		kp := &list.Items[i]
		if isOffloadPairing(kp) && kp.Status.PeerIdentity != "" {
			names[kp.Name]++
		}
	}
	var revoked []policy.Peer
	for i := range list.Items {
		kp := &list.Items[i]
		did := kp.Status.PeerIdentity
		if !isOffloadPairing(kp) || did == "" {
			continue
		}
		ref := kp.Namespace + "/" + kp.Name
		switch {
		case kp.Spec.Revoked:
			explain[did] = fmt.Sprintf("the pairing %s was revoked by the cluster's operator; ask them for a new pairing token", kp.Name)
			if pe, ok := b.lastPeerOf(did); ok {
				revoked = append(revoked, pe)
			}
			continue
		case !now.Before(kp.Spec.ExpiresAt.Time):
			explain[did] = fmt.Sprintf("the pairing %s expired at %s; ask the cluster's operator for a new pairing token", kp.Name, kp.Spec.ExpiresAt.UTC().Format(time.RFC3339))
			continue
		case names[kp.Name] > 1:
			explain[did] = fmt.Sprintf("two offload pairings are named %s; the cluster's operator must rename one", kp.Name)
			b.log.Warn("offload broker: two offload pairings share a name; neither is admitted", "name", kp.Name)
			continue
		}
		pe := policy.Peer{Name: kp.Name, DID: did, Pairing: ref, ExpiresAt: kp.Spec.ExpiresAt.UTC().Truncate(time.Second)}
		for _, c := range kp.Spec.Capabilities {
			pe.Capabilities = append(pe.Capabilities, string(c))
		}
		pol.Peers = append(pol.Peers, pe)
	}
	slices.SortFunc(pol.Peers, func(a, b policy.Peer) int { return strings.Compare(a.Name, b.Name) })
	b.mu.Lock()
	b.explain = explain
	b.mu.Unlock()
	for _, pe := range revoked {
		b.announceRevocation(ctx, pe)
	}
	if b.bridge.Policy().Digest() == pol.Digest() {
		return nil
	}
	if err := b.bridge.SetPolicy(&pol); err != nil {
		return err
	}
	b.mu.Lock()
	b.lastPeer = map[string]policy.Peer{}
	for _, pe := range pol.Peers {
		b.lastPeer[pe.DID] = pe
	}
	b.mu.Unlock()
	return nil
}

func (b *offloadBroker) lastPeerOf(did string) (policy.Peer, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pe, ok := b.lastPeer[did]
	return pe, ok
}

// announceRevocation tells a revoked pairing's peer, once, on the session
// it still has (the policy still names it until syncPolicy cuts it).
func (b *offloadBroker) announceRevocation(ctx context.Context, pe policy.Peer) {
	b.mu.Lock()
	if b.revoked == nil {
		b.revoked = map[string]bool{}
	}
	done := b.revoked[pe.Pairing]
	b.revoked[pe.Pairing] = true
	b.mu.Unlock()
	if done {
		return
	}
	msg := offload.NewEvent(offload.EventRevoked, nil, &offload.Error{Code: offload.CodeRevoked,
		Message: fmt.Sprintf("the pairing %s was revoked by the cluster's operator: its offloads are stopped and this host is refused from now on", pe.Name)})
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.send(sctx, pe.Name, msg, ""); err != nil {
		b.log.Info("offload broker: revocation not announced to the host (offline?)", "pairing", pe.Pairing, "err", err)
	}
}

func (b *offloadBroker) explainRefusal(did string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.explain[did]
}

// send encrypts one protocol message to a peer (a pairing's name).
func (b *offloadBroker) send(ctx context.Context, peer string, m offload.Message, inReplyTo string) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = b.bridge.Send(ctx, bridge.SendRequest{To: peer, Text: string(raw), InReplyTo: inReplyTo})
	return err
}

// notify sends an event in the background: a host that is offline is not
// worth holding a reconcile for, and it can always ask for status.
func (b *offloadBroker) notify(peer string, m offload.Message) {
	if !b.ready() {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := b.send(ctx, peer, m, ""); err != nil {
			b.log.Info("offload broker: event not delivered to the host", "peer", peer, "event", m.Event, "err", err)
		}
	}()
}

// record appends one of the broker's own decisions to its audit log.
func (b *offloadBroker) record(ctx context.Context, rec audit.Record) error {
	_, err := b.audit.Append(ctx, rec)
	return err
}

// handle answers one message from a peer. Every answer goes back on the
// peer's session; every decision is on record before its effect.
func (b *offloadBroker) handle(ctx context.Context, m bridge.Message) {
	pe, ok := b.bridge.Policy().ByDID(m.FromDID)
	if !ok {
		return // the pairing ended between delivery and now
	}
	ns, name, _ := strings.Cut(pe.Pairing, "/")
	req, err := offload.ParseRequest([]byte(m.Text))
	if err != nil {
		b.record(ctx, audit.Record{Action: "offload:request:" + pe.Name, Decision: "deny", Rule: ruleOffload + "-protocol",
			Reason: "a message that is not an offload request: " + err.Error(), PayloadSHA256: sha256Hex(m.Text),
			Attrs: map[string]string{"peer_did": m.FromDID, "id": m.ID}})
		b.reply(ctx, pe.Name, m.ID, offload.Refuse(requestID(m.Text), &offload.Error{Code: offload.CodeBadRequest, Message: err.Error()}))
		return
	}
	if !b.allow(pe.Pairing) {
		b.reply(ctx, pe.Name, m.ID, offload.Refuse(req.ID, &offload.Error{Code: offload.CodeBadRequest,
			Message: fmt.Sprintf("more than %d requests a minute from this pairing; slow down", offloadRequestRate.Events)}))
		return
	}
	kp := &karsv1.KarsPairing{}
	if err := b.live.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, kp); err != nil || kp.Status.PeerIdentity != m.FromDID {
		b.reply(ctx, pe.Name, m.ID, offload.Refuse(req.ID, &offload.Error{Code: offload.CodeRevoked, Message: "the pairing " + name + " no longer exists or is bound to another identity"}))
		return
	}
	var ans offload.Message
	switch req.Op {
	case offload.OpOffload:
		ans = b.offload(ctx, kp, m, req)
	case offload.OpStatus:
		ans = b.status(ctx, kp, req)
	case offload.OpAck:
		ans = b.end(ctx, kp, req, offload.EndAcknowledged)
	case offload.OpHandoff:
		ans = b.handoff(ctx, kp, req)
	}
	b.reply(ctx, pe.Name, m.ID, ans)
}

func (b *offloadBroker) reply(ctx context.Context, peer, inReplyTo string, m offload.Message) {
	if err := b.send(ctx, peer, m, inReplyTo); err != nil {
		b.log.Warn("offload broker: answer not sent", "peer", peer, "re", m.Re, "err", err)
	}
}

// requestID recovers a request's id from a message that did not parse,
// so that the host can match the refusal.
func requestID(text string) string {
	var v struct {
		ID string `json:"id"`
	}
	if json.Unmarshal([]byte(text), &v) == nil && len(v.ID) <= 64 && v.ID != "" {
		return v.ID
	}
	return "unknown"
}

func (b *offloadBroker) allow(pairing string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buckets == nil {
		b.buckets = map[string]*ratelimit.Bucket{}
	}
	bk := b.buckets[pairing]
	if bk == nil {
		bk = ratelimit.NewBucket(offloadRequestRate)
		b.buckets[pairing] = bk
	}
	ok, _ := bk.Allow(b.now().UnixNano())
	return ok
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// pairingView is what admission needs of kp.
func pairingView(kp *karsv1.KarsPairing) offload.Pairing {
	p := offload.Pairing{Name: kp.Name, Slots: int(max(kp.Spec.Slots, 1)), ExpiresAt: kp.Spec.ExpiresAt.Time, Revoked: kp.Spec.Revoked,
		Used: kp.Status.TokensUsed, Day: kp.Status.TokensDay, HasTemplate: kp.Spec.Offload != nil}
	for _, c := range kp.Spec.Capabilities {
		p.Capabilities = append(p.Capabilities, string(c))
	}
	if tb := kp.Spec.TokenBudget; tb != nil {
		p.PerOffload, p.Daily = tb.PerRequest, tb.Daily
	}
	if t := kp.Spec.Offload; t != nil && t.TTLSeconds > 0 {
		p.TTL = time.Duration(t.TTLSeconds) * time.Second
	}
	return p
}

// offloadNamespaces lists kp's offloads, read through the API server (an
// informer lagging behind a creation must not free a slot).
func offloadNamespaces(ctx context.Context, r client.Reader, kp *karsv1.KarsPairing) ([]corev1.Namespace, error) {
	var list corev1.NamespaceList
	if err := r.List(ctx, &list, client.MatchingLabels{offload.LabelOffload: "true", offload.LabelPairing: kp.Name}); err != nil {
		return nil, err
	}
	ref := kp.Namespace + "/" + kp.Name
	var out []corev1.Namespace
	for _, ns := range list.Items {
		if ns.Annotations[offload.AnnotationPairing] == ref {
			out = append(out, ns)
		}
	}
	slices.SortFunc(out, func(a, b corev1.Namespace) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// liveOffloads are the offloads that hold a slot (not ending) and those
// that hold tokens (not settled).
func liveOffloads(nss []corev1.Namespace) (slots []offload.Live, reserved int64) {
	for _, ns := range nss {
		tokens, _ := strconv.ParseInt(ns.Annotations[offload.AnnotationTokens], 10, 64)
		if _, settled := ns.Annotations[offload.AnnotationSettled]; !settled {
			reserved += tokens
		}
		if ns.DeletionTimestamp == nil && ns.Annotations[offload.AnnotationEnd] == "" {
			slots = append(slots, offload.Live{ID: ns.Labels[offload.LabelID], Request: ns.Annotations[offload.AnnotationRequest], Tokens: tokens})
		}
	}
	return slots, reserved
}

// offloadInfo describes the offload of namespace ns.
func offloadInfo(ns *corev1.Namespace, did string) offload.Info {
	a := ns.Annotations
	id := ns.Labels[offload.LabelID]
	in := offload.Info{ID: id, Sandbox: ns.Name + "/" + offload.SandboxName(id), DID: did, Request: a[offload.AnnotationRequest],
		Title: a[offload.AnnotationTitle], TaskSHA256: a[offload.AnnotationTask], EndReason: a[offload.AnnotationEnd]}
	in.CreatedAt, _ = time.Parse(time.RFC3339, a[offload.AnnotationStarted])
	in.ExpiresAt, _ = time.Parse(time.RFC3339, a[offload.AnnotationExpires])
	in.TokensAllocated, _ = strconv.ParseInt(a[offload.AnnotationTokens], 10, 64)
	in.TokensUsed, _ = strconv.ParseInt(a[offload.AnnotationUsed], 10, 64)
	switch {
	case in.EndReason != "" || ns.DeletionTimestamp != nil:
		in.Phase = offload.PhaseEnding
	case did != "":
		in.Phase = offload.PhaseReady
	default:
		in.Phase = offload.PhaseCreating
	}
	return in
}

func newOffloadID() string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// offload admits and creates an offload.
func (b *offloadBroker) offload(ctx context.Context, kp *karsv1.KarsPairing, m bridge.Message, req *offload.Request) offload.Message {
	start := b.now()
	nss, err := offloadNamespaces(ctx, b.live, kp)
	if err != nil {
		return offload.Refuse(req.ID, &offload.Error{Code: offload.CodeInternal, Message: "the cluster could not list this pairing's offloads; retry"})
	}
	slots, _ := liveOffloads(nss)
	d := offload.Admit(pairingView(kp), slots, req, start)
	rec := audit.Record{Action: "offload:request:" + kp.Name, PayloadSHA256: req.Task.SHA256,
		Attrs: map[string]string{"op": "offload", "peer_did": m.FromDID, "request": req.ID, "title": req.Task.Title, "bytes": strconv.Itoa(req.Task.Bytes),
			"pairing": kp.Namespace + "/" + kp.Name}}
	if d.Refusal != nil {
		rec.Decision, rec.Rule, rec.Reason, rec.Latency = "deny", ruleOffload+"-"+strings.ReplaceAll(d.Refusal.Code, "_", "-"), d.Refusal.Message, b.now().Sub(start)
		if err := b.record(ctx, rec); err != nil {
			return offload.Refuse(req.ID, &offload.Error{Code: offload.CodeInternal, Message: "the broker cannot write its audit log; retry later"})
		}
		return offload.Refuse(req.ID, d.Refusal)
	}
	if d.Existing != "" {
		for i := range nss {
			if nss[i].Labels[offload.LabelID] == d.Existing {
				in := offloadInfo(&nss[i], "")
				return offload.Answer(req.ID, offload.Message{Offload: &in})
			}
		}
	}
	tmpl := &karsv1.InferencePolicy{}
	if err := b.live.Get(ctx, client.ObjectKey{Namespace: kp.Namespace, Name: kp.Spec.Offload.InferenceRef.Name}, tmpl); err != nil {
		return b.refuseLogged(ctx, rec, req.ID, &offload.Error{Code: offload.CodeNoTemplate,
			Message: fmt.Sprintf("the offload template's InferencePolicy %s/%s cannot be read (%v); nothing was created. Ask the cluster's operator to fix the pairing", kp.Namespace, kp.Spec.Offload.InferenceRef.Name, err)})
	}
	secrets := map[string]*corev1.Secret{}
	targets := append([]karsv1.ModelTarget{tmpl.Spec.ModelPreference.Primary}, tmpl.Spec.ModelPreference.Fallbacks...)
	for _, t := range targets {
		if t.Auth == nil || t.Auth.SecretRef == nil || secrets[t.Auth.SecretRef.Name] != nil {
			continue
		}
		s := &corev1.Secret{}
		if err := b.live.Get(ctx, client.ObjectKey{Namespace: kp.Namespace, Name: t.Auth.SecretRef.Name}, s); err != nil {
			return b.refuseLogged(ctx, rec, req.ID, &offload.Error{Code: offload.CodeNoTemplate,
				Message: fmt.Sprintf("the offload template's credentials (Secret %s/%s) cannot be read; nothing was created. Ask the cluster's operator to fix the pairing", kp.Namespace, t.Auth.SecretRef.Name)})
		}
		secrets[s.Name] = s
	}
	id := newOffloadID()
	created := b.now().UTC().Truncate(time.Second)
	in := offload.Input{ID: id, Pairing: kp, Template: tmpl, Secrets: secrets, PeerDID: m.FromDID, Request: req,
		Tokens: d.Tokens, CreatedAt: created, ExpiresAt: created.Add(d.TTL)}
	objs, err := offload.Objects(in)
	if err != nil {
		return b.refuseLogged(ctx, rec, req.ID, &offload.Error{Code: offload.CodeNoTemplate, Message: err.Error() + "; nothing was created"})
	}
	rec.Decision, rec.Rule, rec.Latency = "allow", ruleOffload, b.now().Sub(start)
	rec.Reason = fmt.Sprintf("offload %s admitted: %d of %d slots used before it, %d tokens allocated, until %s", id, len(slots), pairingView(kp).Slots, d.Tokens, in.ExpiresAt.Format(time.RFC3339))
	rec.Attrs["offload"], rec.Attrs["tokens"], rec.Attrs["expires_at"] = id, strconv.FormatInt(d.Tokens, 10), in.ExpiresAt.Format(time.RFC3339)
	if err := b.record(ctx, rec); err != nil {
		return offload.Refuse(req.ID, &offload.Error{Code: offload.CodeInternal, Message: "the broker cannot write its audit log; nothing was created, retry later"})
	}
	if err := b.create(ctx, objs, m.FromDID); err != nil {
		b.log.Error("offload not created", "offload", id, "err", err)
		b.c.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: offload.Namespace(id)}})
		b.record(ctx, audit.Record{Action: "offload:create:" + kp.Name, Decision: "deny", Rule: ruleOffload, Reason: "creating the offload failed, and what was created is deleted: " + err.Error(),
			Attrs: map[string]string{"offload": id, "request": req.ID}})
		return offload.Refuse(req.ID, &offload.Error{Code: offload.CodeInternal, Message: "the cluster could not create the offload sandbox; nothing is left of it. Retry later"})
	}
	b.log.Info("offload created", "offload", id, "pairing", kp.Namespace+"/"+kp.Name, "tokens", d.Tokens, "expires", in.ExpiresAt)
	nsObj := objs[0].(*corev1.Namespace)
	info := offloadInfo(nsObj, "")
	return offload.Answer(req.ID, offload.Message{Offload: &info})
}

func (b *offloadBroker) refuseLogged(ctx context.Context, rec audit.Record, id string, e *offload.Error) offload.Message {
	rec.Decision, rec.Rule, rec.Reason = "deny", ruleOffload+"-"+strings.ReplaceAll(e.Code, "_", "-"), e.Message
	b.record(ctx, rec)
	return offload.Refuse(id, e)
}

// create creates an offload's objects in order and binds its KarsPairing
// to the host, so that the mesh reconciler lets the host's identity
// through the offload's router.
func (b *offloadBroker) create(ctx context.Context, objs []client.Object, did string) error {
	for _, o := range objs {
		if err := b.c.Create(ctx, o); err != nil {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
		if kp, ok := o.(*karsv1.KarsPairing); ok {
			if err := b.bind(ctx, kp, did); err != nil {
				return fmt.Errorf("bind KarsPairing %s/%s to the host: %w", kp.Namespace, kp.Name, err)
			}
		}
	}
	return nil
}

// bind binds an offload's own KarsPairing to the host, as a redemption
// would. The mesh reconciler may write the new pairing's status first
// (PendingPairing): a conflict is read again and bound again.
func (b *offloadBroker) bind(ctx context.Context, kp *karsv1.KarsPairing, did string) error {
	t := metav1.NewTime(b.now().UTC().Truncate(time.Second))
	for range 10 {
		kp.Status.Phase, kp.Status.PeerIdentity, kp.Status.RedeemedAt = karsv1.PairingActive, did, &t
		err := b.c.Status().Update(ctx, kp)
		if !apierrors.IsConflict(err) {
			return err
		}
		if err := b.live.Get(ctx, client.ObjectKeyFromObject(kp), kp); err != nil {
			return err
		}
	}
	return errors.New("the pairing kept changing under the binding")
}

// findOffload returns kp's offload id, or a not_found refusal: another
// pairing's offloads are not this peer's to see.
func (b *offloadBroker) findOffload(ctx context.Context, kp *karsv1.KarsPairing, id string) (*corev1.Namespace, *offload.Error) {
	ns := &corev1.Namespace{}
	err := b.live.Get(ctx, client.ObjectKey{Name: offload.Namespace(id)}, ns)
	if err != nil || ns.Labels[offload.LabelOffload] != "true" || ns.Annotations[offload.AnnotationPairing] != kp.Namespace+"/"+kp.Name {
		return nil, &offload.Error{Code: offload.CodeNotFound, Message: fmt.Sprintf("no offload %s of the pairing %s (it may have ended already)", id, kp.Name)}
	}
	return ns, nil
}

// status reports one offload, or every offload of the pairing, and the
// pairing's slots and budget.
func (b *offloadBroker) status(ctx context.Context, kp *karsv1.KarsPairing, req *offload.Request) offload.Message {
	nss, err := offloadNamespaces(ctx, b.live, kp)
	if err != nil {
		return offload.Refuse(req.ID, &offload.Error{Code: offload.CodeInternal, Message: "the cluster could not list this pairing's offloads; retry"})
	}
	slots, reserved := liveOffloads(nss)
	pv := pairingView(kp)
	u := &offload.Usage{Name: kp.Name, Capabilities: pv.Capabilities, Slots: pv.Slots, SlotsInUse: len(slots), ExpiresAt: pv.ExpiresAt.UTC(),
		TokensDaily: pv.Daily, TokensUsed: pv.UsedOn(offload.Day(b.now())), TokensReserved: reserved}
	var infos []offload.Info
	for i := range nss {
		if req.Offload != "" && nss[i].Labels[offload.LabelID] != req.Offload {
			continue
		}
		infos = append(infos, offloadInfo(&nss[i], b.readyDID(ctx, &nss[i])))
	}
	if req.Offload != "" {
		if len(infos) == 0 {
			return offload.Refuse(req.ID, &offload.Error{Code: offload.CodeNotFound, Message: fmt.Sprintf("no offload %s of the pairing %s (it may have ended already)", req.Offload, kp.Name)})
		}
		return offload.Answer(req.ID, offload.Message{Offload: &infos[0], Pairing: u})
	}
	return offload.Answer(req.ID, offload.Message{Offloads: infos, Pairing: u})
}

// readyDID is the offload router's DID once it admits the host (its
// sandbox is Ready and its KarsPairing enforced), else "".
func (b *offloadBroker) readyDID(ctx context.Context, ns *corev1.Namespace) string {
	if ns.DeletionTimestamp != nil || ns.Annotations[offload.AnnotationEnd] != "" {
		return ""
	}
	id := ns.Labels[offload.LabelID]
	sb := &karsv1.KarsSandbox{}
	if err := b.c.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: offload.SandboxName(id)}, sb); err != nil || !conditionTrue(sb.Status.Conditions, karsv1.ConditionReady) {
		return ""
	}
	var kps karsv1.KarsPairingList
	if err := b.c.List(ctx, &kps, client.InNamespace(ns.Name)); err != nil || len(kps.Items) != 1 ||
		kps.Items[0].Status.Phase != karsv1.PairingActive || !conditionTrue(kps.Items[0].Status.Conditions, karsv1.ConditionReady) {
		return ""
	}
	t, ok, err := routerTargetOf(ctx, b.c, sb)
	if err != nil || !ok {
		return ""
	}
	st, err := b.admin.MeshStatus(ctx, t)
	if err != nil {
		return ""
	}
	return st.DID
}

func conditionTrue(cs []metav1.Condition, typ string) bool {
	for _, c := range cs {
		if c.Type == typ {
			return c.Status == metav1.ConditionTrue
		}
	}
	return false
}

// end marks an offload to be ended (the reconciler settles its tokens,
// deletes it and tells the host).
func (b *offloadBroker) end(ctx context.Context, kp *karsv1.KarsPairing, req *offload.Request, reason string) offload.Message {
	ns, e := b.findOffload(ctx, kp, req.Offload)
	if e != nil {
		return offload.Refuse(req.ID, e)
	}
	if err := markEnding(ctx, b.c, ns, reason); err != nil {
		return offload.Refuse(req.ID, &offload.Error{Code: offload.CodeInternal, Message: "the offload could not be marked as ending; retry"})
	}
	b.record(ctx, audit.Record{Action: "offload:" + req.Op + ":" + kp.Name, Decision: "allow", Rule: ruleOffload,
		Reason: "the host " + map[string]string{offload.EndAcknowledged: "acknowledged the result", offload.EndHandedOff: "took the offload back"}[reason] + "; the offload ends",
		Attrs:  map[string]string{"offload": req.Offload, "request": req.ID}})
	info := offloadInfo(ns, "")
	return offload.Answer(req.ID, offload.Message{Offload: &info})
}

// markEnding sets the end annotation unless one is set already (the
// first reason stands).
func markEnding(ctx context.Context, c client.Client, ns *corev1.Namespace, reason string) error {
	if ns.Annotations[offload.AnnotationEnd] != "" {
		return nil
	}
	patch := client.MergeFrom(ns.DeepCopy())
	ns.Annotations[offload.AnnotationEnd] = reason
	return c.Patch(ctx, ns, patch)
}

// handoff hands a running offload back to its host with the state its
// router recorded, when the pairing grants handoff; the offload then ends.
func (b *offloadBroker) handoff(ctx context.Context, kp *karsv1.KarsPairing, req *offload.Request) offload.Message {
	if e := offload.MayHandoff(pairingView(kp)); e != nil {
		b.record(ctx, audit.Record{Action: "offload:handoff:" + kp.Name, Decision: "deny", Rule: ruleOffload + "-capability-not-granted", Reason: e.Message,
			Attrs: map[string]string{"offload": req.Offload, "request": req.ID}})
		return offload.Refuse(req.ID, e)
	}
	ns, e := b.findOffload(ctx, kp, req.Offload)
	if e != nil {
		return offload.Refuse(req.ID, e)
	}
	h, err := b.summary(ctx, ns)
	if err != nil {
		return offload.Refuse(req.ID, &offload.Error{Code: offload.CodeInternal, Message: "the offload's router could not be read for its state (" + err.Error() + "); the offload keeps running, retry"})
	}
	ans := b.end(ctx, kp, req, offload.EndHandedOff)
	if ans.OK {
		ans.Handoff = h
	}
	return ans
}

// summary reads an offload's state from its router: tokens, inference
// calls, messages and every tool decision, and the audit head.
func (b *offloadBroker) summary(ctx context.Context, ns *corev1.Namespace) (*offload.Handoff, error) {
	id := ns.Labels[offload.LabelID]
	sb := &karsv1.KarsSandbox{}
	if err := b.c.Get(ctx, client.ObjectKey{Namespace: ns.Name, Name: offload.SandboxName(id)}, sb); err != nil {
		return nil, err
	}
	t, ok, err := routerTargetOf(ctx, b.c, sb)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("its router is not running yet")
	}
	bud, err := b.admin.Budget(ctx, t)
	if err != nil {
		return nil, err
	}
	tail, err := b.admin.AuditTail(ctx, t, 60)
	if err != nil {
		return nil, err
	}
	h := &offload.Handoff{Offload: id, TokensUsed: bud.Ledger.Lifetime, TakenAt: b.now().UTC(), ToolCalls: []offload.ToolCall{}}
	h.StartedAt, _ = time.Parse(time.RFC3339, ns.Annotations[offload.AnnotationStarted])
	for _, e := range tail {
		switch {
		case strings.HasPrefix(e.Action, "inference:"):
			h.Inferences++
		case strings.HasPrefix(e.Action, "mesh:send:"), strings.HasPrefix(e.Action, "mesh:receive:"):
			if op := e.Attrs["op"]; op == "mesh_send" || op == "mesh_receive" {
				h.Messages++
			}
		case strings.HasPrefix(e.Action, "tool:"):
			h.ToolCalls = append(h.ToolCalls, offload.ToolCall{Tool: strings.TrimPrefix(e.Action, "tool:"), Decision: e.Decision, At: e.Time.UTC()})
		}
		h.AuditSeq, h.AuditHash = e.Seq, e.Hash
	}
	return h, nil
}
