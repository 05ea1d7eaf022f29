//go:build linux

package handover

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"rsp/internal/activation"
)

// Exec starts the program at path with args, passing p's files as systemd passes sockets (from descriptor 3,
// with LISTEN_FDS and LISTEN_FDNAMES), and waits up to timeout for it to
// say that it serves (Ready). It then tells the new process to resume
// the connections: from that moment they are its own. On any failure
// before, the new process is killed, has resumed nothing, and an error is
// returned; p is left to the caller.
func Exec(path string, args []string, p *Packed, timeout time.Duration) (*os.Process, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("readiness socket: %w", err)
	}
	ours := os.NewFile(uintptr(sp[0]), "ready")
	theirs := os.NewFile(uintptr(sp[1]), ReadyName)
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return nil, fmt.Errorf("readiness socket: %w", err)
	}
	defer conn.Close()
	// Named descriptors first; the connections' ones, unnamed, last: a
	// name each would make LISTEN_FDNAMES longer than the kernel lets
	// one environment string be (128 KiB) past some 18,000 descriptors.
	var files []*os.File
	var names []string
	for i, f := range p.Files {
		if p.Names[i] != FDName {
			files, names = append(files, f), append(names, p.Names[i])
		}
	}
	files, names = append(files, theirs), append(names, ReadyName)
	for i, f := range p.Files {
		if p.Names[i] == FDName {
			files = append(files, f)
		}
	}
	cmd := exec.Command(path, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	cmd.Env = append(withoutActivation(os.Environ()),
		"LISTEN_FDS="+strconv.Itoa(len(files)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		activation.HandoverFDsEnv+"="+strconv.Itoa(len(names)),
		activation.ParentEnv+"="+strconv.Itoa(os.Getpid()))
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	fail := func(err error) (*os.Process, error) {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(timeout))
	var b [1]byte
	if n, err := conn.Read(b[:]); n != 1 {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fail(fmt.Errorf("%s did not say it serves within %v", path, timeout))
		}
		return fail(fmt.Errorf("%s exited before it served (see its log above)", path))
	}
	// The new process waits for this byte before it resumes anything.
	if _, err := conn.Write(b[:]); err != nil {
		return fail(fmt.Errorf("%s: %w", path, err))
	}
	go cmd.Wait() // reaped if it ends before this process
	return cmd.Process, nil
}

// withoutActivation drops the variables of a socket activation or an
// earlier hand-over from env.
func withoutActivation(env []string) []string {
	out := env[:0:0]
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		if k != "LISTEN_FDS" && k != "LISTEN_FDNAMES" && k != "LISTEN_PID" && k != activation.ParentEnv && k != activation.HandoverFDsEnv {
			out = append(out, e)
		}
	}
	return out
}

// Ready tells the process that started this one by Exec that it serves,
// through the descriptor named ReadyName among files, and waits for its
// answer, with no deadline: that process either answers, letting go of
// the connections, or kills this one (it gave up waiting). An end of the
// socket without an answer means it died: the connections are this
// process's either way. Without such a descriptor (a hand-over through
// systemd's store) it returns at once.
func Ready(files []*os.File, names []string) {
	for i, n := range names {
		if n != ReadyName {
			continue
		}
		conn, err := net.FileConn(files[i])
		files[i].Close()
		if err != nil {
			return
		}
		b := []byte{1}
		if _, err := conn.Write(b); err == nil {
			conn.Read(b)
		}
		conn.Close()
	}
}

// maxFDsPerMessage stays under the kernel's SCM_MAX_FD (253).
const maxFDsPerMessage = 250

// Store hands p's files to systemd's file descriptor store, each under
// its name, kept without polling (FDPOLL=0: a pipe whose other end is
// closed would otherwise be dropped). The unit needs
// FileDescriptorStoreMax= of at least their number.
func Store(p *Packed) error {
	for i := 0; i < len(p.Files); {
		name := p.Names[i]
		var fds []int
		for i < len(p.Files) && p.Names[i] == name && len(fds) < maxFDsPerMessage {
			fds = append(fds, int(p.Files[i].Fd()))
			i++
		}
		if err := notify("FDSTORE=1\nFDNAME="+name+"\nFDPOLL=0\n", fds); err != nil {
			return fmt.Errorf("store %d descriptors named %s with systemd: %w", len(fds), name, err)
		}
	}
	return nil
}

// Release asks systemd to drop the hand-over's descriptors from its
// store, once this process holds them: systemd's copies would otherwise
// keep every socket open after rsp closed it.
func Release() error {
	var errs []error
	for _, name := range []string{StateName, FDName, ListenName} {
		errs = append(errs, notify("FDSTOREREMOVE=1\nFDNAME="+name+"\n", nil))
	}
	return errors.Join(errs...)
}

// notify sends state and fds to systemd's notification socket.
func notify(state string, fds []int) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return errors.New("NOTIFY_SOCKET is not set: not run by systemd")
	}
	// A raw socket: Go's connected datagram sockets take no ancillary
	// data with an address, and its unconnected ones want a local name.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	defer unix.Close(fd)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	// x/sys/unix reads a leading '@' as the abstract namespace.
	if err := unix.Sendmsg(fd, []byte(state), oob, &unix.SockaddrUnix{Name: path}, 0); err != nil {
		return fmt.Errorf("send to %s: %w", path, err)
	}
	return nil
}
