//go:build linux && !rsptest

package splice

// testHookStarted does nothing: only binaries built with the rsptest tag
// (hooks_rsptest.go) have test seams.
func testHookStarted(*spliceEngine) {}
