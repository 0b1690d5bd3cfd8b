package kagent

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/convert/lossy"
)

// mcpServer is an McpServer to emit for one agent.
type mcpServer struct {
	name string
	spec karsv1.McpServerSpec
}

// readTools maps the agent's tool list: MCP tool servers become McpServers
// (when their definition is in the input) and ToolPolicy rules; agents used
// as tools have no kars counterpart.
func readTools(p *plan, a *source, idx *index, base string) error {
	d := a.doc
	for i := range d.Len(base) {
		tp := fmt.Sprintf("%s[%d]", base, i)
		typ, err := d.String(tp + ".type")
		if err != nil {
			return err
		}
		switch {
		case typ == "Agent" || (typ == "" && d.Has(tp+".agent")):
			d.Drop(tp, "an agent used as a tool: kars agents call each other over the end-to-end encrypted mesh (`kars pair`) or A2A (an A2AAgent with a pinned card key), which need the peer's identity this reference lacks")
		case typ == "McpServer" || (typ == "" && d.Has(tp+".mcpServer")):
			if err := readMCPTool(p, a, idx, tp); err != nil {
				return err
			}
		default:
			d.Drop(tp, fmt.Sprintf("tool type %q is not one kars maps (McpServer)", typ))
		}
	}
	return nil
}

func readMCPTool(p *plan, a *source, idx *index, tp string) error {
	d := a.doc
	ref := tp + ".mcpServer"
	name, err := d.String(ref + ".name")
	if err != nil {
		return err
	}
	if name == "" {
		return fmt.Errorf("%s: %s.name is required", d.Object(), ref)
	}
	kind, err := d.String(ref + ".kind")
	if err != nil {
		return err
	}
	group, err := d.String(ref + ".apiGroup")
	if err != nil {
		return err
	}
	ns, err := d.String(ref + ".namespace")
	if err != nil {
		return err
	}
	if ns == "" {
		ns = a.GetNamespace()
	}
	tools, err := d.Strings(ref + ".toolNames")
	if err != nil {
		return err
	}
	approve, err := d.Strings(ref + ".requireApproval")
	if err != nil {
		return err
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Errorf("%s: %s.name %q: %s", d.Object(), ref, name, errs[0])
	}
	if kind == "Service" && (group == "" || group == "core") {
		d.Drop(ref, fmt.Sprintf("an MCP server reached through Service %s/%s: kars reaches MCP servers by URL or runs them from an image; create an McpServer %s with url http://%s.%s:<port>/<path> and sandboxes [%s]", ns, name, name, name, ns, p.name))
		d.Drop(tp+".headersFrom", "belongs to the Service-based server above")
		return nil
	}
	var spec *karsv1.McpServerSpec
	switch kind {
	case "RemoteMCPServer", "":
		if s, ok := idx.remoteMCP[key(ns, name)]; ok {
			if spec, err = remoteServer(s); err != nil {
				return err
			}
			d.Carry(ref + ".kind")
			d.Carry(ref + ".apiGroup")
			break
		}
		if kind == "" {
			if s, ok := idx.mcpServers[key(ns, name)]; ok {
				if spec, err = deployedServer(s); err != nil {
					return err
				}
			}
		}
	case "MCPServer":
		if s, ok := idx.mcpServers[key(ns, name)]; ok {
			if spec, err = deployedServer(s); err != nil {
				return err
			}
		}
	default:
		d.Drop(ref, fmt.Sprintf("an MCP server of kind %s, which kars does not map (RemoteMCPServer, MCPServer)", kind))
		return nil
	}
	if spec == nil {
		p.note("%s: %s %s/%s is not in the input; the ToolPolicy allows its tools, but an McpServer %s listing sandbox %s must exist (convert it together with the agent, or create it)", p.name, orDefault(kind, "RemoteMCPServer"), ns, name, name, p.name)
		spec = &karsv1.McpServerSpec{}
	}
	// Tool names: the McpServer exposes them; the ToolPolicy allows them
	// as actions mcp:<server>.<tool> (McpServer's contract).
	actions := make([]string, 0, len(tools))
	for _, t := range tools {
		actions = append(actions, "mcp:"+name+"."+t)
	}
	if len(tools) == 0 {
		actions = []string{"mcp:" + name + ".*"}
	}
	spec.Tools = tools
	if spec.URL != "" || spec.Image != "" {
		p.servers = append(p.servers, mcpServer{name: name, spec: *spec})
	}
	p.rules = append(p.rules, chunkRules("mcp-"+name, karsv1.EffectAllow, 0, actions)...)
	if len(approve) > 0 {
		gated := make([]string, len(approve))
		for i, t := range approve {
			gated[i] = "mcp:" + name + "." + t
		}
		p.rules = append(p.rules, chunkRules("approve-"+name, karsv1.EffectRequireApproval, 50, gated)...)
	}
	if n := d.Len(tp + ".headersFrom"); n > 0 {
		d.Drop(tp+".headersFrom", "per-agent headers for an MCP server: kars presents one credential per McpServer (spec.authSecretRef), set on the server, never visible to the agent")
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// remoteServer maps a kagent RemoteMCPServer (an MCP server that already
// runs, reached by URL).
func remoteServer(s *source) (*karsv1.McpServerSpec, error) {
	d := s.doc
	if !s.used {
		s.used = true
		carryMetadata(d)
	}
	url, err := d.String("spec.url")
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(url, "https://") && !strings.HasPrefix(url, "http://") {
		return nil, fmt.Errorf("%s: spec.url %q is not an http(s) URL", d.Object(), url)
	}
	spec := &karsv1.McpServerSpec{URL: url, Transport: "streamable-http"}
	proto, err := d.String("spec.protocol")
	if err != nil {
		return nil, err
	}
	switch proto {
	case "", "STREAMABLE_HTTP":
	case "SSE":
		spec.Transport = "sse"
	default:
		d.Drop("spec.protocol", fmt.Sprintf("protocol %q is not streamable HTTP or SSE; the McpServer uses streamable-http", proto))
	}
	d.Carry("spec.description")
	for _, f := range []string{"timeout", "sseReadTimeout", "terminateOnClose"} {
		d.Drop("spec."+f, "the router's MCP gateway applies its own timeouts")
	}
	headers(d, spec)
	return spec, nil
}

// headers maps headersFrom: one Authorization header from a Secret becomes
// the router-held credential; anything else is not carried.
func headers(d *lossy.Doc, spec *karsv1.McpServerSpec) {
	for i := range d.Len("spec.headersFrom") {
		hp := fmt.Sprintf("spec.headersFrom[%d]", i)
		name, _ := d.Peek(hp + ".name")
		sec, _ := d.Peek(hp + ".valueFrom.name")
		k, _ := d.Peek(hp + ".valueFrom.key")
		typ, _ := d.Peek(hp + ".valueFrom.type")
		secName, _ := sec.(string)
		secKey, _ := k.(string)
		if n, _ := name.(string); strings.EqualFold(n, "Authorization") && typ == "Secret" && secName != "" && secKey != "" && spec.AuthSecretRef == nil {
			spec.AuthSecretRef = &karsv1.SecretKeyReference{Name: secName, Key: secKey}
			d.Carry(hp)
			continue
		}
		d.Drop(hp, "kars presents one credential to an MCP server (an Authorization header from a Secret, spec.authSecretRef); other headers are not carried")
	}
}

// deployedServer maps a kagent/kmcp MCPServer (a server run from an image).
func deployedServer(s *source) (*karsv1.McpServerSpec, error) {
	d := s.doc
	if !s.used {
		s.used = true
		carryMetadata(d)
	}
	image, err := d.String("spec.deployment.image")
	if err != nil {
		return nil, err
	}
	if image == "" {
		return nil, fmt.Errorf("%s: spec.deployment.image is required", d.Object())
	}
	spec := &karsv1.McpServerSpec{Image: image, Transport: "streamable-http"}
	cmd, err := d.String("spec.deployment.cmd")
	if err != nil {
		return nil, err
	}
	if cmd != "" {
		spec.Command = []string{cmd}
	}
	if spec.Args, err = d.Strings("spec.deployment.args"); err != nil {
		return nil, err
	}
	port, set, err := d.Int("spec.deployment.port")
	if err != nil {
		return nil, err
	}
	if set {
		if port < 1 || port > 65535 {
			return nil, fmt.Errorf("%s: spec.deployment.port %d is not a TCP port", d.Object(), port)
		}
		spec.Port = int32(port)
	}
	tt, err := d.String("spec.transportType")
	if err != nil {
		return nil, err
	}
	switch tt {
	case "stdio":
		spec.Transport = "stdio"
		d.Carry("spec.stdioTransport")
	case "", "http":
		tport, set, err := d.Int("spec.httpTransport.targetPort")
		if err != nil {
			return nil, err
		}
		if set && tport > 0 && tport <= 65535 {
			spec.Port = int32(tport)
		}
		d.Drop("spec.httpTransport.path", "kars's MCP gateway speaks to the server's default MCP path")
	default:
		d.Drop("spec.transportType", fmt.Sprintf("transport %q is not stdio or http; the McpServer uses streamable-http", tt))
	}
	d.Drop("spec.deployment.env", "the McpServer pod takes no environment from the converter; credentials go in spec.authSecretRef")
	d.Drop("spec.deployment.secretRefs", "kars never mounts Secrets wholesale; the router presents spec.authSecretRef")
	d.Drop("spec.deployment.configMapRefs", "kars does not mount ConfigMaps into MCP servers")
	d.Drop("spec.deployment.volumes", "kars does not mount volumes into MCP servers")
	d.Drop("spec.deployment.volumeMounts", "kars does not mount volumes into MCP servers")
	d.Drop("spec.deployment.resources", "kars sizes MCP server pods itself")
	return spec, nil
}
