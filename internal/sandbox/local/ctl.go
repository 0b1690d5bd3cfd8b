package local

import (
	"encoding/json"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The parent and the pod init talk over a SOCK_SEQPACKET socket pair: one
// JSON message per packet, file descriptors (router listeners in rootless
// mode, dialled connections) attached as SCM_RIGHTS.
type ctlMsg struct {
	Op string `json:"op"`
	// Err reports a failure of the operation.
	Err string `json:"err,omitempty"`
	// ready: what the pod init put in force.
	LandlockABI int  `json:"landlockABI,omitempty"`
	LandlockFS  bool `json:"landlockFS,omitempty"`
	LandlockNet bool `json:"landlockNet,omitempty"`
	// exit: the agent's wait status.
	Status int `json:"status,omitempty"`
	// dial: what to connect to inside the pod.
	Network string `json:"network,omitempty"`
	Addr    string `json:"addr,omitempty"`
}

const (
	opReady  = "ready"
	opExit   = "exit"
	opDial   = "dial"
	opDialed = "dialed"
)

func socketPair() (parent, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("control socket: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "ctl-parent"), os.NewFile(uintptr(fds[1]), "ctl-child"), nil
}

// sendMsg sends one message on a raw descriptor (the pod init's side).
func sendMsg(fd int, m ctlMsg, files ...*os.File) error {
	data, oob, err := encodeMsg(m, files...)
	if err != nil {
		return err
	}
	return unix.Sendmsg(fd, data, oob, nil, 0)
}

// recvMsg blocks for one message on a raw descriptor (the pod init's
// side). Closure by the peer is reported as errClosed.
func recvMsg(fd int) (ctlMsg, []*os.File, error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(16*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return ctlMsg{}, nil, err
		}
		return parseMsg(buf[:n], oob[:oobn])
	}
}

// parseMsg decodes one packet and the descriptors attached to it.
func parseMsg(data, oob []byte) (ctlMsg, []*os.File, error) {
	if len(data) == 0 && len(oob) == 0 {
		return ctlMsg{}, nil, errClosed
	}
	var files []*os.File
	if len(oob) > 0 {
		cmsgs, err := unix.ParseSocketControlMessage(oob)
		if err != nil {
			return ctlMsg{}, nil, err
		}
		for _, c := range cmsgs {
			fds, err := unix.ParseUnixRights(&c)
			if err != nil {
				return ctlMsg{}, files, err
			}
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "passed"))
			}
		}
	}
	var m ctlMsg
	if err := json.Unmarshal(data, &m); err != nil {
		return ctlMsg{}, files, fmt.Errorf("control message: %w", err)
	}
	return m, files, nil
}

// encodeMsg marshals m and the rights message for files.
func encodeMsg(m ctlMsg, files ...*os.File) (data, oob []byte, err error) {
	data, err = json.Marshal(m)
	if err != nil {
		return nil, nil, err
	}
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	return data, oob, nil
}

type closedError struct{}

func (closedError) Error() string { return "control socket closed" }

var errClosed error = closedError{}
