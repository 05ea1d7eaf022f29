//go:build rsptest

package main

import "os"

// testFailTakeOver reports whether this process, built with the rsptest
// tag (the end-to-end tests' build), should fail once it has taken a
// hand-over over and before it says it serves (RSP_TEST_FAIL_TAKEOVER
// set): the predecessor must then carry on with everything it handed.
func testFailTakeOver() bool { return os.Getenv("RSP_TEST_FAIL_TAKEOVER") != "" }
