package controller

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// DigestPath is the router admin endpoint that reports the digest of the
// config the router enforces (internal/router, GET /admin/v1/policy/digest).
const DigestPath = "/admin/v1/policy/digest"

// RouterTarget is how to reach and authenticate one router's admin API.
type RouterTarget struct {
	// Endpoint is the admin API's base URL, "https://host:port".
	Endpoint string
	// ServerName is the name the router's certificate is issued for.
	ServerName string
	// CertPEM is the router's self-signed admin certificate: the only
	// certificate trusted for this router.
	CertPEM []byte
	// Token is the admin bearer token.
	Token []byte
}

// RouterProber asks a router which config digest it enforces. It is the
// controller's half of the RouterEnforcing handshake: the controller
// compiles a config and records its digest, the router loads the mounted
// ConfigMap and reports the digest it computed; they agree only when the
// router runs exactly what was compiled.
type RouterProber interface {
	EnforcedDigest(ctx context.Context, t RouterTarget) (string, error)
}

// HTTPSProber reads the digest over the admin API with the router's pinned
// certificate and bearer token.
type HTTPSProber struct {
	// DialContext, when set, dials instead of the default dialer. Tests
	// and the local substrate map the router's Service name to where the
	// router really listens.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds one probe; zero means 5 seconds.
	Timeout time.Duration
}

// AuditHeadPath is the router admin endpoint that reports the audit log's
// durable head and checkpoint key (internal/router.AuditHead).
const AuditHeadPath = "/admin/v1/audit/head"

// AuditHead is a router's audit log head.
type AuditHead struct {
	Seq           uint64 `json:"seq"`
	Hash          string `json:"hash"`
	CheckpointKey string `json:"checkpointKey"`
}

// AuditHeadReader reads a router's audit head. HTTPSProber implements it;
// a RouterProber that does not leaves the sandbox unanchored.
type AuditHeadReader interface {
	AuditHead(ctx context.Context, t RouterTarget) (AuditHead, error)
}

// EnforcedDigest implements RouterProber.
func (p *HTTPSProber) EnforcedDigest(ctx context.Context, t RouterTarget) (string, error) {
	var out struct {
		Digest string `json:"digest"`
	}
	body, err := p.get(ctx, t, DigestPath, &out)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(out.Digest, "sha256:") {
		return "", fmt.Errorf("router admin API returned no digest: %.200s", body)
	}
	return out.Digest, nil
}

// AuditHead implements AuditHeadReader.
func (p *HTTPSProber) AuditHead(ctx context.Context, t RouterTarget) (AuditHead, error) {
	var h AuditHead
	body, err := p.get(ctx, t, AuditHeadPath, &h)
	if err != nil {
		return h, err
	}
	if h.Seq == 0 || len(h.Hash) != 64 {
		return h, fmt.Errorf("router admin API returned no audit head: %.200s", body)
	}
	return h, nil
}

// get reads one admin endpoint into v.
func (p *HTTPSProber) get(ctx context.Context, t RouterTarget, path string, v any) ([]byte, error) {
	return p.call(ctx, t, http.MethodGet, path, nil, v)
}

// post calls one admin endpoint that acts, reading its answer into v.
func (p *HTTPSProber) post(ctx context.Context, t RouterTarget, path string, v any) ([]byte, error) {
	return p.call(ctx, t, http.MethodPost, path, nil, v)
}

// call sends one admin request (body, when set, as JSON) and decodes the
// answer into v.
func (p *HTTPSProber) call(ctx context.Context, t RouterTarget, method, path string, reqBody []byte, v any) ([]byte, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(t.CertPEM) {
		return nil, errors.New("no admin certificate to trust")
	}
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: t.ServerName, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	if p.DialContext != nil {
		tr.DialContext = p.DialContext
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(t.Endpoint, "/")+path, bytes.NewReader(reqBody))
	if err != nil {
		return nil, err
	}
	if reqBody != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+string(t.Token))
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("router admin API answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return body, fmt.Errorf("router admin API answered %s with %.200s: %w", path, body, err)
	}
	return body, nil
}
