package bench

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// Backend protocol: the first byte a client sends picks the service.
const (
	modeEcho   = 'E' // echo everything; half-close after the client's EOF
	modeSink   = 'S' // read a count (8 bytes), discard that many bytes, answer the count read
	modeSource = 'O' // read a count (8 bytes), send that many bytes, close
	modeReply  = 'H' // read an HTTP/1.1 request with Connection: close, answer it and close first
)

// ServeBackend runs the benchmark's backend until stdin closes: one
// listener on 127.0.0.1 whose clients pick echo, sink or source with their
// first byte. It prints "backend=ADDR" on stdout.
func ServeBackend(stdin io.Reader, stdout io.Writer) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench backend: %w", err)
	}
	go acceptLoop(ln, serveBackendConn)
	fmt.Fprintf(stdout, "backend=%s\n", ln.Addr())
	io.Copy(io.Discard, stdin)
	return nil
}

func acceptLoop(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go handle(c)
	}
}

func serveBackendConn(c net.Conn) {
	defer c.Close()
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeEcho:
		echoConn(c)
	case modeSink:
		// The size comes first so that no half-close is needed: some
		// proxies (systemd-socket-proxyd) close both ways on a FIN.
		var b [8]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		n, _ := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint64(b[:])))
		binary.BigEndian.PutUint64(b[:], uint64(n))
		c.Write(b[:])
	case modeReply:
		// The request's fixed length, as a wrk-style client sends it.
		req := make([]byte, len(httpRequest))
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		c.Write([]byte(httpResponse)) // then the deferred Close: the server closes first
	case modeSource:
		var b [8]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		writeZeros(c, int64(binary.BigEndian.Uint64(b[:])))
	}
}

// echoConn echoes until EOF, then half-closes.
func echoConn(c net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if tc, ok := c.(*net.TCPConn); ok && err == io.EOF {
				tc.CloseWrite()
				io.Copy(io.Discard, c)
			}
			return
		}
	}
}

// writeZeros writes n zero bytes to w in 1 MiB writes.
func writeZeros(w io.Writer, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := int64(len(buf))
		if n < k {
			k = n
		}
		m, err := w.Write(buf[:k])
		if err != nil {
			return err
		}
		n -= int64(m)
	}
	return nil
}

// ServeIOCopy runs the reference Go proxy: net.Listener, two goroutines
// per connection, io.Copy each way, CloseWrite on EOF. It prints
// "listen=ADDR" on stdout and runs until stdin closes.
func ServeIOCopy(listen, backend string, stdin io.Reader, stdout io.Writer) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("io.Copy proxy: %w", err)
	}
	go acceptLoop(ln, func(c net.Conn) { ioCopyConn(c, backend) })
	fmt.Fprintf(stdout, "listen=%s\n", ln.Addr())
	io.Copy(io.Discard, stdin)
	return nil
}

func ioCopyConn(c net.Conn, backend string) {
	defer c.Close()
	b, err := net.Dial("tcp", backend)
	if err != nil {
		return
	}
	defer b.Close()
	done := make(chan struct{})
	go ioCopyHalf(b, c, done)
	ioCopyHalf(c, b, nil)
	<-done
}

func ioCopyHalf(dst, src net.Conn, done chan struct{}) {
	io.Copy(dst, src)
	dst.(*net.TCPConn).CloseWrite()
	if done != nil {
		close(done)
	}
}

// httpRequest and httpResponse are one HTTP/1.1 exchange in which the
// server closes the connection (Connection: close), as an HTTP backend
// behind a TCP proxy does for wrk's `Connection: close` load.
const (
	httpRequest  = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
	httpResponse = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello bench\n"
)
