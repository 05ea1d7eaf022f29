//go:build !rsptest

package main

// testFailTakeOver is false outside the end-to-end tests' build.
func testFailTakeOver() bool { return false }
