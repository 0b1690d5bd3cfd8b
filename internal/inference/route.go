// Package inference understands the inference APIs that agents speak and
// that providers serve: which operation a request path names, the fields of
// a request body that governance and budgets need, the token usage in a
// response or a stream, Server-Sent Events framing, and how a request is
// addressed and authenticated at each provider. It also holds the built-in
// Offline model.
//
// Everything here parses untrusted bytes (from the agent or the upstream);
// each parser has a fuzz target. The package performs no I/O of its own
// beyond the upstream requests it is asked to build.
package inference

import "strings"

// Dialect is the wire format of an API family.
type Dialect uint8

// The dialects the router speaks to agents.
const (
	// DialectOpenAI is the OpenAI REST API (/v1/...).
	DialectOpenAI Dialect = iota + 1
	// DialectAzure is Azure OpenAI's deployment-addressed form
	// (/openai/deployments/{d}/...?api-version=). Its bodies are OpenAI's.
	DialectAzure
	// DialectAnthropic is the Anthropic Messages API.
	DialectAnthropic
)

// String names the dialect for logs.
func (d Dialect) String() string {
	switch d {
	case DialectOpenAI:
		return "openai"
	case DialectAzure:
		return "azure"
	case DialectAnthropic:
		return "anthropic"
	}
	return "unknown"
}

// Op is an inference operation; it is the <op> of the governance action
// "inference:<op>:<model>" and a metrics label.
type Op string

// The operations the router serves.
const (
	OpChat        Op = "chat"
	OpCompletions Op = "completions"
	OpResponses   Op = "responses"
	OpEmbeddings  Op = "embeddings"
	OpModels      Op = "models"
	OpMessages    Op = "messages"
)

// openAIPath is the path suffix of each OpenAI-family operation.
var openAIPath = map[Op]string{
	OpChat:        "/chat/completions",
	OpCompletions: "/completions",
	OpResponses:   "/responses",
	OpEmbeddings:  "/embeddings",
}

// Route is what an agent's request path names.
type Route struct {
	Dialect Dialect
	Op      Op
	// Deployment is the Azure deployment in the path; informational only,
	// since the router, not the agent, chooses the upstream target.
	Deployment string
	// ModelID is set for GET /v1/models/{id}.
	ModelID string
}

// Match maps a method and path to a Route. ok is false for anything the
// router does not serve, which the caller answers with a 404.
func Match(method, path string) (r Route, ok bool) {
	switch {
	case strings.HasPrefix(path, "/openai/deployments/"):
		rest := path[len("/openai/deployments/"):]
		slash := strings.IndexByte(rest, '/')
		if slash <= 0 || method != "POST" {
			return Route{}, false
		}
		op, ok := openAIOp(rest[slash:])
		if !ok || op == OpResponses {
			return Route{}, false
		}
		return Route{Dialect: DialectAzure, Op: op, Deployment: rest[:slash]}, true
	case path == "/openai/responses" && method == "POST":
		return Route{Dialect: DialectAzure, Op: OpResponses}, true
	case strings.HasPrefix(path, "/openai/v1/"):
		return matchV1(method, path[len("/openai"):])
	case strings.HasPrefix(path, "/v1/"):
		return matchV1(method, path)
	}
	return Route{}, false
}

func matchV1(method, path string) (Route, bool) {
	rest := path[len("/v1"):]
	if method == "GET" {
		if rest == "/models" {
			return Route{Dialect: DialectOpenAI, Op: OpModels}, true
		}
		if id, ok := strings.CutPrefix(rest, "/models/"); ok && id != "" {
			return Route{Dialect: DialectOpenAI, Op: OpModels, ModelID: id}, true
		}
		return Route{}, false
	}
	if method != "POST" {
		return Route{}, false
	}
	if rest == "/messages" {
		return Route{Dialect: DialectAnthropic, Op: OpMessages}, true
	}
	op, ok := openAIOp(rest)
	if !ok {
		return Route{}, false
	}
	return Route{Dialect: DialectOpenAI, Op: op}, true
}

func openAIOp(suffix string) (Op, bool) {
	for op, p := range openAIPath {
		if suffix == p {
			return op, true
		}
	}
	return "", false
}
