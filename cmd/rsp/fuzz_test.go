package main

import (
	"errors"
	"strings"
	"testing"

	"rsp/internal/config"
)

// FuzzParseArgs: any command line (arguments separated by NUL) is either
// accepted with a backend and somewhere to listen, or refused with one
// line that says what is wrong; never a panic.
func FuzzParseArgs(f *testing.F) {
	for _, seed := range []string{
		"8080\x00127.0.0.1\x0080",
		"-listen\x00[::1]:0\x00-backend\x00unix:/run/app.sock\x00-relay\x00copy",
		"-config\x00/etc/rsp/rsp.conf\x00-log-level\x00debug",
		"8080\x00example.org\x0080\x00-idle-timeout\x001m\x00-maxconn\x0010",
		"-connect-timeout\x00-1s\x00:1\x00a\x00b",
		"-tcp-keepalive\x0030s\x00-tcp-user-timeout\x0010s\x00-pipe-size\x004096\x008080\x00h\x0080",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		var args []string
		if line != "" {
			args = strings.Split(line, "\x00")
		}
		o, err := parseArgs(args)
		if err != nil {
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("error %T %v is not a usage error", err, err)
			}
			if msg := err.Error(); msg == "" || strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error %q is not one line", msg)
			}
			return
		}
		if o.help || o.version || o.config != "" {
			return
		}
		if o.backend == "" || o.connectTimeout <= 0 || o.maxConn < 0 {
			t.Fatalf("accepted %q with backend %q, connect timeout %v, maxconn %d", args, o.backend, o.connectTimeout, o.maxConn)
		}
		if max(o.connectTimeout, o.idleTimeout, o.halfClose, o.drainTimeout, o.userTimeout) > config.MaxTimeout ||
			o.keepAlive < 0 || o.keepAlive > config.MaxKeepAlive || o.userTimeout < 0 ||
			(o.pipeSize != 0 && (o.pipeSize < config.MinPipeSize || o.pipeSize > config.MaxPipeSize)) ||
			(o.notSentLowat != 0 && o.notSentLowat != -1 && (o.notSentLowat < config.MinNotSentLowat || o.notSentLowat > config.MaxNotSentLowat)) {
			t.Fatalf("accepted %q with out-of-range settings %+v", args, o)
		}
	})
}
