package connlog

import (
	"io"
	"log/slog"
	"testing"

	"rsp/internal/splice"
)

// BenchmarkLog is the cost of one clean connection's line (conn_log =
// "all"), formatting and batching, without the write itself.
func BenchmarkLog(b *testing.B) {
	l := NewBatched(io.Discard, func(w Writer) slog.Handler { return slog.NewTextHandler(w, nil) }, All, 1)
	ci := info(1, splice.CauseClientClose)
	b.ReportAllocs()
	for b.Loop() {
		l.Log(ci)
	}
	l.Close()
}

// BenchmarkLogParallel is BenchmarkLog from every P at once, as event
// loops log.
func BenchmarkLogParallel(b *testing.B) {
	l := NewBatched(io.Discard, func(w Writer) slog.Handler { return slog.NewTextHandler(w, nil) }, All, 1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ci := info(1, splice.CauseClientClose)
		for pb.Next() {
			l.Log(ci)
		}
	})
	l.Close()
}
