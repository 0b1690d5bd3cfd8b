package router

import (
	"strconv"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/budget"
	"github.com/kars-io/kars/internal/governance"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the router's Prometheus series, served on the admin
// listener's /metrics.
type metrics struct {
	requests        *prometheus.CounterVec
	tokens          *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	upstreamLatency *prometheus.HistogramVec
	upstreamErrors  *prometheus.CounterVec
	decisions       *prometheus.CounterVec
	safetyFindings  *prometheus.CounterVec
	budgetRemaining *prometheus.GaugeVec
	budgetUsed      *prometheus.GaugeVec
	auditErrors     prometheus.Counter
	reloads         prometheus.Counter
	inflight        prometheus.Gauge
	config          *prometheus.GaugeVec
	// admissionRefused counts calls refused at a bound ("inflight",
	// "buffer").
	admissionRefused *prometheus.CounterVec

	// Series every inference call updates, looked up once rather than by
	// label values on each call (a hash and a map lookup each). They are
	// created on first use, so that /metrics shows no budget before there
	// is one and no verdict before it has been given.
	verdicts    [4]lazy[prometheus.Counter] // by governance.Verdict
	budgetGauge [4]lazy[prometheus.Gauge]   // remaining daily, monthly; used daily, monthly
}

// lazy is a metric series created on first use.
type lazy[M any] struct {
	once sync.Once
	m    M
}

func (l *lazy[M]) get(create func() M) M {
	l.once.Do(func() { l.m = create() })
	return l.m
}

// decided counts one governance decision.
func (m *metrics) decided(v governance.Verdict) {
	if int(v) >= len(m.verdicts) {
		m.decisions.WithLabelValues(v.String()).Inc()
		return
	}
	m.verdicts[v].get(func() prometheus.Counter { return m.decisions.WithLabelValues(v.String()) }).Inc()
}

func newMetrics(reg *prometheus.Registry) *metrics {
	const ns = "kars_router"
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
			Help: "Agent inference calls by operation, model, HTTP status and governance decision."}, []string{"op", "model", "status", "decision"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "tokens_total",
			Help: "Tokens settled against the budget, by model and kind (prompt, completion)."}, []string{"model", "kind"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "request_duration_seconds",
			Help: "Time from receiving an agent call to its last byte.", Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14)}, []string{"op"}),
		upstreamLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "upstream_latency_seconds",
			Help: "Time to the upstream's response headers.", Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14)}, []string{"upstream"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_errors_total",
			Help: "Upstream failures that trigger failover, by target and reason (status code or transport)."}, []string{"upstream", "reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "decisions_total",
			Help: "Governance decisions by verdict."}, []string{"verdict"}),
		safetyFindings: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "safety_findings_total",
			Help: "Content-safety findings by category and whether they blocked."}, []string{"category", "blocking"}),
		budgetRemaining: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "budget_remaining_tokens",
			Help: "Tokens left in the budget window, counting in-flight reservations; -1 when unlimited."}, []string{"window"}),
		budgetUsed: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "budget_used_tokens",
			Help: "Tokens settled in the budget window."}, []string{"window"}),
		auditErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "audit_errors_total",
			Help: "Audit appends that failed (the router refuses calls while the log fails)."}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "config_reloads_total",
			Help: "Config generations applied, including the first."}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "in_flight_requests",
			Help: "Agent calls in progress."}),
		config: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "config_info",
			Help: "1 for the digest of the config in force."}, []string{"digest"}),
		admissionRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "admission_refused_total",
			Help: "Calls refused with 503 at a bound: calls in flight or buffered bytes."}, []string{"bound"}),
	}
	reg.MustRegister(m.requests, m.tokens, m.duration, m.upstreamLatency, m.upstreamErrors, m.decisions,
		m.safetyFindings, m.budgetRemaining, m.budgetUsed, m.auditErrors, m.reloads, m.inflight, m.config, m.admissionRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// registerAuditSyncs exports how many fdatasync calls the audit log has
// made, when the sink counts them; against requests_total it shows how
// many entries each group commit carries.
func registerAuditSyncs(reg *prometheus.Registry, sink any) {
	if s, ok := sink.(interface{ Syncs() uint64 }); ok {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "kars_router", Name: "audit_syncs_total",
			Help: "fdatasync calls made by the audit log (one per group commit, plus rotations and checkpoints)."},
			func() float64 { return float64(s.Syncs()) }))
	}
	if s, ok := sink.(interface{ SyncTime() time.Duration }); ok {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "kars_router", Name: "audit_sync_seconds_total",
			Help: "Time the audit log has spent in fdatasync; over audit_syncs_total, the mean price of one commit."},
			func() float64 { return s.SyncTime().Seconds() }))
	}
}

func (m *metrics) configInfo(digest string, old *generation) {
	if old != nil {
		m.config.DeleteLabelValues(old.snap.Digest)
	}
	m.config.WithLabelValues(digest).Set(1)
}

func (m *metrics) observe(c *Call, decision, model string, lat time.Duration) {
	m.requests.WithLabelValues(string(c.Route.Op), model, strconv.Itoa(c.Status), decision).Inc()
	m.duration.WithLabelValues(string(c.Route.Op)).Observe(lat.Seconds())
	if c.Usage.Prompt > 0 {
		m.tokens.WithLabelValues(model, "prompt").Add(float64(c.Usage.Prompt))
	}
	if c.Usage.Completion > 0 {
		m.tokens.WithLabelValues(model, "completion").Add(float64(c.Usage.Completion))
	}
}

func (m *metrics) budget(s budget.State) {
	d, mo := s.Remaining()
	for i, v := range [4]int64{d, mo, s.DayUsed, s.MonthUsed} {
		m.budgetGauge[i].get(func() prometheus.Gauge {
			vec, window := m.budgetRemaining, "daily"
			if i >= 2 {
				vec = m.budgetUsed
			}
			if i%2 == 1 {
				window = "monthly"
			}
			return vec.WithLabelValues(window)
		}).Set(float64(v))
	}
}
