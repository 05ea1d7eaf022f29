package main

import (
	"errors"
	"slices"
	"testing"
	"time"

	"rsp/internal/splice"
)

func TestParseArgsClassic(t *testing.T) {
	o, err := parseArgs([]string{"8080", "backend.example", "9000"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.listen, []string{":8080"}) || o.backend != "backend.example:9000" {
		t.Fatalf("classic args gave listen=%v backend=%q", o.listen, o.backend)
	}
	if o.relay != splice.ModeSplice || o.connectTimeout != 5*time.Second || o.idleTimeout != 10*time.Minute || o.drainTimeout != 30*time.Second ||
		o.keepAlive != 15*time.Second || o.userTimeout != 0 || o.pipeSize != 0 {
		t.Fatalf("defaults wrong: %+v", o)
	}
}

func TestParseArgsFlags(t *testing.T) {
	o, err := parseArgs([]string{"-listen", "127.0.0.1:1,[::1]:2", "-listen", ":3", "-backend", "[::1]:80",
		"-relay", "copy", "-idle-timeout", "0", "-connect-timeout", "1s", "-log-level", "debug"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.listen, []string{"127.0.0.1:1", "[::1]:2", ":3"}) || o.backend != "[::1]:80" || o.relay != splice.ModeCopy || o.idleTimeout != 0 {
		t.Fatalf("flags gave %+v", o)
	}
	o, err = parseArgs([]string{"-tcp-keepalive", "0", "-tcp-user-timeout", "20s", "-pipe-size", "4096", "-notsent-lowat", "-1", "1", "h", "2"})
	if err != nil || o.keepAlive != 0 || o.userTimeout != 20*time.Second || o.pipeSize != 4096 || o.notSentLowat != -1 {
		t.Fatalf("keepalive flags gave %+v, %v", o, err)
	}
	// Flags after the classic arguments, and -listen overriding the port.
	o, err = parseArgs([]string{"8080", "10.0.0.1", "80", "-listen", "127.0.0.1:9"})
	if err != nil || !slices.Equal(o.listen, []string{"127.0.0.1:9"}) || o.backend != "10.0.0.1:80" {
		t.Fatalf("got %+v, %v", o, err)
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-nope"}, {"1", "2"}, {"99999", "h", "1"}, {"1", "h", "0"}, {"-backend", "h:1", "1", "h", "2"},
		{"-listen", ":1"}, {"-backend", "h"}, {"-backend", ":80"}, {"-relay", "x"}, {"-connect-timeout", "-1s", "1", "h", "2"},
		{"-connect-timeout", "0", "1", "h", "2"}, {"-idle-timeout", "721h", "1", "h", "2"}, {"-pipe-size", "4095", "1", "h", "2"},
		{"-notsent-lowat", "-2", "1", "h", "2"}, {"-notsent-lowat", "4095", "1", "h", "2"}, {"-notsent-lowat", "67108865", "1", "h", "2"},
		{"-tcp-keepalive", "1500ms", "1", "h", "2"}, {"-tcp-keepalive", "32768s", "1", "h", "2"}, {"-tcp-user-timeout", "1us", "1", "h", "2"},
		{"-config", "x.conf", "-tcp-keepalive", "5s"},
	} {
		_, err := parseArgs(args)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("parseArgs(%q) = %v, want a usage error", args, err)
		}
	}
}
