package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// The agent's Telegram channel. The agent never holds the bot token: a
// CredentialBinding gives it a placeholder in TELEGRAM_BOT_TOKEN and the
// Bot API's address in KARS_CREDENTIALS; its requests go through the
// router's egress proxy, which terminates their TLS and puts the token in
// the path (docs/credentials.md). The wire format is the Bot API's
// (core.telegram.org/bots/api): getUpdates long polling and sendMessage.

// EnvTelegramToken holds the bot token's placeholder.
const EnvTelegramToken = "TELEGRAM_BOT_TOKEN"

// envCredentials is render.EnvCredentials: the agent's bindings as JSON.
const envCredentials = "KARS_CREDENTIALS"

// telegramMaxText is the Bot API's limit on a message's text, in
// characters (sendMessage: "1-4096 characters after entities parsing").
const telegramMaxText = 4096

// Telegram is the channel's configuration.
type Telegram struct {
	// Base is the Bot API's method prefix up to the token,
	// "https://api.telegram.org/bot".
	Base string
	// Token is what goes after Base: the placeholder the router replaces.
	Token string
	// PollSeconds is getUpdates' long-poll timeout.
	PollSeconds int
	// HTTP sends the requests; nil means through the router's forward
	// proxy (HTTPS_PROXY), trusting the agent's bundle (SSL_CERT_FILE).
	HTTP *http.Client
}

// TelegramFromEnv returns the Telegram channel's configuration, nil when
// the agent has no Telegram binding. The method prefix is the binding's
// endpoint ending in "/bot" (the one the router places the token after).
func TelegramFromEnv(getenv func(string) string) (*Telegram, error) {
	ph := getenv(EnvTelegramToken)
	if ph == "" {
		return nil, nil
	}
	var creds []struct {
		Env         string   `json:"env"`
		Placeholder string   `json:"placeholder"`
		Endpoints   []string `json:"endpoints"`
	}
	if err := json.Unmarshal([]byte(getenv(envCredentials)), &creds); err != nil {
		return nil, fmt.Errorf("%s is set but %s is not a list of bindings: %w", EnvTelegramToken, envCredentials, err)
	}
	for _, c := range creds {
		if c.Env != EnvTelegramToken || c.Placeholder != ph {
			continue
		}
		for _, e := range c.Endpoints {
			if strings.HasSuffix(e, "/bot") && !strings.HasSuffix(e, "/file/bot") {
				return &Telegram{Base: e, Token: ph, PollSeconds: 25}, nil
			}
		}
	}
	return nil, fmt.Errorf("%s is set but no binding in %s places it after a .../bot endpoint", EnvTelegramToken, envCredentials)
}

// telegramClient reaches the Bot API through the router's forward proxy;
// its timeout outlasts a long poll.
var telegramClient = &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}

// botCall calls one Bot API method with a JSON body and decodes the
// result of its {"ok":...} envelope into out.
func (tg *Telegram) botCall(ctx context.Context, method string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tg.Base+tg.Token+"/"+method, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	c := tg.HTTP
	if c == nil {
		c = telegramClient
	}
	resp, err := c.Do(req)
	if err != nil {
		// The error quotes the URL, which holds only the placeholder.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%s: %w", method, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	var env struct {
		OK          bool            `json:"ok"`
		Result      json.RawMessage `json:"result"`
		ErrorCode   int             `json:"error_code"`
		Description string          `json:"description"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		// Not the Bot API: the router's refusal, say.
		return fmt.Errorf("%s: HTTP %d: %.300s", method, resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	if !env.OK {
		return fmt.Errorf("%s: Telegram error %d: %s", method, env.ErrorCode, env.Description)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(env.Result, out)
}

// telegramUpdate is the part of the Bot API's Update the channel reads.
type telegramUpdate struct {
	UpdateID int64 `json:"update_id"`
	Message  *struct {
		Chat struct {
			ID int64 `json:"id"`
		} `json:"chat"`
		Text string `json:"text"`
	} `json:"message"`
}

// ServeTelegram answers Telegram messages until ctx ends: each text
// message is a turn of the chat's own conversation (session
// "telegram-<chat id>"), its reply sent back with sendMessage. Updates are
// confirmed (getUpdates' offset) once answered, one at a time in order;
// failures back off up to a minute.
func (a *Agent) ServeTelegram(ctx context.Context, log *slog.Logger, tg *Telegram) {
	var offset int64
	backoff := time.Second
	for ctx.Err() == nil {
		var updates []telegramUpdate
		err := tg.botCall(ctx, "getUpdates", map[string]any{"offset": offset, "timeout": tg.PollSeconds, "allowed_updates": []string{"message"}}, &updates)
		if err != nil {
			log.Warn("telegram: getUpdates failed", "err", err, "retryIn", backoff.String())
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Minute)
			continue
		}
		backoff = time.Second
		for _, u := range updates {
			offset = max(offset, u.UpdateID+1)
			if u.Message == nil || strings.TrimSpace(u.Message.Text) == "" {
				continue
			}
			a.answerTelegram(ctx, log, tg, u.Message.Chat.ID, u.Message.Text)
		}
	}
}

func (a *Agent) answerTelegram(ctx context.Context, log *slog.Logger, tg *Telegram, chat int64, text string) {
	tctx, cancel := context.WithTimeout(ctx, replyWait)
	defer cancel()
	turn, err := a.Chat(tctx, fmt.Sprintf("telegram-%d", chat), text)
	reply := ""
	if err != nil {
		reply = "Sorry, I could not answer that: " + err.Error()
	} else {
		reply = turn.Reply
	}
	if strings.TrimSpace(reply) == "" {
		reply = "(no answer)"
	}
	if utf8.RuneCountInString(reply) > telegramMaxText {
		reply = string([]rune(reply)[:telegramMaxText-1]) + "…"
	}
	if err := tg.botCall(ctx, "sendMessage", map[string]any{"chat_id": chat, "text": reply}, nil); err != nil {
		log.Warn("telegram: sendMessage failed", "chat", chat, "err", err)
	}
}
