package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCert makes a self-signed certificate for names.
func testCert(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsServer is a TLS backend named name: after the handshake it writes
// "name sni=SERVERNAME\n", then echoes.
func tlsServer(t *testing.T, name string) string {
	t.Helper()
	cert := testCert(t, "example.com", "*.example.com", "api.example.com")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c *tls.Conn) {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if err := c.Handshake(); err != nil {
					return
				}
				fmt.Fprintf(c, "%s sni=%s\n", name, c.ConnectionState().ServerName)
				io.Copy(c, c)
			}(c.(*tls.Conn))
		}
	}()
	return ln.Addr().String()
}

// viaTLS connects to addr with TLS for serverName ("" sends none) and
// returns the backend's greeting, after an echo of n bytes checked.
func viaTLS(addr, serverName string, n int) (string, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := readLine(c, 5*time.Second)
	if err != nil {
		return "", err
	}
	msg := strings.Repeat("x", n)
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		return "", fmt.Errorf("echo of %d bytes over TLS through rsp: %v", n, err)
	}
	return strings.TrimSpace(line), nil
}

// TestSNIRouting: a frontend routes TLS connections by server name —
// exact names, a one-label wildcard, the frontend's backend for the rest
// and for clients without a name — without terminating TLS (the servers'
// handshakes complete through rsp, so every byte of the hello went
// through untouched); with sni_fallback = "close", a client that is not
// TLS, names nothing or is too slow is reset (cause no_route). Go's
// crypto/tls on both ends, both relays.
func TestSNIRouting(t *testing.T) {
	api, web, web2 := tlsServer(t, "api"), tlsServer(t, "web"), tlsServer(t, "web2")
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
conn_log = "all"
[frontend.tls]
listen = "127.0.0.1:0"
backend = "web"
[frontend.tls.sni]
"api.example.com" = "api"
"*.example.com" = "web2"
[frontend.strict]
listen = "127.0.0.1:0"
backend = "web"
sni_fallback = "close"
sni_timeout = "500ms"
[frontend.strict.sni]
"api.example.com" = "api"
[backend.api.server.a]
address = %q
[backend.web.server.a]
address = %q
[backend.web2.server.a]
address = %q
`, mode, api, web, web2))
			p := startRsp(t, "-config", cfg)
			for _, c := range []struct{ name, want string }{
				{"api.example.com", "api sni=api.example.com"},
				{"API.Example.COM", "api sni=API.Example.COM"}, // routed case-blind, passed as sent
				{"shop.example.com", "web2 sni=shop.example.com"},
				{"a.b.example.com", "web sni=a.b.example.com"},
				{"example.com", "web sni=example.com"},
				{"", "web sni="},
			} {
				got, err := viaTLS(listeningOn(p, "tls"), c.name, 100000)
				if err != nil || got != c.want {
					t.Errorf("server name %q: %q, %v; want %q", c.name, got, err, c.want)
				}
			}
			if got, err := viaTLS(listeningOn(p, "strict"), "api.example.com", 10); err != nil || got != "api sni=api.example.com" {
				t.Errorf("strict frontend, a routed name: %q, %v", got, err)
			}
			for _, c := range []struct {
				what string
				send func(net.Conn)
			}{
				{"a name no route takes", func(c net.Conn) {
					tls.Client(c, &tls.Config{ServerName: "other.example.org", InsecureSkipVerify: true}).Handshake()
				}},
				{"no server name", func(c net.Conn) {
					tls.Client(c, &tls.Config{InsecureSkipVerify: true}).Handshake()
				}},
				{"not TLS", func(c net.Conn) { io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); io.Copy(io.Discard, c) }},
				{"nothing within sni_timeout", func(c net.Conn) { io.Copy(io.Discard, c) }},
			} {
				conn, err := net.DialTimeout("tcp", listeningOn(p, "strict"), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				c.send(conn)
				_, err = conn.Read(make([]byte, 1))
				if !isReset(err) && err != io.EOF {
					t.Errorf("strict frontend, %s: %v, want the connection reset", c.what, err)
				}
				conn.Close()
			}
			if !eventually(5*time.Second, func() bool {
				n := 0
				for _, l := range connLines(t, p) {
					if l["cause"] == "no_route" && l["frontend"] == "strict" {
						n++
					}
				}
				return n == 4
			}) {
				t.Errorf("want 4 connections of the strict frontend ended with cause no_route:\n%s", p.stderr.String())
			}
		})
	}
}

// TestSNIOpenSSL: curl and openssl s_client reach openssl s_server
// through rsp's SNI routing, by name.
func TestSNIOpenSSL(t *testing.T) {
	for _, tool := range []string{"openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	certPEM, keyPEM := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cert := testCert(t, "api.example.com")
	keyDER, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600)
	os.WriteFile(keyPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	port := freePort(t)
	srv := exec.Command("openssl", "s_server", "-quiet", "-accept", fmt.Sprintf("127.0.0.1:%d", port), "-cert", certPEM, "-key", keyPEM, "-www")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	sink := listen(t) // the default backend: a name that reaches it is a failure
	defer sink.Close()
	cfg := writeConfig(t, "", fmt.Sprintf(`
[frontend.tls]
listen = "127.0.0.1:0"
backend = "other"
[frontend.tls.sni]
"api.example.com" = "api"
[backend.api.server.s]
address = "127.0.0.1:%d"
[backend.other.server.s]
address = %q
`, port, sink.Addr().String()))
	p := startRsp(t, "-config", cfg)
	_, rport, _ := net.SplitHostPort(p.addr)
	var out []byte
	if !eventually(5*time.Second, func() bool {
		out, err = exec.Command("curl", "-sk", "--max-time", "5", "--resolve", "api.example.com:"+rport+":127.0.0.1",
			"https://api.example.com:"+rport+"/").CombinedOutput()
		return err == nil
	}) {
		t.Fatalf("curl through rsp to openssl s_server: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "s_server") {
		t.Errorf("curl through rsp: the page is not openssl s_server's:\n%.300s", out)
	}
	cmd := exec.Command("openssl", "s_client", "-connect", p.addr, "-servername", "api.example.com", "-brief", "-ign_eof")
	cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
	out, err = cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "s_server") {
		t.Errorf("openssl s_client through rsp: %v\n%.500s", err, out)
	}
}

// clientHello returns the first flight crypto/tls sends for serverName.
func clientHello(t *testing.T, serverName string) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	go tls.Client(b, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
	buf := make([]byte, 64<<10)
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := a.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	return buf[:n]
}

// firstLine is a server that answers each connection with the first
// line it received, then closes.
func firstLine(t *testing.T) string {
	t.Helper()
	ln := listen(t)
	t.Cleanup(func() { ln.Close() })
	serveEach(ln, func(c *net.TCPConn) {
		defer c.Close()
		line, _ := readLine(c, 5*time.Second)
		io.WriteString(c, line)
	})
	return ln.Addr().String()
}

// TestSNIRouteSettings: a server name routed to a backend gets that
// backend's own settings (here its PROXY header and source address), not
// the default backend's; and a frontend's access list refuses a client
// at once, before any wait for its hello. Both relays.
func TestSNIRouteSettings(t *testing.T) {
	plain, pp := firstLine(t), firstLine(t)
	for _, mode := range relayModes {
		t.Run(mode, func(t *testing.T) {
			cfg := writeConfig(t, "", fmt.Sprintf(`
[global]
relay = %q
conn_log = "all"
[frontend.tls]
listen = "127.0.0.1:0"
backend = "plain"
[frontend.tls.sni]
"pp.example.com" = "pp"
[frontend.guarded]
listen = "127.0.0.1:0"
backend = "plain"
deny = ["127.0.0.0/8"]
sni_timeout = "10s"
[frontend.guarded.sni]
"pp.example.com" = "pp"
[backend.plain.server.a]
address = %q
[backend.pp]
send_proxy = "v1"
source = "127.0.0.9"
[backend.pp.server.a]
address = %q
`, mode, plain, pp))
			p := startRsp(t, "-config", cfg)
			for _, c := range []struct{ name, want string }{
				{"pp.example.com", "PROXY TCP4 127.0.0.1 "},
				{"other.example.com", "\x16\x03"},
			} {
				conn := dial(t, listeningOn(p, "tls"))
				conn.Write(clientHello(t, c.name))
				conn.Write([]byte("\n"))
				line, err := readLine(conn, 5*time.Second)
				conn.Close()
				if err != nil || !strings.HasPrefix(line, c.want) {
					t.Errorf("%s: the server's first line %q (%v), want it to begin %q", c.name, line, err, c.want)
				}
			}
			if !eventually(5*time.Second, func() bool {
				for _, l := range connLines(t, p) {
					if l["backend"] == "pp" && strings.HasPrefix(l["server_addr"], "127.0.0.1:") {
						return true
					}
				}
				return false
			}) {
				t.Errorf("no connection logged to backend pp")
			}
			start := time.Now()
			conn, err := net.DialTimeout("tcp", listeningOn(p, "guarded"), 5*time.Second)
			if err == nil { // else reset before the dial returned: at once
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = conn.Read(make([]byte, 1))
				conn.Close()
			}
			if !isReset(err) || time.Since(start) > 2*time.Second {
				t.Errorf("a denied client of an SNI frontend: %v after %v, want a reset at once", err, time.Since(start))
			}
		})
	}
}
