// Package v1alpha1 holds the kars.azure.com/v1alpha1 API: KarsSandbox and the
// policy, peer, memory, evaluation, pairing, trust, egress and SRE kinds that
// govern it.
//
// The types are plain data with kubebuilder markers. Validation lives in the
// generated OpenAPI schema and CEL rules wherever it can, so that the API
// server itself rejects bad objects with messages a user understands; the
// controller only enforces what a schema cannot express (the current time,
// other objects). This package must not import anything under internal/.
//
// +kubebuilder:object:generate=true
// +groupName=kars.azure.com
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the group and version of every kind in this package.
var GroupVersion = schema.GroupVersion{Group: "kars.azure.com", Version: "v1alpha1"}

// kinds collects the types each file registers in its init.
var kinds []runtime.Object

func register(objs ...runtime.Object) { kinds = append(kinds, objs...) }

// AddToScheme adds every kind of this package to a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, kinds...)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
