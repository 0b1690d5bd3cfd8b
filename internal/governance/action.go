package governance

import "strings"

// MaxActionLen bounds an action string. Longer actions are denied: a bound
// keeps matching cost predictable and stops an agent from smuggling payloads
// into audit lines through the action name.
const MaxActionLen = 256

// Namespace is the part of an action before its first colon. Every action a
// kars component asks about lives in one of these namespaces; anything else
// is malformed and denied.
type Namespace uint8

// The action namespaces, with the shape each one's action takes.
const (
	nsInvalid   Namespace = iota
	NSInference           // inference:<op>:<model>
	NSTool                // tool:<name>
	NSMCP                 // mcp:<server>.<tool>
	NSShell               // shell:<command>
	NSEgress              // egress:<host>:<port>
	NSA2A                 // a2a:receive:<skill>, a2a:call:<agent>, or a2a:<method>
	NSMesh                // mesh:send:<peer>, mesh:receive:<peer>
	NSMemory              // memory:<op>
	NSSpawn               // spawn:create:<kind>
	numNamespaces
)

var namespaceNames = [numNamespaces]string{
	"", "inference", "tool", "mcp", "shell", "egress", "a2a", "mesh", "memory", "spawn",
}

// String returns the namespace as it appears in an action.
func (n Namespace) String() string {
	if n >= numNamespaces {
		return ""
	}
	return namespaceNames[n]
}

// namespaceOf maps a namespace word to its Namespace; the switch compiles to
// a comparison tree, so the lookup neither hashes nor allocates.
func namespaceOf(s string) Namespace {
	switch s {
	case "inference":
		return NSInference
	case "tool":
		return NSTool
	case "mcp":
		return NSMCP
	case "shell":
		return NSShell
	case "egress":
		return NSEgress
	case "a2a":
		return NSA2A
	case "mesh":
		return NSMesh
	case "memory":
		return NSMemory
	case "spawn":
		return NSSpawn
	}
	return nsInvalid
}

// Reasons for malformed actions. They are constants so that denying a bad
// action never allocates.
const (
	reasonEmptyAction     = "malformed action: empty"
	reasonActionTooLong   = "malformed action: longer than 256 bytes"
	reasonActionByte      = "malformed action: only printable ASCII without wildcards is allowed (spaces only in shell commands)"
	reasonNoNamespace     = "malformed action: missing namespace (want <namespace>:<name>)"
	reasonUnknownNS       = "malformed action: unknown namespace (want inference, tool, mcp, shell, egress, a2a, mesh, memory or spawn)"
	reasonEmptySegment    = "malformed action: empty name after namespace"
	reasonInferenceShape  = "malformed action: want inference:<op>:<model>"
	reasonMCPShape        = "malformed action: want mcp:<server>.<tool>"
	reasonEgressShape     = "malformed action: want egress:<host>:<port> with a port from 1 to 65535"
	reasonMeshShape       = "malformed action: want mesh:send:<peer> or mesh:receive:<peer>"
	reasonSpawnShape      = "malformed action: want spawn:create:<kind>"
	reasonNamespaceColons = "malformed action: this namespace takes a single name without colons"
	reasonA2AShape        = "malformed action: want a2a:receive:<skill>, a2a:call:<agent> or a2a:<method>"
)

// CheckAction validates an action string. It returns the action's namespace
// and an empty reason when the action is well formed, or a constant reason
// explaining what is wrong. It never allocates.
func CheckAction(action string) (Namespace, string) {
	n := len(action)
	if n == 0 {
		return nsInvalid, reasonEmptyAction
	}
	if n > MaxActionLen {
		return nsInvalid, reasonActionTooLong
	}
	colon := -1
	for i := 0; i < n; i++ {
		c := action[i]
		if c == ':' && colon < 0 {
			colon = i
		}
		if c < 0x20 || c > 0x7e || c == '*' || c == '?' {
			return nsInvalid, reasonActionByte
		}
	}
	if colon <= 0 {
		return nsInvalid, reasonNoNamespace
	}
	ns := namespaceOf(action[:colon])
	if ns == nsInvalid {
		return nsInvalid, reasonUnknownNS
	}
	rest := action[colon+1:]
	if rest == "" {
		return nsInvalid, reasonEmptySegment
	}
	if ns != NSShell && strings.IndexByte(action, ' ') >= 0 {
		return nsInvalid, reasonActionByte
	}
	if r := checkShape(ns, rest); r != "" {
		return nsInvalid, r
	}
	return ns, ""
}

// checkShape applies each namespace's grammar to the part after the colon.
func checkShape(ns Namespace, rest string) string {
	switch ns {
	case NSInference:
		// The model may itself contain colons (for example "llama3:8b").
		op, model, ok := strings.Cut(rest, ":")
		if !ok || op == "" || model == "" {
			return reasonInferenceShape
		}
	case NSMCP:
		if strings.IndexByte(rest, ':') >= 0 {
			return reasonMCPShape
		}
		server, tool, ok := strings.Cut(rest, ".")
		if !ok || server == "" || tool == "" {
			return reasonMCPShape
		}
	case NSEgress:
		if !validHostPort(rest) {
			return reasonEgressShape
		}
	case NSMesh:
		// send: the agent hands a message to a peer; receive: the
		// router delivers a peer's decrypted message to the agent.
		verb, peer, ok := strings.Cut(rest, ":")
		if !ok || (verb != "send" && verb != "receive") || peer == "" || strings.IndexByte(peer, ':') >= 0 {
			return reasonMeshShape
		}
	case NSSpawn:
		verb, kind, ok := strings.Cut(rest, ":")
		if !ok || verb != "create" || kind == "" || strings.IndexByte(kind, ':') >= 0 {
			return reasonSpawnShape
		}
	case NSA2A:
		// Inbound calls name the skill they invoke, outbound calls the
		// registered agent they reach (docs/a2a.md); a single name is
		// the older form and stays valid.
		verb, name, ok := strings.Cut(rest, ":")
		if ok && (verb != "receive" && verb != "call" || name == "" || strings.IndexByte(name, ':') >= 0) {
			return reasonA2AShape
		}
	case NSTool, NSMemory:
		if strings.IndexByte(rest, ':') >= 0 {
			return reasonNamespaceColons
		}
	}
	return ""
}

// validHostPort accepts "host:port" and "[v6]:port" with a decimal port in
// 1..65535 and no leading zeros, so that one destination has one spelling.
func validHostPort(s string) bool {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 || i == len(s)-1 {
		return false
	}
	host, port := s[:i], s[i+1:]
	if host[0] == '[' {
		if len(host) < 3 || host[len(host)-1] != ']' {
			return false
		}
	} else if strings.IndexByte(host, ':') >= 0 || strings.IndexByte(host, '[') >= 0 || strings.IndexByte(host, ']') >= 0 {
		return false
	}
	if len(port) > 5 || port[0] == '0' {
		return false
	}
	v := 0
	for i := 0; i < len(port); i++ {
		c := port[i]
		if c < '0' || c > '9' {
			return false
		}
		v = v*10 + int(c-'0')
	}
	return v >= 1 && v <= 65535
}
