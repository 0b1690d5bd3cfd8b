package audit

import (
	"os"
	"syscall"
)

// syncData flushes f's data and the metadata needed to read it back (the
// file size after appends) to stable storage. fdatasync skips the
// timestamps fsync would also write, which is what group commit pays for.
func syncData(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			return err
		}
	}
}
