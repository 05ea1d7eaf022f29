package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"
)

// runDemo starts a small built-in echo backend on loopback and an rsp in
// front of it, so a newcomer can try rsp with nothing else installed.
func runDemo(args []string, stdout, stderr io.Writer) int {
	o := &options{}
	fs := newFlagSet("rsp demo", o)
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "rsp: %v\n", flagError(err))
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "rsp: demo takes no arguments, got %q; run 'rsp demo -listen [HOST]:PORT' to pick the port\n", fs.Args())
		return 2
	}
	if o.help {
		fmt.Fprint(stdout, "usage: rsp demo [-listen [HOST]:PORT] [other rsp flags]\n\nStarts a built-in echo backend on 127.0.0.1 and rsp in front of it\n(default -listen 127.0.0.1:8080).\n")
		return 0
	}
	if len(o.listen) == 0 {
		o.listen = []string{"127.0.0.1:8080"}
	}
	for _, a := range o.listen {
		if err := checkListen(a); err != nil {
			fmt.Fprintf(stderr, "rsp: %v\n", err)
			return 2
		}
	}
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(stderr, "rsp: demo backend: %v\n", err)
		return 1
	}
	defer echo.Close()
	go serveEcho(echo)
	o.backend = echo.Addr().String()
	level := new(slog.LevelVar)
	level.Set(o.logLevel)
	return serve(o, stderr, level, func(addrs []string) {
		fmt.Fprintf(stdout, "rsp demo: forwarding %s -> built-in echo backend %s (relay=%s)\n", strings.Join(addrs, ", "), o.backend, o.relay)
		if err := selfCheck(addrs[0]); err != nil {
			fmt.Fprintf(stdout, "self-check through rsp FAILED: %v\n", err)
		} else {
			fmt.Fprintf(stdout, "self-check: a line sent to %s came back through rsp intact\n", addrs[0])
		}
		host, port, _ := net.SplitHostPort(addrs[0])
		fmt.Fprintf(stdout, "try it:   nc %s %s    (type a line, it comes back through rsp; Ctrl-C stops rsp)\n", host, port)
	})
}

// selfCheck sends one line through rsp at addr and checks the echo.
func selfCheck(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		return fmt.Errorf("read greeting: %w", err)
	}
	const probe = "rsp self-check\n"
	if _, err := io.WriteString(c, probe); err != nil {
		return err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if got != "echo: "+probe {
		return fmt.Errorf("echo was %q, want %q", got, "echo: "+probe)
	}
	return nil
}

// serveEcho is the demo backend: it greets each client and echoes every
// line back.
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go echoLines(c)
	}
}

func echoLines(c net.Conn) {
	defer c.Close()
	fmt.Fprintf(c, "hello %s, this is rsp's demo echo backend at %s\n", c.RemoteAddr(), c.LocalAddr())
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			if _, werr := io.WriteString(c, "echo: "+line); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
