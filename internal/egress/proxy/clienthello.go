package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// TLS record and handshake constants (RFC 8446 §5.1, §4; RFC 5246 §6.2).
const (
	recordHandshake   = 0x16
	handshakeHello    = 0x01
	extServerName     = 0x0000
	serverNameHost    = 0x00
	recordHeaderLen   = 5
	maxRecordLen      = 1<<14 + 256 // TLSPlaintext limit plus slack for TLS 1.2 compression expansion
	maxClientHelloLen = 64 << 10
)

// Errors of ReadClientHello.
var (
	ErrNotTLS      = errors.New("not a TLS handshake")
	ErrBadHello    = errors.New("malformed TLS ClientHello")
	ErrHelloTooBig = errors.New("TLS ClientHello larger than 64 KiB")
)

// ReadClientHello reads the TLS records that carry the client's first
// handshake message from r and returns the server name it asks for (empty
// when it names none) and every byte consumed, which the caller replays
// to the upstream. The message may span records (RFC 8446 §5.1 allows
// fragmenting handshake messages); it is reassembled before parsing.
func ReadClientHello(r *bufio.Reader) (serverName string, raw []byte, err error) {
	var hs []byte // handshake bytes reassembled from records
	need := -1    // handshake message length with its 4-byte header, once known
	for need < 0 || len(hs) < need {
		hdr, err := r.Peek(recordHeaderLen)
		if err != nil {
			if len(raw) == 0 && errors.Is(err, io.EOF) {
				return "", raw, ErrNotTLS
			}
			return "", raw, fmt.Errorf("%w: %v", ErrBadHello, err)
		}
		if hdr[0] != recordHandshake || hdr[1] != 3 {
			if len(raw) == 0 {
				return "", nil, ErrNotTLS
			}
			return "", raw, ErrBadHello
		}
		n := int(binary.BigEndian.Uint16(hdr[3:5]))
		if n == 0 || n > maxRecordLen {
			return "", raw, ErrBadHello
		}
		rec := make([]byte, recordHeaderLen+n)
		if _, err := io.ReadFull(r, rec); err != nil {
			return "", raw, fmt.Errorf("%w: %v", ErrBadHello, err)
		}
		raw = append(raw, rec...)
		hs = append(hs, rec[recordHeaderLen:]...)
		if need < 0 && len(hs) >= 4 {
			if hs[0] != handshakeHello {
				return "", raw, ErrBadHello
			}
			need = 4 + (int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3]))
			if need > maxClientHelloLen {
				return "", raw, ErrHelloTooBig
			}
		}
		if len(raw) > maxClientHelloLen+16*recordHeaderLen {
			return "", raw, ErrHelloTooBig
		}
	}
	name, err := ParseClientHello(hs[:need])
	return name, raw, err
}

// ParseClientHello returns the host_name of the server_name extension
// (RFC 6066 §3) of a handshake message holding a ClientHello (RFC 8446
// §4.1.2), or "" when there is none. Every length is checked against what
// encloses it.
func ParseClientHello(msg []byte) (string, error) {
	s := cursor(msg)
	typ, ok := s.u8()
	if !ok || typ != handshakeHello {
		return "", ErrBadHello
	}
	body, ok := s.vec(3)
	if !ok || !s.empty() {
		return "", ErrBadHello
	}
	h := cursor(body)
	if !h.skip(2 + 32) { // legacy_version, random
		return "", ErrBadHello
	}
	for _, width := range []int{1, 2, 1} { // session id, cipher suites, compression methods
		if _, ok := h.vec(width); !ok {
			return "", ErrBadHello
		}
	}
	if h.empty() {
		return "", nil // no extensions (SSL 3-era hellos)
	}
	exts, ok := h.vec(2)
	if !ok || !h.empty() {
		return "", ErrBadHello
	}
	e := cursor(exts)
	name, seen := "", false
	for !e.empty() {
		typ, ok1 := e.u16()
		data, ok2 := e.vec(2)
		if !ok1 || !ok2 {
			return "", ErrBadHello
		}
		if typ != extServerName {
			continue
		}
		if seen {
			return "", ErrBadHello // RFC 8446 §4.2: no extension twice
		}
		seen = true
		n, err := parseServerName(data)
		if err != nil {
			return "", err
		}
		name = n
	}
	return name, nil
}

// parseServerName reads a ServerNameList, returning its host_name. A list
// with two host names is malformed (RFC 6066 §3).
func parseServerName(data []byte) (string, error) {
	d := cursor(data)
	list, ok := d.vec(2)
	if !ok || !d.empty() || len(list) == 0 {
		return "", ErrBadHello
	}
	l := cursor(list)
	name := ""
	for !l.empty() {
		typ, ok1 := l.u8()
		v, ok2 := l.vec(2)
		if !ok1 || !ok2 {
			return "", ErrBadHello
		}
		if typ != serverNameHost {
			continue
		}
		if name != "" || len(v) == 0 {
			return "", ErrBadHello
		}
		name = string(v)
	}
	return name, nil
}

// cursor reads big-endian fields off a byte slice without panicking.
type cursor []byte

func (c *cursor) empty() bool { return len(*c) == 0 }

func (c *cursor) skip(n int) bool {
	if len(*c) < n {
		return false
	}
	*c = (*c)[n:]
	return true
}

func (c *cursor) u8() (byte, bool) {
	if len(*c) < 1 {
		return 0, false
	}
	v := (*c)[0]
	*c = (*c)[1:]
	return v, true
}

func (c *cursor) u16() (uint16, bool) {
	if len(*c) < 2 {
		return 0, false
	}
	v := binary.BigEndian.Uint16(*c)
	*c = (*c)[2:]
	return v, true
}

// vec reads a vector with a length prefix of width bytes.
func (c *cursor) vec(width int) ([]byte, bool) {
	if len(*c) < width {
		return nil, false
	}
	n := 0
	for i := 0; i < width; i++ {
		n = n<<8 | int((*c)[i])
	}
	if len(*c)-width < n {
		return nil, false
	}
	v := (*c)[width : width+n]
	*c = (*c)[width+n:]
	return v, true
}
