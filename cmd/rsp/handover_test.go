package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestPrepareStopMark: prepare-stop writes its mark as a new file in the
// first runtime directory, never through a link planted there; rsp reads
// it once.
func TestPrepareStopMark(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", dir+":"+other)
	t.Setenv("PATH", t.TempDir()) // no systemctl: the stop reads as a stop
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("keep"), 0o644)
	if err := os.Symlink(victim, filepath.Join(dir, stopMarker)); err != nil {
		t.Fatal(err)
	}
	runPrepareStop([]string{"rsp.service"}, io.Discard)
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("the file behind a planted link now holds %q", b)
	}
	fi, err := os.Lstat(filepath.Join(dir, stopMarker))
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("mark: %v, %v; want a regular file", fi, err)
	}
	restart, known, err := stopMark()
	if restart || !known || err != nil {
		t.Errorf("stopMark = %v, %v, %v; want a known stop", restart, known, err)
	}
	if _, known, _ := stopMark(); known {
		t.Error("the mark was read twice")
	}
	t.Setenv("RUNTIME_DIRECTORY", " ")
	if markerPath() != "" {
		t.Error("a blank RUNTIME_DIRECTORY gave a marker path")
	}
}
