package main

import (
	"runtime"
	"testing"

	"rsp/internal/splice"
)

// TestEventLoopsSpareP checks that splice mode runs one event loop per P
// the runtime chose and gives the runtime one P more, and that copy mode
// leaves GOMAXPROCS alone.
func TestEventLoopsSpareP(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(procs) })

	if n := eventLoops(splice.ModeCopy); n != 0 {
		t.Errorf("copy mode: %d event loops, want 0 (the copy relay has none)", n)
	}
	if got := runtime.GOMAXPROCS(0); got != procs {
		t.Errorf("copy mode changed GOMAXPROCS from %d to %d", procs, got)
	}

	n := eventLoops(splice.ModeSplice)
	got := runtime.GOMAXPROCS(0)
	if runtime.GOOS != "linux" {
		if n != 0 || got != procs {
			t.Errorf("splice mode off Linux: %d loops, GOMAXPROCS %d; want 0 and %d", n, got, procs)
		}
		return
	}
	if n != procs || got != procs+1 {
		t.Errorf("splice mode: %d loops with GOMAXPROCS %d; want %d loops and %d (one spare P)", n, got, procs, procs+1)
	}
}
