// Package scheme builds the runtime.Scheme every kars client uses: the
// Kubernetes built-in kinds plus kars.azure.com/v1alpha1.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// New returns a scheme with the built-in kinds and the kars kinds.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // only fails on programming errors in registration
	}
	if err := karsv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
