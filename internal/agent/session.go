package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
)

// Message is one turn of a conversation, in a form that survives restarts.
type Message struct {
	Role       string     `json:"role"` // system, user, assistant, tool
	Content    string     `json:"content,omitempty"`
	ToolCalls  []ToolCall `json:"toolCalls,omitempty"`
	ToolCallID string     `json:"toolCallId,omitempty"`
}

// ToolCall is a tool call the model requested, with what became of it.
type ToolCall struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
	// Decision is the router's policy verdict (allow, deny, …).
	Decision string `json:"decision,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Result   string `json:"result,omitempty"`
}

var sessionID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// sessions stores conversations as JSON files under <workspace>/.kars-agent.
type sessions struct {
	dir string
	mu  sync.Mutex
	// locks serialises turns within one session.
	locks map[string]*sync.Mutex
}

func newSessions(workspace string) (*sessions, error) {
	dir := filepath.Join(workspace, ".kars-agent", "sessions")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &sessions{dir: dir, locks: map[string]*sync.Mutex{}}, nil
}

func (s *sessions) lock(id string) func() {
	s.mu.Lock()
	l, ok := s.locks[id]
	if !ok {
		l = &sync.Mutex{}
		s.locks[id] = l
	}
	s.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func (s *sessions) path(id string) (string, error) {
	if !sessionID.MatchString(id) {
		return "", fmt.Errorf("session id %q: use 1-64 letters, digits, '-' or '_'", id)
	}
	return filepath.Join(s.dir, id+".json"), nil
}

func (s *sessions) load(id string) ([]Message, error) {
	p, err := s.path(id)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var msgs []Message
	if err := json.Unmarshal(raw, &msgs); err != nil {
		return nil, fmt.Errorf("session %s is corrupt: %w", id, err)
	}
	return msgs, nil
}

func (s *sessions) save(id string, msgs []Message) error {
	p, err := s.path(id)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(msgs)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func (s *sessions) remove(id string) error {
	p, err := s.path(id)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
