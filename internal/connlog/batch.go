package connlog

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Writer is where batched lines go: stderr, or the journal's stream.
type Writer = io.Writer

const (
	// flushEvery bounds how long a line waits in the batch.
	flushEvery = 50 * time.Millisecond
	// batchMax is the batch size that wakes the writer at once.
	batchMax = 64 << 10
	// queueMax bounds what waits while the writer is blocked (journald
	// pushing back, a pipe nobody reads): lines beyond it are dropped
	// and counted, so that an event loop never waits for a log write.
	queueMax = 4 << 20
	// closeWait bounds how long close waits for the last write.
	closeWait = 2 * time.Second
)

// batch collects whole lines; a goroutine of its own writes them, many
// in one write: at batchMax, or flushEvery after the first line. Write
// never blocks on the output.
type batch struct {
	w       io.Writer
	wake    chan struct{} // a batch is full, or Close asks for the rest
	done    chan struct{} // the writer goroutine has exited
	dropped atomic.Int64  // lines dropped because the queue was full

	mu     sync.Mutex
	buf    []byte
	spare  []byte // the buffer written last, reused for the next batch
	closed bool
	once   sync.Once
}

func newBatch(w io.Writer) *batch {
	b := &batch{w: w, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go b.writeLoop()
	return b
}

// Write queues p, one record of a slog handler, or drops it if the queue
// is full.
func (b *batch) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return b.w.Write(p)
	}
	if len(b.buf)+len(p) > queueMax {
		b.mu.Unlock()
		b.dropped.Add(1)
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	full := len(b.buf) >= batchMax
	b.mu.Unlock()
	if full {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// writeLoop writes the queued lines every flushEvery, or at once when a
// batch is full, until close.
func (b *batch) writeLoop() {
	defer close(b.done)
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-b.wake:
		}
		b.mu.Lock()
		closed := b.closed
		b.mu.Unlock()
		b.flush()
		if closed {
			return
		}
	}
}

// flush writes out what is queued. Only writeLoop calls it, and close
// once writeLoop has exited.
func (b *batch) flush() {
	b.mu.Lock()
	out := b.buf
	if len(out) == 0 {
		b.mu.Unlock()
		return
	}
	b.buf = b.spare[:0]
	b.spare = nil
	b.mu.Unlock()
	b.w.Write(out)
	b.mu.Lock()
	if b.spare == nil && cap(out) <= 2*batchMax {
		b.spare = out[:0]
	}
	b.mu.Unlock()
}

// close writes what is queued, stops the writer, and makes later lines
// go straight through.
func (b *batch) close() {
	b.once.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		select {
		case b.wake <- struct{}{}:
		default:
		}
		// A writer stuck on a blocked output must not hold up the exit.
		select {
		case <-b.done:
			b.flush() // anything queued between its last flush and closed
		case <-time.After(closeWait):
		}
	})
}
