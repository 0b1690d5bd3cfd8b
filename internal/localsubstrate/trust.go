package localsubstrate

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	corev1 "k8s.io/api/core/v1"

	"github.com/kars-io/kars/internal/egress/sandboxca"
	"github.com/kars-io/kars/internal/render"
	"github.com/kars-io/kars/internal/sandbox/local"
)

// agentTrustDir is where the agent's trust files (the router-trust init
// container's output, an emptyDir at render.AgentTrustDir on a cluster)
// are placed in the workspace locally.
const agentTrustDir = ".kars-agent/trust"

// trustHosts returns the --hosts of a router-trust init container.
func trustHosts(c corev1.Container) []string {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--hosts="); ok {
			return strings.Split(v, ",")
		}
	}
	return nil
}

// runRouterTrust does what the router-trust init container does on a
// cluster: kars-router trust, as the router's UID (root mode), with the
// router's persistent state folder, so that the sandbox CA's key is made
// by the router's own program in the router's own folder and never leaves
// it. It returns the files written for the agent.
func runRouterTrust(routerBin, routerState string, hosts []string) (map[string][]byte, error) {
	if routerState == "" {
		return nil, errors.New("credentials bound to HTTPS hosts need the router's persistent state folder (RouterStateRoot), where the sandbox CA lives")
	}
	root := os.Geteuid() == 0
	if err := os.MkdirAll(filepath.Dir(routerState), 0o711); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(routerState, 0o700); err != nil {
		return nil, err
	}
	out, err := os.MkdirTemp("", "kars-trust-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(out)
	cmd := exec.Command(routerBin, "trust", "--state="+filepath.Join(routerState, strings.TrimPrefix(render.RouterStateDir, render.RouterStateRoot+"/")),
		"--out="+out, "--hosts="+strings.Join(hosts, ","))
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	if root {
		for _, p := range []string{routerState, out} {
			if err := os.Chown(p, local.RouterUID, local.RouterUID); err != nil {
				return nil, err
			}
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: local.RouterUID, Gid: local.RouterUID}}
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("router-trust: %v: %s", err, strings.TrimSpace(string(b)))
	}
	files := map[string][]byte{}
	for _, f := range []string{sandboxca.AgentCAFile, sandboxca.AgentBundleFile} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			return nil, fmt.Errorf("router-trust wrote no %s: %w", f, err)
		}
		files[f] = b
	}
	return files, nil
}

// agentTrustFiles places the trust files in the agent's workspace and
// points the variables naming render.AgentTrustDir there.
func agentTrustFiles(files map[string][]byte, p *local.Process) {
	if p.Files == nil {
		p.Files = map[string][]byte{}
	}
	for name, data := range files {
		p.Files[path.Join(agentTrustDir, name)] = data
	}
	dir := path.Join(render.Workspace, agentTrustDir)
	for i, kv := range p.Env {
		k, val, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(val, render.AgentTrustDir+"/") {
			p.Env[i] = k + "=" + dir + strings.TrimPrefix(val, render.AgentTrustDir)
		}
	}
}

// trustCache runs router-trust once per router state, hosts and CA
// certificate: reconciles build the pod spec often, and the step's output
// changes only with them.
type trustCache struct {
	mu    sync.Mutex
	byKey map[string]map[string][]byte
}

func (c *trustCache) files(routerBin, routerState string, hosts []string) (map[string][]byte, error) {
	caCert := filepath.Join(routerState, strings.TrimPrefix(render.RouterStateDir, render.RouterStateRoot+"/"), sandboxca.DirName, sandboxca.CertFile)
	key := routerBin + "\x00" + routerState + "\x00" + strings.Join(hosts, ",")
	if fi, err := os.Stat(caCert); err == nil {
		key += fmt.Sprintf("\x00%d\x00%d", fi.ModTime().UnixNano(), fi.Size())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.byKey[key]; ok {
		return f, nil
	}
	f, err := runRouterTrust(routerBin, routerState, hosts)
	if err != nil {
		return nil, err
	}
	if c.byKey == nil {
		c.byKey = map[string]map[string][]byte{}
	}
	// The step may have issued the certificate: key the result by what
	// it left.
	if fi, err := os.Stat(caCert); err == nil {
		key = routerBin + "\x00" + routerState + "\x00" + strings.Join(hosts, ",") + fmt.Sprintf("\x00%d\x00%d", fi.ModTime().UnixNano(), fi.Size())
	}
	c.byKey[key] = f
	return f, nil
}
