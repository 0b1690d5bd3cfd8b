package runtimes

import (
	"encoding/json"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kars-io/kars/internal/botapitest"
)

// TestOpenClawTelegramChannel: with a Telegram binding in its environment
// (the token's placeholder in TELEGRAM_BOT_TOKEN, the Bot API's address in
// KARS_CREDENTIALS), the OpenClaw adapter turns on OpenClaw's own Telegram
// channel; a message a user sends the bot (a fake Bot API on TLS, trusted
// through NODE_EXTRA_CA_CERTS as the sandbox CA is) is answered by the
// real OpenClaw gateway through the router. This checks the adapter's
// wiring; the router's placing of the real token is checked in
// internal/router and test/e2e.
func TestOpenClawTelegramChannel(t *testing.T) {
	env := prepared(t, "openclaw")
	h := newHarness(t, false)
	// The scripted tool calls are the contract test's; here the model
	// answers at once.
	h.up.answerOnly = true
	const token = "kars_placeholder_telegram_0123456789abcdef"
	bot := botapitest.New(token, "kars_openclaw_bot")
	srv := httptest.NewTLSServer(bot)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	creds, _ := json.Marshal([]map[string]any{{"name": "telegram", "env": "TELEGRAM_BOT_TOKEN", "placeholder": token,
		"endpoints": []string{srv.URL + "/bot", srv.URL + "/file/bot"}, "placement": map[string]string{"type": "Path"}}})
	// The user's OpenClaw configuration says who may talk to the bot.
	userConf := filepath.Join(dir, "openclaw.json")
	if err := os.WriteFile(userConf, []byte(`{"channels":{"telegram":{"dmPolicy":"open","allowFrom":["*"]}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	h.startShim(env, "TELEGRAM_BOT_TOKEN="+token, "KARS_CREDENTIALS="+string(creds), "NODE_EXTRA_CA_CERTS="+ca, "KARS_AGENT_CONFIG="+userConf)

	// The channel polls once the gateway is up.
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if hasPath(bot, "/getUpdates") {
			break
		}
	}
	if !hasPath(bot, "/getUpdates") {
		t.Fatalf("OpenClaw never polled the Bot API; it saw %q", bot.Paths())
	}
	bot.UserSays(4242, "hello from Telegram")
	var replies []string
	for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		replies = replies[:0]
		for _, m := range bot.Sent() {
			if m.Chat.ID == 4242 {
				replies = append(replies, m.Text)
			}
		}
		if strings.Contains(strings.Join(replies, "\n"), "Done.") {
			break
		}
	}
	if !strings.Contains(strings.Join(replies, "\n"), "Done.") {
		t.Fatalf("OpenClaw's answer on Telegram: %q (paths %q)", replies, bot.Paths())
	}
	for _, p := range bot.Paths() {
		if !strings.HasPrefix(p, "/bot"+token+"/") {
			t.Errorf("OpenClaw called %s, not under /bot<placeholder>/", p)
		}
	}
	if len(h.up.seenRequests()) == 0 {
		t.Error("the answer did not come from the model through the router")
	}
}

func hasPath(bot *botapitest.Server, suffix string) bool {
	for _, p := range bot.Paths() {
		if strings.HasSuffix(p, suffix) {
			return true
		}
	}
	return false
}
