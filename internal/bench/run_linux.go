//go:build linux

package bench

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// setUp checks the CPU lists, resolves User and pins this process to
// LoadCPUs.
func (o *Options) setUp() error {
	for _, l := range []struct{ flag, list string }{{"-proxy-cpus", o.ProxyCPUs}, {"-load-cpus", o.LoadCPUs}} {
		if l.list == "" {
			continue
		}
		if _, err := cpuSet(l.list); err != nil {
			return fmt.Errorf("%s: %w", l.flag, err)
		}
		if _, err := exec.LookPath("taskset"); err != nil {
			return fmt.Errorf("%s needs taskset (util-linux)", l.flag)
		}
	}
	if o.User != "" {
		uid, gid := -1, -1
		if u, err := user.Lookup(o.User); err == nil {
			uid, _ = strconv.Atoi(u.Uid)
			gid, _ = strconv.Atoi(u.Gid)
		} else if n, err := strconv.Atoi(o.User); err == nil && n >= 0 {
			uid, gid = n, n // a uid with no passwd entry (as a DynamicUser= has)
		} else {
			return fmt.Errorf("-user %s: no such user (give a name or a uid)", o.User)
		}
		if uid == 0 {
			return fmt.Errorf("-user %s is root: name an unprivileged user (nobody)", o.User)
		}
		if os.Geteuid() != 0 {
			return fmt.Errorf("-user %s: only root can run the proxies as another user", o.User)
		}
		o.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
		if err := exec.Command(o.Rsp, "-version").Run(); err == nil {
			if err := o.proxy(exec.Command(o.Rsp, "-version")).Run(); err != nil {
				return fmt.Errorf("-user %s cannot run %s (%v): put it where that user can read it", o.User, o.Rsp, err)
			}
		}
	}
	if o.LoadCPUs != "" {
		set, _ := cpuSet(o.LoadCPUs)
		// The proxies keep what this process had (proxy), unless
		// ProxyCPUs says otherwise.
		var all unix.CPUSet
		if err := unix.SchedGetaffinity(0, &all); err == nil && o.ProxyCPUs == "" {
			o.ProxyCPUs = cpuList(&all)
		}
		runtime.GOMAXPROCS(set.Count())
		// Every thread of this process; threads made later inherit it.
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, t := range tasks {
			tid, _ := strconv.Atoi(t.Name())
			if err := unix.SchedSetaffinity(tid, set); err != nil {
				return fmt.Errorf("-load-cpus %s: %w", o.LoadCPUs, err)
			}
		}
	}
	return nil
}

// cpuList writes set as a CPU list ("0,1,2").
func cpuList(set *unix.CPUSet) string {
	var parts []string
	for c := range 1024 {
		if set.IsSet(c) {
			parts = append(parts, strconv.Itoa(c))
		}
	}
	return strings.Join(parts, ",")
}

// cpuSet parses a CPU list: "0-3,8".
func cpuSet(list string) (*unix.CPUSet, error) {
	set := &unix.CPUSet{}
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a || b >= 1024 {
			return nil, fmt.Errorf("bad CPU list %q: want e.g. 0-3,8", list)
		}
		for c := a; c <= b; c++ {
			set.Set(c)
		}
	}
	return set, nil
}

// proxy makes cmd run as a contender: pinned to ProxyCPUs, as User.
func (o *Options) proxy(cmd *exec.Cmd) *exec.Cmd {
	if o.ProxyCPUs != "" {
		pinned := exec.Command("taskset", append([]string{"-c", o.ProxyCPUs, cmd.Path}, cmd.Args[1:]...)...)
		pinned.Env, pinned.Dir, pinned.Stdout, pinned.Stderr = cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr
		cmd = pinned
	}
	if o.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	return cmd
}

// load makes cmd run with the load: pinned to LoadCPUs.
func (o *Options) load(cmd *exec.Cmd) *exec.Cmd {
	if o.LoadCPUs == "" {
		return cmd
	}
	pinned := exec.Command("taskset", append([]string{"-c", o.LoadCPUs, cmd.Path}, cmd.Args[1:]...)...)
	pinned.Env, pinned.Dir = cmd.Env, cmd.Dir
	return pinned
}

// share gives dir and what is in it to User, whose proxy uses it.
func (o *Options) share(dir string) {
	if o.cred == nil {
		return
	}
	filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err == nil {
			os.Chown(path, int(o.cred.Uid), int(o.cred.Gid))
		}
		return nil
	})
}
