package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"rsp/internal/activation"
	"rsp/internal/config"
	"rsp/internal/handover"
	"rsp/internal/proxy"
	"rsp/internal/splice"
)

// handoverTimeout bounds how long a successor may take to say it serves.
const handoverTimeout = 10 * time.Second

// inherited is what the rsp before this one handed over, once unpacked.
type inherited struct {
	passed    activation.Passed
	u         *handover.Unpacked
	lost      int
	listeners int // how many listeners came
	parent    int // the pid of the rsp that handed over, with SIGUSR2
	// rec is what the journals of crashed rsp processes left in the
	// store (handover = "crash"); nil if none.
	rec *handover.Recovered
}

// conns is how many connections came.
func (in *inherited) conns() int {
	n := 0
	if in != nil && in.u != nil {
		n += len(in.u.Conns)
	}
	if in != nil && in.rec != nil {
		n += len(in.rec.Conns)
	}
	return n
}

// unpackHandover reads the hand-over among the descriptors passed, if
// any. One that cannot be read from the rsp before this one (SIGUSR2) is
// an error: this process must not start, and that one serves on. One
// from systemd's store is logged and dropped from the store, so that its
// connections are reset (Pack set SO_LINGER 0) and its listeners freed
// for this process to bind.
//
// What crashed processes' journals left is recovered (handover.Recover).
func unpackHandover(passed activation.Passed, logger *slog.Logger) (*inherited, error) {
	if len(passed.Handover) == 0 {
		return nil, nil
	}
	in := &inherited{passed: passed, parent: os.Getppid()}
	var files []*os.File
	var names []string
	for i, name := range passed.HandoverNames {
		if !strings.HasPrefix(name, activation.JournalPrefix) {
			files, names = append(files, passed.Handover[i]), append(names, name)
		}
	}
	if len(files) < len(passed.Handover) {
		in.rec = handover.Recover(passed.Handover, passed.HandoverNames)
	}
	if len(files) == 0 {
		return in, nil
	}
	u, lost, err := handover.Unpack(files, names)
	if err != nil {
		if passed.FromParent {
			return nil, fmt.Errorf("the rsp before this one handed over what this one cannot read: %w", err)
		}
		logger.Error("connections handed over through systemd's store cannot be read; they are reset", "err", err)
		if err := handover.Release(); err != nil {
			logger.Warn("cannot remove the handed-over descriptors from systemd's store", "err", err)
		}
		return in, nil
	}
	in.u, in.lost, in.listeners = u, lost, len(u.Listeners)
	return in, nil
}

// inheritedListeners returns the listeners handed over, by key; nil if none.
func (in *inherited) inheritedListeners() map[string]net.Listener {
	if in == nil || in.u == nil {
		return nil
	}
	return in.u.Listeners
}

// resume thaws the connections handed over into relay, routed by px,
// and closes the listeners px did not take. It runs after px.Apply.
func (in *inherited) resume(px *proxy.Proxy, relay *splice.Relay, logger *slog.Logger) {
	if in == nil {
		return
	}
	if in.rec != nil {
		in.resumeCrashed(px, relay, logger)
	}
	if in.u == nil {
		return
	}
	if !in.passed.FromParent {
		// systemd's copies would keep every socket open after rsp
		// closes it; and a journal (handover = "crash") can store a
		// socket again only once this copy is gone.
		if err := handover.Release(); err != nil {
			logger.Warn("cannot remove the handed-over descriptors from systemd's store", "err", err)
		}
	}
	pending := 0
	for _, fc := range in.u.Conns {
		if fc.Pending {
			pending++
		}
	}
	resumed, failed, inPipes := thawAll(in.u.Conns, px, relay, logger)
	for key, ln := range px.Inherited {
		ln.Close()
		delete(px.Inherited, key)
	}
	from := "systemd's file descriptor store"
	if in.passed.FromParent {
		from = fmt.Sprintf("rsp pid %d", in.parent)
	}
	logger.Info("took over live connections", "from", from, "conns", resumed, "lost", in.lost+failed, "listeners", in.listeners, "bytes_in_pipes", inPipes,
		"not_yet_connected", pending)
}

// thawAll resumes conns in relay, routed by px: it counts those resumed,
// those that failed (reset), and the bytes they had in pipes; the first
// failure is logged, with how many there were.
func thawAll(conns []splice.FrozenConn, px *proxy.Proxy, relay *splice.Relay, logger *slog.Logger) (resumed, failed, inPipes int) {
	var first error
	for _, fc := range conns {
		inPipes += fc.Up.N + fc.Down.N
		rt, t := px.Resume(fc)
		if err := relay.Thaw(fc, rt, t); err != nil {
			if first == nil {
				first = err
			}
			failed++
			continue
		}
		resumed++
	}
	if first != nil {
		logger.Warn("connections handed over could not be resumed and were reset", "count", failed, "first", first)
	}
	return resumed, failed, inPipes
}

// resumeCrashed resumes what crashed processes' journals left.
func (in *inherited) resumeCrashed(px *proxy.Proxy, relay *splice.Relay, logger *slog.Logger) {
	rec := in.rec
	in.rec = nil
	if err := handover.Forget(rec.Names); err != nil {
		logger.Warn("cannot remove a crashed rsp's descriptors from systemd's store", "err", err)
	}
	resumed, failed, inPipes := thawAll(rec.Conns, px, relay, logger)
	lvl := slog.LevelWarn
	if len(rec.Conns)+rec.Reset == 0 {
		lvl = slog.LevelInfo
	}
	logger.Log(context.Background(), lvl, "took over the live connections of an rsp that ended without handing over (crash survival)",
		"conns", resumed, "reset", rec.Reset+failed, "bytes_in_pipes", inPipes)
}

// abandon gives up the hand-over when this process cannot start: the
// connections stay with whoever else holds them, untouched.
func (in *inherited) abandon() {
	if in != nil && in.rec != nil {
		for i := range in.rec.Conns {
			in.rec.Conns[i].Forget()
		}
		in.rec = nil
	}
	if in == nil || in.u == nil {
		return
	}
	for i := range in.u.Conns {
		in.u.Conns[i].Forget()
	}
	for _, ln := range in.u.Listeners {
		ln.Close()
	}
	in.u = nil
}

// ready tells the rsp that started this one that it serves, and returns
// once the connections are this process's to resume.
func (in *inherited) ready() {
	if in != nil {
		handover.Ready(in.passed.Handover, in.passed.HandoverNames)
	}
}

// successor is what a hand-over to a new process (SIGUSR2) needs.
type successor struct {
	self    string   // this binary's path, found at start
	args    []string // this process's arguments
	config  string   // the configuration file, "" from the command line
	relay   *splice.Relay
	px      *proxy.Proxy
	sockets []activation.Listener // systemd's, passed on under their names
	logger  *slog.Logger
	// pause closes what the successor binds itself (metrics, control
	// socket); resume opens it again if the hand-over fails.
	pause, resume func()
}

// handOver starts a new rsp from s.self and gives it every listener and
// live connection; on success this process only has to exit. On failure
// everything is as it was, and the error says why.
func (s *successor) handOver() (pid int, conns int, err error) {
	if err := s.precheck(); err != nil {
		return 0, 0, err
	}
	frozen, err := s.relay.Freeze()
	if err != nil {
		return 0, 0, err
	}
	packed, err := handover.Pack(frozen, s.ownedListeners())
	for i := 0; err == nil && i < len(s.sockets); i++ {
		err = packed.AddListener(s.sockets[i].Name, s.sockets[i].Listener)
	}
	if err == nil {
		s.pause()
		var proc *os.Process
		proc, err = handover.Exec(s.self, s.args, packed, handoverTimeout)
		if err == nil {
			packed.Close()
			for i := range frozen {
				frozen[i].Forget()
			}
			return proc.Pid, len(frozen), nil
		}
		s.resume()
	}
	if packed != nil {
		packed.Close()
	}
	return 0, 0, errors.Join(err, s.takeBack(frozen))
}

// takeBack resumes here the connections of a hand-over that did not
// happen, as they left, and accepts again.
func (s *successor) takeBack(frozen []splice.FrozenConn) error {
	thawAll(frozen, s.px, s.relay, s.logger)
	s.relay.Unfreeze()
	return s.px.ServeAgain()
}

// ownedListeners returns the listeners rsp bound itself, in key order.
func (s *successor) ownedListeners() []handover.Listener {
	owned := s.px.Owned()
	keys := make([]string, 0, len(owned))
	for k := range owned {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var ls []handover.Listener
	for _, k := range keys {
		ls = append(ls, handover.Listener{Key: k, Listener: owned[k]})
	}
	return ls
}

// toStore freezes every live connection and stores it, with the
// listeners rsp bound itself, in systemd's file descriptor store, for
// the rsp that systemd starts next; limit is how many descriptors the
// store takes. On failure everything is as it was.
func (s *successor) toStore(limit int) (conns int, err error) {
	frozen, err := s.relay.Freeze()
	if err != nil {
		return 0, err
	}
	packed, err := handover.Pack(frozen, s.ownedListeners())
	if err == nil && len(packed.Files) > limit {
		err = fmt.Errorf("%d descriptors to store, and the unit's FileDescriptorStoreMax= (FDSTORE=) is %d: raise both", len(packed.Files), limit)
	}
	if err == nil {
		if err = handover.Store(packed); err == nil {
			packed.Close()
			for i := range frozen {
				frozen[i].Forget()
			}
			return len(frozen), nil
		}
		// Part of it may be stored: the next rsp must not get half.
		err = errors.Join(err, handover.Release())
	}
	if packed != nil {
		packed.Close()
	}
	return 0, errors.Join(err, s.takeBack(frozen))
}

// storeWanted says whether SIGTERM should hand the live connections over
// through systemd's store, under handover mode and relay: limit is how
// many descriptors the store takes; why, when not empty, says why not.
func storeWanted(mode, relay string) (limit int, why string) {
	switch {
	case mode == "off":
		return 0, "handover = \"off\""
	case relay != "splice":
		return 0, "relay = \"" + relay + "\": only the splice relay hands connections over"
	case os.Getenv("NOTIFY_SOCKET") == "" && os.Getenv("INVOCATION_ID") != "":
		return 0, "no NOTIFY_SOCKET: the unit is not Type=notify"
	case os.Getenv("NOTIFY_SOCKET") == "":
		return 0, "not run by systemd (SIGUSR2 hands over without it)"
	}
	limit, _ = strconv.Atoi(os.Getenv("FDSTORE"))
	if limit <= 0 {
		return 0, "the unit sets no FileDescriptorStoreMax= with Environment=FDSTORE= of the same value"
	}
	restart, known, err := stopMark()
	if !known && err == nil {
		// No ExecStop= helper in the unit: ask systemd directly, which
		// needs D-Bus and a user dbus-daemon knows (not a DynamicUser=).
		restart, err = restartPending("")
	}
	switch {
	case err != nil:
		return 0, err.Error()
	case !restart:
		return 0, "systemd stops rsp; no restart is pending"
	}
	return limit, ""
}

// stopMarker is the file, in the unit's RuntimeDirectory=, by which
// `rsp prepare-stop` (ExecStop=+, as root, before systemd's SIGTERM)
// tells rsp whether systemd restarts or stops it: "restart" or "stop".
const stopMarker = "stop-kind"

// markerPath is where stopMarker lives: in the first directory of
// RUNTIME_DIRECTORY (systemd joins several with ':'); "" if none.
func markerPath() string {
	dir, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":")
	if strings.TrimSpace(dir) == "" {
		return ""
	}
	return filepath.Join(dir, stopMarker)
}

// stopMark reads and removes the mark of `rsp prepare-stop`: restart
// tells a restart from a stop, known whether there was a mark.
func stopMark() (restart, known bool, err error) {
	path := markerPath()
	if path == "" {
		return false, false, nil
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, false, nil
	case err != nil:
		return false, false, fmt.Errorf("stop mark: %w", err)
	}
	os.Remove(path)
	return strings.TrimSpace(string(b)) == "restart", true, nil
}

// clearStopMark removes a mark left by a stop that did not end in
// SIGTERM (rsp had already exited).
func clearStopMark() {
	if path := markerPath(); path != "" {
		os.Remove(path)
	}
}

// runPrepareStop is `rsp prepare-stop UNIT`, run by the unit's
// ExecStop=+ as root before systemd sends SIGTERM: it marks the stop as
// a restart when systemd has a restart job for UNIT, else as a stop, so
// that rsp hands its connections over or drains them. It never fails the
// stop. The directory is the rsp user's: the file is made anew, never
// followed through a link.
func runPrepareStop(args []string, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "rsp: usage: rsp prepare-stop UNIT (ExecStop=+/usr/bin/rsp prepare-stop %n)")
		return 0
	}
	path := markerPath()
	if path == "" {
		fmt.Fprintln(stderr, "rsp prepare-stop: no RUNTIME_DIRECTORY: set RuntimeDirectory= in the unit; rsp will drain")
		return 0
	}
	kind := "stop"
	restart, err := restartPending(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "rsp prepare-stop: %v; rsp will drain\n", err)
	} else if restart {
		kind = "restart"
	}
	os.Remove(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
	if err == nil {
		// Readable by rsp's user whatever the unit's UMask=.
		if err = f.Chmod(0o644); err == nil {
			_, err = f.WriteString(kind + "\n")
		}
		f.Close()
	}
	if err != nil {
		fmt.Fprintf(stderr, "rsp prepare-stop: %v; rsp will drain\n", err)
	}
	return 0
}

// restartPending reports whether systemd is restarting unit (this
// process's own if "") rather than stopping it: only then
// does its file descriptor store outlive this process. A restart job
// shows as "restart" (systemctl restart, a package upgrade's
// try-restart).
func restartPending(unit string) (bool, error) {
	if unit == "" {
		var err error
		if unit, err = ownUnit(); err != nil {
			return false, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemctl", "list-jobs", "--no-legend", "--no-pager").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			err = fmt.Errorf("%w: %s", err, config.OneLine(string(ee.Stderr)))
		}
		return false, fmt.Errorf("systemctl list-jobs: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		// JOB UNIT TYPE STATE
		if f := strings.Fields(line); len(f) >= 3 && f[1] == unit && strings.Contains(f[2], "restart") {
			return true, nil
		}
	}
	return false, nil
}

// ownUnit returns the name of the systemd unit this process runs in,
// from its cgroup ("0::/system.slice/rsp.service").
func ownUnit() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("find rsp's unit: %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		_, path, ok := strings.Cut(line, "::")
		if !ok {
			continue
		}
		for _, part := range slices.Backward(strings.Split(path, "/")) {
			if strings.HasSuffix(part, ".service") {
				return part, nil
			}
		}
	}
	return "", fmt.Errorf("find rsp's unit: no .service in /proc/self/cgroup: %q", b)
}

// precheck runs the new binary on the configuration before anything is
// handed over: a binary that does not run, or a file it refuses, stops
// the hand-over while this process still serves.
func (s *successor) precheck() error {
	args := []string{"-version"}
	if s.config != "" {
		args = []string{"check", "-config", s.config}
	}
	ctx, cancel := context.WithTimeout(context.Background(), handoverTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, s.self, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v refused: %w: %s", s.self, args, err, config.OneLine(string(out)))
	}
	return nil
}

// openJournal starts crash survival for handover = "crash": a journal of
// loops event loops, kept in systemd's store. It returns nil, and says
// why, where that cannot be.
func openJournal(cfg *config.Config, loops int, logger *slog.Logger) *handover.Journal {
	if cfg.Handover != "crash" {
		return nil
	}
	limit, _ := strconv.Atoi(os.Getenv("FDSTORE"))
	why := ""
	switch {
	case cfg.Relay != "splice":
		why = "relay = \"" + cfg.Relay + "\": only the splice relay journals its connections"
	case os.Getenv("NOTIFY_SOCKET") == "":
		why = "not run by systemd as Type=notify (no NOTIFY_SOCKET)"
	case limit <= 0:
		why = "the unit sets no FileDescriptorStoreMax= with Environment=FDSTORE= of the same value"
	}
	if why == "" {
		if loops <= 0 {
			loops = runtime.GOMAXPROCS(0)
		}
		fds := limit
		var rl syscall.Rlimit
		if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur > 0 {
			fds = min(fds, int(min(rl.Cur, 1<<24)))
		}
		j, err := handover.OpenJournal(loops, fds)
		if err == nil {
			// A Go panic, a fatal error or the watchdog's SIGABRT then
			// ends rsp by a signal, which Restart=on-failure restarts
			// (exit status 2 is RestartPreventExitStatus=, for bad
			// configurations).
			debug.SetTraceback("crash")
			logger.Info("crash survival on: each connection is kept in systemd's store while it lives", "capacity", j.Capacity())
			return j
		}
		why = err.Error()
	}
	logger.Warn("handover = \"crash\": connections will not survive a crash", "why", why)
	return nil
}
