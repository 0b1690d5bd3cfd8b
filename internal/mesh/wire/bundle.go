package wire

import (
	"crypto/ed25519"
	"encoding/json"

	"github.com/kars-io/kars/internal/mesh/x3dh"
)

// SignedPreKeyJSON is a signed prekey on the wire (§6.1).
type SignedPreKeyJSON struct {
	KeyID     uint32 `json:"key_id"`
	PublicKey string `json:"public_key"`
	Signature string `json:"signature"`
}

// OneTimePreKeyJSON is a one-time prekey on the wire (§6.1).
type OneTimePreKeyJSON struct {
	KeyID     uint32 `json:"key_id"`
	PublicKey string `json:"public_key"`
}

// BundleUpload is the body of PUT /v1/agents/{did}/prekeys: the spec's
// §6.1 bundle plus identity_key_ed, which the toolkit added so fetchers
// can verify the signed prekey.
type BundleUpload struct {
	Version        int                 `json:"version,omitempty"`
	AgentDID       string              `json:"agent_did,omitempty"`
	IdentityKey    string              `json:"identity_key"`
	IdentityKeyEd  string              `json:"identity_key_ed,omitempty"`
	SignedPreKey   SignedPreKeyJSON    `json:"signed_pre_key"`
	OneTimePreKeys []OneTimePreKeyJSON `json:"one_time_pre_keys"`
	Timestamp      string              `json:"timestamp,omitempty"`
}

// BundleResponse is the body of GET /v1/agents/{did}/prekeys (§11.3):
// one_time_pre_key is null when none was left.
type BundleResponse struct {
	IdentityKey   string             `json:"identity_key"`
	IdentityKeyEd string             `json:"identity_key_ed"`
	SignedPreKey  SignedPreKeyJSON   `json:"signed_pre_key"`
	OneTimePreKey *OneTimePreKeyJSON `json:"one_time_pre_key"`
}

// MaxOneTimePreKeys bounds one upload.
const MaxOneTimePreKeys = 1000

// ParseBundleUpload decodes and checks an upload's shapes (key sizes,
// duplicate ids); the registry then checks keys against the agent.
func ParseBundleUpload(b []byte) (*BundleUpload, error) {
	if len(b) > MaxFrameBytes {
		return nil, bad("bundle is %d bytes, limit %d", len(b), MaxFrameBytes)
	}
	var u BundleUpload
	if err := json.Unmarshal(b, &u); err != nil {
		return nil, bad("%v", err)
	}
	if _, ok := decodeFixed(u.IdentityKey, 32); !ok {
		return nil, bad("identity_key is not a base64url 32-byte X25519 key")
	}
	if u.IdentityKeyEd != "" {
		if _, ok := decodeFixed(u.IdentityKeyEd, ed25519.PublicKeySize); !ok {
			return nil, bad("identity_key_ed is not a base64url 32-byte Ed25519 key")
		}
	}
	if _, ok := decodeFixed(u.SignedPreKey.PublicKey, 32); !ok {
		return nil, bad("signed_pre_key.public_key is not a base64url 32-byte key")
	}
	if _, ok := decodeFixed(u.SignedPreKey.Signature, ed25519.SignatureSize); !ok {
		return nil, bad("signed_pre_key.signature is not a base64url 64-byte signature")
	}
	if len(u.OneTimePreKeys) > MaxOneTimePreKeys {
		return nil, bad("%d one-time prekeys, limit %d", len(u.OneTimePreKeys), MaxOneTimePreKeys)
	}
	ids := make(map[uint32]bool, len(u.OneTimePreKeys))
	for _, o := range u.OneTimePreKeys {
		if ids[o.KeyID] {
			return nil, bad("one-time prekey id %d appears twice", o.KeyID)
		}
		ids[o.KeyID] = true
		if _, ok := decodeFixed(o.PublicKey, 32); !ok {
			return nil, bad("one-time prekey %d is not a base64url 32-byte key", o.KeyID)
		}
	}
	return &u, nil
}

// ParseBundleResponse decodes a fetched bundle into the x3dh form. The
// caller still runs x3dh.Bundle.Verify (Initiate does).
func ParseBundleResponse(b []byte) (x3dh.Bundle, error) {
	var out x3dh.Bundle
	if len(b) > MaxFrameBytes {
		return out, bad("bundle is %d bytes, limit %d", len(b), MaxFrameBytes)
	}
	var r BundleResponse
	if err := json.Unmarshal(b, &r); err != nil {
		return out, bad("%v", err)
	}
	var ok bool
	if out.IdentityKey, ok = decodeFixed(r.IdentityKey, 32); !ok {
		return out, bad("identity_key is not a base64url 32-byte key")
	}
	var ed []byte
	if ed, ok = decodeFixed(r.IdentityKeyEd, ed25519.PublicKeySize); !ok {
		return out, bad("identity_key_ed is missing or not a 32-byte Ed25519 key; the signed prekey cannot be verified without it")
	}
	out.IdentityKeyEd = ed
	if out.SignedPreKey.PublicKey, ok = decodeFixed(r.SignedPreKey.PublicKey, 32); !ok {
		return out, bad("signed_pre_key.public_key is not a base64url 32-byte key")
	}
	if out.SignedPreKey.Signature, ok = decodeFixed(r.SignedPreKey.Signature, ed25519.SignatureSize); !ok {
		return out, bad("signed_pre_key.signature is not a 64-byte signature")
	}
	out.SignedPreKey.ID = r.SignedPreKey.KeyID
	if r.OneTimePreKey != nil {
		pk, ok := decodeFixed(r.OneTimePreKey.PublicKey, 32)
		if !ok {
			return out, bad("one_time_pre_key.public_key is not a base64url 32-byte key")
		}
		out.OneTimePreKey = &x3dh.OneTimePreKeyPublic{ID: r.OneTimePreKey.KeyID, PublicKey: pk}
	}
	return out, nil
}

// UploadFor builds the PUT body for a prekey store.
func UploadFor(k *x3dh.Keys) *BundleUpload {
	id := k.Identity()
	spk := k.SignedPreKey()
	u := &BundleUpload{
		Version:       Version,
		AgentDID:      id.DID(),
		IdentityKey:   B64(id.X25519().PublicKey().Bytes()),
		IdentityKeyEd: B64(id.PublicKey()),
		SignedPreKey:  SignedPreKeyJSON{KeyID: spk.ID, PublicKey: B64(spk.PublicKey), Signature: B64(spk.Signature)},
	}
	for _, o := range k.OneTimePreKeys() {
		u.OneTimePreKeys = append(u.OneTimePreKeys, OneTimePreKeyJSON{KeyID: o.ID, PublicKey: B64(o.PublicKey)})
	}
	return u
}
