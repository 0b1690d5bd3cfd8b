package proxy

import (
	"errors"
	"strconv"
	"strings"

	"github.com/kars-io/kars/internal/egress/dest"
)

// ErrAuthority is returned for a request target that is not host:port.
var ErrAuthority = errors.New("want host:port (for IPv6, [address]:port)")

// ParseAuthority reads the host and port of a request target in authority
// form (RFC 9110 §9.3.6: the CONNECT target "host:port") or of a Host
// header / URL host, where the port may be absent and defaultPort applies
// (0: the port is required). The host comes back canonical (dest.Host).
// Userinfo, an empty or zero port, and leading zeros are errors, so a
// destination has one spelling in decisions and audit entries.
func ParseAuthority(s string, defaultPort uint16) (host string, port uint16, err error) {
	if strings.IndexByte(s, '@') >= 0 || s == "" {
		return "", 0, ErrAuthority
	}
	hostPart, portPart, hasPort := s, "", false
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0, ErrAuthority
		}
		hostPart = s[:end+1]
		switch rest := s[end+1:]; {
		case rest == "":
		case rest[0] == ':':
			portPart, hasPort = rest[1:], true
		default:
			return "", 0, ErrAuthority
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		if strings.IndexByte(s[:i], ':') >= 0 {
			return "", 0, ErrAuthority // an IPv6 address needs brackets
		}
		hostPart, portPart, hasPort = s[:i], s[i+1:], true
	}
	if hasPort {
		if portPart == "" || len(portPart) > 5 || portPart[0] == '0' {
			return "", 0, ErrAuthority
		}
		n, err := strconv.ParseUint(portPart, 10, 16)
		if err != nil || n == 0 {
			return "", 0, ErrAuthority
		}
		port = uint16(n)
	} else {
		if defaultPort == 0 {
			return "", 0, ErrAuthority
		}
		port = defaultPort
	}
	h, _, err := dest.Host(hostPart)
	if err != nil {
		return "", 0, err
	}
	return h, port, nil
}
