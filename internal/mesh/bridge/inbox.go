package bridge

import (
	"context"
	"encoding/json"
	"sync"
	"time"
	"unicode/utf8"
)

// Message is a decrypted message as the agent sees it.
type Message struct {
	ID string `json:"id"`
	// From is the peer's name (its pairing's), FromDID its identity.
	From    string `json:"from"`
	FromDID string `json:"fromDid"`
	Text    string `json:"text"`
	// InReplyTo is the id of the message this one answers.
	InReplyTo  string    `json:"inReplyTo,omitempty"`
	ReceivedAt time.Time `json:"receivedAt"`
}

// envelope is the plaintext inside a ratchet message between kars
// routers: the agent's text and, for a reply, the id it answers. A
// plaintext that is not such an object (a toolkit SDK peer sending raw
// text) is taken as text.
type envelope struct {
	Text      string `json:"text"`
	InReplyTo string `json:"in_reply_to,omitempty"`
}

// MaxText bounds one message's text.
const MaxText = 256 << 10

func openEnvelope(pt []byte) envelope {
	var e envelope
	if json.Unmarshal(pt, &e) == nil && e.Text != "" {
		return e
	}
	if !utf8.Valid(pt) {
		return envelope{Text: string([]rune(string(pt)))}
	}
	return envelope{Text: string(pt)}
}

// inbox holds delivered messages until the agent takes them.
type inbox struct {
	mu      sync.Mutex
	msgs    []Message
	changed chan struct{} // closed and replaced when a message arrives
}

// MaxInbox bounds undelivered messages. When full, the bridge stops
// reading from the relay, which keeps the rest (store and forward).
const MaxInbox = 1000

func newInbox() *inbox { return &inbox{changed: make(chan struct{})} }

func (q *inbox) add(m Message) {
	q.mu.Lock()
	q.msgs = append(q.msgs, m)
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
}

func (q *inbox) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.msgs)
}

func (q *inbox) snapshot() []Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]Message(nil), q.msgs...)
}

// take removes up to n messages, waiting until ctx ends for one to
// arrive when the inbox is empty.
func (q *inbox) take(ctx context.Context, n int) []Message {
	for {
		q.mu.Lock()
		if len(q.msgs) > 0 {
			k := min(n, len(q.msgs))
			out := append([]Message(nil), q.msgs[:k]...)
			q.msgs = append(q.msgs[:0], q.msgs[k:]...)
			q.mu.Unlock()
			return out
		}
		ch := q.changed
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
	}
}

// putBack returns messages the agent did not receive (its request ended
// before the answer was written) to the front of the queue.
func (q *inbox) putBack(ms []Message) {
	q.mu.Lock()
	q.msgs = append(append([]Message(nil), ms...), q.msgs...)
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
}
