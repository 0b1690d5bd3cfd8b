package eval

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schedule is a parsed cron schedule: the five standard fields (minute,
// hour, day of month, month, day of week), each "*", a number, a range
// "a-b", a step "*/n" or "a-b/n", or a comma list of those; or one of
// @hourly, @daily (@midnight), @weekly, @monthly, @yearly (@annually).
// Times are UTC. As in cron, when both day fields are restricted a day
// matching either runs.
type Schedule struct {
	minute, hour, dom, month, dow uint64 // bit i set: value i matches
	domStar, dowStar              bool
}

var cronMacros = map[string]string{
	"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
	"@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *",
}

// ParseSchedule reads a cron spec.
func ParseSchedule(spec string) (Schedule, error) {
	s := strings.TrimSpace(spec)
	if m, ok := cronMacros[s]; ok {
		s = m
	}
	f := strings.Fields(s)
	if len(f) != 5 {
		return Schedule{}, fmt.Errorf("schedule %q: want five fields (minute hour day-of-month month day-of-week) or @hourly/@daily/@weekly/@monthly/@yearly", spec)
	}
	var sc Schedule
	var err error
	for i, r := range []struct {
		dst      *uint64
		lo, hi   int
		name     string
		wildcard *bool
	}{
		{&sc.minute, 0, 59, "minute", nil}, {&sc.hour, 0, 23, "hour", nil}, {&sc.dom, 1, 31, "day of month", &sc.domStar},
		{&sc.month, 1, 12, "month", nil}, {&sc.dow, 0, 7, "day of week", &sc.dowStar},
	} {
		if *r.dst, err = cronField(f[i], r.lo, r.hi); err != nil {
			return Schedule{}, fmt.Errorf("schedule %q: %s: %w", spec, r.name, err)
		}
		if r.wildcard != nil {
			*r.wildcard = f[i] == "*" || strings.HasPrefix(f[i], "*/")
		}
	}
	if sc.dow&(1<<7) != 0 { // 7 is Sunday too
		sc.dow |= 1
	}
	return sc, nil
}

func cronField(f string, lo, hi int) (uint64, error) {
	var bits uint64
	for _, part := range strings.Split(f, ",") {
		rng, stepS, hasStep := strings.Cut(part, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepS)
			if err != nil || n < 1 || n > hi {
				return 0, fmt.Errorf("step %q", stepS)
			}
			step = n
		}
		a, b := lo, hi
		switch {
		case rng == "*":
		case strings.Contains(rng, "-"):
			as, bs, _ := strings.Cut(rng, "-")
			var err1, err2 error
			a, err1 = strconv.Atoi(as)
			b, err2 = strconv.Atoi(bs)
			if err1 != nil || err2 != nil || a > b {
				return 0, fmt.Errorf("range %q", rng)
			}
		default:
			n, err := strconv.Atoi(rng)
			if err != nil {
				return 0, fmt.Errorf("value %q", rng)
			}
			a, b = n, n
			if hasStep {
				b = hi
			}
		}
		if a < lo || b > hi {
			return 0, fmt.Errorf("%q is outside %d-%d", part, lo, hi)
		}
		for v := a; v <= b; v += step {
			bits |= 1 << v
		}
	}
	return bits, nil
}

// Next returns the first time after t (to the minute, UTC) the schedule
// runs, or the zero time when it never does (for example 30 February).
func (s Schedule) Next(t time.Time) time.Time {
	t = t.UTC().Truncate(time.Minute).Add(time.Minute)
	end := t.AddDate(5, 0, 0)
	for t.Before(end) {
		switch {
		case s.month&(1<<uint(t.Month())) == 0:
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, time.UTC)
		case !s.dayMatches(t):
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC)
		case s.hour&(1<<uint(t.Hour())) == 0:
			t = t.Truncate(time.Hour).Add(time.Hour)
		case s.minute&(1<<uint(t.Minute())) == 0:
			t = t.Add(time.Minute)
		default:
			return t
		}
	}
	return time.Time{}
}

func (s Schedule) dayMatches(t time.Time) bool {
	dom := s.dom&(1<<uint(t.Day())) != 0
	dow := s.dow&(1<<uint(t.Weekday())) != 0
	if s.domStar || s.dowStar {
		return dom && dow
	}
	return dom || dow
}
