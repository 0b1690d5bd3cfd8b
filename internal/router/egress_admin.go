package router

import (
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kars-io/kars/internal/egress/blocklist"
	"github.com/kars-io/kars/internal/egress/learn"
)

// EgressStatus is the admin view of the egress side.
type EgressStatus struct {
	Mode            string              `json:"mode"`
	AllowedHosts    int                 `json:"allowedHosts"`
	AllowlistDigest string              `json:"allowlistDigest,omitempty"`
	AllowlistHosts  int                 `json:"allowlistHosts"`
	Approvals       []ApprovalStatus    `json:"approvals"`
	Blocklist       *blocklist.Snapshot `json:"blocklist,omitempty"`
	BlocklistAge    string              `json:"blocklistAge,omitempty"`
	OpenTunnels     int                 `json:"openTunnels"`
	Listeners       map[string]string   `json:"listeners"`
	ConfigDigest    string              `json:"configDigest"`
}

// ApprovalStatus echoes an approval the router enforces; the controller
// sets RouterConfirmed from it.
type ApprovalStatus struct {
	Name      string    `json:"name"`
	UID       string    `json:"uid,omitempty"`
	Hosts     []string  `json:"hosts"`
	Ports     []int32   `json:"ports,omitempty"`
	ExpiresAt time.Time `json:"expiresAt"`
	Active    bool      `json:"active"`
}

// Status reports the egress configuration in force.
func (e *Egress) Status() EgressStatus {
	g := e.r.gen.Load()
	ep := e.policyFor(g)
	c := g.snap.Config
	st := EgressStatus{Mode: ep.pol.Mode.String(), Approvals: []ApprovalStatus{}, OpenTunnels: len(e.proxy.Open()),
		Listeners: map[string]string{}, ConfigDigest: g.snap.Digest}
	now := e.now()
	if eg := ep.eg; eg != nil {
		st.AllowedHosts = len(eg.AllowedHosts)
		if a := eg.Allowlist; a != nil {
			st.AllowlistDigest, st.AllowlistHosts = a.Digest, len(a.Hosts)
		}
		for _, a := range eg.Approvals {
			st.Approvals = append(st.Approvals, ApprovalStatus{Name: a.Name, UID: a.UID, Hosts: a.Hosts, Ports: a.Ports,
				ExpiresAt: a.ExpiresAt, Active: now.Before(a.ExpiresAt)})
		}
		if eg.TransparentListen != "" {
			st.Listeners["transparent"] = eg.TransparentListen
		}
		if eg.DNSListen != "" {
			st.Listeners["dns"] = eg.DNSListen
		}
	}
	st.Listeners["explicit"] = c.AgentListen()
	if ep.blocklist != nil {
		s := ep.blocklist.loader.Current()
		st.Blocklist = s
		st.BlocklistAge = s.Age(now).Round(time.Second).String()
	}
	return st
}

// AdminHandler serves /admin/v1/egress (status), /admin/v1/egress/learned
// and /admin/v1/egress/events (?follow=1 streams NDJSON).
func (e *Egress) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/v1/egress", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, e.Status())
	})
	mux.HandleFunc("GET /admin/v1/egress/learned", func(w http.ResponseWriter, _ *http.Request) {
		es, dropped := e.learned.List()
		if es == nil {
			es = []learn.Entry{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"mode": e.policyFor(e.r.gen.Load()).pol.Mode.String(), "entries": es, "dropped": dropped})
	})
	mux.HandleFunc("GET /admin/v1/egress/events", e.events.serve)
	return mux
}

// egressMetrics are the egress side's Prometheus series.
type egressMetrics struct {
	decisions   *prometheus.CounterVec
	dns         *prometheus.CounterVec
	blDomains   prometheus.Gauge
	blAge       prometheus.GaugeFunc
	blInfo      *prometheus.GaugeVec
	blFailures  prometheus.Gauge
	mu          sync.Mutex
	oldest      time.Time
	lastVersion string
}

func newEgressMetrics(reg *prometheus.Registry) *egressMetrics {
	const ns = "kars_router_egress"
	m := &egressMetrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "decisions_total",
			Help: "Egress decisions by deciding step, verdict and how the connection arrived."}, []string{"step", "verdict", "via"}),
		dns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dns_queries_total",
			Help: "DNS queries the agent sent, by response code."}, []string{"rcode"}),
		blDomains: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "blocklist_domains",
			Help: "Distinct domains in the blocklist in force."}),
		blInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "blocklist_info",
			Help: "The blocklist version in force (1 for the current version)."}, []string{"version"}),
		blFailures: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "blocklist_sources_failing",
			Help: "Blocklist sources whose last refresh failed (their last good list stays in force)."}),
	}
	m.blAge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "blocklist_age_seconds",
		Help: "Age of the oldest list in the blocklist in force (0 without a blocklist)."}, func() float64 {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.oldest.IsZero() {
			return 0
		}
		return time.Since(m.oldest).Seconds()
	})
	reg.MustRegister(m.decisions, m.dns, m.blDomains, m.blAge, m.blInfo, m.blFailures)
	return m
}

func (m *egressMetrics) blocklist(s *blocklist.Snapshot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.oldest = s.Oldest
	m.blDomains.Set(float64(s.Domains))
	if m.lastVersion != s.Version {
		if m.lastVersion != "" {
			m.blInfo.DeleteLabelValues(m.lastVersion)
		}
		m.lastVersion = s.Version
	}
	if s.Version != "" {
		m.blInfo.WithLabelValues(s.Version).Set(1)
	}
	failing := 0
	for _, src := range s.Sources {
		if src.LastError != "" {
			failing++
		}
	}
	m.blFailures.Set(float64(failing))
}
