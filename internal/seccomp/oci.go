package seccomp

import (
	"bytes"
	"encoding/json"
	"slices"
)

// errno values carried in the OCI profile. They are fixed by the Linux ABI
// on every architecture kars supports (x86-64, arm64).
const (
	errnoEPERM  = 1
	errnoENOSYS = 38
)

// OCIProfile is the seccomp section of the OCI runtime specification, the
// format the kubelet reads for `localhost/` profiles.
type OCIProfile struct {
	DefaultAction   string       `json:"defaultAction"`
	DefaultErrnoRet *uint        `json:"defaultErrnoRet,omitempty"`
	Architectures   []string     `json:"architectures"`
	Syscalls        []OCISyscall `json:"syscalls"`
}

// OCISyscall is one rule of an OCIProfile.
type OCISyscall struct {
	Names    []string `json:"names"`
	Action   string   `json:"action"`
	ErrnoRet *uint    `json:"errnoRet,omitempty"`
	Args     []OCIArg `json:"args,omitempty"`
	Comment  string   `json:"comment,omitempty"`
}

// OCIArg is an argument condition in libseccomp's vocabulary.
type OCIArg struct {
	Index    uint   `json:"index"`
	Value    uint64 `json:"value"`
	ValueTwo uint64 `json:"valueTwo"`
	Op       string `json:"op"`
}

// OCI renders p for container runtimes. Only the native 64-bit ABIs are
// listed, so 32-bit compat calls (int 0x80, x32) hit libseccomp's bad-arch
// action instead of a second, separately maintained allow list.
func (p Profile) OCI() OCIProfile {
	eperm := uint(errnoEPERM)
	out := OCIProfile{
		DefaultAction:   "SCMP_ACT_ERRNO",
		DefaultErrnoRet: &eperm,
		Architectures:   []string{"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"},
	}
	for _, r := range p.Rules {
		s := OCISyscall{Names: slices.Clone(r.Names), Comment: r.Why}
		switch r.Action {
		case Allow:
			s.Action = "SCMP_ACT_ALLOW"
		case Deny:
			s.Action = "SCMP_ACT_ERRNO"
			s.ErrnoRet = &eperm
		case NotImplemented:
			enosys := uint(errnoENOSYS)
			s.Action = "SCMP_ACT_ERRNO"
			s.ErrnoRet = &enosys
		}
		if c := r.When; c != nil {
			switch c.Op {
			case MaskedZero:
				// SCMP_CMP_MASKED_EQ compares (arg & value) with valueTwo.
				s.Args = []OCIArg{{Index: c.Index, Value: c.Value, ValueTwo: 0, Op: "SCMP_CMP_MASKED_EQ"}}
			case NotEqual:
				s.Args = []OCIArg{{Index: c.Index, Value: c.Value, Op: "SCMP_CMP_NE"}}
			}
		}
		out.Syscalls = append(out.Syscalls, s)
	}
	return out
}

// OCIJSON renders p as the indented JSON committed under config/seccomp.
func (p Profile) OCIJSON() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(p.OCI()); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
