// Command rsp is a TCP reverse proxy that relays each connection to a
// backend with splice(2), taking its listeners from systemd socket
// activation or binding them itself.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"rsp/internal/activation"
	"rsp/internal/splice"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is rsp's whole life; it returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "demo":
			return runDemo(args[1:], stdout, stderr)
		case "bench":
			return runBench(args[1:], stdout, stderr)
		case "bench-backend", "bench-iocopy":
			return runBenchHelper(args[0], args[1:], stdout, stderr)
		}
	}
	o, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "rsp: %v\n", err)
		return 2
	}
	switch {
	case o.help:
		fmt.Fprint(stdout, usageText)
		return 0
	case o.version:
		fmt.Fprintf(stdout, "rsp %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	logger := newLogger(stderr, o.logLevel)
	return serve(o, logger, stderr, nil)
}

// serve runs the proxy until a signal stops it. ready, if not nil, is
// called with the listeners' addresses once they are served.
func serve(o *options, logger *slog.Logger, stderr io.Writer, ready func([]string)) int {
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "rsp: %v\n", err)
		return code
	}
	backend, err := resolveBackend(context.Background(), o.backend)
	if err != nil {
		return fail(2, err)
	}
	lns, activated, err := listeners(o, logger)
	if err != nil {
		var le *activation.ListenError
		var ue *usageError
		if errors.As(err, &le) || errors.As(err, &ue) {
			return fail(2, err)
		}
		return fail(1, err)
	}
	// Catch signals before announcing readiness: SIGUSR1's default
	// action would kill the process.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(sigs)
	relay := &splice.Relay{
		Backend:        backend,
		Mode:           o.relay,
		ConnectTimeout: o.connectTimeout,
		IdleTimeout:    o.idleTimeout,
		PipeSize:       o.pipeSize,
		Logger:         logger,
	}
	plain := make([]net.Listener, len(lns))
	addrs := make([]string, len(lns))
	for i, l := range lns {
		plain[i] = l.Listener
		addrs[i] = l.Addr().String()
	}
	if err := relay.Start(plain); err != nil {
		return fail(1, fmt.Errorf("start relay: %w", err))
	}
	notifier := activation.NewNotifier(logger)
	notifier.Ready()
	logger.Info("rsp started", "version", version, "listen", strings.Join(addrs, ","),
		"backend", backend.String(), "relay", o.relay.String(), "socket_activated", activated)
	if ready != nil {
		ready(addrs)
	}

	ctx, stopNotifier := context.WithCancel(context.Background())
	defer stopNotifier()
	go notifier.Run(ctx, func() string { return statusLine(relay.Stats()) },
		func() bool { return relay.Alive(time.Second) })

	for sig := range sigs {
		switch sig {
		case syscall.SIGUSR1:
			logStats(logger, relay.Stats())
			continue
		case syscall.SIGHUP:
			logger.Warn("SIGHUP ignored: this rsp has no configuration file to reload")
			continue
		}
		break
	}

	notifier.Stopping()
	st := relay.Stats()
	logger.Info("stopping: no new connections; draining live ones", "active", st.Active, "drain_timeout", o.drainTimeout.String())
	drainCtx, cancel := context.WithTimeout(context.Background(), o.drainTimeout)
	defer cancel()
	go func() {
		// A second SIGTERM/SIGINT ends the drain at once.
		for sig := range sigs {
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				cancel()
				return
			}
		}
	}()
	if err := relay.Shutdown(drainCtx); err != nil {
		logger.Warn("drain ended before all connections finished; closed the rest", "err", err)
	}
	logger.Info("stopped", "accepted", relay.Stats().Accepted)
	return 0
}

// listeners returns systemd's sockets when socket-activated (activated
// is then true), else binds o.listen.
func listeners(o *options, logger *slog.Logger) (lns []activation.Listener, activated bool, err error) {
	if activation.Activated() {
		lns, err := activation.FromSystemd()
		if err != nil {
			return nil, false, err
		}
		if len(lns) > 0 {
			if len(o.listen) > 0 {
				logger.Info("socket-activated: ignoring -listen", "listen", strings.Join(o.listen, ","))
			}
			return lns, true, nil
		}
	}
	if len(o.listen) == 0 {
		return nil, false, usagef("nothing to listen on: give <listen_port>, -listen [HOST]:PORT, or start rsp from a systemd socket unit")
	}
	var out []activation.Listener
	for _, a := range o.listen {
		l, err := activation.Listen(a)
		if err != nil {
			for _, prev := range out {
				prev.Close()
			}
			return nil, false, err
		}
		out = append(out, l)
	}
	return out, false, nil
}

// statusLine is the STATUS= text systemctl status shows.
func statusLine(s splice.Stats) string {
	return fmt.Sprintf("%d active connections, %d accepted, %d backend failures", s.Active, s.Accepted, s.Failed)
}

// logStats logs the relay's counters and the process's goroutines and
// fds (SIGUSR1).
func logStats(logger *slog.Logger, s splice.Stats) {
	fds := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(ents)
	}
	logger.Info("stats", "active", s.Active, "accepted", s.Accepted, "failed", s.Failed,
		"pipes", s.Pipes, "idle_pipes", s.IdlePipes, "goroutines", runtime.NumGoroutine(), "fds", fds)
}

// newLogger logs text to w; under journald (JOURNAL_STREAM set) without
// timestamps, since the journal adds its own.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
