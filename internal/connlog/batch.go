package connlog

import (
	"io"
	"sync"
	"time"
)

// Writer is where batched lines go: stderr, or the journal's stream.
type Writer = io.Writer

const (
	// flushEvery bounds how long a line waits in the batch.
	flushEvery = 50 * time.Millisecond
	// batchMax is the batch size that is written at once without waiting.
	batchMax = 64 << 10
)

// batch collects whole lines and writes them in one write: at batchMax,
// or flushEvery after the first line of the batch.
type batch struct {
	w io.Writer

	mu      sync.Mutex
	buf     []byte
	spare   []byte // the buffer written last, reused for the next batch
	timer   *time.Timer
	armed   bool
	closed  bool
	writeMu sync.Mutex // orders the writes of successive batches
}

func newBatch(w io.Writer) *batch {
	b := &batch{w: w}
	b.timer = time.AfterFunc(time.Hour, b.flush)
	b.timer.Stop()
	return b
}

// Write buffers p, one record of a slog handler.
func (b *batch) Write(p []byte) (int, error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return b.w.Write(p)
	}
	b.buf = append(b.buf, p...)
	full := len(b.buf) >= batchMax
	if !full && !b.armed {
		b.armed = true
		b.timer.Reset(flushEvery)
	}
	b.mu.Unlock()
	if full {
		b.flush()
	}
	return len(p), nil
}

// flush writes out what is buffered.
func (b *batch) flush() {
	b.writeMu.Lock()
	defer b.writeMu.Unlock()
	b.mu.Lock()
	out := b.buf
	b.buf = b.spare[:0]
	b.spare = nil
	b.armed = false
	b.mu.Unlock()
	if len(out) > 0 {
		b.w.Write(out)
	}
	b.mu.Lock()
	if b.spare == nil && cap(out) <= 2*batchMax {
		b.spare = out[:0]
	}
	b.mu.Unlock()
}

// close flushes and makes later writes go straight through.
func (b *batch) close() {
	b.mu.Lock()
	b.closed = true
	b.timer.Stop()
	b.mu.Unlock()
	b.flush()
}
