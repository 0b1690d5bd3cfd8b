package router

import (
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"

	"github.com/kars-io/kars/internal/routerconfig"
)

// Prefixes of the admin API's evaluation relay (routerconfig holds them:
// the controller, which calls the relay, does not link the router).
const (
	EvalAgentPrefix  = routerconfig.EvalAgentPrefix
	EvalRouterPrefix = routerconfig.EvalRouterPrefix
)

// evalRelay lets an evaluation run from outside the pod — the controller
// on a cluster, where the agent's endpoint and the router's agent API
// listen on the pod's loopback only — play its cases as kars dev plays
// them from inside: chat turns and session deletes go to the agent, decide
// and memory probes to the agent API in process, so they are decided,
// rate-limited and audited exactly as the agent's own. Nothing else
// passes: the relay is not a way into the pod. It sits behind the admin
// bearer token.
func evalRelay(agentURL string, agentAPI http.Handler) (http.Handler, error) {
	u, err := url.Parse(agentURL)
	if err != nil {
		return nil, err
	}
	toAgent := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = u.Host
			// The agent sees a caller on its own loopback, as with kars
			// dev; nothing of the admin request's credentials.
			pr.Out.Header.Del("Authorization")
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": "the agent's endpoint did not answer: " + err.Error()})
		},
	}
	mux := http.NewServeMux()
	mux.Handle("POST "+EvalAgentPrefix+"/v1/chat", http.StripPrefix(EvalAgentPrefix, toAgent))
	mux.Handle("DELETE "+EvalAgentPrefix+"/v1/sessions/{id}", http.StripPrefix(EvalAgentPrefix, toAgent))
	api := http.StripPrefix(EvalRouterPrefix, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		req.Header.Del("Authorization")
		agentAPI.ServeHTTP(w, req)
	}))
	mux.Handle("POST "+EvalRouterPrefix+DecidePath, api)
	mux.Handle(EvalRouterPrefix+MemoryPath, api)
	mux.Handle(EvalRouterPrefix+MemoryPath+"/", api)
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "the evaluation relay does not serve " + req.Method + " " +
			strings.TrimPrefix(req.URL.Path, "/admin/v1/eval")})
	})
	return mux, nil
}
