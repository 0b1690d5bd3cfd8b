package trust

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/kars-io/kars/internal/governance/statefile"
)

// ErrTooManyPeers is returned when a new peer would exceed Config.MaxPeers
// and no remembered peer can be forgotten (every one differs from Initial).
var ErrTooManyPeers = errors.New("trust: too many peers remembered")

// maxPeerLen bounds a peer id.
const maxPeerLen = 512

// Store holds the scores. It is safe for concurrent use.
type Store struct {
	cfg  Config
	path string
	now  func() time.Time

	mu    sync.Mutex
	peers map[string]*peer
	dirty bool

	writeMu sync.Mutex // serialises file writes; taken without mu held
	stop    chan struct{}
	done    chan struct{}
}

type peer struct {
	Score int `json:"score"`
	// DecayedAt is the time decay has been applied up to.
	DecayedAt time.Time `json:"decayedAt"`
}

type fileFormat struct {
	Version int              `json:"version"`
	Peers   map[string]*peer `json:"peers"`
}

// Option configures a Store.
type Option func(*Store)

// WithClock sets the clock (tests use it to step through hours).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// Open loads the scores from path (created on first write) and starts the
// background flusher. An empty path keeps scores in memory only.
func Open(path string, cfg Config, opts ...Option) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, path: path, now: time.Now, peers: map[string]*peer{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	if path != "" {
		data, err := statefile.Read(path)
		if err != nil {
			return nil, err
		}
		if data != nil {
			var f fileFormat
			if err := json.Unmarshal(data, &f); err != nil {
				return nil, fmt.Errorf("trust: %s is not a trust store: %w", path, err)
			}
			if f.Version != 1 {
				return nil, fmt.Errorf("trust: %s has version %d, this build reads version 1", path, f.Version)
			}
			for id, p := range f.Peers {
				if p == nil || id == "" {
					continue
				}
				p.Score = clamp(p.Score)
				s.peers[id] = p
			}
		}
	}
	go s.flusher()
	return s, nil
}

// Score returns peer's current score (Initial for a peer never seen).
func (s *Store) Score(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.scoreLocked(id, s.now())
}

func (s *Store) scoreLocked(id string, now time.Time) int {
	p, ok := s.peers[id]
	if !ok {
		return s.cfg.Initial
	}
	score, _ := decayed(p.Score, s.cfg.Initial, s.cfg.DecayPerHour, p.DecayedAt, now)
	return score
}

// Tier returns the tier of peer's current score.
func (s *Store) Tier(id string) Tier { return TierOf(s.Score(id)) }

// Check is the threshold gate: ok is true when peer's score reaches
// Config.Threshold.
func (s *Store) Check(id string) (ok bool, score int, tier Tier) {
	score = s.Score(id)
	return score >= s.cfg.Threshold, score, TierOf(score)
}

// RecordSuccess raises peer's score by SuccessDelta and returns the new one.
func (s *Store) RecordSuccess(id string) (int, error) {
	return s.adjust(id, s.cfg.SuccessDelta, false)
}

// RecordFailure lowers peer's score by FailureDelta.
func (s *Store) RecordFailure(id string) (int, error) {
	return s.adjust(id, -s.cfg.FailureDelta, false)
}

// PenalizeSafety lowers peer's score for a content-safety finding and
// writes the store before returning.
func (s *Store) PenalizeSafety(id string, sev Severity) (int, error) {
	if sev >= numSeverities {
		return 0, fmt.Errorf("trust: unknown severity %d", sev)
	}
	return s.adjust(id, -s.cfg.SafetyPenalty[sev], true)
}

// PenalizeViolation lowers peer's score for a policy violation and writes
// the store before returning.
func (s *Store) PenalizeViolation(id string) (int, error) {
	return s.adjust(id, -s.cfg.ViolationPenalty, true)
}

func (s *Store) adjust(id string, delta int, durable bool) (int, error) {
	if id == "" || len(id) > maxPeerLen {
		return 0, fmt.Errorf("trust: peer id must be 1 to %d bytes", maxPeerLen)
	}
	now := s.now()
	s.mu.Lock()
	p, ok := s.peers[id]
	if !ok {
		if len(s.peers) >= s.cfg.MaxPeers && !s.forgetOneLocked(now) {
			s.mu.Unlock()
			return s.cfg.Initial, ErrTooManyPeers
		}
		p = &peer{Score: s.cfg.Initial, DecayedAt: now}
		s.peers[id] = p
	}
	p.Score, p.DecayedAt = decayed(p.Score, s.cfg.Initial, s.cfg.DecayPerHour, p.DecayedAt, now)
	if p.DecayedAt.After(now) {
		p.DecayedAt = now // the clock went back; restart decay from here
	}
	p.Score = clamp(p.Score + delta)
	score := p.Score
	s.dirty = true
	s.mu.Unlock()
	if durable {
		if err := s.Flush(); err != nil {
			return score, err
		}
	}
	return score, nil
}

// forgetOneLocked drops one peer whose score has decayed back to Initial:
// it carries no information a fresh entry would not.
func (s *Store) forgetOneLocked(now time.Time) bool {
	for id, p := range s.peers {
		if score, _ := decayed(p.Score, s.cfg.Initial, s.cfg.DecayPerHour, p.DecayedAt, now); score == s.cfg.Initial {
			delete(s.peers, id)
			return true
		}
	}
	return false
}

// Flush writes the scores to disk if anything changed.
func (s *Store) Flush() error {
	if s.path == "" {
		return nil
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return nil
	}
	f := fileFormat{Version: 1, Peers: make(map[string]*peer, len(s.peers))}
	for id, p := range s.peers {
		cp := *p
		f.Peers[id] = &cp
	}
	s.dirty = false
	s.mu.Unlock()
	data, err := json.Marshal(f)
	if err == nil {
		err = statefile.Write(s.path, data, 0o600)
	}
	if err != nil {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return fmt.Errorf("trust: saving scores: %w", err)
	}
	return nil
}

func (s *Store) flusher() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.Flush() // a failure leaves the store dirty; the next tick retries
		case <-s.stop:
			return
		}
	}
}

// Close stops the flusher and writes outstanding changes.
func (s *Store) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return s.Flush()
}
