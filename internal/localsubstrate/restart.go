package localsubstrate

import (
	"context"
	"slices"
	"strconv"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
	"github.com/kars-io/kars/internal/controller"
)

var _ controller.Restarter = (*Substrate)(nil)

// Running implements controller.Restarter: the local pod, named by the
// time its router started.
func (s *Substrate) Running(_ context.Context, sb *karsv1.KarsSandbox) ([]string, error) {
	if id := s.podID(sb); id != "" {
		return []string{id}, nil
	}
	return nil, nil
}

// Restart implements controller.Restarter: the next reconcile stops the
// sandbox's local pod and starts it again, if it is still the one in ids
// (its router state and workspace live outside the pod and are kept).
func (s *Substrate) Restart(_ context.Context, sb *karsv1.KarsSandbox, ids []string) error {
	s.mu.Lock()
	e := s.pods[client.ObjectKeyFromObject(sb)]
	restart := e != nil && e.pod != nil && slices.Contains(ids, startID(e))
	if restart {
		e.hash = "" // as after a crash: the next Realize starts it anew
	}
	s.mu.Unlock()
	if restart {
		s.nudgeAt(sb, time.Now())
	}
	return nil
}

func (s *Substrate) podID(sb *karsv1.KarsSandbox) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.pods[client.ObjectKeyFromObject(sb)]; e != nil && e.pod != nil {
		return startID(e)
	}
	return ""
}

func startID(e *entry) string {
	return "local-" + strconv.FormatInt(e.pod.Status().Router.StartedAt.UnixNano(), 10)
}
