// Package trust keeps a score from 0 to 1000 for every peer a sandbox deals
// with (mesh peers, A2A callers): successes raise it, failures, policy
// violations and content-safety findings lower it, and with time it drifts
// back toward the initial value. Callers gate on Check against a threshold.
//
// Scores persist in one JSON file replaced atomically (statefile), so a
// restart keeps them. Penalties are written through before the call
// returns: crashing the process must not be a way to shed one. Successes and
// ordinary failures are flushed in the background, at most FlushInterval
// late.
//
// This package is pure Go plus one state file. It must not import
// Kubernetes or network packages.
package trust

import (
	"fmt"
	"time"
)

// Score bounds.
const (
	MinScore = 0
	MaxScore = 1000
)

// Tier is a named band of scores.
type Tier uint8

// The tiers, lowest first.
const (
	Anonymous Tier = iota // below 200
	Observed              // 200..399
	Known                 // 400..599
	Verified              // 600..799
	Sovereign             // 800 and above
)

// String returns the tier's name.
func (t Tier) String() string {
	switch t {
	case Observed:
		return "Observed"
	case Known:
		return "Known"
	case Verified:
		return "Verified"
	case Sovereign:
		return "Sovereign"
	default:
		return "Anonymous"
	}
}

// TierOf returns the tier a score falls in.
func TierOf(score int) Tier {
	switch {
	case score >= 800:
		return Sovereign
	case score >= 600:
		return Verified
	case score >= 400:
		return Known
	case score >= 200:
		return Observed
	default:
		return Anonymous
	}
}

// Severity grades a content-safety finding.
type Severity uint8

// Severities, mildest first.
const (
	SeverityLow Severity = iota
	SeverityMedium
	SeverityHigh
	SeverityCritical
	numSeverities
)

// String returns the severity's name.
func (s Severity) String() string {
	switch s {
	case SeverityLow:
		return "low"
	case SeverityMedium:
		return "medium"
	case SeverityHigh:
		return "high"
	case SeverityCritical:
		return "critical"
	}
	return fmt.Sprintf("severity(%d)", s)
}

// Config sets the arithmetic.
type Config struct {
	// Initial is a new peer's score and where scores decay toward.
	Initial int
	// Threshold is the score Check requires.
	Threshold int
	// SuccessDelta is added on each success.
	SuccessDelta int
	// FailureDelta is subtracted on each failure.
	FailureDelta int
	// DecayPerHour moves a score this many points toward Initial for each
	// full hour of wall-clock time, whether or not the peer is active, so
	// that old good and bad behaviour both fade.
	DecayPerHour int
	// SafetyPenalty is subtracted for a content-safety finding, by
	// severity.
	SafetyPenalty [numSeverities]int
	// ViolationPenalty is subtracted for a policy violation (a denied
	// action the peer attempted).
	ViolationPenalty int
	// MaxPeers bounds how many peers are remembered.
	MaxPeers int
	// FlushInterval is how late a success or failure may reach disk.
	FlushInterval time.Duration
}

// DefaultConfig returns the kars defaults: start and threshold at 500.
func DefaultConfig() Config {
	return Config{
		Initial: 500, Threshold: 500,
		SuccessDelta: 5, FailureDelta: 20, DecayPerHour: 5,
		SafetyPenalty:    [numSeverities]int{10, 50, 150, 400},
		ViolationPenalty: 50,
		MaxPeers:         100_000,
		FlushInterval:    time.Second,
	}
}

// Validate reports the first setting out of range.
func (c Config) Validate() error {
	in := func(name string, v, lo, hi int) error {
		if v < lo || v > hi {
			return fmt.Errorf("trust: %s = %d, want %d..%d", name, v, lo, hi)
		}
		return nil
	}
	checks := []error{
		in("Initial", c.Initial, MinScore, MaxScore),
		in("Threshold", c.Threshold, MinScore, MaxScore),
		in("SuccessDelta", c.SuccessDelta, 0, MaxScore),
		in("FailureDelta", c.FailureDelta, 0, MaxScore),
		in("DecayPerHour", c.DecayPerHour, 0, MaxScore),
		in("ViolationPenalty", c.ViolationPenalty, 0, MaxScore),
		in("MaxPeers", c.MaxPeers, 1, 10_000_000),
	}
	for sev, p := range c.SafetyPenalty {
		checks = append(checks, in("SafetyPenalty["+Severity(sev).String()+"]", p, 0, MaxScore))
	}
	for _, err := range checks {
		if err != nil {
			return err
		}
	}
	if c.FlushInterval <= 0 {
		return fmt.Errorf("trust: FlushInterval must be positive")
	}
	return nil
}

// decayed returns score after the whole hours between from and now have
// pulled it toward initial, and the time decay has been applied up to.
func decayed(score, initial, perHour int, from, now time.Time) (int, time.Time) {
	if perHour == 0 || !now.After(from) {
		return score, from
	}
	hours := int64(now.Sub(from) / time.Hour)
	if hours == 0 {
		return score, from
	}
	from = from.Add(time.Duration(hours) * time.Hour)
	step := int64(perHour) * hours
	switch {
	case score > initial:
		score = int(max(int64(initial), int64(score)-step))
	case score < initial:
		score = int(min(int64(initial), int64(score)+step))
	}
	return score, from
}

func clamp(v int) int { return max(MinScore, min(MaxScore, v)) }
