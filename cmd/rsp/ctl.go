package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"rsp/internal/control"
)

// ctlEnv names the environment variable that gives rsp ctl's socket
// when -socket does not.
const ctlEnv = "RSP_CTL"

// ctlUsage is rsp ctl's synopsis.
func ctlUsage() string {
	return "usage: rsp ctl [-socket PATH] " + control.Usage()
}

// runCtl is `rsp ctl`: it sends one command to the running rsp over its
// control socket and prints the answer. Exit 0 on success, 1 when the
// command or the socket failed, 2 for a mistake on the command line.
func runCtl(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rsp ctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def := control.DefaultPath
	if p := os.Getenv(ctlEnv); p != "" {
		def = p
	}
	socket := fs.String("socket", def, "")
	usage := func(err error) int {
		fmt.Fprintf(stderr, "rsp ctl: %v\n%s\n", err, ctlUsage())
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			ctlHelp(stdout)
			return 0
		}
		return usage(err)
	}
	cmd := fs.Args()
	if len(cmd) == 1 && cmd[0] == "help" {
		ctlHelp(stdout) // needs no running rsp
		return 0
	}
	if err := control.CheckArgs(cmd); err != nil {
		return usage(err)
	}
	if err := control.Do(*socket, cmd, stdout); err != nil {
		fmt.Fprintf(stderr, "rsp ctl: %v\n", err)
		return 1
	}
	return 0
}

// ctlHelp writes rsp ctl's usage and its commands.
func ctlHelp(w io.Writer) {
	fmt.Fprintln(w, ctlUsage())
	fmt.Fprintln(w)
	control.Help(w)
	fmt.Fprintf(w, "\nThe socket is -socket PATH, else $%s, else %s; only root and rsp's own user may use it.\n", ctlEnv, control.DefaultPath)
}
