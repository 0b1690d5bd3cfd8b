package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/kars-io/kars/internal/inference"
	"github.com/kars-io/kars/internal/safety"
	"github.com/tidwall/gjson"
)

// MaxResponseBytes bounds a non-streamed upstream response the router
// buffers for inspection.
const MaxResponseBytes = 64 << 20

var redacted = []byte("[redacted by kars-router]")

// relay sends the upstream's answer to the agent: streams event by event,
// anything else whole, both through the content-safety checks and the
// credential scrubber.
func (s forwardStage) relay(c *Call, resp *http.Response, secret []byte) {
	mt := mediaType(resp.Header.Get("Content-Type"))
	if !c.Req.Stream || resp.StatusCode != http.StatusOK || mt != "text/event-stream" {
		defer resp.Body.Close()
		s.relayBody(c, resp, mt, secret)
		return
	}
	// The request body (a whole conversation, often tens of KiB) is not
	// needed for the stream's life, only its hash for the entry.
	c.payload, c.Body = payloadHash(c.Body), nil
	ok := startStream(c, resp.Header)
	sw, taken := c.W.(*streamWriter)
	if ok && taken && c.unfollow != nil && c.unfollow() {
		c.detached = true
		d := &detachedStream{r: s.r, c: c, body: resp.Body, sw: sw, relay: newStreamRelay(c, resp, secret)}
		go d.run()
		return
	}
	defer resp.Body.Close()
	if taken {
		defer sw.close()
	}
	if ok {
		newStreamRelay(c, resp, secret).run()
	}
}

// detachedStream is a stream relayed on a goroutine of its own, which
// then ends the call, while the handler that started it returns.
//
// It exists for memory. A stream lives for seconds to minutes, and
// relayed on the handler's goroutine it would keep that goroutine's stack
// for all of it: net/http's connection loop, the middleware and every
// stage's frame, grown to 16–32 KiB by parsing and deciding the request.
// A goroutine that only waits for the upstream's next event needs a few
// KiB; with a thousand open streams that is the difference between ~17 MB
// and ~4–9 MB of stacks (bench/router). Only a connection taken over from
// net/http can be left by its handler (streamWriter); the call's context
// was made to outlive the handler's (Call.streamContext), and detaching
// stops it following the agent request's, which net/http cancels when the
// handler returns.
type detachedStream struct {
	r     *Router
	c     *Call
	body  io.Closer
	sw    *streamWriter
	relay *streamRelay
}

// run relays the stream. Its frame, with end's, is what the goroutine
// holds while it waits for the upstream, so it does nothing else.
func (d *detachedStream) run() {
	defer d.end()
	d.relay.run()
}

// end closes both connections, answers a panic as the observe stage would
// (the stream is cut; the call is recorded with a 500), and ends the call.
func (d *detachedStream) end() {
	d.sw.close()
	d.body.Close()
	if p := recover(); p != nil {
		panicked(d.r, d.c, p)
	}
	d.c.runFinishers()
}

// relayBody relays a whole (non-streamed) answer after inspecting it.
func (s forwardStage) relayBody(c *Call, resp *http.Response, mt string, secret []byte) {
	body, release, err := s.r.readBounded(resp.Body, resp.ContentLength, MaxResponseBytes, 1, answerAllowance)
	if err != nil {
		if errors.Is(err, errNoBuffer) {
			c.W.Header().Set("Retry-After", "1")
			c.Refuse(errBusy("buffered answer bytes"))
			return
		}
		msg := "kars-router could not read the upstream response"
		var tooBig errTooLarge
		if errors.As(err, &tooBig) {
			msg = "the upstream response exceeds the router's size limit"
		}
		c.Refuse(&inference.APIError{Status: http.StatusBadGateway, Type: "server_error", Code: "kars_upstream_read", Message: msg, Retryable: true})
		return
	}
	c.release = append(c.release, release)
	if len(secret) > 0 && bytes.Contains(body, secret) {
		body = bytes.ReplaceAll(body, secret, redacted)
	}
	// One validation serves the usage and the content-safety check; an
	// answer that is not JSON has neither.
	valid := (resp.StatusCode < 300 || mt == "application/json") && gjson.ValidBytes(body)
	if resp.StatusCode < 300 && valid {
		c.Usage = inference.ParseValidUsage(c.Route.Dialect, c.Route.Op, body)
	}
	if mt == "application/json" && valid {
		v := c.Gen.safety.CheckValidBody(body)
		c.Findings = append(c.Findings, v.Findings...)
		if v.Block && resp.StatusCode < 300 {
			c.Refuse(safetyRefusal(v.Reason))
			return
		}
	}
	c.Status = resp.StatusCode
	if c.Commit() != nil {
		c.Refuse(errAuditUnavailable) // not on record, so not answered
		return
	}
	copyResponseHeaders(c.W.Header(), resp.Header)
	c.W.Header().Set("Content-Length", strconv.Itoa(len(body)))
	c.written = true
	c.W.WriteHeader(resp.StatusCode)
	c.W.Write(body)
	// Push the answer out now: settlement follows, and the agent need not
	// wait for it.
	http.NewResponseController(c.W).Flush()
}

// mediaType is the media type of a Content-Type value, as
// mime.ParseMediaType reads it ("" for one it refuses), without parsing
// the parameters of the plain values upstreams send.
func mediaType(v string) string {
	plain := true
	for i := 0; i < len(v) && plain; i++ {
		c := v[i]
		plain = c == '/' || c == '-' || c == '.' || c == '+' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
	}
	if plain && strings.Count(v, "/") == 1 && v[0] != '/' && v[len(v)-1] != '/' {
		return v
	}
	mt, _, _ := mime.ParseMediaType(v)
	return mt
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

// startStream sends the stream's response header to the agent, on the
// agent's connection taken over from net/http where it can be (see
// streamWriter), after which c.W writes there. It reports false if the
// agent is gone.
func startStream(c *Call, upstream http.Header) bool {
	h := c.W.Header()
	copyResponseHeaders(h, upstream)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	c.written = true
	c.Status = http.StatusOK
	if sw, ok := takeOverStream(c.W, c.R); ok {
		c.W = sw
		// The request's body reaches net/http's connection state — its
		// buffers, the response and its chunking buffer, ~10 KiB — which
		// the call would keep for the stream's life; the body was read
		// long ago.
		r := *c.R
		r.Body, r.GetBody = http.NoBody, nil
		c.R = &r
		if sw.err != nil {
			c.Status = 499
			return false
		}
		return true
	}
	c.W.WriteHeader(http.StatusOK)
	if err := http.NewResponseController(c.W).Flush(); err != nil {
		c.Status = 499
		return false
	}
	return true
}

// newStreamRelay relays a Server-Sent Events stream (run). Each event is parsed,
// metered and checked before it is written; a blocking safety verdict ends
// the stream with an error event, so nothing after the offending chunk
// reaches the agent. The upstream's usage chunk (which the router always
// asks for) is passed on only if the agent asked for it too.
//
// The loop that waits for the upstream's next event is kept apart from the
// handling of an event (streamRelay.event): the waiting frames are what a
// stream's goroutine holds on its stack for the stream's life (see
// docs/router.md, Memory).
func newStreamRelay(c *Call, resp *http.Response, secret []byte) *streamRelay {
	return &streamRelay{c: c, rc: http.NewResponseController(c.W), meter: inference.NewStreamMeter(c.Route.Dialect, c.Route.Op),
		check: c.Gen.safety.NewStream(), events: inference.NewSSEReader(resp.Body), secret: secret}
}

// run relays the stream to its end.
func (r *streamRelay) run() {
	defer r.settle()
	for r.next() {
	}
}

// streamRelay is the state of one relayed stream.
type streamRelay struct {
	c      *Call
	rc     *http.ResponseController
	meter  *inference.StreamMeter
	check  *safety.StreamCheck
	events *inference.SSEReader
	secret []byte
	ev     inference.Event // the event being handled
	err    error
}

// next waits for the upstream's next event and handles it. It reports
// whether the stream goes on.
func (r *streamRelay) next() bool {
	r.ev, r.err = r.events.Next()
	return r.event()
}

// settle records the usage as it finally is.
func (r *streamRelay) settle() { r.c.Usage = r.meter.Usage(r.c.Req.PromptEstimate) }

// commit puts the call on record before the stream completes: before the
// terminal event, or before the error event or end of stream that replaces
// it. Settlement uses the usage as it finally is.
func (r *streamRelay) commit() error {
	r.settle()
	return r.c.Commit()
}

// event handles what events.Next returned, and reports whether the stream
// goes on.
func (r *streamRelay) event() bool {
	c, ev, err := r.c, &r.ev, r.err
	if err != nil {
		if errors.Is(err, io.EOF) {
			if !c.committed && r.commit() != nil {
				writeAuditUnavailable(c)
			}
			return false
		}
		// The upstream broke off (or sent garbage): what was streamed
		// is metered; tell the agent it is cut.
		if len(ev.Raw) > 0 {
			r.meter.Observe(*ev)
		}
		c.Status = http.StatusBadGateway
		r.commit()
		if c.Context().Err() == nil {
			writeStreamError(c, "server_error", "kars_upstream_stream_broken", "the upstream stream ended unexpectedly: "+err.Error())
		}
		return false
	}
	raw := ev.Raw
	if len(r.secret) > 0 && bytes.Contains(raw, r.secret) {
		raw = bytes.ReplaceAll(raw, r.secret, redacted)
		ev.Data = bytes.ReplaceAll(ev.Data, r.secret, redacted)
	}
	usageOnly := r.meter.Observe(*ev)
	v := r.check.Event(ev.Data)
	c.Findings = append(c.Findings, v.Findings...)
	if v.Block {
		refusal := safetyRefusal(v.Reason)
		c.Refusal = refusal
		r.commit()
		writeStreamError(c, refusal.Type, refusal.Code, refusal.Message)
		return false
	}
	if r.meter.Done() && !c.committed && r.commit() != nil {
		writeAuditUnavailable(c)
		return false
	}
	if usageOnly && !c.Req.IncludeUsage {
		return true
	}
	if _, err := c.W.Write(raw); err != nil {
		c.Status = 499
		return false
	}
	// Flush once the events that arrived together are written: one
	// syscall per upstream read, not per event.
	if !r.events.Buffered() {
		if err := r.rc.Flush(); err != nil {
			c.Status = 499
			return false
		}
	}
	return true
}

// writeAuditUnavailable ends a stream whose call could not be put on record
// with an error event in place of its terminal event, so that the agent's
// SDK raises instead of returning a completion that is not audited.
func writeAuditUnavailable(c *Call) {
	c.Refusal = errAuditUnavailable
	writeStreamError(c, errAuditUnavailable.Type, errAuditUnavailable.Code, errAuditUnavailable.Message)
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
