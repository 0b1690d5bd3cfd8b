package router

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/routerconfig"
	"github.com/kars-io/kars/internal/routerconfig/routerconfigtest"
)

// activationChildEnv makes the test binary act as a socket-activated
// kars-router (TestActivationChild) instead of running tests.
const activationChildEnv = "KARS_TEST_ACTIVATION_CHILD"

// TestSocketActivation hands three bound sockets to a re-executed router
// the way the local substrate does: fds 3, 4, 5, LISTEN_FDS=3, LISTEN_PID
// set by the exec'ing shell to its own pid (which exec keeps), and
// LISTEN_FDNAMES naming each socket by port. The router must serve the
// agent API on the agent port's socket and the admin API on the admin
// port's, close the third, and clear the variables.
func TestSocketActivation(t *testing.T) {
	if testing.Short() {
		t.Skip("re-executes the test binary")
	}
	dir := t.TempDir()
	var lns [3]*net.TCPListener
	var files []*os.File
	var ports [3]string
	for i := range lns {
		l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = l
		f, err := l.File()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		ports[i] = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	}
	c := routerconfigtest.Offline(t, dir)
	// The router must not bind these: the sockets are already bound.
	c.Listen = "127.0.0.1:" + ports[0]
	c.Admin.Listen = "127.0.0.1:" + ports[1]
	cfgPath := routerconfigtest.Write(t, dir, c)

	// The names are out of order on purpose: the router goes by name,
	// not by position.
	names := ports[2] + ":" + ports[0] + ":" + ports[1]
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, os.Args[0], "-test.run=^TestActivationChild$", "-test.v")
	cmd.Env = append(os.Environ(), activationChildEnv+"="+cfgPath, "LISTEN_FDS=3", "LISTEN_FDNAMES="+names)
	cmd.ExtraFiles = []*os.File{files[2], files[0], files[1]}
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// From here on the child holds the only copies of the sockets.
	for i := range lns {
		files[i].Close()
		lns[i].Close()
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	lines := bufio.NewScanner(stdout)
	ready := ""
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), "activation: "); ok {
			ready = v
			break
		}
	}
	go io.Copy(io.Discard, stdout)
	if ready != "serving, environment cleared" {
		t.Fatalf("child reported %q", ready)
	}

	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post("http://127.0.0.1:"+ports[0]+DecidePath, "application/json", strings.NewReader(`{"action":"tool:x"}`))
	if err != nil {
		t.Fatalf("agent API on the passed socket: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"decision":"deny"`) {
		t.Fatalf("decide on the agent socket: %d %s", resp.StatusCode, body)
	}
	req, _ := http.NewRequest("GET", "http://127.0.0.1:"+ports[1]+"/admin/v1/policy/digest", nil)
	req.Header.Set("Authorization", "Bearer admin-token")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatalf("admin API on the passed socket: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if want, _ := routerconfig.Digest(c); resp.StatusCode != 200 || !strings.Contains(string(body), want) {
		t.Fatalf("admin digest: %d %s", resp.StatusCode, body)
	}
	// The agent port's socket does not serve the admin API, and the
	// unused socket is closed: nothing listens on its port any more.
	resp, err = client.Do(mustRequest(t, "GET", "http://127.0.0.1:"+ports[0]+"/healthz"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/healthz on the agent socket: %d", resp.StatusCode)
	}
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+ports[2], 5*time.Second)
	if err == nil {
		conn.Close()
		t.Fatalf("port %s still accepts connections; the router should have closed the socket it has no use for", ports[2])
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial the closed socket's port: %v, want connection refused", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child exit: %v", err)
	}
}

func mustRequest(t *testing.T, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestActivationChild is the socket-activated router of
// TestSocketActivation; it does nothing in a normal test run.
func TestActivationChild(t *testing.T) {
	cfgPath := os.Getenv(activationChildEnv)
	if cfgPath == "" {
		t.Skip("only runs as TestSocketActivation's child")
	}
	passed, err := ActivatedListeners()
	if err != nil {
		t.Fatal(err)
	}
	if len(passed) != 3 {
		t.Fatalf("%d activated listeners, want 3", len(passed))
	}
	for _, v := range []string{envListenPID, envListenFDs, envListenFDNames} {
		if _, set := os.LookupEnv(v); set {
			t.Fatalf("%s is still set", v)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err = Serve(ctx, ServeOptions{ConfigPath: cfgPath, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Listeners: passed,
		Ready: func(map[string]string) { fmt.Println("activation: serving, environment cleared") }})
	if err != nil {
		t.Fatal(err)
	}
}

// TestActivatedListenersEnvironment covers what happens before any
// descriptor is touched: sockets meant for another process are left alone,
// a malformed environment is an error, and the variables are always
// cleared.
func TestActivatedListenersEnvironment(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	cases := []struct {
		name, pid, fds, names string
		err                   string
	}{
		{"not activated", "", "", "", ""},
		{"another process's sockets", "1", "2", "8443:8444", ""},
		{"zero sockets", me, "0", "", ""},
		{"bad pid", "x", "1", "8443", "is not a pid"},
		{"bad count", me, "two", "8443:8444", "is not a count"},
		{"unnamed", me, "2", "", "must name each"},
		{"fewer names than sockets", me, "2", "8443", "must name each"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range map[string]string{envListenPID: tc.pid, envListenFDs: tc.fds, envListenFDNames: tc.names} {
				t.Setenv(k, v)
			}
			got, err := ActivatedListeners()
			if tc.err == "" && (err != nil || got != nil) {
				t.Fatalf("got %v, %v; want no listeners and no error", got, err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
			for _, v := range []string{envListenPID, envListenFDs, envListenFDNames} {
				if _, set := os.LookupEnv(v); set {
					t.Fatalf("%s is still set", v)
				}
			}
		})
	}
}
