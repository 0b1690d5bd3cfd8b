package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/kars-io/kars/internal/inference"
)

// MaxResponseBytes bounds a non-streamed upstream response the router
// buffers for inspection.
const MaxResponseBytes = 64 << 20

var redacted = []byte("[redacted by kars-router]")

// relay sends the upstream's answer to the agent: streams event by event,
// anything else whole, both through the content-safety checks and the
// credential scrubber.
func (s forwardStage) relay(c *Call, u *upstream, resp *http.Response) {
	defer resp.Body.Close()
	secret := []byte(sentSecret(resp.Request))
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if c.Req.Stream && resp.StatusCode == http.StatusOK && mt == "text/event-stream" {
		s.relayStream(c, resp, secret)
		return
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil || len(body) > MaxResponseBytes {
		msg := "kars-router could not read the upstream response"
		if err == nil {
			msg = "the upstream response exceeds the router's size limit"
		}
		c.Refuse(&inference.APIError{Status: http.StatusBadGateway, Type: "server_error", Code: "kars_upstream_read", Message: msg, Retryable: true})
		return
	}
	if len(secret) > 0 {
		body = bytes.ReplaceAll(body, secret, redacted)
	}
	if resp.StatusCode < 300 {
		c.Usage = inference.ParseUsage(c.Route.Dialect, c.Route.Op, body)
	}
	if mt == "application/json" {
		v := c.Gen.safety.CheckBody(body)
		c.Findings = append(c.Findings, v.Findings...)
		if v.Block && resp.StatusCode < 300 {
			c.Refuse(safetyRefusal(v.Reason))
			return
		}
	}
	copyResponseHeaders(c.W.Header(), resp.Header)
	c.W.Header().Set("Content-Length", strconv.Itoa(len(body)))
	c.written = true
	c.Status = resp.StatusCode
	c.W.WriteHeader(resp.StatusCode)
	c.W.Write(body)
	// Push the answer out now: settlement and audit follow, and the agent
	// need not wait for them.
	http.NewResponseController(c.W).Flush()
}

func safetyRefusal(reason string) *inference.APIError {
	return &inference.APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "content_filter", Message: "kars " + reason}
}

func copyResponseHeaders(dst, src http.Header) {
	for k, v := range src {
		if inference.PassResponseHeader(k) {
			dst[k] = v
		}
	}
}

// relayStream forwards a Server-Sent Events stream. Each event is parsed,
// metered and checked before it is written; a blocking safety verdict ends
// the stream with an error event, so nothing after the offending chunk
// reaches the agent. The upstream's usage chunk (which the router always
// asks for) is passed on only if the agent asked for it too.
func (s forwardStage) relayStream(c *Call, resp *http.Response, secret []byte) {
	h := c.W.Header()
	copyResponseHeaders(h, resp.Header)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	c.written = true
	c.Status = http.StatusOK
	c.W.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(c.W)
	rc.Flush()

	meter := inference.NewStreamMeter(c.Route.Dialect, c.Route.Op)
	check := c.Gen.safety.NewStream()
	events := inference.NewSSEReader(resp.Body)
	defer func() { c.Usage = meter.Usage(c.Req.PromptEstimate) }()
	for {
		ev, err := events.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return
			}
			// The upstream broke off (or sent garbage): what was streamed
			// is metered by the deferred Usage; tell the agent it is cut.
			if len(ev.Raw) > 0 {
				meter.Observe(ev)
			}
			if c.R.Context().Err() == nil {
				writeStreamError(c, "server_error", "kars_upstream_stream_broken", "the upstream stream ended unexpectedly: "+err.Error())
			}
			c.Status = http.StatusBadGateway
			return
		}
		raw := ev.Raw
		if len(secret) > 0 && bytes.Contains(raw, secret) {
			raw = bytes.ReplaceAll(raw, secret, redacted)
			ev.Data = bytes.ReplaceAll(ev.Data, secret, redacted)
		}
		usageOnly := meter.Observe(ev)
		v := check.Event(ev.Data)
		c.Findings = append(c.Findings, v.Findings...)
		if v.Block {
			refusal := safetyRefusal(v.Reason)
			c.Refusal = refusal
			writeStreamError(c, refusal.Type, refusal.Code, refusal.Message)
			return
		}
		if usageOnly && !c.Req.IncludeUsage {
			continue
		}
		if _, err := c.W.Write(raw); err != nil {
			c.Status = 499
			return
		}
		// Flush once the events that arrived together are written: one
		// syscall per upstream read, not per event.
		if !events.Buffered() {
			if err := rc.Flush(); err != nil {
				c.Status = 499
				return
			}
		}
	}
}

// writeStreamError ends a stream with an error event the agent's SDK raises:
// OpenAI SDKs raise on a data payload with an "error" key; Anthropic's on an
// "error" event.
func writeStreamError(c *Call, typ, code, msg string) {
	var err error
	if c.Route.Dialect == inference.DialectAnthropic {
		b, _ := json.Marshal(map[string]any{"type": "error", "error": map[string]any{"type": typ, "message": msg}})
		err = inference.WriteEvent(c.W, "error", b)
	} else {
		b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "code": code, "param": nil}})
		err = inference.WriteEvent(c.W, "", b)
	}
	if err == nil {
		http.NewResponseController(c.W).Flush()
	}
}
