package router

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Event is one egress decision or DNS answer, as `kars trace --network`
// shows it.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // connect, dns
	Host    string    `json:"host"`
	Port    uint16    `json:"port,omitempty"`
	Via     string    `json:"via,omitempty"`
	OrigDst string    `json:"origDst,omitempty"`
	Verdict string    `json:"verdict"`
	Step    string    `json:"step,omitempty"`
	Rule    string    `json:"rule,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	DNSType string    `json:"dnsType,omitempty"`
	RCode   string    `json:"rcode,omitempty"`
}

// eventHub keeps the latest events and fans new ones out to followers.
// A follower that cannot keep up loses events rather than slowing the
// router down.
type eventHub struct {
	mu   sync.Mutex
	ring []Event
	next int
	full bool
	subs map[chan Event]struct{}
}

func newEventHub(n int) *eventHub {
	return &eventHub{ring: make([]Event, n), subs: map[chan Event]struct{}{}}
}

func (h *eventHub) publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = ev
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
	for c := range h.subs {
		select {
		case c <- ev:
		default:
		}
	}
}

// recent returns up to n of the latest events, oldest first.
func (h *eventHub) recent(n int) []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	var all []Event
	if h.full {
		all = append(all, h.ring[h.next:]...)
	}
	all = append(all, h.ring[:h.next]...)
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return all
}

func (h *eventHub) subscribe() (chan Event, func()) {
	c := make(chan Event, 256)
	h.mu.Lock()
	h.subs[c] = struct{}{}
	h.mu.Unlock()
	return c, func() {
		h.mu.Lock()
		delete(h.subs, c)
		h.mu.Unlock()
	}
}

// serve writes the recent events (?n=, default 100) as NDJSON and, with
// ?follow=1, keeps streaming new ones until the client goes away.
func (h *eventHub) serve(w http.ResponseWriter, req *http.Request) {
	n, err := strconv.Atoi(req.URL.Query().Get("n"))
	if err != nil || n < 0 {
		n = 100
	}
	follow := req.URL.Query().Get("follow") == "1"
	var sub chan Event
	if follow {
		var cancel func()
		sub, cancel = h.subscribe()
		defer cancel()
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	for _, ev := range h.recent(n) {
		enc.Encode(ev)
	}
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	if !follow {
		return
	}
	for {
		select {
		case <-req.Context().Done():
			return
		case ev := <-sub:
			if enc.Encode(ev) != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
	}
}
