package local

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/runtimeenv"
)

// The escapes TestAgentCannotEscape tries from Go, tried again from the
// interpreters the runtime adapters run on: CPython (the Python adapters'
// virtualenv) and Node.js 24 (OpenClaw's and LangGraph.js's), each as the
// agent of a real pod with the pinned interpreter from the runtime cache.

const pythonProbe = `
import ctypes, errno, json, os, socket
res = {}
def attempt(name, fn):
    try:
        fn(); res[name] = "ok"
    except OSError as e:
        res[name] = (e.strerror or str(e)).lower()
    except Exception as e:
        res[name] = str(e).lower()
def connect(host, port, fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
    try: s.connect((host, port))
    finally: s.close()
def bind(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try: s.bind(("127.0.0.1", port)); s.listen(1)
    finally: s.close()
def write(p):
    with open(p, "w") as f: f.write("x")
def read(p):
    with open(p) as f: f.read()
libc = ctypes.CDLL(None, use_errno=True)
def sysc(nr, *a):
    def f():
        if libc.syscall(nr, *a) == -1:
            e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
    return f
attempt("router", lambda: connect("127.0.0.1", 8443))
attempt("tcp-metadata", lambda: connect("169.254.169.254", 80))
attempt("tcp-other-loopback-port", lambda: connect("127.0.0.1", 9090))
attempt("tcp-ipv6-loopback", lambda: connect("::1", 8443, socket.AF_INET6))
for p in os.environ["PROBE_SECRETS"].split(","):
    attempt("read-" + p, lambda p=p: read(p))
for p in ["/sandbox/probe-file", "/tmp/probe-file", "/etc/probe-file", "/usr/probe-file", "/probe-file", "/var/tmp/probe-file"]:
    attempt("write-" + p, lambda p=p: write(p))
attempt("bind-agent-port", lambda: bind(18789))
attempt("bind-other-port", lambda: bind(18790))
attempt("ptrace", sysc(101, 16, 1, 0, 0))          # PTRACE_ATTACH to pid 1
attempt("unshare", sysc(272, 0x10000000))           # CLONE_NEWUSER
attempt("mount", sysc(165, b"none", b"/tmp", b"tmpfs", 0, 0))
attempt("setuid-0", lambda: os.setuid(0))
print("PROBE " + json.dumps(res), flush=True)
`

const nodeProbe = `
const net = require("node:net"), fs = require("node:fs"), cp = require("node:child_process");
const res = {};
const codes = { ECONNREFUSED: "connection refused", EACCES: "permission denied", EPERM: "operation not permitted", ENOENT: "no such file", EROFS: "read-only file system" };
const msg = (e) => codes[e.code] || String(e.message || e).toLowerCase();
const connect = (host, port) => new Promise((ok, bad) => {
  const s = net.connect({ host, port, timeout: 3000 }, () => { s.destroy(); ok(); });
  s.on("error", bad); s.on("timeout", () => { s.destroy(); bad(new Error("timeout")); });
});
const bind = (port) => new Promise((ok, bad) => {
  const s = net.createServer(); s.on("error", bad); s.listen(port, "127.0.0.1", () => s.close(ok));
});
const attempt = async (name, fn) => { try { await fn(); res[name] = "ok"; } catch (e) { res[name] = msg(e); } };
(async () => {
  await attempt("router", () => connect("127.0.0.1", 8443));
  await attempt("tcp-metadata", () => connect("169.254.169.254", 80));
  await attempt("tcp-other-loopback-port", () => connect("127.0.0.1", 9090));
  await attempt("tcp-ipv6-loopback", () => connect("::1", 8443));
  for (const p of process.env.PROBE_SECRETS.split(",")) await attempt("read-" + p, () => fs.readFileSync(p));
  for (const p of ["/sandbox/probe-file", "/tmp/probe-file", "/etc/probe-file", "/usr/probe-file", "/probe-file", "/var/tmp/probe-file"])
    await attempt("write-" + p, () => fs.writeFileSync(p, "x"));
  await attempt("bind-agent-port", () => bind(18789));
  await attempt("bind-other-port", () => bind(18790));
  await attempt("setuid-0", () => process.setuid(0));
  await attempt("unshare", () => { const r = cp.spawnSync("/usr/bin/unshare", ["--user", "true"]); if (r.error) throw r.error; if (r.status !== 0) throw new Error(String(r.stderr)); });
  console.log("PROBE " + JSON.stringify(res));
})();
`

func TestRuntimeInterpretersCannotEscape(t *testing.T) {
	requireRoot(t)
	requireLandlockNet(t)
	for _, rt := range []struct{ id, file, probe string }{
		{"pydantic-ai", "probe.py", pythonProbe},
		{"langgraph-typescript", "probe.js", nodeProbe},
	} {
		t.Run(rt.id, func(t *testing.T) {
			if testing.Short() {
				t.Skip("needs a prepared runtime environment")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			env, err := runtimeenv.Prepare(ctx, runtimeenv.Options{}, rt.id)
			if err != nil {
				if os.Getenv("KARS_REQUIRE_RUNTIMES") == "1" {
					t.Fatal(err)
				}
				t.Skipf("runtime environment: %v", err)
			}
			s := baseSpec(t, "rtsec", "probe")
			routerDir := filepath.Join(s.StateRoot, s.ID, "router")
			secrets := filepath.Join(routerDir, "credential.json") + "," + filepath.Join(routerDir, "admin-token")
			s.Agent = Process{Path: env.Path, Args: []string{"/sandbox/" + rt.file},
				Env:   append([]string{"PROBE_SECRETS=" + secrets, "PATH=/usr/bin:/bin", "HOME=/sandbox"}, env.Environ...),
				Files: map[string][]byte{rt.file: []byte(rt.probe)}}
			s.Limits.MemoryBytes = 1 << 30
			p := startPod(t, s)
			res, err := readProbe(p, 60*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			const refused, denied, eperm = "connection refused", "permission denied", "operation not permitted"
			want := map[string]string{
				"router":                  "ok",
				"tcp-metadata":            refused + "|" + denied,
				"tcp-other-loopback-port": refused + "|" + denied,
				"tcp-ipv6-loopback":       refused + "|" + denied,
				"read-" + filepath.Join(routerDir, "credential.json"): "no such file",
				"read-" + filepath.Join(routerDir, "admin-token"):     "no such file",
				"write-/sandbox/probe-file":                           "ok",
				"write-/tmp/probe-file":                               "ok",
				"write-/etc/probe-file":                               "",
				"write-/usr/probe-file":                               "",
				"write-/probe-file":                                   "",
				"write-/var/tmp/probe-file":                           "",
				"bind-agent-port":                                     "ok",
				"bind-other-port":                                     denied,
				"setuid-0":                                            eperm,
				"unshare":                                             eperm + "|" + denied,
			}
			if rt.file == "probe.py" {
				want["ptrace"], want["mount"] = eperm, eperm
			}
			expect(t, res, want)
		})
	}
}
