package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/kars-io/kars/internal/a2a/gateway"
	"github.com/kars-io/kars/internal/a2a/routes"
)

// WatchRoutes keeps g's routing table equal to the ConfigMap
// routes.ConfigMapName in namespace until ctx ends: a watch on that one
// object, so a revoked exposure reaches the gateway as soon as the API
// server has it. A missing ConfigMap, or one the gateway cannot read,
// routes nothing (fail closed). synced is called once the first list is
// in.
func WatchRoutes(ctx context.Context, cs kubernetes.Interface, namespace string, g *gateway.Gateway, log *slog.Logger, synced func()) error {
	lw := cache.NewListWatchFromClient(cs.CoreV1().RESTClient(), "configmaps", namespace,
		fields.OneTermEqualSelector("metadata.name", routes.ConfigMapName))
	apply := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok {
			return
		}
		t, err := routes.Parse([]byte(cm.Data[routes.Key]))
		if err != nil {
			log.Error("a2a routing table unreadable; routing nothing until it is fixed", "configmap", namespace+"/"+routes.ConfigMapName, "err", err)
			t = &routes.Table{}
		}
		g.SetTable(t)
	}
	_, inf := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &corev1.ConfigMap{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    apply,
			UpdateFunc: func(_, n any) { apply(n) },
			DeleteFunc: func(any) { g.SetTable(&routes.Table{}) },
		},
		ResyncPeriod: 10 * time.Minute,
	})
	go inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("a2a routes: the ConfigMap watch did not sync: %w", ctx.Err())
	}
	if synced != nil {
		synced()
	}
	<-ctx.Done()
	return nil
}
