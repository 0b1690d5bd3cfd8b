// Package dns is the agent's resolver: a DNS stub inside kars-router that
// the egress guard sends every UDP and TCP port-53 packet of the agent's
// UID to, so that no agent packet reaches a real resolver (a DNS tunnel
// through the cluster resolver is a way out).
//
// It answers only names policy could allow a connection to
// (policy.Policy.DecideHost); every other name gets NXDOMAIN, with an
// Extended DNS Error (RFC 8914, code 15 Blocked) saying why when the query
// carried EDNS. Allowed names are resolved by the router itself
// (internal/egress/resolve) and answers in refused ranges — private,
// loopback, link-local, CGNAT, instance metadata — are dropped; a name
// left with none is REFUSED (DNS rebinding). Only A queries get addresses:
// AAAA (the agent has no IPv6 route), HTTPS/SVCB (they would hand out
// other endpoints and ECH keys) and every other type get an empty answer.
package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/kars-io/kars/internal/egress/dest"
	"github.com/kars-io/kars/internal/egress/resolve"
)

// Decision is what policy says of a name.
type Decision struct {
	Allow        bool
	Rule, Reason string
}

// Query describes one answered query, for logs, metrics and traces.
type Query struct {
	Name    string            `json:"name"`
	Type    string            `json:"type"`
	RCode   string            `json:"rcode"`
	Rule    string            `json:"rule,omitempty"`
	Reason  string            `json:"reason,omitempty"`
	Answers []netip.Addr      `json:"answers,omitempty"`
	Refused []resolve.Refusal `json:"refused,omitempty"`
}

// Server answers the agent's queries. Set the fields, then serve.
type Server struct {
	// Decide says whether a connection to name could be allowed.
	Decide   func(name string) Decision
	Resolver *resolve.Resolver
	Log      *slog.Logger
	// Observe, if set, receives every answered query.
	Observe func(Query)
	// TTL of answers in seconds; zero means 30.
	TTL uint32
}

// Limits of the stub.
const (
	maxAnswers = 16
	udpSize    = 512
	maxTCPMsg  = 4096
)

// EDE info code 15, "Blocked" (RFC 8914 §4.16).
const edeBlocked = 15

// ServeUDP answers queries on pc until it is closed.
func (s *Server) ServeUDP(pc net.PacketConn) error {
	buf := make([]byte, 1500)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		q := append([]byte(nil), buf[:n]...)
		go func() {
			resp := s.Answer(context.Background(), q, udpSize)
			if resp != nil {
				pc.WriteTo(resp, addr)
			}
		}()
	}
}

// ServeTCP answers length-prefixed queries (RFC 1035 §4.2.2) on ln until
// it is closed.
func (s *Server) ServeTCP(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go s.serveConn(c)
	}
}

func (s *Server) serveConn(c net.Conn) {
	defer c.Close()
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(l[:]))
		if n == 0 || n > maxTCPMsg {
			return
		}
		q := make([]byte, n)
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		resp := s.Answer(context.Background(), q, 65535)
		if resp == nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(resp))), resp...)); err != nil {
			return
		}
	}
}

// Answer builds the response to one query message, or nil when the
// message is not worth an answer (a response, or too short for a header).
// maxSize bounds the response (512 for UDP without EDNS).
func (s *Server) Answer(ctx context.Context, msg []byte, maxSize int) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		return nil
	}
	resp := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if h.OpCode != 0 {
		resp.RCode = dnsmessage.RCodeNotImplemented
		return build(resp, nil, nil, nil, 0)
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		resp.RCode = dnsmessage.RCodeFormatError
		return build(resp, nil, nil, nil, 0)
	}
	q := qs[0]
	// Skip to the additional section for EDNS (RFC 6891).
	var opt *dnsmessage.OPTResource
	if p.SkipAllAnswers() == nil && p.SkipAllAuthorities() == nil {
		for {
			ah, err := p.AdditionalHeader()
			if err != nil {
				break
			}
			if ah.Type == dnsmessage.TypeOPT {
				r, err := p.OPTResource()
				if err == nil {
					opt = &r
					if size := int(ah.Class); size > maxSize && maxSize == udpSize {
						maxSize = min(size, 1232)
					}
				}
				break
			}
			if p.SkipAdditional() != nil {
				break
			}
		}
	}
	qr := Query{Name: q.Name.String(), Type: q.Type.String()}
	out := s.answer(ctx, &resp, q, &qr)
	if s.Observe != nil {
		qr.RCode = resp.RCode.String()
		s.Observe(qr)
	}
	var edns *dnsmessage.OPTResource
	if opt != nil {
		edns = &dnsmessage.OPTResource{}
		if resp.RCode != dnsmessage.RCodeSuccess && qr.Reason != "" {
			text := "kars egress: " + qr.Reason
			if qr.Rule != "" {
				text += " (rule " + qr.Rule + ")"
			}
			if len(text) > 200 {
				text = text[:200]
			}
			edns.Options = []dnsmessage.Option{{Code: 15, Data: append(binary.BigEndian.AppendUint16(nil, edeBlocked), text...)}}
		}
	}
	b := build(resp, &q, out, edns, s.ttl())
	if len(b) > maxSize {
		resp.Truncated = true
		b = build(resp, &q, nil, edns, 0)
	}
	return b
}

func (s *Server) answer(ctx context.Context, resp *dnsmessage.Header, q dnsmessage.Question, qr *Query) []netip.Addr {
	if q.Class != dnsmessage.ClassINET {
		resp.RCode = dnsmessage.RCodeNotImplemented
		return nil
	}
	host, isIP, err := dest.Host(q.Name.String())
	if err != nil || isIP {
		resp.RCode = dnsmessage.RCodeNameError
		qr.Reason = "not a host name"
		return nil
	}
	qr.Name = host
	d := s.Decide(host)
	qr.Rule, qr.Reason = d.Rule, d.Reason
	if !d.Allow {
		resp.RCode = dnsmessage.RCodeNameError
		s.log().Info("egress DNS: name refused", "name", host, "type", q.Type.String(), "rule", d.Rule, "reason", d.Reason)
		return nil
	}
	if q.Type != dnsmessage.TypeA {
		return nil // an empty answer: see the package comment
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := s.Resolver.Resolve(ctx, host)
	if err != nil {
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			resp.RCode = dnsmessage.RCodeNameError
		} else {
			resp.RCode = dnsmessage.RCodeServerFailure
		}
		qr.Reason = err.Error()
		return nil
	}
	qr.Refused = res.Refused
	if len(res.Allowed) == 0 && len(res.Refused) > 0 {
		resp.RCode = dnsmessage.RCodeRefused
		qr.Reason = res.Err(host).Error()
		s.log().Warn("egress DNS: answer refused (DNS rebinding)", "name", host, "refused", res.Refused)
		return nil
	}
	out := res.Allowed
	if len(out) > maxAnswers {
		out = out[:maxAnswers]
	}
	qr.Answers = out
	return out
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// ttl returns the answer TTL.
func (s *Server) ttl() uint32 {
	if s.TTL == 0 {
		return 30
	}
	return s.TTL
}

// build renders a response. A failure to build (it cannot happen for the
// values Answer passes) yields a bare SERVFAIL.
func build(h dnsmessage.Header, q *dnsmessage.Question, answers []netip.Addr, opt *dnsmessage.OPTResource, ttl uint32) []byte {
	b := dnsmessage.NewBuilder(make([]byte, 0, 512), h)
	b.EnableCompression()
	err := b.StartQuestions()
	if err == nil && q != nil {
		err = b.Question(*q)
	}
	if err == nil {
		err = b.StartAnswers()
	}
	for _, a := range answers {
		if err != nil {
			break
		}
		err = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: ttl}, dnsmessage.AResource{A: a.As4()})
	}
	if err == nil && opt != nil {
		err = b.StartAdditionals()
		if err == nil {
			var rh dnsmessage.ResourceHeader
			err = rh.SetEDNS0(1232, dnsmessage.RCodeSuccess, false)
			if err == nil {
				err = b.OPTResource(rh, *opt)
			}
		}
	}
	out, ferr := b.Finish()
	if err != nil || ferr != nil {
		fail := dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeServerFailure}
		fb := dnsmessage.NewBuilder(nil, fail)
		out, _ = fb.Finish()
	}
	return out
}
