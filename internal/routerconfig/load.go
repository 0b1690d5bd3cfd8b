package routerconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Parse decodes and validates a config document. Unknown fields are an
// error: a misspelled field must not silently disable a control.
func Parse(data []byte) (*Snapshot, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode router config: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("decode router config: trailing data after the JSON object")
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("invalid router config: %w", err)
	}
	d, err := Digest(&c)
	if err != nil {
		return nil, err
	}
	return &Snapshot{Config: &c, Digest: d, LoadedAt: time.Now()}, nil
}

// Load reads and parses the config file at path (following symlinks, so the
// ConfigMap's router.json → ..data/router.json resolves to the current
// generation).
func Load(path string) (*Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read router config: %w", err)
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Marshal returns the config as indented JSON, suitable for a ConfigMap.
func Marshal(c *Config) ([]byte, error) {
	b, err := json.Marshal(c) // the whole config: Canonical leaves a2a out

	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}
