package control

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strings"
	"syscall"
	"time"
)

// Do sends args (a command and its arguments) to the rsp serving the
// control socket at path, copies the answer's output lines to out, and
// returns nil for "OK". Every error reads as one line: a socket that is
// not there or not permitted says what to check, and an "ERR" answer
// is returned as its reason alone.
func Do(path string, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("no command")
	}
	for _, a := range args {
		if strings.ContainsAny(a, "\t\n\r") {
			return fmt.Errorf("argument %q holds a tab or a line break, which the control protocol cannot carry", a)
		}
	}
	c, err := net.DialTimeout("unix", path, clientTimeout)
	if err != nil {
		return dialError(path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(clientTimeout))
	if _, err := io.WriteString(c, strings.Join(args, argSep)+"\n"); err != nil {
		return fmt.Errorf("control socket %s: sending the request: %w", path, err)
	}
	return readAnswer(path, c, out)
}

// readAnswer copies the answer's lines to out, all but the last, which
// is the status.
func readAnswer(path string, r io.Reader, out io.Writer) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxAnswerLine)
	var last string
	have := false
	for sc.Scan() {
		if have {
			if _, err := fmt.Fprintln(out, last); err != nil {
				return fmt.Errorf("writing the answer: %w", err)
			}
		}
		last, have = sc.Text(), true
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("control socket %s: reading the answer: %w", path, err)
	}
	switch {
	case !have:
		return fmt.Errorf("control socket %s: rsp closed the connection without an answer", path)
	case last == statusOK:
		return nil
	case strings.HasPrefix(last, statusErr):
		return errors.New(strings.TrimPrefix(last, statusErr))
	}
	return fmt.Errorf("control socket %s: the answer ended without a status line (last line %q)", path, last)
}

// dialError explains a failed connect to the control socket.
func dialError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("control socket %s does not exist: is rsp running, with control = %q in [global]?", path, path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("permission denied on %s: run as root or as the rsp service user", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing answers on control socket %s: rsp is not running (the socket is left from one that stopped)", path)
	}
	return fmt.Errorf("control socket %s: %w", path, err)
}
