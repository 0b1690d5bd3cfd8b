package wire

import (
	"bytes"
	"encoding/json"

	"github.com/kars-io/kars/internal/jcs"
)

// SigningBytes returns the RFC 8785 (JCS, package jcs) canonical form of a JSON
// object with its "signature" member removed.
func SigningBytes(raw []byte) ([]byte, error) {
	_, msg, err := split(raw, false)
	return msg, err
}

func splitSignature(raw []byte) (string, []byte, error) {
	return split(raw, true)
}

func split(raw []byte, needSig bool) (string, []byte, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return "", nil, bad("%v", err)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return "", nil, bad("signed frame is not a JSON object")
	}
	sig, _ := obj["signature"].(string)
	if needSig && sig == "" {
		return "", nil, ErrSignature
	}
	delete(obj, "signature")
	// Frames nest shallowly; 32 bounds what a hostile one costs.
	b, err := jcs.Value(obj, 32)
	if err != nil {
		return "", nil, bad("%v", err)
	}
	return sig, b, nil
}
