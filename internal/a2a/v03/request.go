package v03

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/a2aproject/a2a-go/v2/a2a"

	"github.com/kars-io/kars/internal/a2a/rpc"
)

// The methods of A2A 0.3's JSON-RPC binding (0.3 §7).
const (
	MethodSend         = "message/send"
	MethodStream       = "message/stream"
	MethodGetTask      = "tasks/get"
	MethodCancelTask   = "tasks/cancel"
	MethodResubscribe  = "tasks/resubscribe"
	MethodPushSet      = "tasks/pushNotificationConfig/set"
	MethodPushGet      = "tasks/pushNotificationConfig/get"
	MethodPushList     = "tasks/pushNotificationConfig/list"
	MethodPushDelete   = "tasks/pushNotificationConfig/delete"
	MethodExtendedCard = "agent/getAuthenticatedExtendedCard"
)

// MaxIDLen bounds the JSON-RPC id, which every answer and every event of
// a stream echoes: an id of the body cap's size would be copied into each.
const MaxIDLen = 256

// call is one parsed request: its id (raw, echoed as sent, JSON-RPC 2.0
// §5), its method, and its params translated to the v1 request the
// handler takes: *a2a.SendMessageRequest, *a2a.GetTaskRequest,
// *a2a.CancelTaskRequest or *a2a.SubscribeToTaskRequest; nil for the
// methods that take none here.
type call struct {
	id     json.RawMessage
	method string
	params any
}

// streams reports whether the method's answer is a Server-Sent Events
// stream (0.3 §7.2, §7.9), errors included.
func streams(method string) bool { return method == MethodStream || method == MethodResubscribe }

// parse reads a 0.3 JSON-RPC request: the envelope as rpc.ParseEnvelope
// takes it (strict JSON, one request object with a string or number id),
// then the method's params in 0.3's shapes (0.3 §6, §7), checked:
// discriminators ("kind") known, required members present and typed,
// file bytes valid base64. Unknown members are ignored, as 0.3 clients
// of later patch levels may send some. The error wraps the a2a sentinel
// that selects its JSON-RPC code; the call carries the id and method it
// could read, so that the error can echo them.
func parse(body []byte) (call, error) {
	env, err := rpc.ParseEnvelope(body)
	c := call{id: env.ID, method: env.Method}
	if len(c.id) > MaxIDLen {
		c.id = nil
		return c, fmt.Errorf("%w: the id is longer than %d bytes", a2a.ErrInvalidRequest, MaxIDLen)
	}
	if err != nil {
		var e *rpc.Error
		if !errors.As(err, &e) {
			return c, fmt.Errorf("%w: %v", a2a.ErrInvalidRequest, err)
		}
		if e.Code == rpc.CodeParseError {
			return c, fmt.Errorf("%w: %s", a2a.ErrParseError, e.Message)
		}
		return c, fmt.Errorf("%w: %s", a2a.ErrInvalidRequest, e.Message)
	}
	switch c.method {
	case MethodSend, MethodStream:
		var p *a2a.SendMessageRequest
		if p, err = parseSend(env.Params); err == nil {
			c.params = p
		}
	case MethodGetTask:
		var p struct {
			ID            *string `json:"id"`
			HistoryLength *int    `json:"historyLength"`
		}
		if err = decode(env.Params, &p); err == nil {
			var id a2a.TaskID
			if id, err = taskID(p.ID); err == nil {
				c.params = &a2a.GetTaskRequest{ID: id, HistoryLength: p.HistoryLength}
			}
		}
	case MethodCancelTask, MethodResubscribe:
		var p struct {
			ID       *string        `json:"id"`
			Metadata map[string]any `json:"metadata"`
		}
		if err = decode(env.Params, &p); err == nil {
			var id a2a.TaskID
			if id, err = taskID(p.ID); err == nil {
				if c.method == MethodCancelTask {
					c.params = &a2a.CancelTaskRequest{ID: id, Metadata: p.Metadata}
				} else {
					c.params = &a2a.SubscribeToTaskRequest{ID: id}
				}
			}
		}
	case MethodPushSet, MethodPushGet, MethodPushList, MethodPushDelete, MethodExtendedCard:
		// Answered without params: see handler.answer.
	default:
		return c, fmt.Errorf("%w: method %q is not part of A2A 0.3", a2a.ErrMethodNotFound, c.method)
	}
	return c, err
}

// invalid is an invalid-params error (JSON-RPC 2.0 §5.1, -32602).
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", a2a.ErrInvalidParams, fmt.Sprintf(format, args...))
}

// decode reads params (an object, or absent) into v, reporting a member
// of the wrong type as invalid params.
func decode(params json.RawMessage, v any) error {
	if len(params) == 0 {
		return invalid("the method takes params, and the request has none")
	}
	if err := json.Unmarshal(params, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return invalid("params.%s cannot be a JSON %s", te.Field, te.Value)
		}
		return invalid("params: %v", err)
	}
	return nil
}

func taskID(id *string) (a2a.TaskID, error) {
	if id == nil || *id == "" {
		return "", invalid(`params.id, the task's id, is required`)
	}
	return a2a.TaskID(*id), nil
}

// sendParams is MessageSendParams (0.3 §7.1.1).
type sendParams struct {
	Message  *messageIn     `json:"message"`
	Config   *sendConfig    `json:"configuration"`
	Metadata map[string]any `json:"metadata"`
}

// sendConfig is MessageSendConfiguration (0.3 §7.1.1).
type sendConfig struct {
	AcceptedOutputModes []string    `json:"acceptedOutputModes"`
	Blocking            *bool       `json:"blocking"`
	HistoryLength       *int        `json:"historyLength"`
	Push                *pushConfig `json:"pushNotificationConfig"`
}

// pushConfig is PushNotificationConfig (0.3 §6.8).
type pushConfig struct {
	ID    string `json:"id"`
	URL   string `json:"url"`
	Token string `json:"token"`
	Auth  *struct {
		Schemes     []string `json:"schemes"`
		Credentials string   `json:"credentials"`
	} `json:"authentication"`
}

// messageIn is Message (0.3 §6.4) as a client sends it.
type messageIn struct {
	Kind             *string        `json:"kind"`
	MessageID        string         `json:"messageId"`
	ContextID        string         `json:"contextId"`
	TaskID           string         `json:"taskId"`
	Role             string         `json:"role"`
	Parts            []partIn       `json:"parts"`
	Metadata         map[string]any `json:"metadata"`
	Extensions       []string       `json:"extensions"`
	ReferenceTaskIDs []string       `json:"referenceTaskIds"`
}

// partIn is any Part (0.3 §6.5), told apart by kind.
type partIn struct {
	Kind     string          `json:"kind"`
	Text     *string         `json:"text"`
	Data     *map[string]any `json:"data"`
	File     *fileIn         `json:"file"`
	Metadata map[string]any  `json:"metadata"`
}

// fileIn is FileWithBytes or FileWithUri (0.3 §6.6).
type fileIn struct {
	Name     string `json:"name"`
	MimeType string `json:"mimeType"`
	Bytes    string `json:"bytes"`
	URI      string `json:"uri"`
}

// dataCompat marks a data part whose v1 value is not an object: 0.3 data
// parts hold objects only, so such a value travels as {"value": v} with
// this metadata flag (the convention of the A2A Go SDK's 0.3 binding,
// kept so its clients round-trip such parts).
const dataCompat = "data_part_compat"

func parseSend(params json.RawMessage) (*a2a.SendMessageRequest, error) {
	var p sendParams
	if err := decode(params, &p); err != nil {
		return nil, err
	}
	if p.Message == nil {
		return nil, invalid("params.message is required")
	}
	m, err := p.Message.v1()
	if err != nil {
		return nil, err
	}
	req := &a2a.SendMessageRequest{Message: m, Metadata: p.Metadata}
	if c := p.Config; c != nil {
		req.Config = &a2a.SendMessageConfig{AcceptedOutputModes: c.AcceptedOutputModes, HistoryLength: c.HistoryLength}
		// An absent "blocking" is a blocking call, as 0.3's reference
		// servers take it.
		if c.Blocking != nil {
			req.Config.ReturnImmediately = !*c.Blocking
		}
		if c.Push != nil {
			pc := &a2a.PushConfig{ID: c.Push.ID, URL: c.Push.URL, Token: c.Push.Token}
			if a := c.Push.Auth; a != nil {
				pc.Auth = &a2a.PushAuthInfo{Credentials: a.Credentials}
				if len(a.Schemes) > 0 {
					pc.Auth.Scheme = a.Schemes[0]
				}
			}
			req.Config.PushConfig = pc
		}
	}
	return req, nil
}

func (m *messageIn) v1() (*a2a.Message, error) {
	if m.Kind != nil && *m.Kind != "message" {
		return nil, invalid(`params.message.kind is %q; a message's kind is "message"`, *m.Kind)
	}
	if m.MessageID == "" {
		return nil, invalid("params.message.messageId is required")
	}
	var role a2a.MessageRole
	switch m.Role {
	case "user":
		role = a2a.MessageRoleUser
	case "agent":
		role = a2a.MessageRoleAgent
	default:
		return nil, invalid(`params.message.role is %q; it is "user" or "agent"`, m.Role)
	}
	if len(m.Parts) == 0 {
		return nil, invalid("params.message.parts must hold at least one part")
	}
	out := &a2a.Message{ID: m.MessageID, ContextID: m.ContextID, TaskID: a2a.TaskID(m.TaskID), Role: role,
		Metadata: m.Metadata, Extensions: m.Extensions, Parts: make(a2a.ContentParts, len(m.Parts))}
	for i := range m.Parts {
		p, err := m.Parts[i].v1()
		if err != nil {
			return nil, invalid("params.message.parts[%d]: %s", i, err)
		}
		out.Parts[i] = p
	}
	if m.ReferenceTaskIDs != nil {
		out.ReferenceTasks = make([]a2a.TaskID, len(m.ReferenceTaskIDs))
		for i, id := range m.ReferenceTaskIDs {
			out.ReferenceTasks[i] = a2a.TaskID(id)
		}
	}
	return out, nil
}

func (p *partIn) v1() (*a2a.Part, error) {
	switch p.Kind {
	case "text":
		if p.Text == nil {
			return nil, errors.New(`a text part needs "text"`)
		}
		return &a2a.Part{Content: a2a.Text(*p.Text), Metadata: p.Metadata}, nil
	case "data":
		if p.Data == nil || *p.Data == nil {
			return nil, errors.New(`a data part needs "data", an object`)
		}
		var v any = *p.Data
		md := p.Metadata
		if compat, _ := md[dataCompat].(bool); compat {
			v = (*p.Data)["value"]
			md = maps.Clone(md)
			delete(md, dataCompat)
		}
		return &a2a.Part{Content: a2a.Data{Value: v}, Metadata: md}, nil
	case "file":
		f := p.File
		if f == nil || (f.Bytes == "") == (f.URI == "") {
			return nil, errors.New(`a file part needs "file" with exactly one of "bytes" and "uri"`)
		}
		out := &a2a.Part{Filename: f.Name, MediaType: f.MimeType, Metadata: p.Metadata}
		if f.URI != "" {
			out.Content = a2a.URL(f.URI)
			return out, nil
		}
		b, err := base64.StdEncoding.DecodeString(f.Bytes)
		if err != nil {
			return nil, fmt.Errorf(`"file.bytes" is not base64: %v`, err)
		}
		out.Content = a2a.Raw(b)
		return out, nil
	}
	return nil, fmt.Errorf(`unknown part kind %q (0.3 parts are "text", "file" or "data")`, p.Kind)
}
