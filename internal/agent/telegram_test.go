package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/botapitest"
)

const testBotToken = "123456789:AAHagent-telegram-test_token0000"

// TestTelegramChannel: messages a user sends the bot are answered by the
// agent, each chat its own conversation, over the Bot API's wire format
// (a fake on TLS); an update is answered once.
func TestTelegramChannel(t *testing.T) {
	bot := botapitest.New(testBotToken, "kars_test_bot")
	srv := httptest.NewTLSServer(bot)
	t.Cleanup(srv.Close)
	a, _ := newTestAgent(t, &fakeRouter{})
	tg := &Telegram{Base: srv.URL + "/bot", Token: testBotToken, PollSeconds: 1, HTTP: srv.Client()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.ServeTelegram(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), tg); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	bot.UserSays(42, "hello there")
	bot.UserSays(7, "second chat")
	waitSent(t, bot, 2)
	bot.UserSays(42, "again")
	sent := waitSent(t, bot, 3)
	want := map[int64][]string{42: {"echo: hello there", "echo: again"}, 7: {"echo: second chat"}}
	got := map[int64][]string{}
	for _, m := range sent {
		got[m.Chat.ID] = append(got[m.Chat.ID], m.Text)
	}
	for chat, texts := range want {
		if strings.Join(got[chat], "|") != strings.Join(texts, "|") {
			t.Errorf("chat %d got %q, want %q", chat, got[chat], texts)
		}
	}
	// Nothing is answered twice: the offset confirmed each update.
	time.Sleep(1500 * time.Millisecond)
	if n := len(bot.Sent()); n != 3 {
		t.Errorf("%d messages sent, want 3", n)
	}
}

func waitSent(t *testing.T, bot *botapitest.Server, n int) []botapitest.Message {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if s := bot.Sent(); len(s) >= n {
			return s
		}
	}
	t.Fatalf("the bot sent %d messages, want %d", len(bot.Sent()), n)
	return nil
}

// TestTelegramFromEnv: the channel is on only with a Telegram binding, and
// takes the Bot API's address from it.
func TestTelegramFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if tg, err := TelegramFromEnv(env(nil)); tg != nil || err != nil {
		t.Errorf("no binding: %v, %v", tg, err)
	}
	creds := `[{"name":"telegram","env":"TELEGRAM_BOT_TOKEN","placeholder":"kars_placeholder_telegram_x","endpoints":["https://api.telegram.org/file/bot","https://api.telegram.org/bot"],"placement":{"type":"Path"}}]`
	tg, err := TelegramFromEnv(env(map[string]string{EnvTelegramToken: "kars_placeholder_telegram_x", envCredentials: creds}))
	if err != nil || tg.Base != "https://api.telegram.org/bot" || tg.Token != "kars_placeholder_telegram_x" {
		t.Errorf("binding: %+v, %v", tg, err)
	}
	if _, err := TelegramFromEnv(env(map[string]string{EnvTelegramToken: "other", envCredentials: creds})); err == nil {
		t.Error("a token no binding names was accepted")
	}
	if _, err := TelegramFromEnv(env(map[string]string{EnvTelegramToken: "x", envCredentials: "{"})); err == nil {
		t.Error("garbage accepted")
	}
}
