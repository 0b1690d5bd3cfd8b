package inference

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Event is one Server-Sent Event (WHATWG HTML §9.2.6 "Interpreting an event
// stream"). Raw holds the event's bytes exactly as received, including the
// terminating blank line, so the router can forward an event unchanged after
// inspecting it.
type Event struct {
	// Name is the "event:" field, empty for the default "message" type.
	Name string
	// Data is the "data:" lines joined with "\n".
	Data []byte
	// Raw is the event as received.
	Raw []byte
}

// MaxEventBytes bounds one event; a larger event is an upstream protocol
// error, not a reason to buffer without limit.
const MaxEventBytes = 8 << 20

// ErrEventTooLarge is returned by SSEReader.Next for an event past
// MaxEventBytes.
var ErrEventTooLarge = errors.New("server-sent event exceeds size limit")

// SSEReader splits a byte stream into events. Lines end with CRLF, LF or
// a bare CR, as the WHATWG grammar allows (end-of-line = CRLF / LF / CR).
//
// A router holds one reader per open stream, so its memory is multiplied
// by thousands: it reads into a single buffer that holds the current event
// and whatever of the next has arrived, 1 KiB to start (Azure's chunks,
// with their content-filter annotations, are 400–900 bytes), grown to the
// largest event seen. An event's data points into that buffer unless it
// spans several data lines.
type SSEReader struct {
	r io.Reader
	// buf[:pos] is the current event's raw bytes, buf[pos:end] what has
	// arrived of the next.
	buf      []byte
	pos, end int
	data     []byte // the joined data of a multi-line event
	err      error  // the read error, once the bytes before it are used
	// skipLF is set when the last line ended with a CR that was the last
	// byte buffered: an LF arriving next completes that CRLF rather than
	// ending an empty line.
	skipLF bool
}

// NewSSEReader reads events from r.
func NewSSEReader(r io.Reader) *SSEReader { return &SSEReader{r: r} }

// Buffered reports whether bytes of the next event have already arrived, in
// which case a relay can write the next event before flushing.
func (s *SSEReader) Buffered() bool { return s.end > s.pos }

// Next returns the next event. At the end of the stream it returns io.EOF;
// if the stream ends inside an event it returns that partial event's bytes
// with io.ErrUnexpectedEOF so the caller can meter what arrived.
//
// Raw is every byte consumed for the event, so that the concatenation of
// the events' Raw is the stream minus the blank lines between events: an
// LF completing the previous event's final CR leads the next event's Raw
// (at the end of the stream it belongs to no event).
//
// The returned Event's slices are valid until the next call.
func (s *SSEReader) Next() (Event, error) {
	s.drop()
	var ev Event
	s.data = s.data[:0]
	dataFrom, dataTo := 0, 0 // the only data line's value, in buf
	lines, sawData, inEvent := 0, false, false
	for {
		from, line, err := s.readLine()
		if err != nil {
			if err == io.EOF {
				raw := s.buf[:s.pos]
				if !inEvent && len(bytes.Trim(raw, "\r\n")) == 0 {
					return Event{}, io.EOF
				}
				ev.Raw = raw
				return ev, io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
		content := bytes.TrimRight(line, "\r\n")
		if len(content) == 0 {
			if !inEvent {
				// Blank lines between events: not an event.
				s.drop()
				continue
			}
			if sawData {
				if lines == 1 {
					ev.Data = s.buf[dataFrom:dataTo]
				} else {
					ev.Data = s.data
				}
			}
			ev.Raw = s.buf[:s.pos]
			return ev, nil
		}
		inEvent = true
		if content[0] == ':' {
			continue // comment
		}
		field, value, _ := bytes.Cut(content, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "event":
			ev.Name = string(value)
		case "data":
			if lines == 0 {
				// The line starts at buf[from], and value ends content.
				dataFrom = from + len(content) - len(value)
				dataTo = dataFrom + len(value)
			} else {
				if lines == 1 {
					s.data = append(s.data, s.buf[dataFrom:dataTo]...)
				}
				s.data = append(s.data, '\n')
				s.data = append(s.data, value...)
			}
			lines++
			sawData = true
		}
	}
}

// drop forgets the bytes before pos (the event returned last, or blank
// lines), keeping those of the next event at the start of the buffer.
func (s *SSEReader) drop() {
	if s.pos > 0 {
		s.end = copy(s.buf, s.buf[s.pos:s.end])
		s.pos = 0
	}
}

// readLine consumes one whole line (however long, up to MaxEventBytes for
// the event) with its line ending and returns it and its offset in buf. At
// the end of the stream it returns what is left of the line with io.EOF.
func (s *SSEReader) readLine() (int, []byte, error) {
	if s.skipLF {
		if s.pos == s.end {
			if err := s.fill(); err != nil {
				return s.pos, nil, err
			}
		}
		s.skipLF = false
		if s.buf[s.pos] == '\n' {
			s.pos++ // the rest of the last line's CRLF
		}
	}
	start, scan := s.pos, s.pos
	for {
		i := lineEnd(s.buf[scan:s.end])
		if i < 0 {
			scan = s.end
			if err := s.fill(); err != nil {
				s.pos = s.end
				return start, s.buf[start:s.end], err
			}
			continue
		}
		n := scan + i + 1
		if s.buf[n-1] == '\r' {
			switch {
			case n == s.end:
				s.skipLF = true // the LF of a CRLF may still be on its way
			case s.buf[n] == '\n':
				n++
			}
		}
		s.pos = n
		return start, s.buf[start:n], nil
	}
}

// fill reads more of the stream after buf[:end], growing the buffer when it
// is full. A read error is returned once the bytes read with it are used.
func (s *SSEReader) fill() error {
	if s.err != nil {
		return s.err
	}
	if s.end == len(s.buf) {
		if s.end >= MaxEventBytes {
			return ErrEventTooLarge
		}
		grown := make([]byte, max(2*len(s.buf), 1<<10))
		copy(grown, s.buf[:s.end])
		s.buf = grown
	}
	for range 100 {
		n, err := s.r.Read(s.buf[s.end:])
		s.end += n
		if err != nil {
			s.err = err
			if n > 0 {
				return nil
			}
			return err
		}
		if n > 0 {
			return nil
		}
	}
	s.err = io.ErrNoProgress
	return s.err
}

// lineEnd returns the index of the first CR or LF in b, or -1.
func lineEnd(b []byte) int {
	i := bytes.IndexByte(b, '\n')
	lim := b
	if i >= 0 {
		lim = b[:i]
	}
	if j := bytes.IndexByte(lim, '\r'); j >= 0 {
		return j
	}
	return i
}

// WriteEvent writes one event with the given name (omitted when empty) and
// data, which must not contain a newline.
func WriteEvent(w io.Writer, name string, data []byte) error {
	if bytes.ContainsAny(data, "\r\n") {
		return fmt.Errorf("event data contains a line break")
	}
	var buf bytes.Buffer
	if name != "" {
		buf.WriteString("event: ")
		buf.WriteString(name)
		buf.WriteByte('\n')
	}
	buf.WriteString("data: ")
	buf.Write(data)
	buf.WriteString("\n\n")
	_, err := w.Write(buf.Bytes())
	return err
}
