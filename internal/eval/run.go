package eval

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	karsv1 "github.com/kars-io/kars/api/v1alpha1"
)

// Target is the sandbox under evaluation: its agent's chat endpoint
// (runtime contract v1) and its router's agent API, reached the way the
// agent reaches it.
type Target struct {
	// Client dials into the sandbox (the local substrate's pod dialer).
	Client *http.Client
	// AgentURL is the agent's chat endpoint base, http://127.0.0.1:18789.
	AgentURL string
	// RouterURL is the router's agent API, http://127.0.0.1:8443.
	RouterURL string
	// Session prefixes the chat sessions of this run, one per case, so
	// that cases do not see each other's history.
	Session string
}

// Run plays cases against t, one after the other, and scores each with
// evaluators. It stops early only when ctx ends.
func Run(ctx context.Context, t Target, cases []Case, evaluators []karsv1.EvaluatorKind) []CaseResult {
	out := make([]CaseResult, 0, len(cases))
	for i, c := range cases {
		if ctx.Err() != nil {
			break
		}
		var obs Observation
		switch {
		case c.Probe != nil && c.Probe.Action != "":
			obs = t.decide(ctx, c.Probe.Action)
		case c.Probe != nil && c.Probe.MemoryCanary != "":
			obs = t.memoryCanary(ctx, c.Probe.MemoryCanary, i)
		default:
			session := fmt.Sprintf("%s-%d", t.Session, i)
			obs = t.chat(ctx, session, c.Input)
			t.forget(ctx, session)
		}
		out = append(out, Score(c, obs, evaluators))
	}
	return out
}

// chat sends one message and reads the turn (contract v1: reply and
// toolCalls with the router's decisions; a router refusal keeps its
// status).
func (t Target) chat(ctx context.Context, session, message string) Observation {
	var turn struct {
		Reply     string `json:"reply"`
		ToolCalls []struct {
			Name     string `json:"name"`
			Decision string `json:"decision"`
		} `json:"toolCalls"`
		Error *struct {
			Message string `json:"message"`
			Status  int    `json:"status"`
		} `json:"error"`
	}
	status, err := t.post(ctx, t.AgentURL+"/v1/chat", map[string]string{"session": session, "message": message}, &turn)
	if err != nil {
		return Observation{Err: err}
	}
	if status != http.StatusOK {
		msg := ""
		if turn.Error != nil {
			msg = turn.Error.Message
		}
		switch {
		case status == http.StatusBadRequest && strings.Contains(msg, "content"):
			return Observation{Reply: msg, Blocked: true}
		case status == http.StatusForbidden:
			return Observation{Reply: msg, Refused: true}
		}
		return Observation{Err: fmt.Errorf("the agent answered %d: %s", status, msg)}
	}
	obs := Observation{Reply: turn.Reply}
	for _, c := range turn.ToolCalls {
		obs.Calls = append(obs.Calls, Call{Tool: c.Name, Decision: c.Decision})
	}
	return obs
}

// forget deletes a case's session from the agent's workspace.
func (t Target) forget(ctx context.Context, session string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, t.AgentURL+"/v1/sessions/"+session, nil)
	if err == nil {
		t.do(req, nil)
	}
}

// decide asks the router's decide endpoint about action, as an agent
// does before a tool call; the entry it writes names the action.
func (t Target) decide(ctx context.Context, action string) Observation {
	var d struct {
		Decision string `json:"decision"`
	}
	status, err := t.post(ctx, t.RouterURL+"/kars/v1/decide", map[string]any{"action": action}, &d)
	if err != nil {
		return Observation{Err: err}
	}
	if status != http.StatusOK || d.Decision == "" {
		// A refused request is a denial (runtime contract v1).
		d.Decision = "deny"
	}
	return Observation{Calls: []Call{{Tool: action, Decision: d.Decision}}}
}

// MemoryPath is the router's memory API on the agent port.
const MemoryPath = "/kars/v1/memory"

// memoryCanary writes canary as one principal and searches for it as
// another, through the router's memory API.
func (t Target) memoryCanary(ctx context.Context, canary string, i int) Observation {
	writer, reader := fmt.Sprintf("%s-writer-%d", t.Session, i), fmt.Sprintf("%s-reader-%d", t.Session, i)
	var info struct {
		Scope    string `json:"scope"`
		ReadOnly bool   `json:"readOnly"`
	}
	status, err := t.get(ctx, t.RouterURL+MemoryPath, &info)
	switch {
	case err != nil:
		return Observation{Err: err}
	case status == http.StatusNotFound:
		return Observation{NotApplicable: "the sandbox has no KarsMemory"}
	case info.Scope == "agent":
		return Observation{NotApplicable: "memory is scoped to the agent: shared by its principals by design"}
	case info.ReadOnly:
		return Observation{NotApplicable: "memory is read-only: nothing can be planted"}
	}
	if status, err = t.post(ctx, t.RouterURL+MemoryPath+"/memories", map[string]string{"content": canary, "principal": writer}, nil); err != nil || status != http.StatusOK {
		return Observation{Err: errors.Join(fmt.Errorf("plant the canary: status %d", status), err)}
	}
	var found struct {
		Memories []struct {
			Content string `json:"content"`
		} `json:"memories"`
	}
	if status, err = t.post(ctx, t.RouterURL+MemoryPath+"/search", map[string]any{"query": canary, "principal": reader}, &found); err != nil || status != http.StatusOK {
		return Observation{Err: errors.Join(fmt.Errorf("search: status %d", status), err)}
	}
	obs := Observation{}
	for _, m := range found.Memories {
		if strings.Contains(m.Content, canary) {
			obs.Leaked = true
		}
	}
	return obs
}

func (t Target) post(ctx context.Context, url string, body, out any) (int, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	return t.do(req, out)
}

func (t Target) get(ctx context.Context, url string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	return t.do(req, out)
}

func (t Target) do(req *http.Request, out any) (int, error) {
	resp, err := t.Client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && len(raw) > 0 {
		_ = json.Unmarshal(raw, out)
	}
	return resp.StatusCode, nil
}
