package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/mesh/bridge"
	"github.com/kars-io/kars/internal/pairing"
	"github.com/kars-io/kars/internal/scheme"
)

// TestKarsDevMesh: under kars dev, two sandboxes paired with `kars pair`
// exchange end-to-end encrypted messages through their routers and
// kars-mesh (`kars connect planner -m "@worker review this"` returns
// worker's answer); a third, unpaired sandbox cannot reach them, neither
// on its own side nor when it names a peer that does not name it back;
// `kars pair revoke` cuts the live session within 5 s; and a pairing
// token minted for planner is redeemed once by the third sandbox's router
// (`kars mesh auth`), which can then talk to planner.
func TestKarsDevMesh(t *testing.T) {
	k, _ := startDev(t, "KARS_PAIRING_TOKEN=")
	for _, name := range []string{"planner", "worker", "stranger"} {
		k.must("add", name, "--runtime", "kars-agent", "--isolation", "standard")
	}
	for _, name := range []string{"planner", "worker", "stranger"} {
		waitStatus(t, k, name, "Running")
	}

	out := k.must("pair", "planner", "worker")
	if !strings.Contains(out, "paired: both routers enforce the pairing") {
		t.Fatalf("kars pair: %q", out)
	}
	out = k.must("connect", "planner", "-m", "@worker review this")
	if !strings.Contains(out, "@worker: [kars-offline]") || !strings.Contains(out, "Message from @planner: review this") {
		t.Fatalf("planner did not get worker's answer: %q", out)
	}
	st := meshStatusOf(t, k, "planner")
	if len(st.Peers) != 1 || st.Peers[0].Name != "worker" || st.Peers[0].Session == nil || !st.Peers[0].Admitted {
		t.Fatalf("planner's mesh status: %+v", st)
	}
	workerDID := meshStatusOf(t, k, "worker").DID
	if st.Peers[0].DID != workerDID {
		t.Fatalf("planner pairs with %s, worker is %s", st.Peers[0].DID, workerDID)
	}

	// The unpaired sandbox: its own router refuses to name worker...
	out = k.must("connect", "stranger", "-m", "@worker let me in")
	if !strings.Contains(out, "no active pairing names") {
		t.Fatalf("an unpaired sandbox reached worker: %q", out)
	}
	// ...and when its side names worker, worker's router refuses the KNOCK.
	cl := devClient(t, k)
	oneSided := &karsv1.KarsPairing{ObjectMeta: metav1.ObjectMeta{Namespace: "kars-stranger", Name: "worker"},
		Spec: karsv1.KarsPairingSpec{TokenHash: karsv1.Digest(pairing.Hash("one-sided")), ExpiresAt: metav1.NewTime(time.Now().Add(time.Hour)),
			Capabilities: []karsv1.PairingCapability{karsv1.CapabilityHandoff}, SandboxRef: &karsv1.LocalObjectReference{Name: "stranger"}, PeerSandbox: "kars-worker/worker"}}
	if err := cl.Create(context.Background(), oneSided); err != nil {
		t.Fatal(err)
	}
	waitPeer(t, k, "stranger", "worker", true)
	out = k.must("connect", "stranger", "-m", "@worker let me in")
	if !strings.Contains(out, "refused the KNOCK: not paired") {
		t.Fatalf("worker accepted an unpaired KNOCK: %q", out)
	}
	if out := k.must("audit", "tail", "worker"); !strings.Contains(out, "mesh:receive:"+"_unpaired") {
		t.Fatalf("worker's audit lacks the refused KNOCK: %q", out)
	}

	// Revocation cuts the live session: within 5 s of `kars pair revoke`
	// planner's router no longer names worker, and the agents cannot
	// reach each other.
	start := time.Now()
	k.must("pair", "revoke", "planner", "worker", "--wait", "0")
	waitPeer(t, k, "planner", "worker", false)
	took := time.Since(start)
	t.Logf("revocation reached planner's router %s after kars pair revoke started", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Fatalf("revocation took %s, more than 5 s", took)
	}
	out = k.must("connect", "planner", "-m", "@worker still there?")
	if !strings.Contains(out, "no active pairing names") {
		t.Fatalf("planner still reaches worker after revocation: %q", out)
	}
	waitPeer(t, k, "worker", "planner", false)
	out = k.must("connect", "worker", "-m", "@planner still there?")
	if !strings.Contains(out, "no active pairing names") {
		t.Fatalf("worker still reaches planner after revocation: %q", out)
	}

	// A token pairing: minted for planner, redeemed once by stranger.
	tok := strings.TrimSpace(k.must("pair", "generate", "--name", "stranger", "--sandbox", "planner", "--expires", "1h"))
	tok = tok[strings.LastIndex(tok, "\n")+1:]
	if !strings.HasPrefix(tok, pairing.Prefix) {
		t.Fatalf("generate printed %q", tok)
	}
	out = k.must("mesh", "auth", "--sandbox", "stranger", "--token", tok)
	if !strings.Contains(out, "stranger's router admits @planner") {
		t.Fatalf("mesh auth: %q", out)
	}
	waitPeer(t, k, "planner", "stranger", true)
	out = k.must("connect", "stranger", "-m", "@planner hello from a token")
	if !strings.Contains(out, "@planner: [kars-offline]") || !strings.Contains(out, "Message from @stranger: hello from a token") {
		t.Fatalf("stranger could not reach planner after redeeming: %q", out)
	}
	// A token is single use.
	if out, code := k.run("mesh", "auth", "--sandbox", "worker", "--token", tok); code == 0 || !strings.Contains(out, "already redeemed") {
		t.Fatalf("a second redemption: exit %d %q", code, out)
	}
	for _, sb := range []string{"planner", "worker", "stranger"} {
		k.must("audit", "verify", sb)
	}
	if out := k.must("audit", "tail", "planner"); !strings.Contains(out, "mesh:send:worker") || !strings.Contains(out, "mesh:receive:stranger") {
		t.Fatalf("planner's audit: %q", out)
	}
}

func devClient(t *testing.T, k *kars) client.Client {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", k.kube)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme.New()})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func meshStatusOf(t *testing.T, k *kars, name string) bridge.Status {
	t.Helper()
	out := k.must("mesh", "status", name, "--json")
	var all map[string]bridge.Status
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &all); err != nil {
		t.Fatalf("mesh status JSON: %v\n%s", err, out)
	}
	return all["kars-"+name+"/"+name]
}

// waitPeer waits until sandbox's router does (or does not) name peer.
func waitPeer(t *testing.T, k *kars, sandbox, peer string, want bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := meshStatusOf(t, k, sandbox)
		has := false
		for _, p := range st.Peers {
			has = has || p.Name == peer
		}
		if has == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's router names %s: %v, want %v", sandbox, peer, has, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
