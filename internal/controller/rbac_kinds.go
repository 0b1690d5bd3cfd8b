package controller

// Permissions of the McpServer, KarsMemory and KarsEval reconcilers: read
// the kinds and write their status; run McpServers as Deployments (the
// sandbox reconciler's grants cover Deployments, Services and
// NetworkPolicies); KarsMemory's finalizer. No Jobs: the cluster runner of
// KarsEvals is not built, so the controller is not granted them.

// +kubebuilder:rbac:groups=kars.azure.com,resources=mcpservers;karsmemories;karsevals,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=mcpservers/status;karsmemories/status;karsevals/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=kars.azure.com,resources=karsmemories/finalizers,verbs=update
