package seccomp

import (
	"fmt"
	"slices"

	bpfseccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
)

// BPFPolicy translates p into a go-seccomp-bpf policy for the running
// architecture. Names the architecture does not have (open, fork, … on
// arm64) are skipped: they cannot be called there, so the default denial
// already covers them.
func (p Profile) BPFPolicy() (bpfseccomp.Policy, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return bpfseccomp.Policy{}, fmt.Errorf("seccomp: %w", err)
	}
	pol := bpfseccomp.Policy{DefaultAction: bpfseccomp.ActionErrno}
	for _, r := range p.Rules {
		names := slices.DeleteFunc(slices.Clone(r.Names), func(n string) bool {
			_, ok := info.SyscallNames[n]
			return !ok
		})
		if len(names) == 0 {
			continue
		}
		g := bpfseccomp.SyscallGroup{Action: bpfAction(r.Action)}
		if r.When == nil {
			g.Names = names
			pol.Syscalls = append(pol.Syscalls, g)
			continue
		}
		op := bpfseccomp.BitsNotSet
		if r.When.Op == NotEqual {
			op = bpfseccomp.NotEqual
		}
		for _, n := range names {
			g.NamesWithCondtions = append(g.NamesWithCondtions, bpfseccomp.NameWithConditions{
				Name: n,
				Conditions: bpfseccomp.ArgumentConditions{{
					Argument: uint32(r.When.Index), Operation: op, Value: r.When.Value,
				}},
			})
		}
		pol.Syscalls = append(pol.Syscalls, g)
		// Make the refusal of the other case explicit rather than relying
		// on the default action, so that a future default change cannot
		// open it.
		if r.Action == Allow {
			pol.Syscalls = append(pol.Syscalls, bpfseccomp.SyscallGroup{Action: bpfseccomp.ActionErrno, Names: names})
		}
	}
	return pol, nil
}

// bpfAction maps an Action to a seccomp return value. go-seccomp-bpf turns
// a bare ActionErrno into EPERM; any other errno is encoded in the low bits.
func bpfAction(a Action) bpfseccomp.Action {
	switch a {
	case Allow:
		return bpfseccomp.ActionAllow
	case NotImplemented:
		return bpfseccomp.ActionErrno | bpfseccomp.Action(errnoENOSYS)
	default:
		return bpfseccomp.ActionErrno
	}
}

// Assemble compiles p to raw BPF instructions for the running architecture.
func (p Profile) Assemble() ([]bpf.RawInstruction, error) {
	pol, err := p.BPFPolicy()
	if err != nil {
		return nil, err
	}
	insts, err := pol.Assemble()
	if err != nil {
		return nil, fmt.Errorf("seccomp: assemble %s: %w", p.Name, err)
	}
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return nil, fmt.Errorf("seccomp: assemble %s: %w", p.Name, err)
	}
	return raw, nil
}
