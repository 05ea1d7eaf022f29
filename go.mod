module rsp

go 1.26.8

require (
	github.com/coreos/go-systemd/v22 v22.7.0
	golang.org/x/sys v0.49.0
)

require github.com/BurntSushi/toml v1.6.0 // indirect
