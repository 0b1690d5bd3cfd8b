package credbind

import (
	"encoding/base64"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
)

// Request is what Inspect reads of one HTTP request the agent sends
// through the router.
type Request struct {
	// Scheme is "https" for a request on a connection the router
	// terminated, "http" for a plain-HTTP request.
	Scheme string
	// Host and Port are the decided destination (canonical host).
	Host string
	Port uint16
	// Target is the request target in origin form: path and query.
	Target string
	// Authority is the Host header as the agent sent it.
	Authority string
	Header    http.Header
}

// Finding is a placeholder where no binding allows it. It names where it
// was seen and never carries a credential.
type Finding struct {
	// Binding is the binding whose placeholder it was; empty when the
	// marker belongs to no binding of this configuration (a deleted one,
	// or a made-up placeholder).
	Binding string
	// Where: "path", "query parameter NAME", "header NAME", "basic auth",
	// "body", "host".
	Where string
	// Reason says why it is refused.
	Reason string
}

func (f *Finding) Error() string {
	b := f.Binding
	if b == "" {
		b = "(no binding)"
	}
	return "credential placeholder of " + b + " in the " + f.Where + ": " + f.Reason
}

// Result is Inspect's verdict on one request.
type Result struct {
	// Target and Header are the request to send: the credentials in
	// place when Used is not empty, the request as it came otherwise.
	Target string
	Header http.Header
	// Used names the bindings whose credentials were placed.
	Used []string
	// Secrets are the values placed and Placeholders the placeholders
	// they replaced, for scrubbing the answer (Scrub).
	Secrets, Placeholders [][]byte
	// Finding is set when the request must be refused; nothing was
	// placed then.
	Finding *Finding
}

// occurrence is one placeholder found where its binding allows it, with
// how to put the credential there.
type occurrence struct {
	b     *Binding
	apply func(secret []byte)
}

// Inspect decides one request: every placeholder in it must be one of the
// set's, in the place its binding names, on a request to one of its
// endpoints; then each is replaced by its credential. Otherwise the
// result carries a Finding and the request must not be sent. A request
// without any placeholder comes back unchanged.
func (s *Set) Inspect(r Request) Result {
	res := Result{Target: r.Target, Header: r.Header}
	pathRaw, queryRaw, hasQuery := strings.Cut(r.Target, "?")
	basic, basicErr := basicAuth(r.Header)
	if !hasMarker(r.Target) && !hasMarker(looseUnescape(r.Target)) && !hasMarker(r.Authority) && !headersHaveMarker(r.Header) && !hasMarker(basic) {
		return res
	}
	refuse := func(b *Binding, where, reason string) Result {
		name := ""
		if b != nil {
			name = b.Name
		}
		return Result{Target: r.Target, Header: r.Header, Finding: &Finding{Binding: name, Where: where, Reason: reason}}
	}
	if hasMarker(r.Authority) {
		return refuse(s.owner(r.Authority), "host", "a placeholder is never part of a host name")
	}
	canon, pathErr := CanonicalPath(pathRaw)
	var occs []occurrence
	header := r.Header.Clone()
	var newPath, newQuery string
	newPath, newQuery = canon, queryRaw

	// The path.
	if hasMarker(pathRaw) || hasMarker(looseUnescape(pathRaw)) {
		if pathErr != nil {
			return refuse(s.owner(looseUnescape(pathRaw)), "path", pathErr.Error())
		}
		b, reason := s.single(canon)
		if b == nil {
			return refuse(nil, "path", reason)
		}
		if b.Placement.In != InPath {
			return refuse(b, "path", "its binding places it in "+placeName(b.Placement))
		}
		ok := false
		for _, e := range b.Endpoints {
			if e.Scheme == r.Scheme && e.Host == r.Host && e.Port == r.Port {
				lead := e.PathPrefix + b.Placeholder
				if strings.HasPrefix(canon, lead) && (len(canon) == len(lead) || canon[len(lead)] == '/') {
					ok = true
					break
				}
			}
		}
		if !ok {
			return refuse(b, "path", "the request is not to "+endpointList(b)+" with the placeholder right after the prefix")
		}
		occs = append(occs, occurrence{b: b, apply: func(secret []byte) {
			newPath = strings.Replace(newPath, b.Placeholder, string(secret), 1)
		}})
	}

	// The query.
	if hasQuery && (hasMarker(queryRaw) || hasMarker(looseUnescape(queryRaw))) {
		pairs := strings.Split(queryRaw, "&")
		for i, pair := range pairs {
			kRaw, vRaw, _ := strings.Cut(pair, "=")
			k, kerr := url.QueryUnescape(kRaw)
			v, verr := url.QueryUnescape(vRaw)
			if kerr != nil || verr != nil || strings.IndexByte(pair, ';') >= 0 {
				if hasMarker(pair) || hasMarker(looseUnescape(pair)) {
					return refuse(s.owner(looseUnescape(pair)), "query", "the query could be read two ways (a malformed escape or ';')")
				}
				continue
			}
			if hasMarker(k) {
				return refuse(s.owner(k), "query parameter name", "a placeholder is never a parameter name")
			}
			if !hasMarker(v) {
				continue
			}
			where := "query parameter " + k
			b, reason := s.single(v)
			if b == nil {
				return refuse(nil, where, reason)
			}
			if b.Placement.In != InQuery || b.Placement.Name != k {
				return refuse(b, where, "its binding places it in "+placeName(b.Placement))
			}
			if v != b.Placeholder {
				return refuse(b, where, "the parameter's value must be the placeholder alone")
			}
			if pathErr != nil {
				return refuse(b, where, pathErr.Error())
			}
			if !s.endpointMatch(b, r, canon) {
				return refuse(b, where, "the request is not to "+endpointList(b))
			}
			idx := i
			occs = append(occs, occurrence{b: b, apply: func(secret []byte) {
				pairs[idx] = kRaw + "=" + url.QueryEscape(string(secret))
				newQuery = strings.Join(pairs, "&")
			}})
		}
	}

	// Headers, and basic auth inside Authorization.
	if basicErr != nil && hasMarker(r.Header.Get("Authorization")) {
		return refuse(s.owner(r.Header.Get("Authorization")), "header Authorization", basicErr.Error())
	}
	for name, vals := range r.Header {
		if hasMarker(name) {
			return refuse(s.owner(name), "header name", "a placeholder is never a header name")
		}
		for _, v := range vals {
			if !hasMarker(v) {
				continue
			}
			where := "header " + name
			b, reason := s.single(v)
			if b == nil {
				return refuse(nil, where, reason)
			}
			if b.Placement.In != InHeader || textproto.CanonicalMIMEHeaderKey(b.Placement.Name) != name {
				return refuse(b, where, "its binding places it in "+placeName(b.Placement))
			}
			if len(vals) != 1 {
				return refuse(b, where, "the header appears more than once")
			}
			if p := b.Placement.ValuePrefix; p != "" && v != p+b.Placeholder {
				return refuse(b, where, "the header's value must be "+quoteASCII(p)+" followed by the placeholder")
			}
			if pathErr != nil {
				return refuse(b, where, pathErr.Error())
			}
			if !s.endpointMatch(b, r, canon) {
				return refuse(b, where, "the request is not to "+endpointList(b))
			}
			hname, hval := name, v
			occs = append(occs, occurrence{b: b, apply: func(secret []byte) {
				header[hname] = []string{strings.Replace(hval, b.Placeholder, string(secret), 1)}
			}})
		}
	}
	if hasMarker(basic) {
		user, pass, _ := strings.Cut(basic, ":")
		b, reason := s.single(basic)
		switch {
		case b == nil:
			return refuse(nil, "basic auth", reason)
		case b.Placement.In != InBasicAuth:
			return refuse(b, "basic auth", "its binding places it in "+placeName(b.Placement))
		case user != b.Placeholder && pass != b.Placeholder:
			return refuse(b, "basic auth", "the user name or the password must be the placeholder alone")
		case pathErr != nil:
			return refuse(b, "basic auth", pathErr.Error())
		case !s.endpointMatch(b, r, canon):
			return refuse(b, "basic auth", "the request is not to "+endpointList(b))
		}
		occs = append(occs, occurrence{b: b, apply: func(secret []byte) {
			u, p := user, pass
			if u == b.Placeholder {
				u = string(secret)
			} else {
				p = string(secret)
			}
			header["Authorization"] = []string{"Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p))}
		}})
	}
	if len(occs) == 0 {
		// A marker was seen, yet no place held one: a loosely decoded
		// form only (an escape the canonical form keeps).
		return refuse(nil, "request", "a placeholder is in a form no binding uses")
	}

	// Every placeholder is where its binding allows: place the values.
	for _, o := range occs {
		v, err := o.b.Value()
		if err != nil || ValidValue(v, o.b.Placement.In) != nil {
			reason := "the credential is not available"
			if err == nil {
				reason = "the credential's value cannot be placed safely"
			}
			return refuse(o.b, placeName(o.b.Placement), reason)
		}
		o.apply(v)
		res.Used = append(res.Used, o.b.Name)
		res.Secrets = append(res.Secrets, v)
		res.Placeholders = append(res.Placeholders, []byte(o.b.Placeholder))
	}
	res.Header = header
	res.Target = newPath
	if hasQuery {
		res.Target += "?" + newQuery
	}
	return res
}

// endpointMatch reports whether the request goes to one of b's endpoints
// (path at or below its prefix).
func (s *Set) endpointMatch(b *Binding, r Request, canon string) bool {
	for _, e := range b.Endpoints {
		if e.Scheme == r.Scheme && e.Host == r.Host && e.Port == r.Port && underPrefix(canon, e.PathPrefix) {
			return true
		}
	}
	return false
}

// single returns the binding whose placeholder v holds, when v holds
// exactly one marker and it is that placeholder's.
func (s *Set) single(v string) (*Binding, string) {
	if n := strings.Count(v, Marker); n != 1 {
		return nil, "more than one placeholder in one place"
	}
	if b := s.owner(v); b != nil {
		return b, ""
	}
	return nil, "a placeholder no binding of this sandbox owns (a deleted binding, or a made-up one)"
}

// owner returns a binding whose placeholder occurs in v, or nil.
func (s *Set) owner(v string) *Binding {
	if s == nil {
		return nil
	}
	for _, b := range s.bindings {
		if strings.Contains(v, b.Placeholder) {
			return b
		}
	}
	return nil
}

func hasMarker(s string) bool { return strings.Contains(s, Marker) }

func headersHaveMarker(h http.Header) bool {
	for k, vs := range h {
		if hasMarker(k) {
			return true
		}
		for _, v := range vs {
			if hasMarker(v) {
				return true
			}
		}
	}
	return false
}

// basicAuth returns the decoded "user:password" of an Authorization: Basic
// header (RFC 7617), "" when there is none.
func basicAuth(h http.Header) (string, error) {
	v := h.Get("Authorization")
	scheme, cred, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", nil
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", errBasic
	}
	return string(raw), nil
}

var errBasic = &basicError{}

type basicError struct{}

func (*basicError) Error() string { return "the basic credentials are not valid base64" }

// looseUnescape decodes every well-formed %XX and '+', the way the most
// lenient server would, to see a placeholder hidden by escapes.
func looseUnescape(s string) string {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' && i+2 < len(s) && unhex(s[i+1]) >= 0 && unhex(s[i+2]) >= 0 {
			b.WriteByte(byte(unhex(s[i+1])<<4 | unhex(s[i+2])))
			i += 2
			continue
		}
		if c == '+' {
			c = ' '
		}
		b.WriteByte(c)
	}
	return b.String()
}

func placeName(p Placement) string {
	switch p.In {
	case InHeader:
		return "header " + textproto.CanonicalMIMEHeaderKey(p.Name)
	case InQuery:
		return "query parameter " + p.Name
	case InBasicAuth:
		return "basic auth"
	case InPath:
		return "path"
	}
	return string(p.In)
}

func endpointList(b *Binding) string {
	parts := make([]string, len(b.Endpoints))
	for i, e := range b.Endpoints {
		parts[i] = e.String()
	}
	return strings.Join(parts, ", ")
}

func quoteASCII(s string) string { return `"` + s + `"` }
