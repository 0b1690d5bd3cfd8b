package controller

// The controller's permissions, least privilege for what it does: read the
// kars kinds and write their status; own the objects it renders in sandbox
// namespaces; record events; hold its leader Lease in the system namespace.
// `make generate` turns these markers into config/rbac/role.yaml.
//
// Secrets are read cluster-wide although the cache holds only the
// controller's own (label-selected) ones: RBAC cannot select by label, and
// BYO image pull secrets are read uncached by name.
//
// The finalizers subresource of KarsSandbox is needed to set
// blockOwnerDeletion on the owner references of rendered objects.

// +kubebuilder:rbac:groups=kars.azure.com,resources=karssandboxes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=inferencepolicies;toolpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=kars.azure.com,resources=karssandboxes/status;inferencepolicies/status;toolpolicies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=karssandboxes/finalizers,verbs=update
// +kubebuilder:rbac:groups=kars.azure.com,resources=egressapprovals,verbs=get;list;watch
// +kubebuilder:rbac:groups=kars.azure.com,resources=egressapprovals/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=credentialbindings,verbs=get;list;watch
// +kubebuilder:rbac:groups=kars.azure.com,resources=credentialbindings/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=karspairings;trustgraphs,verbs=get;list;watch
// +kubebuilder:rbac:groups=kars.azure.com,resources=karspairings/status;trustgraphs/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles;clusterrolebindings;roles;rolebindings,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=serviceaccounts;configmaps;secrets;services;persistentvolumeclaims,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=kars-system,resources=leases,verbs=get;list;watch;create;update;patch;delete
