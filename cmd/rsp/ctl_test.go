package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"rsp/internal/control"
)

// ctlServer serves a fake rsp on a control socket: "servers" answers a
// line, "drain" fails as an unknown server does.
func ctlServer(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rsp.ctl")
	h := control.HandlerFunc(func(_ control.Peer, args []string, out io.Writer) error {
		if args[0] == "drain" {
			return errors.New("unknown server " + args[1] + ": backend web has a, b")
		}
		fmt.Fprintln(out, strings.Join(args, " "))
		return nil
	})
	s, err := control.Listen(path, h, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return path
}

func TestCtl(t *testing.T) {
	path := ctlServer(t)
	missing := filepath.Join(t.TempDir(), "none.ctl")
	for _, c := range []struct {
		name   string
		env    string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"ok", "", []string{"-socket", path, "servers"}, 0, "servers\n", ""},
		{"env", path, []string{"maint", "web/a", "-kill"}, 0, "maint web/a -kill\n", ""},
		{"flag beats env", missing, []string{"-socket", path, "conns"}, 0, "conns\n", ""},
		{"server error", path, []string{"drain", "web/x"}, 1, "", "rsp ctl: unknown server web/x: backend web has a, b\n"},
		{"no socket", missing, []string{"servers"}, 1, "", "rsp ctl: control socket " + missing + " does not exist: is rsp running, with control = \"" + missing + "\" in [global]?\n"},
		{"unknown command", path, []string{"stats"}, 2, "", "rsp ctl: unknown command \"stats\": use servers, conns, drain, maint, ready, weight, help\nusage: rsp ctl [-socket PATH] servers | conns | drain B/S | maint B/S [-kill] | ready B/S | weight B/S N | help\n"},
		{"missing arg", path, []string{"weight", "web/a"}, 2, "", "rsp ctl: weight: missing weight; usage: weight B/S N\nusage: rsp ctl"},
		{"no command", path, nil, 2, "", "rsp ctl: no command given\n"},
		{"bad flag", path, []string{"-x", "servers"}, 2, "", "rsp ctl: flag provided but not defined: -x\n"},
		{"help", missing, []string{"help"}, 0, "usage: rsp ctl [-socket PATH] servers", ""},
		{"-h", missing, []string{"-h"}, 0, "usage: rsp ctl", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(ctlEnv, c.env)
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"ctl"}, c.args...), &stdout, &stderr)
			if code != c.code || !strings.HasPrefix(stdout.String(), c.stdout) || !strings.HasPrefix(stderr.String(), c.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q\nwant exit %d, stdout %q..., stderr %q...", code, stdout.String(), stderr.String(), c.code, c.stdout, c.stderr)
			}
			if c.code == 0 && stderr.Len() > 0 {
				t.Errorf("stderr on success: %q", stderr.String())
			}
		})
	}
}

func TestCtlHelpListsCommands(t *testing.T) {
	var stdout bytes.Buffer
	if code := run([]string{"ctl", "help"}, &stdout, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, cmd := range []string{"servers", "conns", "drain B/S", "maint B/S [-kill]", "ready B/S", "weight B/S N", "help", "$RSP_CTL", control.DefaultPath} {
		if !strings.Contains(stdout.String(), cmd) {
			t.Errorf("help lacks %q:\n%s", cmd, stdout.String())
		}
	}
}
