// Package offload owns kars's cloud offload (scenario 2, docs/offload.md)
// as pure functions: the control protocol an OpenClaw host speaks with
// the cluster's offload broker over the mesh, the admission of an offload
// request against its pairing (capability, expiry, slots, token budget),
// and the objects of an offload sandbox. It does no I/O; the controller
// (internal/controller/offload*.go) runs the broker and the reconciler
// around it.
//
// The protocol rides inside end-to-end encrypted mesh messages: each
// message's text is one JSON object. The host sends requests (offload,
// status, ack, handoff); the broker answers each one (op "answer", re
// naming the request) and sends events of its own (op "event": ready,
// ended, revoked). The task itself never passes through the broker: the
// host sends it straight to the offload sandbox's router once the broker
// reports the sandbox ready, and declares only its SHA-256 and size here,
// so that the broker's, the router's and the host's audit logs name the
// same bytes.
package offload

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/kars-io/kars/internal/strictjson"
)

// Version is the protocol version every message carries.
const Version = 1

// Operations a host sends.
const (
	OpOffload = "offload"
	OpStatus  = "status"
	OpAck     = "ack"
	OpHandoff = "handoff"
)

// Operations the broker sends.
const (
	OpAnswer = "answer"
	OpEvent  = "event"
)

// Events the broker sends unasked.
const (
	EventReady   = "ready"
	EventEnded   = "ended"
	EventRevoked = "revoked"
)

// Error codes of refusals and failures: stable names a host can act on,
// with a Message that explains them to a person.
const (
	CodeCapability = "capability_not_granted"
	CodeSlots      = "slots_exhausted"
	CodeBudget     = "budget_spent"
	CodeExpired    = "pairing_expired"
	CodeRevoked    = "pairing_revoked"
	CodeNoTemplate = "offload_not_configured"
	CodeNotFound   = "not_found"
	CodeBadRequest = "bad_request"
	CodeInternal   = "unavailable"
)

// MaxMessage bounds a protocol message a parser accepts.
const MaxMessage = 64 << 10

// Request is a host's message to the broker.
type Request struct {
	V  int    `json:"v"`
	Op string `json:"op"`
	// ID is chosen by the host and names the request in the answer; a
	// retried offload request with the same ID gets the offload the
	// first one created, not a second.
	ID string `json:"id"`
	// Offload names an offload (status, ack, handoff); status without it
	// lists every offload of the pairing.
	Offload string  `json:"offload,omitempty"`
	Task    *Task   `json:"task,omitempty"`
	Limits  *Limits `json:"limits,omitempty"`
}

// Task declares the task an offload request is for, without its content.
type Task struct {
	// Title is a short label for operators (`kars mesh list`).
	Title string `json:"title"`
	// SHA256 is the lowercase hex SHA-256 of the text the host will send
	// the offload sandbox, and Bytes its length.
	SHA256 string `json:"sha256"`
	Bytes  int    `json:"bytes"`
}

// Limits are what the host asks the offload to stay within; the pairing's
// own bounds apply on top.
type Limits struct {
	MaxTokens  int64 `json:"max_tokens,omitempty"`
	TTLSeconds int   `json:"ttl_seconds,omitempty"`
}

// Message is the broker's message to a host: an answer to a request or
// an event.
type Message struct {
	V  int    `json:"v"`
	Op string `json:"op"`
	// Re names the request an answer answers.
	Re string `json:"re,omitempty"`
	// Event names an event.
	Event    string   `json:"event,omitempty"`
	OK       bool     `json:"ok"`
	Error    *Error   `json:"error,omitempty"`
	Offload  *Info    `json:"offload,omitempty"`
	Offloads []Info   `json:"offloads,omitempty"`
	Handoff  *Handoff `json:"handoff,omitempty"`
	Pairing  *Usage   `json:"pairing,omitempty"`
}

// Error is a refusal or failure.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Offload phases.
const (
	PhaseCreating = "Creating"
	PhaseReady    = "Ready"
	PhaseEnding   = "Ending"
)

// Info describes one offload.
type Info struct {
	ID string `json:"id"`
	// Phase is Creating (the sandbox is starting), Ready (its router
	// admits the host: send the task to DID) or Ending.
	Phase string `json:"phase"`
	// Sandbox is "namespace/name" of the offload sandbox, DID its
	// router's mesh identity (once Ready).
	Sandbox    string    `json:"sandbox"`
	DID        string    `json:"did,omitempty"`
	Request    string    `json:"request,omitempty"`
	Title      string    `json:"title,omitempty"`
	TaskSHA256 string    `json:"task_sha256,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at"`
	// TokensAllocated is the offload's share of the pairing's budget
	// (0: no budget), TokensUsed what its router has metered.
	TokensAllocated int64 `json:"tokens_allocated"`
	TokensUsed      int64 `json:"tokens_used"`
	// EndReason says why an offload ended (acknowledged, handed_off,
	// ttl, pairing_expired, pairing_revoked).
	EndReason string `json:"end_reason,omitempty"`
}

// Usage is a pairing's state as a status answer reports it.
type Usage struct {
	Name           string    `json:"name"`
	Capabilities   []string  `json:"capabilities"`
	Slots          int       `json:"slots"`
	SlotsInUse     int       `json:"slots_in_use"`
	ExpiresAt      time.Time `json:"expires_at"`
	TokensDaily    int64     `json:"tokens_daily,omitempty"`
	TokensUsed     int64     `json:"tokens_used"`
	TokensReserved int64     `json:"tokens_reserved"`
}

// Handoff is the state summary of an offload handed back to its host:
// what its router recorded (every decision is audited there), so that the
// host can continue the task locally.
type Handoff struct {
	Offload    string `json:"offload"`
	TokensUsed int64  `json:"tokens_used"`
	// Inferences counts model calls, Messages the mesh messages in and
	// out, ToolCalls every tool decision in order.
	Inferences int        `json:"inferences"`
	Messages   int        `json:"messages"`
	ToolCalls  []ToolCall `json:"tool_calls"`
	// AuditSeq and AuditHash are the router's audit head when the summary
	// was taken, so the host can later check it against the log.
	AuditSeq  uint64    `json:"audit_seq"`
	AuditHash string    `json:"audit_hash"`
	StartedAt time.Time `json:"started_at"`
	TakenAt   time.Time `json:"taken_at"`
}

// ToolCall is one tool decision of the offload agent.
type ToolCall struct {
	Tool     string    `json:"tool"`
	Decision string    `json:"decision"`
	At       time.Time `json:"at"`
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// offloadIDPattern is an offload's id: 8 lowercase hex digits.
var offloadIDPattern = regexp.MustCompile(`^[0-9a-f]{8}$`)

// ValidID reports whether s can be an offload id.
func ValidID(s string) bool { return offloadIDPattern.MatchString(s) }

// MaxTitle bounds a task title, in bytes.
const MaxTitle = 200

// ParseRequest decodes a host's request strictly (RFC 8259 without
// duplicate names, no unknown fields) and checks it. A request from a
// peer is untrusted input; a bad one gets a bad_request answer.
func ParseRequest(raw []byte) (*Request, error) {
	var r Request
	if err := decodeStrict(raw, &r); err != nil {
		return nil, err
	}
	switch {
	case r.V != Version:
		return nil, fmt.Errorf("protocol version %d; this broker speaks %d", r.V, Version)
	case !idPattern.MatchString(r.ID):
		return nil, errors.New(`"id" must be 1 to 64 letters, digits, '-' or '_'`)
	case r.Offload != "" && !offloadIDPattern.MatchString(r.Offload):
		return nil, fmt.Errorf(`"offload" %q is not an offload id (8 hex digits)`, r.Offload)
	}
	switch r.Op {
	case OpOffload:
		t := r.Task
		if t == nil {
			return nil, errors.New(`an offload request declares its "task": {title, sha256, bytes}`)
		}
		if t.Title == "" || len(t.Title) > MaxTitle || !utf8.ValidString(t.Title) {
			return nil, fmt.Errorf(`"task.title" must be 1 to %d bytes of UTF-8`, MaxTitle)
		}
		if b, err := hex.DecodeString(t.SHA256); err != nil || len(b) != 32 || hex.EncodeToString(b) != t.SHA256 {
			return nil, errors.New(`"task.sha256" must be 64 lowercase hex digits`)
		}
		if t.Bytes < 1 || t.Bytes > 1<<20 {
			return nil, errors.New(`"task.bytes" must be 1 to 1048576`)
		}
		if l := r.Limits; l != nil && (l.MaxTokens < 0 || l.TTLSeconds < 0 || l.TTLSeconds > 86400) {
			return nil, errors.New(`"limits": max_tokens must not be negative, ttl_seconds must be 0 to 86400`)
		}
		if r.Offload != "" {
			return nil, errors.New(`an offload request names no "offload"`)
		}
	case OpAck, OpHandoff:
		if r.Offload == "" {
			return nil, fmt.Errorf(`%s names the "offload" it is about`, r.Op)
		}
		fallthrough
	case OpStatus:
		if r.Task != nil || r.Limits != nil {
			return nil, fmt.Errorf(`%s takes no "task" or "limits"`, r.Op)
		}
	default:
		return nil, fmt.Errorf("unknown op %q: want offload, status, ack or handoff", r.Op)
	}
	return &r, nil
}

// ParseMessage decodes a broker message (what a host reads).
func ParseMessage(raw []byte) (*Message, error) {
	var m Message
	if err := decodeStrict(raw, &m); err != nil {
		return nil, err
	}
	if m.V != Version {
		return nil, fmt.Errorf("protocol version %d; want %d", m.V, Version)
	}
	switch m.Op {
	case OpAnswer:
		if m.Re == "" {
			return nil, errors.New(`an answer names its request in "re"`)
		}
	case OpEvent:
		if m.Event == "" {
			return nil, errors.New(`an event has an "event" name`)
		}
	default:
		return nil, fmt.Errorf("unknown op %q", m.Op)
	}
	return &m, nil
}

func decodeStrict(raw []byte, v any) error {
	if len(raw) > MaxMessage {
		return fmt.Errorf("message of %d bytes, at most %d", len(raw), MaxMessage)
	}
	if err := strictjson.Validate(raw); err != nil {
		return fmt.Errorf("not strict JSON: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("not a kars offload message: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// Answer builds the answer to request id.
func Answer(id string, m Message) Message {
	m.V, m.Op, m.Re = Version, OpAnswer, id
	m.OK = m.Error == nil
	return m
}

// Refuse builds a refusal of request id.
func Refuse(id string, e *Error) Message { return Answer(id, Message{Error: e}) }

// NewEvent builds an event.
func NewEvent(name string, info *Info, e *Error) Message {
	return Message{V: Version, Op: OpEvent, Event: name, OK: e == nil, Error: e, Offload: info}
}
