package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// McpServerSpec declares a private MCP tool server that sandboxes reach
// through their router's MCP gateway. Either kars runs it (image) or it
// already runs somewhere reachable (url).
// +kubebuilder:validation:XValidation:rule="has(self.image) != has(self.url)",message="mcpServer needs exactly one of image (kars runs it) or url (it runs elsewhere)"
// +kubebuilder:validation:XValidation:rule="!has(self.url) || self.transport != 'stdio'",message="transport stdio needs an image, not a url"
type McpServerSpec struct {
	// Image of a server kars runs in its own hardened pod.
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`
	// Command overrides the image's entrypoint.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Command []string `json:"command,omitempty"`
	// Args for the command.
	// +kubebuilder:validation:MaxItems=128
	// +optional
	Args []string `json:"args,omitempty"`
	// URL of a server that already runs.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') || self.startsWith('http://')",message="url must be an http:// or https:// URL"
	// +optional
	URL string `json:"url,omitempty"`
	// Transport the server speaks.
	// +kubebuilder:validation:Enum=streamable-http;sse;stdio
	// +kubebuilder:default=streamable-http
	// +optional
	Transport string `json:"transport,omitempty"`
	// Port the server listens on (image servers with HTTP transports).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:default=8080
	// +optional
	Port int32 `json:"port,omitempty"`
	// Sandboxes that may use this server. Empty means none.
	// +kubebuilder:validation:MaxItems=128
	// +optional
	Sandboxes []string `json:"sandboxes,omitempty"`
	// Tools exposed to sandboxes. Empty means every tool the server lists;
	// each call is still evaluated as action mcp:<server>.<tool>.
	// +kubebuilder:validation:MaxItems=256
	// +optional
	Tools []string `json:"tools,omitempty"`
	// AuthSecretRef holds a credential the router presents to the server.
	// The agent never sees it.
	// +optional
	AuthSecretRef *SecretKeyReference `json:"authSecretRef,omitempty"`
}

// McpServerStatus is the observed state of an MCP server.
type McpServerStatus struct {
	CommonStatus `json:",inline"`
	// Phase is Pending, Ready or Failed.
	// +kubebuilder:validation:Enum=Pending;Ready;Failed
	// +optional
	Phase string `json:"phase,omitempty"`
	// Endpoint the routers use.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// DiscoveredTools lists the tools the server reported.
	// +optional
	DiscoveredTools []string `json:"discoveredTools,omitempty"`
}

// McpServer is a private or custom MCP tool server for sandboxes.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mcp;mcps,categories=kars
// +kubebuilder:printcolumn:name="Transport",type=string,JSONPath=`.spec.transport`
// +kubebuilder:printcolumn:name="Endpoint",type=string,JSONPath=`.status.endpoint`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type McpServer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   McpServerSpec   `json:"spec"`
	Status McpServerStatus `json:"status,omitempty"`
}

// McpServerList is a list of McpServers.
//
// +kubebuilder:object:root=true
type McpServerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []McpServer `json:"items"`
}

func init() { register(&McpServer{}, &McpServerList{}) }
