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

// lockDir takes an exclusive advisory lock on dir's lock file, so that two
// writers (a router and its not-yet-dead predecessor) never interleave one
// chain. The kernel drops the lock when the process dies, however it dies.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(joinDir(dir, lockName), os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return nil, errLocked
		}
		return nil, err
	}
	return f, nil
}
