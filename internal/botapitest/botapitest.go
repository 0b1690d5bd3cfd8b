// Package botapitest is a fake Telegram Bot API for tests: the wire format
// of https://core.telegram.org/bots/api ("Making requests"), for the
// methods kars uses — getMe, getUpdates (long polling with offset and
// timeout), sendMessage — with its error shape. Telegram itself cannot be
// reached from here, so tests run this on loopback or in a network
// namespace and check that it saw the real token.
//
// It is an http.Handler; serve it with TLS as Telegram does.
package botapitest

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Message is one message, as the Bot API's Message object carries it (the
// fields kars reads).
type Message struct {
	MessageID int64  `json:"message_id"`
	From      *User  `json:"from,omitempty"`
	Chat      Chat   `json:"chat"`
	Date      int64  `json:"date"`
	Text      string `json:"text,omitempty"`
}

// User is the Bot API's User object (the fields kars reads).
type User struct {
	ID        int64  `json:"id"`
	IsBot     bool   `json:"is_bot"`
	FirstName string `json:"first_name"`
	Username  string `json:"username,omitempty"`
}

// Chat is the Bot API's Chat object (the fields kars reads).
type Chat struct {
	ID   int64  `json:"id"`
	Type string `json:"type"`
}

// Update is the Bot API's Update object with a message.
type Update struct {
	UpdateID int64    `json:"update_id"`
	Message  *Message `json:"message,omitempty"`
}

// Server is the fake. The zero value is not usable; use New.
type Server struct {
	// Token is the bot's token: requests under /bot<Token>/ are served,
	// any other token gets 401 Unauthorized, as Telegram answers.
	Token string
	// Username is getMe's username.
	Username string

	mu      sync.Mutex
	cond    *sync.Cond
	updates []Update
	nextID  int64
	nextMsg int64
	sent    []Message
	paths   []string
}

// New returns a fake bot with token.
func New(token, username string) *Server {
	s := &Server{Token: token, Username: username, nextID: 100, nextMsg: 1}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// botID is the numeric part of a token ("<id>:<secret>"), as getMe
// reports it.
func (s *Server) botID() int64 {
	id, _ := strconv.ParseInt(strings.SplitN(s.Token, ":", 2)[0], 10, 64)
	return id
}

// UserSays queues a private message from a user, as if sent in the
// Telegram app; the next getUpdates returns it.
func (s *Server) UserSays(chatID int64, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updates = append(s.updates, Update{UpdateID: s.nextID, Message: &Message{MessageID: s.nextMsg,
		From: &User{ID: chatID, FirstName: "User"}, Chat: Chat{ID: chatID, Type: "private"}, Date: time.Now().Unix(), Text: text}})
	s.nextID++
	s.nextMsg++
	s.cond.Broadcast()
}

// Sent returns the messages the bot sent (sendMessage), oldest first.
func (s *Server) Sent() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.sent...)
}

// Paths returns the request paths the fake received, with the token as it
// came, oldest first.
func (s *Server) Paths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.paths...)
}

// reply writes the Bot API's envelope: {"ok":true,"result":...} or
// {"ok":false,"error_code":N,"description":...}.
func reply(w http.ResponseWriter, code int, result any, description string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	if code == http.StatusOK {
		json.NewEncoder(w).Encode(map[string]any{"ok": true, "result": result})
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"ok": false, "error_code": code, "description": description})
}

// params reads a method's parameters: the Bot API takes them from the
// query string, a form body or a JSON body.
func params(r *http.Request) (map[string]string, bool) {
	out := map[string]string{}
	for k, v := range r.URL.Query() {
		out[k] = v[0]
	}
	if r.Method != http.MethodPost {
		return out, true
	}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		var m map[string]any
		if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20)).Decode(&m); err != nil {
			return nil, false
		}
		for k, v := range m {
			switch v := v.(type) {
			case string:
				out[k] = v
			case float64:
				out[k] = strconv.FormatInt(int64(v), 10)
			}
		}
		return out, true
	}
	if err := r.ParseForm(); err != nil {
		return nil, false
	}
	for k, v := range r.PostForm {
		out[k] = v[0]
	}
	return out, true
}

// ServeHTTP implements the Bot API: /bot<token>/<method>.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.paths = append(s.paths, r.URL.Path)
	s.mu.Unlock()
	rest, ok := strings.CutPrefix(r.URL.Path, "/bot")
	token, method, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		reply(w, http.StatusNotFound, nil, "Not Found")
		return
	}
	if token != s.Token {
		reply(w, http.StatusUnauthorized, nil, "Unauthorized")
		return
	}
	p, ok := params(r)
	if !ok {
		reply(w, http.StatusBadRequest, nil, "Bad Request: can't parse request body")
		return
	}
	switch method {
	case "getMe":
		reply(w, http.StatusOK, User{ID: s.botID(), IsBot: true, FirstName: "kars", Username: s.Username}, "")
	case "getUpdates":
		s.getUpdates(w, r, p)
	case "sendMessage":
		chat, err := strconv.ParseInt(p["chat_id"], 10, 64)
		if err != nil || p["text"] == "" {
			reply(w, http.StatusBadRequest, nil, "Bad Request: chat_id and text are required")
			return
		}
		s.mu.Lock()
		m := Message{MessageID: s.nextMsg, From: &User{ID: s.botID(), IsBot: true, FirstName: "kars", Username: s.Username},
			Chat: Chat{ID: chat, Type: "private"}, Date: time.Now().Unix(), Text: p["text"]}
		s.nextMsg++
		s.sent = append(s.sent, m)
		s.mu.Unlock()
		reply(w, http.StatusOK, m, "")
	case "editMessageText", "deleteMessage":
		// A framework streaming its answer sends a preview, edits it and
		// may delete it: Sent shows the chat as the user sees it.
		chat, _ := strconv.ParseInt(p["chat_id"], 10, 64)
		id, _ := strconv.ParseInt(p["message_id"], 10, 64)
		s.mu.Lock()
		i := slices.IndexFunc(s.sent, func(m Message) bool { return m.Chat.ID == chat && m.MessageID == id })
		var m Message
		if i >= 0 && method == "editMessageText" {
			s.sent[i].Text = p["text"]
			m = s.sent[i]
		} else if i >= 0 {
			s.sent = slices.Delete(s.sent, i, i+1)
		}
		s.mu.Unlock()
		switch {
		case i < 0:
			reply(w, http.StatusBadRequest, nil, "Bad Request: message to edit not found")
		case method == "editMessageText":
			reply(w, http.StatusOK, m, "")
		default:
			reply(w, http.StatusOK, true, "")
		}
	case "getMyCommands":
		reply(w, http.StatusOK, []any{}, "")
	case "deleteWebhook", "setMyCommands", "deleteMyCommands", "sendChatAction", "setMessageReaction",
		"setMyDescription", "setMyShortDescription", "setChatMenuButton":
		// Methods a bot framework calls around its messages; they answer
		// true when they succeed.
		reply(w, http.StatusOK, true, "")
	default:
		reply(w, http.StatusNotFound, nil, "Not Found: method not found")
	}
}

// getUpdates answers with the updates from offset on, waiting up to
// timeout seconds for one (long polling); an offset confirms the updates
// before it, which are then forgotten.
func (s *Server) getUpdates(w http.ResponseWriter, r *http.Request, p map[string]string) {
	offset, _ := strconv.ParseInt(p["offset"], 10, 64)
	timeout, _ := strconv.Atoi(p["timeout"])
	timeout = min(max(timeout, 0), 50)
	deadline := time.Now().Add(time.Duration(timeout) * time.Second)
	stop := time.AfterFunc(time.Until(deadline), func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop.Stop()
	go func() { // a client that goes away ends the wait
		<-r.Context().Done()
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		kept := s.updates[:0]
		for _, u := range s.updates {
			if u.UpdateID >= offset {
				kept = append(kept, u)
			}
		}
		s.updates = kept
		if len(s.updates) > 0 || !time.Now().Before(deadline) || r.Context().Err() != nil {
			break
		}
		s.cond.Wait()
	}
	out := append([]Update{}, s.updates...)
	reply(w, http.StatusOK, out, "")
}
