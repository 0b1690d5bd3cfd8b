package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/kars-io/kars/internal/render"
)

// AnnotationAppliedHash records the hash of the object kars last applied.
// Together with a field-by-field comparison it lets a reconcile skip the
// write (and the request) when nothing changed: the hash catches fields kars
// stopped setting, the comparison catches someone else changing a field kars
// sets.
const AnnotationAppliedHash = "kars.io/applied-hash"

// ConflictError says that an object kars would write already exists and
// was not created by kars for this sandbox: kars never takes over (and
// later garbage-collects) an object it does not own.
type ConflictError struct {
	Kind, Namespace, Name string
}

// Error implements error.
func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s %s/%s already exists and was not created by kars for this sandbox; kars does not take over objects it did not create: rename or delete it", e.Kind, e.Namespace, e.Name)
}

// ownedAsRendered reports whether have carries the controller reference
// that want (a rendered object) carries: the same owner UID. A rendered
// object without one is cluster-scoped (an overlay's admission policies),
// which no namespaced sandbox can own: it is recognised by carrying every
// identifying label want carries — creating such objects takes cluster
// RBAC no tenant has.
func ownedAsRendered(want, have client.Object) bool {
	if !slices.ContainsFunc(want.GetOwnerReferences(), func(r metav1.OwnerReference) bool { return r.Controller != nil && *r.Controller }) {
		for k, v := range want.GetLabels() {
			if have.GetLabels()[k] != v {
				return false
			}
		}
		return len(want.GetLabels()) > 0
	}
	for _, w := range want.GetOwnerReferences() {
		if w.Controller == nil || !*w.Controller {
			continue
		}
		for _, h := range have.GetOwnerReferences() {
			if h.UID == w.UID && h.Controller != nil && *h.Controller {
				return true
			}
		}
	}
	return false
}

// applier writes rendered objects with server-side apply, but only those
// whose stored version differs from the rendered one.
type applier struct {
	c client.Client
	// live reads the API server directly. The cache holds only objects
	// labelled as kars's, so an object it does not have may still exist,
	// created by someone else; live is asked before anything is created.
	live    client.Reader
	metrics *metrics
}

// apply makes the stored object match obj and reports whether it wrote.
// obj is not modified.
func (a *applier) apply(ctx context.Context, obj client.Object) (bool, error) {
	want, err := toUnstructured(obj)
	if err != nil {
		return false, err
	}
	hash, err := hashOf(want)
	if err != nil {
		return false, err
	}
	annotations := want.GetAnnotations()
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[AnnotationAppliedHash] = hash
	want.SetAnnotations(annotations)

	kind := want.GetKind()
	have := reflect.New(reflect.TypeOf(obj).Elem()).Interface().(client.Object)
	err = a.c.Get(ctx, client.ObjectKeyFromObject(obj), have)
	if apierrors.IsNotFound(err) && a.live != nil {
		err = a.live.Get(ctx, client.ObjectKeyFromObject(obj), have)
	}
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, fmt.Errorf("read %s %s/%s: %w", kind, obj.GetNamespace(), obj.GetName(), err)
	default:
		if !ownedAsRendered(obj, have) {
			a.metrics.applies.WithLabelValues(kind, "conflict").Inc()
			return false, &ConflictError{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
		}
		got, err := toUnstructured(have)
		if err != nil {
			return false, err
		}
		// The cache's typed objects carry no apiVersion and kind.
		body := maps.Clone(want.Object)
		delete(body, "apiVersion")
		delete(body, "kind")
		if have.GetAnnotations()[AnnotationAppliedHash] == hash && covers(body, got.Object) {
			a.metrics.applies.WithLabelValues(kind, "unchanged").Inc()
			return false, nil
		}
	}
	if err := a.c.Apply(ctx, client.ApplyConfigurationFromUnstructured(want), client.FieldOwner(render.ManagedBy), client.ForceOwnership); err != nil {
		a.metrics.applies.WithLabelValues(kind, "error").Inc()
		return false, fmt.Errorf("apply %s %s/%s: %w", kind, obj.GetNamespace(), obj.GetName(), err)
	}
	a.metrics.applies.WithLabelValues(kind, "applied").Inc()
	return true, nil
}

// toUnstructured converts a rendered typed object to the form applied: no
// status, no server-owned metadata.
func toUnstructured(obj client.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	delete(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "metadata", "managedFields")
	unstructured.RemoveNestedField(u.Object, "spec", "template", "metadata", "creationTimestamp")
	return u, nil
}

func hashOf(u *unstructured.Unstructured) (string, error) {
	b, err := json.Marshal(u.Object) // map keys are sorted
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:16]), nil
}

// covers reports whether got holds every value of want: maps may have extra
// keys (server defaults), lists must have the same length and covering
// elements, and scalars must be equal. A zero scalar in want is also covered
// by an absent key in got, because the server omits empty values; a nil or
// empty map or list in want says nothing.
func covers(want, got any) bool {
	switch w := want.(type) {
	case nil:
		return true
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return len(w) == 0 && got == nil
		}
		for k, wv := range w {
			gv, present := g[k]
			if !present {
				if !isZero(wv) {
					return false
				}
				continue
			}
			if !covers(wv, gv) {
				return false
			}
		}
		return true
	case []any:
		if len(w) == 0 {
			return true
		}
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !covers(w[i], g[i]) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(want, got)
	}
}

func isZero(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case bool:
		return !x
	case string:
		return x == ""
	case int64:
		return x == 0
	case float64:
		return x == 0
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}
