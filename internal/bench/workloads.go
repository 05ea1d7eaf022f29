package bench

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// sources hands out client source addresses across 127.1.0.0/16, so that
// tens of thousands of short connections never run out of ephemeral ports
// (about 28,000 per address pair, each held 60 s in TIME_WAIT).
type sources struct{ n atomic.Uint32 }

func (s *sources) dialer(timeout time.Duration) *net.Dialer {
	k := s.n.Add(1)
	ip := net.IPv4(127, 1, byte(k/250%250), byte(1+k%250))
	return &net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: ip}}
}

func (s *sources) dial(addr string, mode byte) (*net.TCPConn, error) {
	c, err := s.dialer(5*time.Second).Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte{mode}); err != nil {
		c.Close()
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// dialSized opens a bulk connection: the mode byte, then the size (8
// bytes, big-endian); the deadline allows five minutes.
func (s *sources) dialSized(addr string, mode byte, size int64) (*net.TCPConn, error) {
	c, err := s.dial(addr, mode)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(size))
	if _, err := c.Write(b[:]); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// parallel runs f(i) for i in [0,n) concurrently and returns the first
// error.
func parallel(n int, f func(i int) error) error {
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(i); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// upload sends total bytes split over streams connections to the sink and
// waits for every sink to confirm its count.
func upload(src *sources, addr string, streams int, total int64) (time.Duration, error) {
	per := total / int64(streams)
	start := time.Now()
	err := parallel(streams, func(int) error {
		c, err := src.dialSized(addr, modeSink, per)
		if err != nil {
			return fmt.Errorf("upload: %w", err)
		}
		defer c.Close()
		if err := writeZeros(c, per); err != nil {
			return fmt.Errorf("upload: %w", err)
		}
		var b [8]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return fmt.Errorf("upload: sink count: %w", err)
		}
		if got := int64(binary.BigEndian.Uint64(b[:])); got != per {
			return fmt.Errorf("upload: sink got %d bytes, sent %d", got, per)
		}
		return nil
	})
	return time.Since(start), err
}

// download asks the source for total bytes split over streams connections
// and reads them all.
func download(src *sources, addr string, streams int, total int64) (time.Duration, error) {
	per := total / int64(streams)
	start := time.Now()
	err := parallel(streams, func(int) error {
		c, err := src.dialSized(addr, modeSource, per)
		if err != nil {
			return fmt.Errorf("download: %w", err)
		}
		defer c.Close()
		n, err := io.CopyBuffer(io.Discard, c, make([]byte, 1<<20))
		if err != nil {
			return fmt.Errorf("download: %w", err)
		}
		if n != per {
			return fmt.Errorf("download: got %d bytes, want %d", n, per)
		}
		return nil
	})
	return time.Since(start), err
}

// roundTrips runs 64-byte request/response exchanges on conns kept-alive
// connections for dur and returns every round trip's latency.
func roundTrips(src *sources, addr string, conns int, dur time.Duration) ([]time.Duration, error) {
	var mu sync.Mutex
	var all []time.Duration
	err := parallel(conns, func(int) error {
		c, err := src.dial(addr, modeEcho)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(dur + 10*time.Second))
		msg := make([]byte, 64)
		back := make([]byte, 64)
		lat := make([]time.Duration, 0, 4096)
		end := time.Now().Add(dur)
		for t := time.Now(); t.Before(end); {
			if _, err := c.Write(msg); err != nil {
				return fmt.Errorf("round trip: %w", err)
			}
			if _, err := io.ReadFull(c, back); err != nil {
				return fmt.Errorf("round trip: %w", err)
			}
			now := time.Now()
			lat = append(lat, now.Sub(t))
			t = now
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
		return nil
	})
	return all, err
}

// percentile returns the p-th percentile (0-100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// newConns has clients connect, exchange 8 bytes and close, as fast as
// they can for dur; it returns how many connections completed.
func newConns(src *sources, addr string, clients int, dur time.Duration) (int64, error) {
	msg := []byte("E12345678") // the mode byte, then 8 bytes echoed
	return exchanges(src, addr, clients, dur, msg, func(c net.Conn) error {
		back := make([]byte, 8)
		if _, err := io.ReadFull(c, back); err != nil {
			return fmt.Errorf("new connection: echo: %w", err)
		}
		return nil // the client closes first
	})
}

// closedByServer runs clients that each, until dur is over, open a
// connection, send an HTTP/1.1 request with Connection: close, read the
// response to the EOF of the server's close, and close: the server
// closes first, as behind wrk's `Connection: close` load. It returns the
// exchanges done.
func closedByServer(src *sources, addr string, clients int, dur time.Duration) (int64, error) {
	msg := append([]byte{modeReply}, httpRequest...)
	return exchanges(src, addr, clients, dur, msg, func(c net.Conn) error {
		got, err := io.ReadAll(c)
		if err != nil || string(got) != httpResponse {
			return fmt.Errorf("server-closed exchange: got %q, %v", got, err)
		}
		return nil
	})
}

// exchanges has clients, as fast as they can for dur, connect, send msg,
// let answer read the reply, and close; it returns how many completed.
func exchanges(src *sources, addr string, clients int, dur time.Duration, msg []byte, answer func(net.Conn) error) (int64, error) {
	var done atomic.Int64
	err := parallel(clients, func(int) error {
		for end := time.Now().Add(dur); time.Now().Before(end); {
			c, err := src.dialer(5*time.Second).Dial("tcp", addr)
			if err != nil {
				return fmt.Errorf("new connection: %w", err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(msg); err != nil {
				c.Close()
				return fmt.Errorf("new connection: %w", err)
			}
			err = answer(c)
			c.Close()
			if err != nil {
				return err
			}
			done.Add(1)
		}
		return nil
	})
	return done.Load(), err
}

// integrity echoes size random bytes on each of conns connections with
// half-close and compares SHA-256 both ways. It returns how many
// connections came back wrong.
func integrity(src *sources, addr string, conns int, size int64) (bad int, err error) {
	var wrong atomic.Int64
	err = parallel(conns, func(i int) error {
		c, err := src.dial(addr, modeEcho)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		got := make(chan [32]byte, 1)
		go func() {
			h := sha256.New()
			io.Copy(h, c)
			got <- [32]byte(h.Sum(nil))
		}()
		h := sha256.New()
		rng := rand.NewChaCha8([32]byte{byte(i), 'r', 's', 'p'})
		if _, err := io.CopyN(io.MultiWriter(c, h), rng, size); err != nil {
			return fmt.Errorf("integrity: send: %w", err)
		}
		c.CloseWrite()
		if <-got != [32]byte(h.Sum(nil)) {
			wrong.Add(1)
		}
		return nil
	})
	return int(wrong.Load()), err
}

// openIdle opens n connections that each echo 16 bytes, 64 at a time, and
// leaves them open. It returns the connections that worked and, if any
// failed, the first error; it stops opening at the first failure.
func openIdle(src *sources, addr string, n int) ([]net.Conn, error) {
	var (
		mu    sync.Mutex
		conns = make([]net.Conn, 0, n)
		first error
		wg    sync.WaitGroup
		sem   = make(chan struct{}, 64)
	)
	for range n {
		mu.Lock()
		stop := first != nil
		mu.Unlock()
		if stop {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := echoOnce(src, addr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	return conns, first
}

func echoOnce(src *sources, addr string) (net.Conn, error) {
	c, err := src.dial(addr, modeEcho)
	if err != nil {
		return nil, err
	}
	msg := []byte("0123456789abcdef")
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(msg); err != nil {
		c.Close()
		return nil, err
	}
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(c, back); err != nil {
		c.Close()
		return nil, fmt.Errorf("echo: %w", err)
	}
	if !slices.Equal(back, msg) {
		c.Close()
		return nil, errors.New("echo: wrong bytes")
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
