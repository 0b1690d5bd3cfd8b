package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// SendToAgentTool is the tool that messages another paired agent over
// the mesh through the router, which holds the keys, decides
// mesh:send:<peer> and encrypts end to end.
const SendToAgentTool = "send_to_agent"

// The router's mesh API (internal/mesh/bridge).
const (
	meshSendPath  = "/kars/v1/mesh/send"
	meshInboxPath = "/kars/v1/mesh/inbox"
)

// replyWait is how long send_to_agent waits for the peer's answer: the
// peer runs a whole turn of its own model.
const replyWait = 150 * time.Second

func (a *Agent) sendToAgentTool() Tool {
	str := func(desc string) map[string]any { return map[string]any{"type": "string", "description": desc} }
	return Tool{
		Name: SendToAgentTool,
		Description: "Send a message to another agent this sandbox is paired with (end-to-end encrypted) and return its answer. " +
			"Use it when the user addresses another agent as @name.",
		Params: map[string]any{"type": "object", "properties": map[string]any{
			"to":      str("the other agent's name, without the @"),
			"message": str("what to tell or ask it")}, "required": []string{"to", "message"}},
		Run: func(_ string, args map[string]any) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), replyWait+10*time.Second)
			defer cancel()
			return a.sendToAgent(ctx, strings.TrimPrefix(strings.TrimSpace(argString(args, "to")), "@"), argString(args, "message"))
		},
	}
}

// sendToAgent posts to the router's mesh API and waits for the reply.
func (a *Agent) sendToAgent(ctx context.Context, to, message string) (string, error) {
	if to == "" || strings.TrimSpace(message) == "" {
		return "", fmt.Errorf("send_to_agent needs a recipient and a message")
	}
	body, _ := json.Marshal(map[string]any{"to": to, "text": message, "awaitReplySeconds": replyWait.Seconds()})
	var out struct {
		ID    string `json:"id"`
		Reply *struct {
			From string `json:"from"`
			Text string `json:"text"`
		} `json:"reply"`
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	status, err := a.routerJSON(ctx, http.MethodPost, meshSendPath, body, &out)
	if err != nil {
		return "", err
	}
	if out.Error != nil {
		return "", fmt.Errorf("the router refused the message (%d %s): %s", status, out.Error.Code, out.Error.Message)
	}
	if out.Reply == nil {
		return "", fmt.Errorf("%s sent no reply", to)
	}
	return out.Reply.Text, nil
}

func (a *Agent) routerJSON(ctx context.Context, method, path string, body []byte, v any) (int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(a.cfg.RouterURL, "/")+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return resp.StatusCode, fmt.Errorf("router answered %d: %.200s", resp.StatusCode, raw)
	}
	return resp.StatusCode, nil
}

// mention matches a message addressed to another agent: "@worker review
// this" (the peer's name is a pairing's, a DNS label).
var mention = regexp.MustCompile(`^@([a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)[:,]?\s+(?s)(.+)$`)

// addressed returns the peer and text of a message that starts with an
// @-mention, when the send_to_agent tool is enabled.
func (a *Agent) addressed(message string) (peer, text string, ok bool) {
	if _, on := a.tools[SendToAgentTool]; !on {
		return "", "", false
	}
	m := mention.FindStringSubmatch(strings.TrimSpace(message))
	if m == nil {
		return "", "", false
	}
	return m[1], strings.TrimSpace(m[2]), true
}

// ServeMesh answers messages from paired agents until ctx ends: each is a
// turn of its own conversation (session "mesh-<peer>"), without the
// send_to_agent tool so that two agents cannot bounce a request between
// them, and its reply goes back to the sender. Replies that arrive after
// their sender stopped waiting are logged, not answered. A router with
// no mesh answers 404; the loop then looks again every few minutes.
func (a *Agent) ServeMesh(ctx context.Context, log *slog.Logger) {
	backoff := time.Second
	for ctx.Err() == nil {
		var out struct {
			Messages []struct {
				ID        string `json:"id"`
				From      string `json:"from"`
				Text      string `json:"text"`
				InReplyTo string `json:"inReplyTo"`
			} `json:"messages"`
		}
		status, err := a.routerJSON(ctx, http.MethodGet, meshInboxPath+"?wait=25", nil, &out)
		if err != nil || status != http.StatusOK {
			wait := backoff
			if status == http.StatusNotFound {
				wait = 5 * time.Minute
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			backoff = min(backoff*2, time.Minute)
			continue
		}
		backoff = time.Second
		for _, m := range out.Messages {
			if m.InReplyTo != "" {
				log.Info("a late reply from a peer; nobody waits for it any more", "from", m.From, "inReplyTo", m.InReplyTo)
				continue
			}
			go a.answerPeer(ctx, log, m.ID, m.From, m.Text)
		}
	}
}

func (a *Agent) answerPeer(ctx context.Context, log *slog.Logger, id, from, text string) {
	tctx, cancel := context.WithTimeout(ctx, replyWait)
	defer cancel()
	turn, err := a.chat(tctx, "mesh-"+from, fmt.Sprintf("Message from @%s: %s", from, text), false)
	reply := ""
	if err != nil {
		reply = "I could not answer: " + err.Error()
	} else {
		reply = turn.Reply
	}
	body, _ := json.Marshal(map[string]any{"to": from, "text": reply, "inReplyTo": id})
	var out map[string]any
	if status, err := a.routerJSON(ctx, http.MethodPost, meshSendPath, body, &out); err != nil || status != http.StatusOK {
		log.Warn("reply to a peer not sent", "to", from, "status", status, "err", err, "answer", out)
	}
}
