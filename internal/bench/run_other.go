//go:build !linux

package bench

import (
	"errors"
	"os/exec"
)

// setUp refuses what needs Linux.
func (o *Options) setUp() error {
	if o.User != "" || o.ProxyCPUs != "" || o.LoadCPUs != "" {
		return errors.New("-user, -proxy-cpus and -load-cpus need Linux")
	}
	return nil
}

func (o *Options) proxy(cmd *exec.Cmd) *exec.Cmd { return cmd }
func (o *Options) load(cmd *exec.Cmd) *exec.Cmd  { return cmd }
func (o *Options) share(string)                  {}
