package bench

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// ServeBackend runs the benchmark's backend until stdin closes: an echo
// listener and a sink listener on 127.0.0.1, announced on stdout as
// "echo=ADDR sink=ADDR". The sink discards what it reads and, at EOF,
// answers with the byte count (8 bytes, big-endian) and closes.
func ServeBackend(stdin io.Reader, stdout io.Writer) error {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench backend: %w", err)
	}
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench backend: %w", err)
	}
	go acceptLoop(echo, echoConn)
	go acceptLoop(sink, sinkConn)
	fmt.Fprintf(stdout, "echo=%s sink=%s\n", echo.Addr(), sink.Addr())
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

// echoConn echoes until EOF, then half-closes.
func echoConn(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 16<<10)
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
			}
			return
		}
	}
}

// sinkConn counts and discards bytes until EOF, then reports the count.
func sinkConn(c net.Conn) {
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	c.Write(b[:])
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

// readAnnounce reads the first line a helper prints on stdout.
func readAnnounce(r io.Reader) (string, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("helper printed no address: %w", err)
	}
	return line, nil
}
