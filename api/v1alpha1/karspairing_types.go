package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PairingCapability is what a paired peer may ask of kars.
// +kubebuilder:validation:Enum=offload;handoff
type PairingCapability string

// The pairing capabilities.
const (
	CapabilityOffload PairingCapability = "offload"
	CapabilityHandoff PairingCapability = "handoff"
)

// KarsPairingSpec records a one-time pairing token. Only the token's hash is
// stored; the token itself is shown once to the operator and never persisted.
// +kubebuilder:validation:XValidation:rule="!has(self.tokenBudget) || !has(self.tokenBudget.monthly) || self.tokenBudget.monthly == 0",message="a pairing's token budget is per offload (tokenBudget.perRequest) and per UTC day (tokenBudget.daily); monthly is not supported"
type KarsPairingSpec struct {
	// TokenHash is "sha256:" + the hex SHA-256 of the pairing token. It
	// cannot change once set: a new token is a new pairing.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="tokenHash is immutable: generate a new pairing instead"
	TokenHash Digest `json:"tokenHash"`
	// DisplayName of the peer, for example "alice-laptop".
	// +kubebuilder:validation:MaxLength=128
	// +optional
	DisplayName string `json:"displayName,omitempty"`
	// ExpiresAt ends the pairing whether or not it was used.
	ExpiresAt metav1.Time `json:"expiresAt"`
	// Slots is how many concurrent offload sandboxes the peer may hold.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +kubebuilder:default=1
	// +optional
	Slots int32 `json:"slots,omitempty"`
	// Capabilities granted to the peer.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=2
	// +listType=set
	Capabilities []PairingCapability `json:"capabilities"`
	// TokenBudget bounds inference tokens spent on the peer's behalf:
	// perRequest caps one offload, daily caps all its offloads in a UTC
	// day. The controller reserves each offload's share before creating
	// it and settles what the offload's router metered when it ends.
	// +optional
	TokenBudget *TokenBudget `json:"tokenBudget,omitempty"`
	// Offload shapes the sandboxes created for the peer's offload
	// requests (an offload pairing: no sandboxRef). Without it offload
	// requests are refused.
	// +optional
	Offload *OffloadTemplate `json:"offload,omitempty"`
	// SandboxRef pairs with an existing sandbox (kars ↔ kars mesh) instead
	// of creating offload sandboxes.
	// +optional
	SandboxRef *LocalObjectReference `json:"sandboxRef,omitempty"`
	// PeerSandbox is the remote end of a kars ↔ kars pairing, as
	// "namespace/name".
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	// +optional
	PeerSandbox string `json:"peerSandbox,omitempty"`
	// Revoked ends the pairing now; it cannot be undone.
	// +kubebuilder:validation:XValidation:rule="oldSelf == false || self == true",message="a revoked pairing cannot be un-revoked"
	// +optional
	Revoked bool `json:"revoked,omitempty"`
}

// OffloadTemplate shapes the sandboxes kars creates for an offload
// pairing's peer (scenario 2): each accepted offload request gets a
// namespace kars-offload-<id> holding a KarsSandbox offload-<id>.
type OffloadTemplate struct {
	// Runtime of offload sandboxes; OpenClaw when unset.
	// +optional
	Runtime *RuntimeSpec `json:"runtime,omitempty"`
	// InferenceRef names an InferencePolicy in the pairing's namespace:
	// offload sandboxes use its models, authentication and content
	// safety; their token budget is the offload's share of the
	// pairing's.
	InferenceRef LocalObjectReference `json:"inferenceRef"`
	// Isolation of offload sandboxes; enhanced when unset.
	// +optional
	Isolation IsolationLevel `json:"isolation,omitempty"`
	// TTLSeconds bounds an offload sandbox's life: it is deleted this
	// long after it was created whether or not its result was
	// acknowledged. One hour when unset.
	// +kubebuilder:validation:Minimum=60
	// +kubebuilder:validation:Maximum=86400
	// +optional
	TTLSeconds int32 `json:"ttlSeconds,omitempty"`
	// Instructions are the offload agent's system instructions.
	// +kubebuilder:validation:MaxLength=8192
	// +optional
	Instructions string `json:"instructions,omitempty"`
}

// The pairing phases.
const (
	PairingPending   = "PendingPairing"
	PairingActive    = "Active"
	PairingExhausted = "Exhausted"
	PairingExpired   = "Expired"
	PairingRevoked   = "Revoked"
)

// KarsPairingStatus is the observed state of a pairing.
type KarsPairingStatus struct {
	CommonStatus `json:",inline"`
	// Phase is PendingPairing (a token not yet redeemed, or a peer
	// sandbox whose router has not reported its mesh identity yet),
	// Active, Exhausted (an offload pairing whose daily token budget is
	// spent), Expired or Revoked.
	// +kubebuilder:validation:Enum=PendingPairing;Active;Exhausted;Expired;Revoked
	// +optional
	Phase string `json:"phase,omitempty"`
	// RedeemedAt is when the token was used.
	// +optional
	RedeemedAt *metav1.Time `json:"redeemedAt,omitempty"`
	// PeerIdentity is the peer's mesh identity (its DID): bound when the
	// token is redeemed, or the peer sandbox's router's identity.
	// +optional
	PeerIdentity string `json:"peerIdentity,omitempty"`
	// SlotsInUse counts active offload sandboxes.
	// +optional
	SlotsInUse int32 `json:"slotsInUse,omitempty"`
	// TokensUsed counts inference tokens spent for the peer by offloads
	// that ended in the UTC day TokensDay.
	// +optional
	TokensUsed int64 `json:"tokensUsed,omitempty"`
	// TokensDay is the UTC day (YYYY-MM-DD) TokensUsed counts.
	// +kubebuilder:validation:MaxLength=10
	// +optional
	TokensDay string `json:"tokensDay,omitempty"`
	// TokensReserved is what live offloads hold of the budget.
	// +optional
	TokensReserved int64 `json:"tokensReserved,omitempty"`
}

// KarsPairing is a one-time, expiring, slot-, budget- and capability-bounded
// pairing between kars and a mesh peer.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=kp;pairing,categories=kars
// +kubebuilder:printcolumn:name="Peer",type=string,JSONPath=`.spec.displayName`
// +kubebuilder:printcolumn:name="Slots",type=integer,JSONPath=`.spec.slots`
// +kubebuilder:printcolumn:name="In-Use",type=integer,JSONPath=`.status.slotsInUse`
// +kubebuilder:printcolumn:name="Expires",type=date,JSONPath=`.spec.expiresAt`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type KarsPairing struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   KarsPairingSpec   `json:"spec"`
	Status KarsPairingStatus `json:"status,omitempty"`
}

// KarsPairingList is a list of KarsPairings.
//
// +kubebuilder:object:root=true
type KarsPairingList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []KarsPairing `json:"items"`
}

func init() { register(&KarsPairing{}, &KarsPairingList{}) }
