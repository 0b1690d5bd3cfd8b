package ingress

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2asrv"
)

// maxReplyBytes bounds what the ingress reads of the agent's answer.
const maxReplyBytes = 4 << 20

// executor hands accepted messages to the agent's contract chat endpoint
// (docs/runtime-contract.md, "The agent's chat endpoint") and turns its
// reply into A2A events: the task, working, one text artifact, completed —
// or failed with the agent's error.
type executor struct {
	ing *Ingress
}

var _ a2asrv.AgentExecutor = executor{}

// chatRequest and chatReply are the contract endpoint's bodies.
type chatRequest struct {
	Session string `json:"session"`
	Message string `json:"message"`
}

type chatReply struct {
	Reply string `json:"reply"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// Execute implements a2asrv.AgentExecutor.
func (e executor) Execute(ctx context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[a2a.Event, error] {
	return func(yield func(a2a.Event, error) bool) {
		c := callFrom(ctx)
		if c == nil {
			yield(nil, errors.New("a2a ingress: execution without a call"))
			return
		}
		asMessage := c.replyAsMessage && ec.StoredTask == nil
		if !asMessage {
			if ec.StoredTask == nil {
				if !yield(a2a.NewSubmittedTask(ec, ec.Message), nil) {
					return
				}
			}
			if !yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateWorking, nil), nil) {
				return
			}
		}
		deadline := e.ing.sessions.deadline(c.caller, ec.ContextID, e.ing.now(), c.sessionMax)
		dctx, cancelDeadline := context.WithDeadline(ctx, deadline)
		defer cancelDeadline()
		actx, cancel := context.WithCancelCause(dctx)
		defer cancel(nil)
		go e.ing.endWithExposure(actx, cancel)
		reply, err := e.ing.callAgent(actx, c.agentURL, SessionID(c.caller, ec.ContextID), textOf(ec.Message))
		if err != nil {
			switch {
			case errors.Is(context.Cause(actx), errExposureEnded):
				err = errExposureEnded
			case errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
				err = fmt.Errorf("the A2A session exceeded sessionMaxSeconds (%s)", c.sessionMax)
			}
			if asMessage {
				// No task to fail: the error is the answer.
				yield(nil, a2a.NewError(a2a.ErrInternalError, err.Error()))
				return
			}
			msg := a2a.NewMessage(a2a.MessageRoleAgent, a2a.NewTextPart(err.Error()))
			yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateFailed, msg), nil)
			return
		}
		if asMessage {
			reply := a2a.NewMessage(a2a.MessageRoleAgent, a2a.NewTextPart(reply))
			reply.ContextID = ec.ContextID
			yield(reply, nil)
			return
		}
		if !yield(a2a.NewArtifactEvent(ec, a2a.NewTextPart(reply)), nil) {
			return
		}
		yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateCompleted, nil), nil)
	}
}

// errExposureEnded ends a turn whose sandbox stopped being exposed.
var errExposureEnded = errors.New("the sandbox's A2A exposure ended")

// exposurePoll is how often a running turn checks that the exposure is
// still open: revocation (a reload without the a2a section) or expiry ends
// the agent's turn too, not only new calls.
const exposurePoll = 250 * time.Millisecond

// endWithExposure cancels ctx's turn (with errExposureEnded) when the
// exposure closes; it returns when ctx ends.
func (i *Ingress) endWithExposure(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(exposurePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !i.o.Config().Open(i.now()) {
				cancel(errExposureEnded)
				return
			}
		}
	}
}

// Cancel implements a2asrv.AgentExecutor: the task is marked canceled; an
// agent turn in progress finishes, and its result is dropped (its next
// event fails the task store's version check).
func (e executor) Cancel(ctx context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[a2a.Event, error] {
	return func(yield func(a2a.Event, error) bool) {
		yield(a2a.NewStatusUpdateEvent(ec, a2a.TaskStateCanceled, nil), nil)
	}
}

// textOf joins a message's text parts; other parts (files, data) are not
// forwarded to the contract endpoint, which takes text.
func textOf(m *a2a.Message) string {
	if m == nil {
		return ""
	}
	var parts []string
	for _, p := range m.Parts {
		if t := p.Text(); t != "" {
			parts = append(parts, t)
		}
	}
	return strings.Join(parts, "\n")
}

// SessionID is the agent session an A2A context maps to: per caller, so
// that one caller can never continue (or read, through the agent's memory
// of it) another caller's conversation, and within the contract's session
// id alphabet ([A-Za-z0-9_-]{1,64}).
func SessionID(caller, contextID string) string {
	sum := sha256.Sum256([]byte(caller + "\x00" + contextID))
	return "a2a-" + hex.EncodeToString(sum[:20])
}

// callAgent posts one turn to the agent and returns its reply.
func (i *Ingress) callAgent(ctx context.Context, base, session, text string) (string, error) {
	body, _ := json.Marshal(chatRequest{Session: session, Message: text})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+"/v1/chat", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := i.agent.Do(req)
	if err != nil {
		return "", fmt.Errorf("the agent could not be reached: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes+1))
	if err != nil {
		return "", fmt.Errorf("reading the agent's reply: %w", err)
	}
	if len(b) > maxReplyBytes {
		return "", fmt.Errorf("the agent's reply exceeds %d bytes", maxReplyBytes)
	}
	var r chatReply
	if err := json.Unmarshal(b, &r); err != nil {
		return "", fmt.Errorf("the agent answered %d with a body that is not the contract's JSON", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		msg := http.StatusText(resp.StatusCode)
		if r.Error != nil && r.Error.Message != "" {
			msg = r.Error.Message
		}
		return "", fmt.Errorf("the agent refused the turn (%d): %s", resp.StatusCode, msg)
	}
	return r.Reply, nil
}

// sessions remembers when each (caller, context) session began, so that
// none runs past sessionMaxSeconds. Bounded: the oldest entries go first.
type sessions struct {
	mu    sync.Mutex
	start map[string]time.Time
	max   int
}

func newSessions(max int) *sessions {
	return &sessions{start: map[string]time.Time{}, max: max}
}

// begun returns when the session began, starting it at now if it is new.
func (s *sessions) begun(caller, contextID string, now time.Time) time.Time {
	k := caller + "\x00" + contextID
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.start[k]; ok {
		return t
	}
	if len(s.start) >= s.max {
		var oldK string
		var oldT time.Time
		for kk, t := range s.start {
			if oldK == "" || t.Before(oldT) {
				oldK, oldT = kk, t
			}
		}
		delete(s.start, oldK)
	}
	s.start[k] = now
	return now
}

// expired reports whether a known session has run past max; an unknown
// one has not (it begins with its first message).
func (s *sessions) expired(caller, contextID string, now time.Time, max time.Duration) bool {
	if contextID == "" {
		return false
	}
	s.mu.Lock()
	t, ok := s.start[caller+"\x00"+contextID]
	s.mu.Unlock()
	return ok && now.Sub(t) >= max
}

// deadline is when the session's time runs out.
func (s *sessions) deadline(caller, contextID string, now time.Time, max time.Duration) time.Time {
	return s.begun(caller, contextID, now).Add(max)
}
