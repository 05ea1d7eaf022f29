// Command rsp is a TCP reverse proxy that relays each connection to a
// backend with splice(2), taking its listeners from systemd socket
// activation or binding them itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"rsp/internal/activation"
	"rsp/internal/balance"
	"rsp/internal/config"
	"rsp/internal/connlog"
	"rsp/internal/discovery"
	"rsp/internal/metrics"
	"rsp/internal/proxy"
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
		case "check":
			return runCheck(args[1:], stdout, stderr)
		case "prepare-stop":
			return runPrepareStop(args[1:], stderr)
		case "ctl":
			return runCtl(args[1:], stdout, stderr)
		case "bench":
			return runBench(args[1:], stdout, stderr)
		case "bench-backend", "bench-iocopy", "bench-http":
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
	level := new(slog.LevelVar)
	level.Set(o.logLevel)
	return serve(o, stderr, level, nil)
}

// printErr writes err to w, one "rsp: " line per line of it.
func printErr(w io.Writer, err error) {
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(w, "rsp: %s\n", line)
	}
}

// loadConfig returns the configuration to run: the -config file, or the
// command line's one frontend and one server.
func loadConfig(o *options, sd []activation.Listener) (*config.Config, error) {
	if o.config != "" {
		return config.Load(o.config)
	}
	addr, err := config.ResolveServer(context.Background(), "backend", o.backend)
	if err != nil {
		return nil, &usageError{msg: err.Error()}
	}
	// -tcp-keepalive and -tcp-user-timeout apply to both sides.
	ka := splice.KeepAlive{Idle: o.keepAlive, Interval: o.keepAlive, UserTimeout: o.userTimeout}
	fe := &config.Frontend{
		Name: "default", Listen: o.listen, Backend: "default",
		ConnectTimeout: o.connectTimeout, IdleTimeout: o.idleTimeout, HalfCloseTimeout: o.halfClose,
		KeepAlive: ka, Where: "command line",
	}
	if len(sd) > 0 {
		fe.Listen, fe.Socket = nil, config.AnySocket
	} else if len(o.listen) == 0 {
		return nil, usagef("nothing to listen on: give <listen_port>, -listen [HOST]:PORT, or start rsp from a systemd socket unit")
	}
	return &config.Config{
		Path: "command line", MaxConn: o.maxConn, Relay: o.relay.String(),
		DrainTimeout: o.drainTimeout, PipeSize: o.pipeSize, NotSentLowat: o.notSentLowat,
		Metrics: o.metrics, Control: o.control, ConnLog: o.connLog, LogFormat: o.logFormat, ConnLogSample: 1, Handover: "auto",
		Frontends: []*config.Frontend{fe},
		Backends: []*config.Backend{{
			Name: "default", Balance: balance.RoundRobin, KeepAlive: ka,
			Servers: []balance.ServerConfig{{Name: o.backend, Addr: addr, Weight: 1}},
		}},
	}, nil
}

// serve runs the proxy until a signal stops it, logging to stderr. ready,
// if not nil, is called with the listeners' addresses once they are
// served.
func serve(o *options, stderr io.Writer, level *slog.LevelVar, ready func([]string)) int {
	logger := newLogger(stderr, level, "text")
	self, _ := os.Executable() // before an upgrade replaces the file
	clearStopMark()
	var sd, metricsSockets []activation.Listener
	var taken *inherited
	if activation.Activated() {
		passed, err := activation.FromSystemd()
		if err != nil {
			printErr(stderr, err)
			return 1
		}
		sd = passed.Listeners
		if taken, err = unpackHandover(passed, logger); err != nil {
			printErr(stderr, err)
			return 1
		}
		sd, metricsSockets = splitMetricsSockets(sd)
		if len(sd) > 0 && len(o.listen) > 0 && o.config == "" {
			logger.Info("socket-activated: ignoring -listen", "listen", strings.Join(o.listen, ","))
		}
	}
	cfg, err := loadConfig(o, sd)
	if err != nil {
		printErr(stderr, err)
		return 2
	}
	if cfg.LogFormat == "json" {
		logger = newLogger(stderr, level, cfg.LogFormat)
	}
	connMode, _ := connlog.ParseMode(cfg.ConnLog)
	connLog := connlog.NewBatched(stderr, func(w connlog.Writer) slog.Handler {
		// Its own switch (conn_log), whatever log_level says.
		return newHandler(w, slog.LevelInfo, cfg.LogFormat)
	}, connMode, cfg.ConnLogSample)
	defer connLog.Close()
	if o.config != "" && !o.set["log-level"] {
		level.Set(parseLevel(cfg.LogLevel))
	}
	// Catch signals before announcing readiness: SIGUSR1's default
	// action would kill the process.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	mode, _ := splice.ParseMode(cfg.Relay)
	relay := &splice.Relay{Mode: mode, MaxConn: cfg.MaxConn, PipeSize: cfg.PipeSize, NotSentLowat: cfg.NotSentLowat, Loops: eventLoops(mode), Logger: logger, OnEnd: connLog.Log}
	journal := openJournal(cfg, relay.Loops, logger)
	if journal != nil {
		relay.Journal = journal // mapped until the process exits: loops write to it to the end
	}
	if err := relay.Start(); err != nil {
		printErr(stderr, fmt.Errorf("start relay: %w", err))
		return 1
	}
	// abort ends a start that failed once listeners may have accepted:
	// those clients are reset, not waited for.
	abort := func() {
		taken.abandon()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		relay.Shutdown(ctx)
	}
	px := &proxy.Proxy{Relay: relay, Logger: logger, Systemd: sd, Inherited: taken.inheritedListeners()}
	if err := px.Apply(cfg); err != nil {
		abort()
		printErr(stderr, err)
		var le *activation.ListenError
		if errors.As(err, &le) || o.config != "" {
			return 2
		}
		return 1
	}
	addrs := px.Addrs()
	reloads := &metrics.Reloads{}
	reloads.Loaded()
	running := &runningConfig{}
	running.set(cfg)
	metricsSources := metrics.Sources{
		Relay: relay, Servers: func() []metrics.ServerState { return serverStates(px) }, Frontends: running.frontends, MaxConn: running.maxConn,
		Reloads: reloads, ConnLog: connLog, Version: version,
	}
	var journaled func() (kept, waiting int64) // nil: crash survival off
	if journal != nil {
		journaled = journal.Counts
		metricsSources.Journal = journaled
	}
	metricsSrv, err := serveMetrics(cfg, metricsSockets, metricsSources, logger)
	if err != nil {
		abort()
		px.Close()
		printErr(stderr, err)
		return 2
	}
	ctl := serveControl(cfg, px, relay, logger)
	// closeObservers closes the metrics listener rsp bound and the control
	// socket, so that a successor can have them; the metrics socket of
	// systemd stays served until this process ends (the successor gets
	// its own copy).
	closeObservers := func() {
		if metricsSrv != nil && len(metricsSockets) == 0 {
			metricsSrv.Close()
			metricsSrv = nil
		}
		if ctl != nil {
			ctl.Close()
			ctl = nil
		}
	}
	defer func() {
		closeObservers()
		if metricsSrv != nil {
			metricsSrv.Close()
		}
	}()
	if taken != nil && taken.passed.FromParent && testFailTakeOver() {
		abort()
		px.Close()
		printErr(stderr, errors.New("test: failing after a hand-over (RSP_TEST_FAIL_TAKEOVER)"))
		return 1
	}
	if taken.conns() > 0 && mode != splice.ModeSplice {
		// The copy relay cannot resume them: they would all be reset.
		err := fmt.Errorf("%d live connections were handed over, and relay = %q cannot resume them: only the splice relay can; change relay with a stop and a start", taken.conns(), cfg.Relay)
		if taken.passed.FromParent {
			abort()
			px.Close()
			printErr(stderr, err)
			return 1
		}
		logger.Error("handed-over connections reset", "err", err)
	}
	// Nothing can fail from here on: the rsp before this one lets go of
	// the connections, and this one resumes them.
	taken.ready()
	taken.resume(px, relay, logger)
	if journal != nil {
		if err := journal.Publish(); err != nil {
			logger.Error("crash survival off: connections will not survive a crash", "err", err)
		}
	}
	notifier := activation.NewNotifier(logger)
	notifier.Ready()
	started := []any{"version", version, "listen", strings.Join(addrs, ","), "relay", cfg.Relay, "socket_activated", len(sd) > 0}
	if o.config != "" {
		started = append(started, "config", o.config, "frontends", len(cfg.Frontends), "backends", len(cfg.Backends))
	} else {
		started = append(started, "backend", cfg.Backends[0].Servers[0].Addr.String())
	}
	logger.Info("rsp started", started...)
	if ready != nil {
		ready(addrs)
	}

	ctx, stopNotifier := context.WithCancel(context.Background())
	defer stopNotifier()
	go notifier.Run(ctx, func() string { return statusLine(relay.Stats(), journaled) },
		func() bool { return relay.Alive(time.Second) })

	names := discovery.New(logger)
	defer names.Stop()
	names.Watch(cfg)
	next := &successor{self: self, args: os.Args[1:], config: o.config, relay: relay, px: px,
		sockets: append(slices.Clone(sd), metricsSockets...), logger: logger,
		pause: closeObservers,
		resume: func() {
			if metricsSrv == nil {
				if metricsSrv, err = serveMetrics(cfg, metricsSockets, metricsSources, logger); err != nil {
					logger.Error("metrics not served again", "err", err)
				}
			}
			ctl = serveControl(cfg, px, relay, logger)
		},
	}
	// handedOver ends this process once the next one holds everything.
	handedOver := func(msg string, args ...any) int {
		names.Stop()
		closeObservers()
		px.CloseHandedOver()
		logger.Info(msg, args...)
		// Connections the splice relay could not carry (the copy
		// relay's) drain here; a second SIGTERM or SIGINT ends it.
		ctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		go endDrainOnSignal(sigs, cancel)
		relay.Shutdown(ctx)
		cancel()
		logger.Info("stopped", "accepted", relay.Stats().Accepted)
		return 0
	}
	var stopSig os.Signal
	for sig := range signalsAndNames(sigs, names, func(u discovery.Update) {
		if next := applyNames(u, cfg, px, names, logger); next != nil {
			cfg = next
			running.set(cfg)
		}
	}) {
		switch sig {
		case syscall.SIGUSR1:
			logStats(logger, relay.Stats())
			continue
		case syscall.SIGUSR2:
			if os.Getenv("NOTIFY_SOCKET") != "" || os.Getenv("INVOCATION_ID") != "" {
				// A successor would not be systemd's child: systemd
				// cannot watch it, and kills it at once on stop.
				logger.Warn("SIGUSR2 ignored under systemd: `systemctl restart` hands the live connections over (see handover)")
				continue
			}
			logger.Info("SIGUSR2: handing listeners and live connections over to a new rsp", "binary", self)
			pid, conns, err := next.handOver()
			if err != nil {
				logger.Error("hand-over failed; this rsp serves on", "err", config.OneLine(err.Error()))
				continue
			}
			return handedOver("handed over", "pid", pid, "conns", conns)
		case syscall.SIGHUP:
			if o.config == "" {
				logger.Warn("SIGHUP ignored: rsp runs from the command line, with no configuration file to reload (use -config)")
				continue
			}
			var err error
			cfg, err = reload(o, cfg, px, relay, notifier, logger, level)
			reloads.Record(err)
			if err == nil {
				connMode, _ := connlog.ParseMode(cfg.ConnLog)
				connLog.Set(connMode, cfg.ConnLogSample)
				running.set(cfg)
				names.Watch(cfg)
			}
			continue
		}
		stopSig = sig
		break
	}

	if stopSig == syscall.SIGTERM {
		if limit, why := storeWanted(cfg.Handover, cfg.Relay); why != "" {
			lvl := slog.LevelInfo
			if cfg.Handover == "restart" {
				lvl = slog.LevelWarn
			}
			logger.Log(context.Background(), lvl, "SIGTERM: live connections not handed over", "why", why)
		} else if conns, err := next.toStore(limit); err != nil {
			logger.Error("SIGTERM: hand-over to systemd's store failed; draining", "err", config.OneLine(err.Error()))
		} else {
			return handedOver("handed over to systemd's store for the restart", "conns", conns)
		}
	}
	notifier.Stopping()
	names.Stop() // no server changes while draining
	st := relay.Stats()
	logger.Info("stopping: no new connections; draining live ones", "active", st.Active, "drain_timeout", cfg.DrainTimeout.String())
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	go endDrainOnSignal(sigs, cancel)
	if err := relay.Shutdown(drainCtx); err != nil {
		logger.Warn("drain ended before all connections finished; closed the rest", "err", err)
	}
	px.Close()
	logger.Info("stopped", "accepted", relay.Stats().Accepted)
	return 0
}

// endDrainOnSignal ends a drain (cancel) at the next SIGTERM or SIGINT.
func endDrainOnSignal(sigs <-chan os.Signal, cancel context.CancelFunc) {
	for sig := range sigs {
		if sig == syscall.SIGTERM || sig == syscall.SIGINT {
			cancel()
			return
		}
	}
}

// signalsAndNames yields the signals received, and passes each update
// of the server names to apply in between, on the caller's goroutine:
// the two change the running configuration one at a time.
func signalsAndNames(sigs <-chan os.Signal, names *discovery.Watcher, apply func(discovery.Update)) func(yield func(os.Signal) bool) {
	return func(yield func(os.Signal) bool) {
		for {
			select {
			case sig := <-sigs:
				if !yield(sig) {
					return
				}
			case u := <-names.Updates():
				apply(u)
			}
		}
	}
}

// applyNames applies the servers a name now gives, as a reload does:
// new servers join, vanished ones take no new connections and keep
// their live ones. It returns the configuration now running, or nil if
// the update is stale or could not apply.
func applyNames(u discovery.Update, cur *config.Config, px *proxy.Proxy, names *discovery.Watcher, logger *slog.Logger) (next *config.Config) {
	defer func() { u.Done(next != nil) }()
	if u.Gen != names.Gen() {
		return nil
	}
	next = cur.WithFound(u.Key, u.Found, u.TTL)
	if next == nil {
		return nil
	}
	if err := px.Apply(next); err != nil {
		logger.Error("servers found by DNS not applied; the running ones keep serving", "server", u.Key, "name", u.Name, "err", config.OneLine(err.Error()))
		return nil
	}
	added, removed := discovery.Changes(u.Was, u.Found)
	logger.Info("servers changed by DNS", "server", u.Key, "name", u.Name, "servers", len(u.Found), "added", added, "removed", removed, "ttl", u.TTL.String())
	return next
}

// reload re-reads the configuration file and applies it; on any error
// the running configuration keeps serving, unchanged (proxy.Apply is all
// or nothing), and the reload is logged as refused. It returns the
// configuration now running, and the error that refused the new one.
func reload(o *options, cur *config.Config, px *proxy.Proxy, relay *splice.Relay, n *activation.Notifier, logger *slog.Logger, level *slog.LevelVar) (*config.Config, error) {
	n.Reloading()
	defer n.Ready()
	cfg, err := config.LoadAfter(o.config, cur)
	if err == nil {
		err = px.Apply(cfg)
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			logger.Error("reload refused; the running configuration keeps serving", "err", line)
		}
		return cur, err
	}
	if cfg.Relay != cur.Relay || cfg.PipeSize != cur.PipeSize || cfg.NotSentLowat != cur.NotSentLowat {
		logger.Warn("relay, pipe_size and notsent_lowat take effect at the next restart", "relay", cur.Relay, "pipe_size", cur.PipeSize, "notsent_lowat", cur.NotSentLowat)
		cfg.Relay, cfg.PipeSize, cfg.NotSentLowat = cur.Relay, cur.PipeSize, cur.NotSentLowat
	}
	if cfg.Metrics != cur.Metrics || cfg.Control != cur.Control || cfg.LogFormat != cur.LogFormat {
		logger.Warn("metrics, control and log_format take effect at the next restart", "metrics", cur.Metrics, "control", cur.Control, "log_format", cur.LogFormat)
		cfg.Metrics, cfg.Control, cfg.LogFormat = cur.Metrics, cur.Control, cur.LogFormat
	}
	relay.SetMaxConn(cfg.MaxConn)
	if !o.set["log-level"] {
		level.Set(parseLevel(cfg.LogLevel))
	}
	logger.Info("configuration reloaded", "config", o.config, "listen", strings.Join(px.Addrs(), ","),
		"frontends", len(cfg.Frontends), "backends", len(cfg.Backends))
	return cfg, nil
}

// runCheck is 'rsp check -config FILE': it validates without starting.
func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rsp check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	path := fs.String("config", "", "")
	if err := fs.Parse(args); err != nil {
		printErr(stderr, flagError(err))
		return 2
	}
	if *path == "" && fs.NArg() == 1 {
		*path = fs.Arg(0)
	} else if *path == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "rsp: usage: rsp check -config FILE")
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		printErr(stderr, err)
		return 1
	}
	servers := 0
	for _, b := range cfg.Backends {
		servers += len(b.Servers)
	}
	fmt.Fprintf(stdout, "%s: configuration OK: %d frontends, %d backends, %d servers\n", *path, len(cfg.Frontends), len(cfg.Backends), servers)
	return 0
}

// eventLoops returns how many splice event loops to run, one per P the Go
// runtime chose (the CPUs, the cgroup's CPU limit or $GOMAXPROCS), and
// gives the runtime one P more for everything else: timers, health
// checks, signals, the copy relay. With every P held by a loop, the
// runtime takes a loop's P each time it waits in epoll_wait and wakes
// threads to find work that is not there; the spare P, with the loops'
// periodic yield, cut proxy CPU per round trip (README, design table).
// Setting GOMAXPROCS stops the
// runtime from following later changes of a cgroup's CPU limit. Call it
// once, from serve: it raises GOMAXPROCS.
func eventLoops(mode splice.Mode) int {
	if mode != splice.ModeSplice || runtime.GOOS != "linux" {
		return 0
	}
	n := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(n + 1)
	return n
}

// parseLevel reads a level the config package has checked.
func parseLevel(s string) slog.Level {
	var l slog.Level
	levelFlag{&l}.Set(s)
	return l
}

// statusLine is the STATUS= text systemctl status shows; with journaled
// (crash survival), also how many connections a crash would keep.
func statusLine(s splice.Stats, journaled func() (kept, waiting int64)) string {
	line := fmt.Sprintf("%d active connections, %d accepted, %d backend failures", s.Active, s.Accepted, s.Failed)
	if journaled == nil {
		return line
	}
	kept, waiting := journaled()
	line += fmt.Sprintf(", %d kept in systemd's store", kept)
	if waiting > 0 {
		line += fmt.Sprintf(" (%d messages waiting for room in its queue)", waiting)
	}
	return line
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

// newLogger logs to w in format ("text" for logfmt, or "json").
func newLogger(w io.Writer, level slog.Leveler, format string) *slog.Logger {
	return slog.New(newHandler(w, level, format))
}

// newHandler formats log records for w: logfmt, or JSON for format
// "json"; under journald (JOURNAL_STREAM set) without timestamps, since
// the journal adds its own.
func newHandler(w io.Writer, level slog.Leveler, format string) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		}
	}
	if format == "json" {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}
