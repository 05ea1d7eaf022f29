//go:build linux && rsptest

package splice

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// testHookStarted runs once the event loops run, in binaries built with
// the rsptest tag (the end-to-end tests' build). RSP_TEST_FAIL_LOOP=N puts
// a file that is not an epoll instance where loop N's epoll fd was, so
// its next epoll_wait fails: a failure that cannot be caused from outside
// the process.
func testHookStarted(e *spliceEngine) {
	n, err := strconv.Atoi(os.Getenv("RSP_TEST_FAIL_LOOP"))
	if err != nil || n < 0 || n >= len(e.loops) {
		return
	}
	null, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(null)
	l := e.loops[n]
	if unix.Dup3(null, l.epfd, unix.O_CLOEXEC) == nil {
		l.post(cmdPing) // wakes it: its next epoll_wait fails
	}
}
