package tlshello

import "testing"

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"api.example.com", "api.example.com", true},
		{"API.Example.com", "api.example.com", true},
		{"api.example.com", "API.EXAMPLE.COM", true},
		{"api.example.com", "api.example.co", false},
		{"api.example.com", "xapi.example.com", false},
		{"api.example.com", "a.api.example.com", false},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "WWW.Example.COM", true},
		{"*.Example.com", "www.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.b.example.com", false},
		{"*.example.com", ".example.com", false},
		{"*.example.com", "aexample.com", false},
		{"*.example.com", "a.example.com.evil", false},
		{"*.example.com", "a.xexample.com", false},
		{"*.com", "example.com", true},
		{"*.", "a.", false},
		{"*.", "a", false},
		{"*", "a", false},
		{"a.*.com", "a.b.com", false},
		{"a.*.com", "a.*.com", true}, // '*' not first is an ordinary byte
		{"", "", false},
		{"*.example.com", "", false},
	} {
		if got := Match(c.pattern, c.name); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
	if n := testing.AllocsPerRun(10, func() { Match("*.example.com", "A.EXAMPLE.COM") }); n != 0 {
		t.Errorf("Match allocates %v times", n)
	}
}
