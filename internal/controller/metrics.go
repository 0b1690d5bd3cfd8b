package controller

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// metrics are the controller's own series, served with controller-runtime's
// on the manager's metrics endpoint.
type metrics struct {
	applies *prometheus.CounterVec
	probes  *prometheus.CounterVec
	byo     *prometheus.CounterVec
}

var (
	metricsOnce sync.Once
	theMetrics  *metrics
)

// getMetrics registers the series once per process: Setup may run several
// times in one process (tests, `kars dev` restarting its manager), and the
// registry refuses duplicates.
func getMetrics() *metrics {
	metricsOnce.Do(func() {
		theMetrics = &metrics{
			applies: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "kars_controller_applies_total",
				Help: "Rendered objects compared with the stored ones, by kind and result: applied (a server-side apply was sent), unchanged (no request), error.",
			}, []string{"kind", "result"}),
			probes: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "kars_controller_router_probes_total",
				Help: "Reads of a router's enforced config digest, by result: match, mismatch, error.",
			}, []string{"result"}),
			byo: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "kars_controller_byo_checks_total",
				Help: "BYO image contract checks, by result: valid, invalid, unreachable.",
			}, []string{"result"}),
		}
		crmetrics.Registry.MustRegister(theMetrics.applies, theMetrics.probes, theMetrics.byo)
	})
	return theMetrics
}
