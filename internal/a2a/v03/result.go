package v03

import (
	"encoding/base64"
	"fmt"
	"maps"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
)

// The 0.3 shapes of what the handler answers (0.3 §6), each with its
// "kind" discriminator. Optional members are omitted when empty; required
// ones ("parts", "contextId", "final") always appear.

type taskOut struct {
	Kind      string         `json:"kind"`
	ID        string         `json:"id"`
	ContextID string         `json:"contextId"`
	Status    statusOut      `json:"status"`
	History   []*messageOut  `json:"history,omitempty"`
	Artifacts []*artifactOut `json:"artifacts,omitempty"`
	Metadata  map[string]any `json:"metadata,omitempty"`
}

type statusOut struct {
	State     string      `json:"state"`
	Message   *messageOut `json:"message,omitempty"`
	Timestamp *time.Time  `json:"timestamp,omitempty"`
}

type messageOut struct {
	Kind             string         `json:"kind"`
	MessageID        string         `json:"messageId"`
	ContextID        string         `json:"contextId,omitempty"`
	TaskID           string         `json:"taskId,omitempty"`
	Role             string         `json:"role"`
	Parts            []any          `json:"parts"`
	Metadata         map[string]any `json:"metadata,omitempty"`
	Extensions       []string       `json:"extensions,omitempty"`
	ReferenceTaskIDs []string       `json:"referenceTaskIds,omitempty"`
}

type artifactOut struct {
	ArtifactID  string         `json:"artifactId"`
	Name        string         `json:"name,omitempty"`
	Description string         `json:"description,omitempty"`
	Parts       []any          `json:"parts"`
	Metadata    map[string]any `json:"metadata,omitempty"`
	Extensions  []string       `json:"extensions,omitempty"`
}

type statusUpdateOut struct {
	Kind      string         `json:"kind"`
	TaskID    string         `json:"taskId"`
	ContextID string         `json:"contextId"`
	Status    statusOut      `json:"status"`
	Final     bool           `json:"final"`
	Metadata  map[string]any `json:"metadata,omitempty"`
}

type artifactUpdateOut struct {
	Kind      string         `json:"kind"`
	TaskID    string         `json:"taskId"`
	ContextID string         `json:"contextId"`
	Artifact  *artifactOut   `json:"artifact"`
	Append    bool           `json:"append,omitempty"`
	LastChunk bool           `json:"lastChunk,omitempty"`
	Metadata  map[string]any `json:"metadata,omitempty"`
}

type textPartOut struct {
	Kind     string         `json:"kind"`
	Text     string         `json:"text"`
	Metadata map[string]any `json:"metadata,omitempty"`
}

type dataPartOut struct {
	Kind     string         `json:"kind"`
	Data     map[string]any `json:"data"`
	Metadata map[string]any `json:"metadata,omitempty"`
}

type filePartOut struct {
	Kind     string         `json:"kind"`
	File     any            `json:"file"`
	Metadata map[string]any `json:"metadata,omitempty"`
}

type fileBytesOut struct {
	Name     string `json:"name,omitempty"`
	MimeType string `json:"mimeType,omitempty"`
	Bytes    string `json:"bytes"`
}

type fileURIOut struct {
	Name     string `json:"name,omitempty"`
	MimeType string `json:"mimeType,omitempty"`
	URI      string `json:"uri"`
}

// states are 0.3's task states (0.3 §6.3) for v1's.
var states = map[a2a.TaskState]string{
	a2a.TaskStateSubmitted:     "submitted",
	a2a.TaskStateWorking:       "working",
	a2a.TaskStateInputRequired: "input-required",
	a2a.TaskStateAuthRequired:  "auth-required",
	a2a.TaskStateCompleted:     "completed",
	a2a.TaskStateCanceled:      "canceled",
	a2a.TaskStateFailed:        "failed",
	a2a.TaskStateRejected:      "rejected",
}

// state is s in 0.3's words; a state 0.3 does not name is its "unknown".
func state(s a2a.TaskState) string {
	if v, ok := states[s]; ok {
		return v
	}
	return "unknown"
}

// fromEvent is an event (or a SendMessage result) in 0.3's shape.
func fromEvent(e a2a.Event) (any, error) {
	switch v := e.(type) {
	case *a2a.Task:
		return fromTask(v)
	case *a2a.Message:
		return fromMessage(v)
	case *a2a.TaskStatusUpdateEvent:
		st, err := fromStatus(v.Status)
		if err != nil {
			return nil, err
		}
		// A 0.3 stream ends with the event marked final (0.3 §7.2.2): the
		// states the handler ends a stream on.
		final := v.Status.State.Terminal() || v.Status.State == a2a.TaskStateInputRequired
		return &statusUpdateOut{Kind: "status-update", TaskID: string(v.TaskID), ContextID: v.ContextID,
			Status: st, Final: final, Metadata: v.Metadata}, nil
	case *a2a.TaskArtifactUpdateEvent:
		a, err := fromArtifact(v.Artifact)
		if err != nil {
			return nil, err
		}
		return &artifactUpdateOut{Kind: "artifact-update", TaskID: string(v.TaskID), ContextID: v.ContextID,
			Artifact: a, Append: v.Append, LastChunk: v.LastChunk, Metadata: v.Metadata}, nil
	}
	return nil, fmt.Errorf("%w: the handler answered with %T, which A2A 0.3 cannot carry", a2a.ErrInvalidAgentResponse, e)
}

func fromTask(t *a2a.Task) (*taskOut, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: no task", a2a.ErrInvalidAgentResponse)
	}
	st, err := fromStatus(t.Status)
	if err != nil {
		return nil, err
	}
	out := &taskOut{Kind: "task", ID: string(t.ID), ContextID: t.ContextID, Status: st, Metadata: t.Metadata}
	for _, m := range t.History {
		mo, err := fromMessage(m)
		if err != nil {
			return nil, err
		}
		out.History = append(out.History, mo)
	}
	for _, a := range t.Artifacts {
		ao, err := fromArtifact(a)
		if err != nil {
			return nil, err
		}
		out.Artifacts = append(out.Artifacts, ao)
	}
	return out, nil
}

func fromStatus(s a2a.TaskStatus) (statusOut, error) {
	out := statusOut{State: state(s.State), Timestamp: s.Timestamp}
	if s.Message != nil {
		m, err := fromMessage(s.Message)
		if err != nil {
			return out, err
		}
		out.Message = m
	}
	return out, nil
}

func fromMessage(m *a2a.Message) (*messageOut, error) {
	if m == nil {
		return nil, fmt.Errorf("%w: no message", a2a.ErrInvalidAgentResponse)
	}
	parts, err := fromParts(m.Parts)
	if err != nil {
		return nil, err
	}
	out := &messageOut{Kind: "message", MessageID: m.ID, ContextID: m.ContextID, TaskID: string(m.TaskID),
		Parts: parts, Metadata: m.Metadata, Extensions: m.Extensions}
	switch m.Role {
	case a2a.MessageRoleUser:
		out.Role = "user"
	case a2a.MessageRoleAgent:
		out.Role = "agent"
	default:
		return nil, fmt.Errorf("%w: message %s has role %q, which A2A 0.3 cannot carry", a2a.ErrInvalidAgentResponse, m.ID, m.Role)
	}
	for _, id := range m.ReferenceTasks {
		out.ReferenceTaskIDs = append(out.ReferenceTaskIDs, string(id))
	}
	return out, nil
}

func fromArtifact(a *a2a.Artifact) (*artifactOut, error) {
	if a == nil {
		return nil, fmt.Errorf("%w: no artifact", a2a.ErrInvalidAgentResponse)
	}
	parts, err := fromParts(a.Parts)
	if err != nil {
		return nil, err
	}
	return &artifactOut{ArtifactID: string(a.ID), Name: a.Name, Description: a.Description, Parts: parts,
		Metadata: a.Metadata, Extensions: a.Extensions}, nil
}

// fromParts are parts in 0.3's shapes (0.3 §6.5). v1's filename and
// media type survive on file parts only: 0.3's text and data parts have
// no such members.
func fromParts(ps a2a.ContentParts) ([]any, error) {
	out := make([]any, 0, len(ps))
	for i, p := range ps {
		if p == nil {
			return nil, fmt.Errorf("%w: part %d is missing", a2a.ErrInvalidAgentResponse, i)
		}
		switch c := p.Content.(type) {
		case a2a.Text:
			out = append(out, &textPartOut{Kind: "text", Text: string(c), Metadata: p.Metadata})
		case a2a.Data:
			obj, ok := c.Value.(map[string]any)
			md := p.Metadata
			if !ok {
				obj = map[string]any{"value": c.Value}
				md = maps.Clone(md)
				if md == nil {
					md = map[string]any{}
				}
				md[dataCompat] = true
			}
			out = append(out, &dataPartOut{Kind: "data", Data: obj, Metadata: md})
		case a2a.Raw:
			out = append(out, &filePartOut{Kind: "file", Metadata: p.Metadata,
				File: &fileBytesOut{Name: p.Filename, MimeType: p.MediaType, Bytes: base64.StdEncoding.EncodeToString(c)}})
		case a2a.URL:
			out = append(out, &filePartOut{Kind: "file", Metadata: p.Metadata,
				File: &fileURIOut{Name: p.Filename, MimeType: p.MediaType, URI: string(c)}})
		default:
			return nil, fmt.Errorf("%w: part %d has content %T, which A2A 0.3 cannot carry", a2a.ErrInvalidAgentResponse, i, p.Content)
		}
	}
	return out, nil
}
