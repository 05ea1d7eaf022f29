package bench

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
)

// TestParseIperf reads rate and bytes from a real iperf3 3.12 report, and
// refuses a report with an error or without bytes.
func TestParseIperf(t *testing.T) {
	raw, err := os.ReadFile("testdata/iperf3.json")
	if err != nil {
		t.Fatal(err)
	}
	bits, n, err := parseIperf(raw)
	if err != nil || bits < 1e9 || n < 1<<20 {
		t.Fatalf("parseIperf: %v bit/s, %v bytes, %v; want a rate and bytes", bits, n, err)
	}
	if _, _, err := parseIperf([]byte(`{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("a report with an error gave %v", err)
	}
	if _, _, err := parseIperf([]byte(`{"end":{"sum_received":{"bytes":0}}}`)); err == nil {
		t.Error("a report without bytes was taken")
	}
}

// TestParseWrk reads count and rate from a real wrk 4.1 report, takes the
// read errors that a server's close after Connection: close shows as (and
// only there), and refuses connect errors, timeouts and bad responses.
func TestParseWrk(t *testing.T) {
	raw, err := os.ReadFile("testdata/wrk.txt")
	if err != nil {
		t.Fatal(err)
	}
	reqs, rate, err := parseWrk(raw, false)
	if err != nil || reqs != 383 || rate != 381.70 {
		t.Fatalf("parseWrk: %v requests, %v/s, %v; want 383 and 381.70", reqs, rate, err)
	}
	closed := string(raw) + "  Socket errors: connect 0, read 383, write 0, timeout 0\n"
	if _, _, err := parseWrk([]byte(closed), true); err != nil {
		t.Errorf("read errors where the server closes: %v", err)
	}
	if _, _, err := parseWrk([]byte(closed), false); err == nil {
		t.Error("read errors on keep-alive connections (a proxy resetting them) were taken")
	}
	more := string(raw) + "  Socket errors: connect 0, read 384, write 0, timeout 0\n"
	if _, _, err := parseWrk([]byte(more), true); err == nil {
		t.Error("more read errors than requests were taken")
	}
	for _, bad := range []string{
		"  Socket errors: connect 3, read 0, write 0, timeout 0\n",
		"  Socket errors: connect 0, read 0, write 0, timeout 2\n",
		"  Non-2xx or 3xx responses: 7\n",
	} {
		if _, _, err := parseWrk([]byte(string(raw)+bad), true); err == nil {
			t.Errorf("a report with %q was taken", strings.TrimSpace(bad))
		}
	}
	if _, _, err := parseWrk([]byte("unable to connect to 127.0.0.1:1 Connection refused\n"), false); err == nil {
		t.Error("a report without a rate was taken")
	}
}

// TestServeHTTP: the wrk backend answers keep-alive requests on one
// connection, and closes first after a Connection: close request.
func TestServeHTTP(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	out, in := io.Pipe()
	go ServeHTTP(pr, in)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, out)
	addr := strings.TrimSpace(strings.TrimPrefix(line, "backend="))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for i, req := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
	} {
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || len(body) != httpBodyNB || resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d, %d bytes, %v", i, resp.StatusCode, len(body), err)
		}
	}
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("after Connection: close the server did not close: %d bytes, %v", n, err)
	}
}
