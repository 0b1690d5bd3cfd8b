package blocklist

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/kars-io/kars/internal/egress/dest"
)

// MaxDomains bounds one list: 4 million names take a 64 MiB table, which
// is what the router can afford next to its calls.
const MaxDomains = 4_000_000

// maxLine bounds a line; longer lines name no domain and are skipped.
const maxLine = 4096

// Stats describe what Parse read.
type Stats struct {
	// Lines read, Domains added (before removing duplicates) and Skipped
	// lines that looked like entries but named no valid domain.
	Lines, Domains, Skipped int
}

// ErrTooMany is returned when a list has more than MaxDomains entries.
var ErrTooMany = fmt.Errorf("blocklist: more than %d domains", MaxDomains)

// hostsOnlyNames appear in hosts files as the machine's own names, not as
// blocked domains.
var hostsOnlyNames = map[string]bool{
	"localhost": true, "localhost.localdomain": true, "local": true, "broadcasthost": true,
	"ip6-localhost": true, "ip6-loopback": true, "ip6-localnet": true, "ip6-mcastprefix": true,
	"ip6-allnodes": true, "ip6-allrouters": true, "ip6-allhosts": true, "0.0.0.0": true,
}

// Parse reads a list from r into b.
func Parse(r io.Reader, b *Builder) (Stats, error) {
	var st Stats
	br := bufio.NewReaderSize(r, maxLine)
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// An overlong line: skip to its end.
			st.Lines++
			st.Skipped++
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return st, nil
			}
			if err != nil {
				return st, fmt.Errorf("blocklist: line %d: %w", st.Lines, err)
			}
			continue
		}
		if len(line) > 0 {
			st.Lines++
			if perr := parseLine(line, b, &st); perr != nil {
				return st, perr
			}
		}
		if err == io.EOF {
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("blocklist: line %d: %w", st.Lines, err)
		}
	}
}

func parseLine(line []byte, b *Builder, st *Stats) error {
	if i := bytes.IndexByte(line, '#'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] == '!' || line[0] == '[' {
		return nil // blank, Adblock comment or header
	}
	if rest, ok := bytes.CutPrefix(line, []byte("||")); ok {
		// Adblock domain anchor: "||example.com^" with no options or
		// path; anything fancier is not a domain rule.
		end := bytes.IndexByte(rest, '^')
		if end < 0 || end != len(rest)-1 {
			st.Skipped++
			return nil
		}
		return add(rest[:end], b, st)
	}
	if line[0] == '@' || bytes.ContainsAny(line, "/$") {
		st.Skipped++ // exceptions and URL rules
		return nil
	}
	fields := bytes.Fields(line)
	if len(fields) == 1 {
		return add(fields[0], b, st)
	}
	if _, err := netip.ParseAddr(string(fields[0])); err != nil {
		st.Skipped++
		return nil
	}
	for _, f := range fields[1:] {
		if hostsOnlyNames[string(f)] {
			continue
		}
		if err := add(f, b, st); err != nil {
			return err
		}
	}
	return nil
}

func add(name []byte, b *Builder, st *Stats) error {
	// "*.example.com" and ".example.com" mean the same as "example.com":
	// an entry covers its subdomains.
	name = bytes.TrimPrefix(name, []byte("*."))
	name = bytes.TrimPrefix(name, []byte("."))
	h, isIP, err := dest.Host(string(name))
	if err != nil || isIP {
		st.Skipped++
		return nil
	}
	if b.Len() >= MaxDomains {
		return ErrTooMany
	}
	b.Add(h)
	st.Domains++
	return nil
}
