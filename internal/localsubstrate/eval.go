package localsubstrate

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
	"github.com/kars-io/kars/internal/eval"
	"github.com/kars-io/kars/internal/render"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

var _ controller.EvalRunner = (*Substrate)(nil)

// EvalTarget implements controller.EvalRunner: an evaluation reaches the
// agent's chat endpoint and the router's agent API inside the pod's
// network namespace, as `kars connect` reaches the agent.
func (s *Substrate) EvalTarget(_ context.Context, sb *karsv1.KarsSandbox) (eval.Target, error) {
	s.mu.Lock()
	e := s.pods[client.ObjectKeyFromObject(sb)]
	s.mu.Unlock()
	if e == nil || e.pod == nil || !running(e.pod) {
		return eval.Target{}, fmt.Errorf("sandbox %s/%s has no running local pod", sb.Namespace, sb.Name)
	}
	pod := e.pod
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return pod.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 2,
	}
	return eval.Target{
		Client:    &http.Client{Transport: tr, Timeout: 5 * time.Minute},
		AgentURL:  fmt.Sprintf("http://127.0.0.1:%d", e.agentPort),
		RouterURL: fmt.Sprintf("http://127.0.0.1:%d", render.RouterAgentPort),
	}, nil
}
