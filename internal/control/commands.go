package control

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"rsp/internal/balance"
	"rsp/internal/proxy"
	"rsp/internal/splice"
)

// Runtime is the running configuration's servers; *proxy.Proxy is one.
type Runtime interface {
	// Servers lists every server, in configuration order.
	Servers() []proxy.ServerView
	// Server finds the server named "BACKEND/SERVER".
	Server(name string) (*balance.Server, error)
}

// Conns is the relay's live connections; *splice.Relay is one.
type Conns interface {
	// Conns lists the live connections.
	Conns() []splice.ConnInfo
	// Kill resets the live connections to the server named
	// "BACKEND/SERVER" and returns how many.
	Kill(server string) int
}

// What rsp serves on the control socket.
var (
	_ Runtime = (*proxy.Proxy)(nil)
	_ Conns   = (*splice.Relay)(nil)
)

// Commands is the Handler of rsp's control socket: it runs rsp ctl's
// commands on Runtime and Conns.
type Commands struct {
	Runtime Runtime
	Conns   Conns
	// Logger receives a line for every command run; nil means
	// slog.Default(). A server's change is logged by its pool's logger.
	Logger *slog.Logger
}

// call is one request being answered.
type call struct {
	peer Peer
	args []string // command first
	out  io.Writer
}

// command is one rsp ctl command.
type command struct {
	name  string
	usage string // arguments, as help shows them
	help  string
	check func(args []string) error // args after the name
	run   func(c *Commands, k call) error
}

// commands lists rsp ctl's commands, in the order help shows them.
func commands() []command {
	return []command{
		{"servers", "", "list every server: state, weight, connections, check results, and which are backups", noArgs, (*Commands).servers},
		{"conns", "", "list the live connections", noArgs, (*Commands).conns},
		{"drain", "B/S", "send no new connections to server S of backend B; live ones carry on", serverArg, (*Commands).drain},
		{"maint", "B/S [-kill]", "take B/S out of rotation (health checks go on); -kill also resets its connections", maintArgs, (*Commands).maint},
		{"ready", "B/S", "put B/S back in rotation (after drain or maint)", serverArg, (*Commands).ready},
		{"weight", "B/S N", fmt.Sprintf("set B/S's weight to N, 0 to %d, until the file changes it", balance.MaxWeight), weightArgs, (*Commands).weight},
		{"help", "", "list the commands", noArgs, (*Commands).help},
	}
}

// UsageError is a request that names no command or gives it the wrong
// arguments.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usage is the one-line synopsis of the commands:
// "servers | conns | drain B/S | ...".
func Usage() string {
	var parts []string
	for _, c := range commands() {
		parts = append(parts, strings.TrimSpace(c.name+" "+c.usage))
	}
	return strings.Join(parts, " | ")
}

// Help writes the list of commands, one a line.
func Help(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "commands:")
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimSpace(c.name+" "+c.usage), c.help)
	}
	tw.Flush()
	fmt.Fprintln(w, "B/S names a server as BACKEND/SERVER, e.g. web/a; rsp ctl servers lists them.")
}

// find returns the command args name and checks its arguments; the
// error is a *UsageError.
func find(args []string) (command, error) {
	if len(args) == 0 {
		return command{}, &UsageError{"no command given"}
	}
	for _, c := range commands() {
		if c.name == args[0] {
			if err := c.check(args[1:]); err != nil {
				return c, &UsageError{fmt.Sprintf("%s: %v; usage: %s %s", c.name, err, c.name, c.usage)}
			}
			return c, nil
		}
	}
	var names []string
	for _, c := range commands() {
		names = append(names, c.name)
	}
	return command{}, &UsageError{fmt.Sprintf("unknown command %q: use %s", args[0], strings.Join(names, ", "))}
}

// CheckArgs checks a request (command first) without running it, as rsp
// ctl does before connecting; the error is a *UsageError.
func CheckArgs(args []string) error {
	_, err := find(args)
	return err
}

func noArgs(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	return nil
}

func serverArg(args []string) error {
	switch len(args) {
	case 0:
		return fmt.Errorf("missing server")
	case 1:
		return checkServerName(args[0])
	}
	return fmt.Errorf("unexpected argument %q", args[1])
}

func checkServerName(name string) error {
	if b, s, ok := strings.Cut(name, "/"); !ok || b == "" || s == "" {
		return fmt.Errorf("server %q is not written BACKEND/SERVER", name)
	}
	return nil
}

// maintOptions splits maint's arguments into the server and -kill,
// which may come before or after it.
func maintOptions(args []string) (rest []string, kill bool) {
	for _, a := range args {
		if a == "-kill" || a == "--kill" {
			kill = true
		} else {
			rest = append(rest, a)
		}
	}
	return rest, kill
}

func maintArgs(args []string) error {
	rest, _ := maintOptions(args)
	return serverArg(rest)
}

func weightArgs(args []string) error {
	if len(args) < 2 {
		if err := serverArg(args); err != nil {
			return err
		}
		return fmt.Errorf("missing weight")
	}
	if len(args) > 2 {
		return fmt.Errorf("unexpected argument %q", args[2])
	}
	if err := checkServerName(args[0]); err != nil {
		return err
	}
	_, err := parseWeight(args[1])
	return err
}

func parseWeight(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > balance.MaxWeight {
		return 0, fmt.Errorf("weight %q is not a whole number from 0 to %d", s, balance.MaxWeight)
	}
	return n, nil
}

// Handle runs the request args (command first) and writes its output.
func (c *Commands) Handle(peer Peer, args []string, out io.Writer) error {
	cmd, err := find(args)
	if err != nil {
		return err
	}
	c.logger().Debug("rsp ctl", "command", strings.Join(args, " "), "uid", peer.UID, "pid", peer.PID)
	return cmd.run(c, call{peer: peer, args: args, out: out})
}

func (c *Commands) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}

// who is what a change's log line says of the request behind it.
func (k call) who() []any {
	return []any{"command", strings.Join(k.args, " "), "uid", k.peer.UID}
}

// servers lists the servers. A last column, BACKUP (yes or no), is
// there only when some server is a backup, so a configuration without
// backups lists what it always did.
func (c *Commands) servers(k call) error {
	views := c.Runtime.Servers()
	backups := slices.ContainsFunc(views, func(v proxy.ServerView) bool { return v.Backup })
	tw := tabwriter.NewWriter(k.out, 0, 8, 2, ' ', 0)
	fmt.Fprint(tw, "SERVER\tADDR\tSTATE\tWEIGHT\tACTIVE\tCHECKS_PASSED\tCHECKS_FAILED")
	if backups {
		fmt.Fprint(tw, "\tBACKUP")
	}
	fmt.Fprintln(tw)
	for _, v := range views {
		fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%d\t%d\t%d\t%d",
			v.Backend, v.Server, v.Addr, v.State, v.Weight, v.Active, v.ChecksPassed, v.ChecksFailed)
		if backups {
			fmt.Fprint(tw, "\t", yesNo(v.Backup))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (c *Commands) conns(k call) error {
	list := c.Conns.Conns()
	slices.SortFunc(list, func(a, b splice.ConnInfo) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	tw := tabwriter.NewWriter(k.out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCLIENT\tFRONTEND\tSERVER\tAGE\tBYTES_IN\tBYTES_OUT")
	for _, ci := range list {
		client := "unix"
		if ci.Client.IsValid() {
			client = ci.Client.String()
		}
		server := ci.Server
		if server == "" {
			server = "-" // not connected yet
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\n",
			ci.ID, client, ci.Frontend, server, age(ci.Duration), ci.BytesIn, ci.BytesOut)
	}
	return tw.Flush()
}

// age rounds a connection's age for reading: 45ms, 1.2s, 3m7s.
func age(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// setAdmin sets the Admin of the server named name and says what
// changed.
func (c *Commands) setAdmin(k call, name string, a balance.Admin) (*balance.Server, error) {
	s, err := c.Runtime.Server(name)
	if err != nil {
		return nil, err
	}
	was := s.SetAdmin(a, k.who()...)
	if was == a {
		fmt.Fprintf(k.out, "%s: already %s\n", s.Name(), a)
	} else {
		fmt.Fprintf(k.out, "%s: %s -> %s\n", s.Name(), was, a)
	}
	return s, nil
}

func (c *Commands) drain(k call) error {
	_, err := c.setAdmin(k, k.args[1], balance.Drain)
	return err
}

func (c *Commands) ready(k call) error {
	_, err := c.setAdmin(k, k.args[1], balance.Ready)
	return err
}

func (c *Commands) maint(k call) error {
	rest, kill := maintOptions(k.args[1:])
	s, err := c.setAdmin(k, rest[0], balance.Maint)
	if err != nil || !kill {
		return err
	}
	// Out of rotation first, so no new connection lands on the server
	// between the kill and the change.
	n := c.Conns.Kill(s.Name())
	c.logger().Info("connections reset by rsp ctl", append([]any{"server", s.Name(), "reset", n}, k.who()...)...)
	fmt.Fprintf(k.out, "%s: reset %d connection%s\n", s.Name(), n, plural(n))
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func (c *Commands) weight(k call) error {
	s, err := c.Runtime.Server(k.args[1])
	if err != nil {
		return err
	}
	n, err := parseWeight(k.args[2])
	if err != nil {
		return err
	}
	was, err := s.SetWeight(n, k.who()...)
	if err != nil {
		return err
	}
	fmt.Fprintf(k.out, "%s: weight %d -> %d\n", s.Name(), was, n)
	return nil
}

func (c *Commands) help(k call) error {
	Help(k.out)
	return nil
}
