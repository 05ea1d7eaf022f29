package activation

import (
	"context"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify messages to systemd. Without NOTIFY_SOCKET
// every method does nothing, so callers need not check.
type Notifier struct {
	logger   *slog.Logger
	watchdog time.Duration // WATCHDOG_USEC, or 0
	status   string        // last STATUS= sent
}

// NewNotifier reads the watchdog settings (and unsets WATCHDOG_USEC and
// WATCHDOG_PID) and returns a Notifier that logs send failures to logger.
func NewNotifier(logger *slog.Logger) *Notifier {
	n := &Notifier{logger: logger}
	wd, err := daemon.SdWatchdogEnabled(true)
	if err != nil {
		logger.Warn("ignoring systemd watchdog settings", "err", err)
	}
	n.watchdog = wd
	return n
}

func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.logger.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// Ready tells systemd that rsp is serving its listeners.
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Reloading tells systemd that rsp is reloading its configuration; Ready
// must follow.
func (n *Notifier) Reloading() {
	n.send(daemon.SdNotifyReloading + "\nMONOTONIC_USEC=" + daemon.SdNotifyMonotonicUsec())
}

// Stopping tells systemd that rsp is shutting down.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Status sets the one-line status shown by systemctl status, if it
// changed since the last call.
func (n *Notifier) Status(s string) {
	if s == n.status {
		return
	}
	n.status = s
	n.send("STATUS=" + s)
}

// WatchdogInterval is the watchdog timeout systemd set, or 0.
func (n *Notifier) WatchdogInterval() time.Duration { return n.watchdog }

// Run updates STATUS= every second from status, and pings the watchdog at
// half its interval while healthy reports true, until ctx is done. It is
// meant to run in its own goroutine.
func (n *Notifier) Run(ctx context.Context, status func() string, healthy func() bool) {
	period := time.Second
	if n.watchdog > 0 && n.watchdog/2 < period {
		period = n.watchdog / 2
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		n.Status(status())
		if n.watchdog > 0 && healthy() {
			n.send(daemon.SdNotifyWatchdog)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
