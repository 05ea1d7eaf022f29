# Reads `go test -v` output and prints, for each failing test with no
# failing subtest, the first line of every message it logged: make
# test-system prints this last, so that the end of a long log (all a CI
# summary may keep) says what failed. Lines are cut at 300 characters.
/^=== (RUN|CONT|NAME|PAUSE) / { cur = $3; next }
/^ *--- FAIL: / {
	name = $3
	failed[name] = 1
	order[++n] = name
	p = name
	while (sub(/\/[^\/]*$/, "", p)) parent[p] = 1
	next
}
/^    [A-Za-z0-9_]+\.go:[0-9]+: / && cur != "" {
	line = $0
	sub(/^ +/, "", line)
	msgs[cur] = msgs[cur] "    " substr(line, 1, 300) "\n"
}
END {
	if (n == 0) exit
	print "== what failed (the first line of each message of each failing test):"
	for (i = 1; i <= n; i++) {
		name = order[i]
		if (name in parent) continue
		print "--- " name
		printf "%s", msgs[name]
	}
}
