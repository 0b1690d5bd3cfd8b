package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// McpServerSpec declares a private MCP tool server that sandboxes reach
// through their router's MCP gateway, at http://127.0.0.1:8443/mcp/<name>.
// Either kars runs it (image) or it already runs somewhere reachable (url).
// +kubebuilder:validation:XValidation:rule="has(self.image) != has(self.url)",message="mcpServer needs exactly one of image (kars runs it) or url (it runs elsewhere)"
// +kubebuilder:validation:XValidation:rule="!has(self.url) || self.transport != 'stdio'",message="transport stdio needs an image, not a url"
// +kubebuilder:validation:XValidation:rule="!(has(self.authSecretRef) && has(self.oauth))",message="authSecretRef (a bearer token) and oauth are alternatives: set at most one"
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
	// Env sets variables of a server kars runs. PORT is set to port
	// unless given here.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	Env []McpEnvVar `json:"env,omitempty"`
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
	// Path of the MCP endpoint on a server kars runs.
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^/[A-Za-z0-9._~/-]*$`
	// +kubebuilder:default=/mcp
	// +optional
	Path string `json:"path,omitempty"`
	// Sandboxes that may use this server. Empty means none.
	// +kubebuilder:validation:MaxItems=128
	// +optional
	Sandboxes []string `json:"sandboxes,omitempty"`
	// Tools the sandboxes may see and call: tool names, or "*" for every
	// tool the server lists. Empty exposes none (the gateway fails
	// closed). Each call is still decided by the sandbox's ToolPolicy as
	// action mcp:<server>.<tool>.
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=128
	// +optional
	Tools []string `json:"tools,omitempty"`
	// AuthSecretRef holds a bearer token the router presents to the
	// server. The agent never sees it.
	// +optional
	AuthSecretRef *SecretKeyReference `json:"authSecretRef,omitempty"`
	// OAuth makes the router obtain tokens for the server with the OAuth
	// 2.1 client credentials grant or an OAuth token exchange (RFC 8693)
	// of the sandbox's workload identity. The agent never sees them.
	// +optional
	OAuth *McpOAuth `json:"oauth,omitempty"`
}

// McpEnvVar is one environment variable of a server kars runs.
type McpEnvVar struct {
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Name string `json:"name"`
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Value string `json:"value,omitempty"`
}

// McpOAuth configures how the router obtains OAuth access tokens for the
// server: the OAuth 2.1 client credentials grant (RFC 6749 §4.4), or the
// OAuth 2.0 token exchange (RFC 8693), in which the router presents the
// sandbox's workload identity and receives a token for the server. The
// agent never sees any of them.
// +kubebuilder:validation:XValidation:rule="(has(self.grant) && self.grant == 'TokenExchange') ? has(self.subjectToken) : (has(self.clientId) && has(self.clientSecretRef))",message="grant ClientCredentials needs clientId and clientSecretRef; grant TokenExchange needs subjectToken"
// +kubebuilder:validation:XValidation:rule="!has(self.subjectToken) || (has(self.grant) && self.grant == 'TokenExchange')",message="subjectToken is for grant TokenExchange"
// +kubebuilder:validation:XValidation:rule="!has(self.clientSecretRef) || has(self.clientId)",message="clientSecretRef needs clientId"
type McpOAuth struct {
	// Grant is ClientCredentials (the router is an OAuth client with its
	// own secret) or TokenExchange (the router exchanges the sandbox's
	// workload identity token for an access token, RFC 8693).
	// +kubebuilder:validation:Enum=ClientCredentials;TokenExchange
	// +kubebuilder:default=ClientCredentials
	// +optional
	Grant string `json:"grant,omitempty"`
	// ClientID of the router's OAuth client. Required for
	// ClientCredentials; for TokenExchange, sent when the authorization
	// server identifies clients (with clientSecretRef: HTTP Basic).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +optional
	ClientID string `json:"clientId,omitempty"`
	// ClientSecretRef holds the client secret.
	// +optional
	ClientSecretRef *SecretKeyReference `json:"clientSecretRef,omitempty"`
	// TokenURL is the token endpoint. Empty discovers it from the server
	// (protected resource metadata, RFC 9728, then the authorization
	// server's metadata, RFC 8414).
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') || self.startsWith('http://')",message="tokenUrl must be an http:// or https:// URL"
	// +optional
	TokenURL string `json:"tokenUrl,omitempty"`
	// Scopes requested.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Scopes []string `json:"scopes,omitempty"`
	// Resource is the RFC 8707 resource indicator; empty means the
	// server's URL.
	// +kubebuilder:validation:MaxLength=2048
	// +optional
	Resource string `json:"resource,omitempty"`
	// Audience is the RFC 8693 audience parameter (TokenExchange): the
	// server's name at the authorization server, when it is not its URL.
	// +kubebuilder:validation:MaxLength=2048
	// +optional
	Audience string `json:"audience,omitempty"`
	// SubjectToken is what the router presents as the subject of a
	// TokenExchange: the sandbox's identity.
	// +optional
	SubjectToken *McpSubjectToken `json:"subjectToken,omitempty"`
}

// McpSubjectToken is the subject token of a token exchange: the sandbox
// pod's projected ServiceAccount token (a JWT the cluster signs, rotated by
// the kubelet, mounted into the router only), or a token held in a Secret
// (for authorization servers that do not trust the cluster's issuer, and
// under kars dev, which projects no ServiceAccount token).
// +kubebuilder:validation:XValidation:rule="has(self.serviceAccountAudience) != has(self.secretRef)",message="subjectToken needs exactly one of serviceAccountAudience or secretRef"
type McpSubjectToken struct {
	// ServiceAccountAudience is the audience of the projected
	// ServiceAccount token: the identifier under which the authorization
	// server trusts the cluster's tokens.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	// +optional
	ServiceAccountAudience string `json:"serviceAccountAudience,omitempty"`
	// SecretRef holds a subject token, re-read when the Secret changes.
	// +optional
	SecretRef *SecretKeyReference `json:"secretRef,omitempty"`
	// Type is the RFC 8693 token type URI of the subject token.
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^urn:`
	// +kubebuilder:default="urn:ietf:params:oauth:token-type:jwt"
	// +optional
	Type string `json:"type,omitempty"`
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
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')",message="an McpServer's name must be a DNS label (no dots): it is one path segment of the gateway and the server part of mcp:<server>.<tool>"
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
