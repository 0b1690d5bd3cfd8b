package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// clientHello returns the bytes a crypto/tls client sends first for sni.
func clientHello(t testing.TB, sni string) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		c := tls.Client(a, &tls.Config{ServerName: sni, InsecureSkipVerify: sni == ""})
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Handshake()
		a.Close()
	}()
	b.SetDeadline(time.Now().Add(2 * time.Second))
	br := bufio.NewReader(b)
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(br, hdr); err != nil {
		t.Fatal(err)
	}
	n := int(hdr[3])<<8 | int(hdr[4])
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		t.Fatal(err)
	}
	b.Close()
	return append(hdr, body...)
}

// fragment splits one handshake record into records of at most size
// bytes of payload each.
func fragment(rec []byte, size int) []byte {
	payload := rec[5:]
	var out []byte
	for len(payload) > 0 {
		n := min(size, len(payload))
		out = append(out, 0x16, rec[1], rec[2], byte(n>>8), byte(n))
		out = append(out, payload[:n]...)
		payload = payload[n:]
	}
	return out
}

// stdlibServerName parses data with crypto/tls's server, as the oracle.
func stdlibServerName(data []byte) (string, bool) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		a.SetDeadline(time.Now().Add(time.Second))
		a.Write(data)
		a.Close() // EOF instead of waiting for more
	}()
	var name string
	got := false
	errStop := errors.New("stop")
	srv := tls.Server(b, &tls.Config{GetConfigForClient: func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		name, got = hi.ServerName, true
		return nil, errStop
	}})
	b.SetDeadline(time.Now().Add(time.Second))
	srv.Handshake()
	return name, got
}

func TestReadClientHello(t *testing.T) {
	hello := clientHello(t, "api.example.com")
	for name, data := range map[string][]byte{
		"one record":   hello,
		"fragmented":   fragment(hello, 100),
		"tiny records": fragment(hello, 3),
	} {
		trailing := []byte("early data")
		br := bufio.NewReader(bytes.NewReader(append(append([]byte{}, data...), trailing...)))
		sni, raw, err := ReadClientHello(br)
		if err != nil || sni != "api.example.com" || !bytes.Equal(raw, data) {
			t.Errorf("%s: %q, %d raw bytes (want %d), %v", name, sni, len(raw), len(data), err)
		}
		rest, _ := io.ReadAll(br)
		if !bytes.Equal(rest, trailing) {
			t.Errorf("%s: bytes after the hello: %q", name, rest)
		}
	}
	noSNI := clientHello(t, "")
	if sni, _, err := ReadClientHello(bufio.NewReader(bytes.NewReader(noSNI))); err != nil || sni != "" {
		t.Errorf("no SNI: %q %v", sni, err)
	}
	if _, _, err := ReadClientHello(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\n"))); !errors.Is(err, ErrNotTLS) {
		t.Errorf("HTTP: %v", err)
	}
	if _, _, err := ReadClientHello(bufio.NewReader(bytes.NewReader(hello[:40]))); !errors.Is(err, ErrBadHello) {
		t.Errorf("truncated: %v", err)
	}
	huge := []byte{0x16, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff}
	if _, _, err := ReadClientHello(bufio.NewReader(bytes.NewReader(huge))); !errors.Is(err, ErrHelloTooBig) {
		t.Errorf("huge: %v", err)
	}
}

func FuzzReadClientHello(f *testing.F) {
	hello := clientHello(f, "api.example.com")
	f.Add(hello)
	f.Add(fragment(hello, 7))
	f.Add(clientHello(f, ""))
	f.Add(clientHello(f, "xn--bcher-kva.example"))
	f.Add([]byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		sni, raw, err := ReadClientHello(bufio.NewReader(bytes.NewReader(data)))
		if !bytes.HasPrefix(data, raw) {
			t.Fatalf("raw is not a prefix of the input")
		}
		if err != nil {
			return
		}
		// Where crypto/tls also reads a ClientHello from the same bytes,
		// it finds the same server name.
		if want, ok := stdlibServerName(raw); ok && want != sni && (want != "" || sni == "") {
			t.Fatalf("server name %q, crypto/tls says %q", sni, want)
		}
	})
}

func TestParseAuthority(t *testing.T) {
	for _, c := range []struct {
		in   string
		def  uint16
		host string
		port uint16
		bad  bool
	}{
		{in: "api.github.com:443", host: "api.github.com", port: 443},
		{in: "API.GitHub.com.:443", host: "api.github.com", port: 443},
		{in: "[2001:db8::1]:8443", host: "2001:db8::1", port: 8443},
		{in: "198.51.100.7:80", host: "198.51.100.7", port: 80},
		{in: "example.com", def: 80, host: "example.com", port: 80},
		{in: "[::1]", def: 80, host: "::1", port: 80},
		{in: "example.com", bad: true},
		{in: "example.com:", bad: true},
		{in: "example.com:0", bad: true},
		{in: "example.com:08", bad: true},
		{in: "example.com:65536", bad: true},
		{in: "user@example.com:443", bad: true},
		{in: "::1:443", bad: true},
		{in: "[::1]x", bad: true},
		{in: "", bad: true},
	} {
		h, p, err := ParseAuthority(c.in, c.def)
		if (err != nil) != c.bad || (!c.bad && (h != c.host || p != c.port)) {
			t.Errorf("ParseAuthority(%q, %d) = %q, %d, %v", c.in, c.def, h, p, err)
		}
	}
}

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"api.github.com:443", "[::1]:80", "a:1", "x", "[::ffff:1.2.3.4]:5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, p, err := ParseAuthority(s, 0)
		if err != nil {
			return
		}
		if p == 0 {
			t.Fatalf("port 0 from %q", s)
		}
		h2, p2, err := ParseAuthority(hostPort(h, p), 0)
		if err != nil || h2 != h || p2 != p {
			t.Fatalf("%q → %s:%d → %q:%d %v", s, h, p, h2, p2, err)
		}
	})
}
