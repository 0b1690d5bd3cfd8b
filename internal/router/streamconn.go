package router

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"time"
)

// streamWriter writes a streamed answer on the agent's connection, taken
// over from net/http (Hijack) once the stream's header is ready.
//
// It exists for memory. While net/http owns a connection whose handler is
// running, it keeps a goroutine reading ahead on it (to notice the client
// leave) and a 2 KiB buffer in front of the connection's own; a router
// holds one such connection per open stream, often a thousand. Taken over,
// the connection costs neither: the stream is written, in HTTP/1.1 chunked
// encoding (RFC 9112 §7.1), into the connection's buffer that Hijack hands
// back, and the connection is closed at the end of the stream (the answer
// says "Connection: close"; agents' HTTP clients open another). The price:
// an agent that leaves mid-stream is noticed when the next event cannot be
// written rather than at once.
//
// It implements http.ResponseWriter and the flushing http.ResponseController
// uses; the header it sends is the one set before the takeover.
type streamWriter struct {
	conn    net.Conn
	bw      *bufio.Writer
	header  http.Header
	chunked bool
	err     error // sticky: the first write error
}

// takeOverStream sends the status line and header of a 200 stream on w's
// connection, taken over from net/http, and returns the writer for the
// rest. It reports false, with nothing sent, when the connection cannot be
// taken over (HTTP/2, or a ResponseWriter that cannot hijack); the caller
// then streams through w.
func takeOverStream(w http.ResponseWriter, r *http.Request) (*streamWriter, bool) {
	hj, ok := w.(http.Hijacker)
	if !ok || r.ProtoMajor != 1 {
		return nil, false
	}
	h := w.Header().Clone()
	conn, _, err := hj.Hijack()
	if err != nil {
		return nil, false
	}
	// Anything the agent sent after this request (HTTP/1.1 pipelining)
	// is dropped with the connection; its client sends it again. The
	// connection's own 4 KiB buffers are left behind (a stream's events
	// are a few hundred bytes; a larger one is written past the buffer).
	s := &streamWriter{conn: conn, bw: bufio.NewWriterSize(conn, streamWriteBuffer), header: h, chunked: r.ProtoAtLeast(1, 1)}
	h.Del("Content-Length")
	h.Del("Transfer-Encoding")
	h.Set("Connection", "close")
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	if s.chunked {
		h.Set("Transfer-Encoding", "chunked")
	}
	s.bw.WriteString("HTTP/1.1 200 OK\r\n")
	h.Write(s.bw)
	s.bw.WriteString("\r\n")
	s.err = s.bw.Flush()
	return s, true
}

// streamWriteBuffer is the size of a taken-over stream's write buffer.
const streamWriteBuffer = 1024

func (s *streamWriter) Header() http.Header { return s.header }

// WriteHeader does nothing: the header was sent with the takeover.
func (s *streamWriter) WriteHeader(int) {}

// Write writes p as one chunk.
func (s *streamWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if s.chunked {
		var size [16]byte
		s.bw.Write(strconv.AppendInt(size[:0], int64(len(p)), 16))
		s.bw.WriteString("\r\n")
	}
	n, err := s.bw.Write(p)
	if s.chunked {
		s.bw.WriteString("\r\n")
	}
	if err != nil {
		s.err = err
	}
	return n, err
}

// FlushError sends what is buffered; http.ResponseController.Flush calls it.
func (s *streamWriter) FlushError() error {
	if s.err == nil {
		s.err = s.bw.Flush()
	}
	return s.err
}

// Flush implements http.Flusher.
func (s *streamWriter) Flush() { s.FlushError() }

// close ends the stream (the last chunk) and closes the connection.
func (s *streamWriter) close() {
	if s.err == nil {
		if s.chunked {
			s.bw.WriteString("0\r\n\r\n")
		}
		s.bw.Flush()
	}
	s.conn.Close()
}
