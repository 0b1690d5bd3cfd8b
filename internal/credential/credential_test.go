package credential

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/inference/fakeprovider"
)

type countingFetcher struct {
	n     atomic.Int64
	ttl   time.Duration
	now   func() time.Time
	fail  atomic.Bool
	delay time.Duration
}

func (f *countingFetcher) Fetch(context.Context) (Credential, error) {
	time.Sleep(f.delay)
	n := f.n.Add(1)
	if f.fail.Load() {
		return Credential{}, errors.New("token endpoint down")
	}
	return Credential{Secret: "tok" + string(rune('0'+n)), Entra: true, ExpiresAt: f.now().Add(f.ttl)}, nil
}

func TestCacheSingleFlightAndRefresh(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f := &countingFetcher{ttl: time.Hour, now: clock, delay: 20 * time.Millisecond}
	c := NewCache(f)
	c.now = clock
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			if cred, err := c.Credential(context.Background()); err != nil || cred.Secret != "tok1" {
				t.Errorf("got %+v %v", cred, err)
			}
		})
	}
	wg.Wait()
	if f.n.Load() != 1 {
		t.Fatalf("%d fetches for 100 concurrent callers", f.n.Load())
	}
	// Inside the refresh window the caller still gets the valid token and
	// one background refresh runs.
	mu.Lock()
	now = now.Add(57 * time.Minute)
	mu.Unlock()
	if cred, _ := c.Credential(context.Background()); cred.Secret != "tok1" {
		t.Fatalf("in refresh window got %q", cred.Secret)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if cred, _ := c.Credential(context.Background()); cred.Secret == "tok2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("token was not refreshed before expiry")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Expired and the endpoint failing: the error surfaces.
	f.fail.Store(true)
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	if _, err := c.Credential(context.Background()); err == nil || !strings.Contains(err.Error(), "down") {
		t.Fatalf("want the fetch error, got %v", err)
	}
}

func TestWorkloadIdentityAgainstFake(t *testing.T) {
	fake := fakeprovider.New()
	fake.Start()
	defer fake.Close()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(fake.FederatedToken+"\n"), 0o600)
	w := &WorkloadIdentity{AuthorityHost: fake.URL(), TenantID: fake.TenantID, ClientID: fake.ClientID,
		TokenFile: tokenFile, Scope: "https://cognitiveservices.azure.com/.default"}
	cred, err := w.Fetch(context.Background())
	if err != nil || cred.Secret != fake.EntraToken || time.Until(cred.ExpiresAt) < 59*time.Minute {
		t.Fatalf("%+v %v", cred, err)
	}
	// The kubelet rotated the projected token to one Entra does not trust.
	os.WriteFile(tokenFile, []byte("eyJ.stale.token"), 0o600)
	if _, err := w.Fetch(context.Background()); err == nil || !strings.Contains(err.Error(), "AADSTS700213") {
		t.Fatalf("want Entra's error surfaced, got %v", err)
	}
}

func TestWorkloadIdentityFromEnvNamesMissing(t *testing.T) {
	t.Setenv(EnvTenantID, "")
	t.Setenv(EnvClientID, "x")
	t.Setenv(EnvFederatedTokenFile, "")
	_, err := WorkloadIdentityFromEnv(WorkloadIdentity{})
	if err == nil || !strings.Contains(err.Error(), EnvTenantID) || !strings.Contains(err.Error(), EnvFederatedTokenFile) {
		t.Fatalf("%v", err)
	}
}

// TestWorkloadIdentityTokenFileUnderRoot: the environment's token path is
// the pod's (the webhook injects it), so a router under a root reads it
// there; a path from the config arrives already resolved and is kept.
func TestWorkloadIdentityTokenFileUnderRoot(t *testing.T) {
	t.Setenv(EnvTenantID, "tenant")
	t.Setenv(EnvClientID, "client")
	t.Setenv(EnvFederatedTokenFile, "/var/run/secrets/azure/tokens/azure-identity-token")
	w, err := WorkloadIdentityFromEnv(WorkloadIdentity{Root: "/srv/pod"})
	if err != nil || w.TokenFile != "/srv/pod/var/run/secrets/azure/tokens/azure-identity-token" {
		t.Fatalf("%+v %v", w, err)
	}
	w, err = WorkloadIdentityFromEnv(WorkloadIdentity{Root: "/srv/pod", TokenFile: "/srv/pod/token"})
	if err != nil || w.TokenFile != "/srv/pod/token" {
		t.Fatalf("config path: %+v %v", w, err)
	}
	w, err = WorkloadIdentityFromEnv(WorkloadIdentity{})
	if err != nil || w.TokenFile != "/var/run/secrets/azure/tokens/azure-identity-token" {
		t.Fatalf("no root: %+v %v", w, err)
	}
}

func TestManagedIdentityAgainstFake(t *testing.T) {
	fake := fakeprovider.New()
	fake.Start()
	defer fake.Close()
	m := &ManagedIdentity{Endpoint: fake.URL(), Scope: "https://cognitiveservices.azure.com/.default"}
	cred, err := m.Fetch(context.Background())
	if err != nil || cred.Secret != fake.EntraToken || cred.ExpiresAt.IsZero() {
		t.Fatalf("%+v %v", cred, err)
	}
}

func TestKeyFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	os.WriteFile(path, []byte("key-one\n"), 0o600)
	k := &KeyFile{Path: path}
	if c, _ := k.Credential(context.Background()); c.Secret != "key-one" {
		t.Fatalf("%q", c.Secret)
	}
	os.WriteFile(path, []byte("key-two-rotated"), 0o600)
	k.checked = time.Time{} // skip the once-a-second stat throttle
	if c, _ := k.Credential(context.Background()); c.Secret != "key-two-rotated" {
		t.Fatalf("rotation not picked up: %q", c.Secret)
	}
	os.WriteFile(path, nil, 0o600)
	k.checked = time.Time{}
	if _, err := k.Credential(context.Background()); err == nil {
		t.Fatal("empty key file accepted")
	}
}

// FuzzParseTokenResponse feeds token endpoint answers (RFC 6749 §5.1,
// §5.2, RFC 8693 §2.2) to the parser: it never panics, accepts only a
// Bearer token that fits a header, bounds the expiry, and its errors are
// short printable text that never quotes the body's access_token.
func FuzzParseTokenResponse(f *testing.F) {
	f.Add(200, []byte(`{"access_token":"at-1","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":300}`))
	f.Add(200, []byte(`{"access_token":"at-1","token_type":"bearer","expires_in":"300"}`))
	f.Add(200, []byte(`{"access_token":"at-1","token_type":"N_A","issued_token_type":"urn:ietf:params:oauth:token-type:refresh_token"}`))
	f.Add(200, []byte(`{"access_token":"a\r\nX: y","token_type":"Bearer"}`))
	f.Add(200, []byte(`{"access_token":"at","token_type":"Bearer","expires_in":99999999999999999999}`))
	f.Add(400, []byte(`{"error":"invalid_grant","error_description":"subject token expired"}`))
	f.Add(401, []byte(`{"error":"invalid_client","error_description":"\u0000\u001b[31mred"}`))
	f.Add(500, []byte(`<html>oops</html>`))
	f.Add(200, []byte(`{"access_token":"x","access_token":"y","token_type":"Bearer"}`))
	f.Add(200, []byte(`[]`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		sent := time.Unix(1_800_000_000, 0)
		c, err := ParseTokenResponse(status, body, sent)
		if err != nil {
			msg := err.Error()
			if len(msg) > 400 {
				t.Fatalf("error of %d bytes", len(msg))
			}
			for _, r := range msg {
				if r < 0x20 || r > 0x7e {
					t.Fatalf("unprintable %q in error %q", r, msg)
				}
			}
			var tr struct {
				AccessToken string `json:"access_token"`
			}
			if json.Unmarshal(body, &tr) == nil && len(tr.AccessToken) >= 8 && status == 200 && strings.Contains(msg, tr.AccessToken) {
				t.Fatalf("error %q quotes the access token", msg)
			}
			return
		}
		if status != 200 || c.Secret == "" || strings.ContainsAny(c.Secret, " \r\n\t\"") {
			t.Fatalf("accepted %q with status %d", c.Secret, status)
		}
		if !c.ExpiresAt.After(sent) || c.ExpiresAt.After(sent.Add(24*time.Hour)) {
			t.Fatalf("expiry %v not within a day of %v", c.ExpiresAt, sent)
		}
	})
}
