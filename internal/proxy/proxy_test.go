package proxy

import (
	"testing"
	"time"

	"rsp/internal/balance"
	"rsp/internal/config"
	"rsp/internal/splice"
)

// TestRoute: a frontend's route carries its timeouts and its keepalive for
// client sockets, and its backend's retries and keepalive for server
// sockets.
func TestRoute(t *testing.T) {
	cfg, err := config.Parse("route.conf", `
[defaults]
tcp_user_timeout = "20s"
[frontend.f]
listen = "127.0.0.1:0"
backend = "b"
connect_timeout = "2s"
idle_timeout = "1m"
half_close_timeout = "5s"
tcp_keepalive = "30s"
tcp_keepalive_count = 4
[backend.b]
retries = 3
tcp_keepalive = "0s"
tcp_user_timeout = "7s"
server.s = { address = "127.0.0.1:9" }
`)
	if err != nil {
		t.Fatal(err)
	}
	f, b := cfg.Frontends[0], cfg.Backends[0]
	pl, err := balance.NewPool(b.Name, b.Balance, b.Servers, b.Health, nil)
	if err != nil {
		t.Fatal(err)
	}
	rt := route(f, b, pl, &splice.ConnLimit{})
	if rt.Name != "f" || rt.ConnectTimeout != 2*time.Second || rt.IdleTimeout != time.Minute ||
		rt.HalfCloseTimeout != 5*time.Second || rt.Retries != 3 || rt.Picker == nil {
		t.Errorf("route %+v", rt)
	}
	if want := (splice.KeepAlive{Idle: 30 * time.Second, Interval: 30 * time.Second, Count: 4, UserTimeout: 20 * time.Second}); rt.ClientKeepAlive != want {
		t.Errorf("client keepalive %+v, want %+v", rt.ClientKeepAlive, want)
	}
	if want := (splice.KeepAlive{UserTimeout: 7 * time.Second}); rt.ServerKeepAlive != want {
		t.Errorf("server keepalive %+v, want %+v", rt.ServerKeepAlive, want)
	}
}
