package inference

import (
	"bufio"
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
type SSEReader struct {
	br  *bufio.Reader
	raw []byte
	// skipLF is set when the last line ended with a CR that was the last
	// byte buffered: an LF arriving next completes that CRLF rather than
	// ending an empty line.
	skipLF bool
}

// NewSSEReader reads events from r.
func NewSSEReader(r io.Reader) *SSEReader {
	// A router holds one reader per open stream, so this buffer is
	// multiplied by thousands. 1 KiB holds a typical chunk (Azure's, with
	// its content-filter annotations, is 400–900 bytes); a longer line is
	// accumulated in raw, and r (an HTTP body) is buffered itself.
	return &SSEReader{br: bufio.NewReaderSize(r, 1<<10)}
}

// Buffered reports whether bytes of the next event have already arrived, in
// which case a relay can write the next event before flushing.
func (s *SSEReader) Buffered() bool { return s.br.Buffered() > 0 }

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
	s.raw = s.raw[:0]
	var ev Event
	var data []byte
	sawData, inEvent := false, false
	for {
		line, err := s.readLine()
		if err != nil {
			if err == io.EOF {
				if !inEvent && len(bytes.Trim(s.raw, "\r\n")) == 0 {
					return Event{}, io.EOF
				}
				ev.Raw = s.raw
				return ev, io.ErrUnexpectedEOF
			}
			return Event{}, err
		}
		content := bytes.TrimRight(line, "\r\n")
		if len(content) == 0 {
			if !inEvent {
				// Blank lines between events: not an event.
				s.raw = s.raw[:0]
				continue
			}
			if sawData {
				ev.Data = data
			}
			ev.Raw = s.raw
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
			if sawData {
				data = append(data, '\n')
			}
			data = append(data, value...)
			sawData = true
		}
	}
}

// readLine appends one whole line (however long, up to MaxEventBytes for
// the event) with its line ending to s.raw and returns it. At the end of
// the stream it returns what is left of the line with io.EOF.
func (s *SSEReader) readLine() ([]byte, error) {
	if s.skipLF {
		s.skipLF = false
		b, err := s.br.ReadByte()
		if err != nil {
			return nil, err
		}
		if b == '\n' {
			s.raw = append(s.raw, b) // the rest of the last line's CRLF
		} else {
			s.br.UnreadByte()
		}
	}
	start := len(s.raw)
	for {
		if s.br.Buffered() == 0 {
			if _, err := s.br.Peek(1); err != nil {
				return s.raw[start:], err
			}
		}
		buf, _ := s.br.Peek(s.br.Buffered())
		i := lineEnd(buf)
		if i < 0 {
			s.raw = append(s.raw, buf...)
			s.br.Discard(len(buf))
			if len(s.raw) > MaxEventBytes {
				return nil, ErrEventTooLarge
			}
			continue
		}
		n := i + 1
		if buf[i] == '\r' {
			switch {
			case n == len(buf):
				s.skipLF = true // the LF of a CRLF may still be on its way
			case buf[n] == '\n':
				n++
			}
		}
		s.raw = append(s.raw, buf[:n]...)
		s.br.Discard(n)
		if len(s.raw) > MaxEventBytes {
			return nil, ErrEventTooLarge
		}
		return s.raw[start:], nil
	}
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
