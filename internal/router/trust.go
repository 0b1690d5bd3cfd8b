package router

import (
	"context"
	"log/slog"

	"github.com/kars-io/kars/internal/safety"
	"github.com/kars-io/kars/internal/trust"
)

// TrustStore adapts a trust.Store to TrustReporter: each content-safety
// finding lowers the agent's score by the store's penalty for its severity.
// Prompt Shields detections (a jailbreak or an indirect attack aimed through
// this agent) count as high; harm categories count at the severity Azure
// reported; anything else the upstream filtered counts as medium.
type TrustStore struct {
	Store *trust.Store
	Log   *slog.Logger
}

// ReportFinding penalises the agent for f.
func (t TrustStore) ReportFinding(agent string, f safety.Finding) {
	sev := trust.SeverityMedium
	switch {
	case f.Category == "jailbreak" || f.Category == "indirect_attack":
		sev = trust.SeverityHigh
	case f.Severity == "low":
		sev = trust.SeverityLow
	case f.Severity == "high":
		sev = trust.SeverityHigh
	}
	score, err := t.Store.PenalizeSafety(agent, sev)
	if err != nil && t.Log != nil {
		t.Log.Error("trust penalty not recorded", "agent", agent, "category", f.Category, "err", err)
		return
	}
	if t.Log != nil {
		t.Log.Info("trust lowered by a content-safety finding", "agent", agent, "category", f.Category, "severity", sev.String(), "score", score)
	}
}

// View is the admin API's trust view of an agent.
func (t TrustStore) View(_ context.Context, agent string) (any, error) {
	ok, score, tier := t.Store.Check(agent)
	return map[string]any{"agent": agent, "score": score, "tier": tier.String(), "meetsThreshold": ok}, nil
}
