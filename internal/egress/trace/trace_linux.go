// Package trace watches a sandbox's connection attempts in the kernel, for
// `kars trace NAME --network`: an eBPF program (github.com/cilium/ebpf, no
// C toolchain — the instructions are assembled here) on the cgroup
// connect4 and sendmsg4 hooks reports every IPv4 connect() and UDP send
// with the process, UID and the destination the program asked for, before
// any NAT. Attempts are kept to the pod's network namespace (its
// SO_NETNS_COOKIE) and the agent's UID. What became of each attempt is the
// egress guard's verdict for it (egress.Classify over the same rule values
// the guard installed): redirected to the router — whose own decision the
// router reports — or refused by the kernel.
//
// It needs root (CAP_BPF, CAP_NET_ADMIN) on the machine that runs the
// sandbox: locally, `kars trace` itself; on a cluster, a process on the
// node. The program only observes: it always lets the call proceed.
package trace

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Attempt is one connect() or UDP send seen in the kernel.
type Attempt struct {
	Time  time.Time      `json:"time"`
	PID   uint32         `json:"pid"`
	UID   uint32         `json:"uid"`
	Comm  string         `json:"comm"`
	Proto string         `json:"proto"` // tcp, udp
	Dst   netip.AddrPort `json:"dst"`
	// Netns is the cookie of the caller's network namespace.
	Netns uint64 `json:"netns"`
}

// event layout written by the program (little-endian on x86 and arm64):
//
//	0  pid    u32
//	4  uid    u32
//	8  daddr  u32 (network order)
//	12 dport  u32 (network order, in the low 16 bits as the kernel stores it)
//	16 proto  u32
//	20 pad    u32
//	24 netns  u64
//	32 comm   [16]byte
const eventSize = 48

// bpf_sock_addr field offsets (include/uapi/linux/bpf.h).
const (
	offUserIP4   = 4
	offUserPort  = 24
	offProtocol  = 36
	stackEvent   = -eventSize
	ringbufBytes = 1 << 16
)

// program assembles the observer. It fills the event on the stack, hands
// it to the ring buffer and returns 1 (allow).
func program(rb *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		// Zero the event.
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.RFP, stackEvent+0, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackEvent+8, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackEvent+16, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackEvent+24, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackEvent+32, asm.R1, asm.DWord),
		asm.StoreMem(asm.RFP, stackEvent+40, asm.R1, asm.DWord),
		// pid (tgid) and uid.
		asm.FnGetCurrentPidTgid.Call(),
		asm.RSh.Imm(asm.R0, 32),
		asm.StoreMem(asm.RFP, stackEvent+0, asm.R0, asm.Word),
		asm.FnGetCurrentUidGid.Call(),
		asm.StoreMem(asm.RFP, stackEvent+4, asm.R0, asm.Word),
		// Destination and protocol, as the caller gave them.
		asm.LoadMem(asm.R1, asm.R6, offUserIP4, asm.Word),
		asm.StoreMem(asm.RFP, stackEvent+8, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R6, offUserPort, asm.Word),
		asm.StoreMem(asm.RFP, stackEvent+12, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R6, offProtocol, asm.Word),
		asm.StoreMem(asm.RFP, stackEvent+16, asm.R1, asm.Word),
		// Network namespace cookie.
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetNetnsCookie.Call(),
		asm.StoreMem(asm.RFP, stackEvent+24, asm.R0, asm.DWord),
		// comm.
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, stackEvent+32),
		asm.Mov.Imm(asm.R2, 16),
		asm.FnGetCurrentComm.Call(),
		// Out.
		asm.LoadMapPtr(asm.R1, rb.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackEvent),
		asm.Mov.Imm(asm.R3, eventSize),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
	}
}

// Tracer is an attached observer. Close it to detach.
type Tracer struct {
	rb     *ebpf.Map
	progs  []*ebpf.Program
	links  []link.Link
	reader *ringbuf.Reader
}

// CgroupV2Root finds the mounted cgroup v2 hierarchy (unified or hybrid).
func CgroupV2Root() (string, error) {
	raw, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted (eBPF cgroup hooks need one)")
}

// Attach loads the observer and attaches it to the cgroup v2 folder
// cgroup (every process below it is observed).
func Attach(cgroup string) (*Tracer, error) {
	rb, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: ringbufBytes})
	if err != nil {
		return nil, fmt.Errorf("trace: ring buffer: %w", err)
	}
	t := &Tracer{rb: rb}
	for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupUDP4Sendmsg} {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "kars_trace", Type: ebpf.CGroupSockAddr, AttachType: at,
			Instructions: program(rb), License: "Dual MIT/GPL"})
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("trace: load program: %w", err)
		}
		t.progs = append(t.progs, p)
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: at, Program: p})
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("trace: attach to %s: %w", cgroup, err)
		}
		t.links = append(t.links, l)
	}
	if t.reader, err = ringbuf.NewReader(rb); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Run delivers attempts to f until ctx is done or the tracer is closed.
func (t *Tracer) Run(ctx context.Context, f func(Attempt)) error {
	go func() {
		<-ctx.Done()
		t.reader.Close()
	}()
	for {
		rec, err := t.reader.Read()
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return nil
			}
			return err
		}
		if a, ok := decode(rec.RawSample); ok {
			f(a)
		}
	}
}

func decode(b []byte) (Attempt, bool) {
	if len(b) < eventSize {
		return Attempt{}, false
	}
	le := binary.LittleEndian
	var ip [4]byte
	copy(ip[:], b[8:12])
	portRaw := le.Uint32(b[12:16])
	port := uint16(portRaw&0xff)<<8 | uint16(portRaw>>8&0xff) // network order
	proto := "tcp"
	if le.Uint32(b[16:20]) == unix.IPPROTO_UDP {
		proto = "udp"
	}
	comm := string(b[32:48])
	if i := strings.IndexByte(comm, 0); i >= 0 {
		comm = comm[:i]
	}
	return Attempt{Time: time.Now(), PID: le.Uint32(b[0:4]), UID: le.Uint32(b[4:8]), Comm: comm, Proto: proto,
		Dst: netip.AddrPortFrom(netip.AddrFrom4(ip), port), Netns: le.Uint64(b[24:32])}, true
}

// Close detaches and frees everything.
func (t *Tracer) Close() error {
	if t.reader != nil {
		t.reader.Close()
	}
	for _, l := range t.links {
		l.Close()
	}
	for _, p := range t.progs {
		p.Close()
	}
	return t.rb.Close()
}
