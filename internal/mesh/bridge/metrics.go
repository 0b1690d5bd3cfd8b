package bridge

import "github.com/prometheus/client_golang/prometheus"

// metrics are the bridge's series, on the router's /metrics.
type metrics struct {
	messages *prometheus.CounterVec
	knocks   *prometheus.CounterVec
	security *prometheus.CounterVec
	sessions prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns = "kars_router_mesh"
	m := &metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "messages_total",
			Help: "Mesh messages by direction (send, receive) and decision."}, []string{"direction", "decision"}),
		knocks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "knocks_total",
			Help: "KNOCKs by direction (out, in) and result (sent, accepted, rejected, timeout)."}, []string{"direction", "result"}),
		security: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "security_events_total",
			Help: "Inbound frames dropped as security events, by kind (decrypt, no_session, unsolicited_session, bad_signature, malformed)."}, []string{"kind"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "sessions",
			Help: "Live Double Ratchet sessions."}),
	}
	if reg != nil {
		reg.MustRegister(m.messages, m.knocks, m.security, m.sessions)
	}
	return m
}
