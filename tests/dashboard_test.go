package tests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The dashboard and alerting rules the packages ship (under
// /usr/share/doc/rsp/examples/).
const (
	dashboardFile = "../packaging/grafana/rsp-dashboard.json"
	alertsFile    = "../packaging/prometheus/rsp-alerts.yml"
)

// TestDashboardMetricsExist: every metric the Grafana dashboard and the
// Prometheus alerting rules query is in a real scrape of rsp (splice relay,
// after traffic, a failed connect with a retry, health checks and a
// reload), so neither shows an empty panel or a rule that never fires
// because of a misspelt or missing metric.
func TestDashboardMetricsExist(t *testing.T) {
	want := map[string][]string{} // metric -> where it is used
	for _, q := range dashboardQueries(t, dashboardFile) {
		for _, m := range promqlMetrics(q.expr) {
			want[m] = append(want[m], q.where)
		}
	}
	for _, q := range alertQueries(t, alertsFile) {
		for _, m := range promqlMetrics(q.expr) {
			want[m] = append(want[m], q.where)
		}
	}
	if len(want) < 20 {
		t.Fatalf("found only %d metrics in the dashboard and the rules: the extraction is broken: %v", len(want), want)
	}

	echo := echoBackend(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// Backend app: a live and a dead server, round robin, one retry, no
	// ejection: some client connect fails on the dead one and is retried
	// on the live one. Backend hc: health checks.
	conf := fmt.Sprintf(`[global]
metrics = %q
maxconn = 1000
[frontend.web]
listen = "127.0.0.1:0"
backend = "app"
maxconn = 100
[frontend.chk]
listen = "127.0.0.1:0"
backend = "hc"
[backend.app]
balance = "roundrobin"
retries = 1
eject_after = 0
[backend.app.server.live]
address = %q
[backend.app.server.dead]
address = %q
[backend.hc]
[backend.hc.health]
interval = "100ms"
timeout = "100ms"
[backend.hc.server.a]
address = %q
`, metrics, echo.Addr().String(), closedPort(t), echo.Addr().String())
	path := writeConfig(t, "", conf)
	p := startRsp(t, "-config", path)
	for i := range 4 {
		if err := echoThrough(p.addr, uint64(i), 256<<10); err != nil {
			t.Fatalf("through rsp: %v", err)
		}
	}
	if !sighupAndWait(t, p) {
		t.Fatalf("reload of an unchanged file refused:\n%s", p.stderr.String())
	}

	var fams map[string]bool
	var missing []string
	var err error
	eventually(5*time.Second, func() bool {
		fams, err = scrapeFamilyNames("http://" + metrics + "/metrics")
		missing = missing[:0]
		for m := range want {
			if !hasFamily(fams, m) {
				missing = append(missing, m)
			}
		}
		return err == nil && len(missing) == 0
	})
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	sort.Strings(missing)
	for _, m := range missing {
		where := slices.Clone(want[m])
		slices.Sort(where)
		t.Errorf("%s is not in rsp's /metrics; used by %s", m, strings.Join(slices.Compact(where), ", "))
	}
	t.Logf("%d metrics used by the dashboard and the rules, %d families scraped", len(want), len(fams))
}

// TestPromqlMetrics: the extraction the test above relies on.
func TestPromqlMetrics(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`sum by (frontend) (rate(rsp_a_total{job=~"$job",frontend="x"}[$__rate_interval]))`, []string{"rsp_a_total"}},
		{`histogram_quantile(0.99, sum by (backend, le) (rate(rsp_h_seconds_bucket{b="c"}[5m])))`, []string{"rsp_h_seconds_bucket"}},
		{"(process_open_fds / process_max_fds > 0.9)\n  and on (job, instance) rsp_build_info", []string{"process_max_fds", "process_open_fds", "rsp_build_info"}},
		{`count(rsp_s{state="up"} == 1) or vector(0)`, []string{"rsp_s"}},
		{`sum(rate(x[1m])) without (le) / ignoring(a) group_left(b) y offset 5m > bool 1e3`, []string{"x", "y"}},
		{`max(rsp_t) * 1000 - time()`, []string{"rsp_t"}},
		{`label_values(rsp_server_state{backend=~"$backend"}, server)`, []string{"rsp_server_state"}},
		{`label_values(server)`, nil},
	} {
		got := promqlMetrics(tc.expr)
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("promqlMetrics(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// fetchMetrics gets url (rsp's /metrics) and returns the body.
func fetchMetrics(url string) ([]byte, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %.200s", url, resp.Status, body)
	}
	return body, nil
}

// scrapeFamilyNames gets url (rsp's /metrics) and returns the names of the
// metric families in it, parsed by Prometheus's own text parser.
func scrapeFamilyNames(url string) (map[string]bool, error) {
	body, err := fetchMetrics(url)
	if err != nil {
		return nil, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	names := make(map[string]bool, len(fams))
	for name := range fams {
		names[name] = true
	}
	return names, nil
}

// hasFamily reports whether metric is in fams: by its name, or as a
// histogram's or summary's _bucket, _sum or _count series.
func hasFamily(fams map[string]bool, metric string) bool {
	if fams[metric] {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(metric, suffix); ok && fams[base] {
			return true
		}
	}
	return false
}

// promQuery is a PromQL expression and where it was found.
type promQuery struct{ where, expr string }

// dashboardQueries returns every PromQL expression of a Grafana dashboard:
// the panels' targets (rows' nested panels included) and the query
// variables' queries.
func dashboardQueries(t *testing.T, path string) []promQuery {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var qs []promQuery
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: panel %q target %s has no expr", path, p.Title, tg.RefID)
					continue
				}
				qs = append(qs, promQuery{fmt.Sprintf("panel %q", p.Title), tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		// The query is a string, or (Grafana 10) an object with one.
		var s string
		if json.Unmarshal(v.Query, &s) != nil {
			var o struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &o); err != nil {
				t.Fatalf("%s: variable %s: query: %v", path, v.Name, err)
			}
			s = o.Query
		}
		qs = append(qs, promQuery{fmt.Sprintf("variable $%s", v.Name), s})
	}
	return qs
}

// alertQueries returns the expr of every rule in a Prometheus rules file,
// written as `expr: EXPR` on one line or as a block scalar (`expr: |` or
// `expr: >-`) on the lines indented below it. Line by line, so that the
// test needs no YAML library: enough for the file rsp ships.
func alertQueries(t *testing.T, path string) []promQuery {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	indent := func(s string) int { return len(s) - len(strings.TrimLeft(s, " ")) }
	var qs []promQuery
	var alert string
	var block *strings.Builder
	blockIndent := -1 // indent of the "expr:" line while in its block
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if block != nil {
			if trimmed == "" || indent(line) > blockIndent {
				block.WriteString(trimmed + "\n")
				continue
			}
			qs = append(qs, promQuery{"rule " + alert, block.String()})
			block = nil
		}
		item := strings.TrimPrefix(trimmed, "- ")
		if v, ok := strings.CutPrefix(item, "alert:"); ok {
			alert = strings.TrimSpace(v)
		} else if v, ok := strings.CutPrefix(item, "record:"); ok {
			alert = strings.TrimSpace(v)
		}
		v, ok := strings.CutPrefix(item, "expr:")
		if !ok {
			continue
		}
		switch v = strings.TrimSpace(v); {
		case v == "" || strings.HasPrefix(v, "|") || strings.HasPrefix(v, ">"):
			block, blockIndent = &strings.Builder{}, indent(line)
		case strings.HasPrefix(v, `"`) || strings.HasPrefix(v, "'"):
			t.Fatalf("%s:%d: a quoted expr: write it plain or as a block (expr: |) for this test", path, n)
		default:
			qs = append(qs, promQuery{"rule " + alert, v})
		}
	}
	if block != nil {
		qs = append(qs, promQuery{"rule " + alert, block.String()})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(qs) == 0 {
		t.Fatalf("%s: no expr found", path)
	}
	return qs
}

// promqlWords are the PromQL keywords that read like metric names.
var promqlWords = map[string]bool{
	"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true, "bool": true, "offset": true, "start": true, "end": true,
	"inf": true, "nan": true, "atan2": true,
}

// labelListRE matches a grouping or matching clause and its label list,
// "by (a, b)", "on(job)", "group_left (x)", whose names are labels.
var labelListRE = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)

// labelValuesRE matches Grafana's label_values(EXPR, LABEL) variable
// query; only EXPR is PromQL.
var labelValuesRE = regexp.MustCompile(`(?s)^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// promqlMetrics returns the metric names an expression selects, sorted
// and unique: its identifiers ([a-zA-Z_:][a-zA-Z0-9_:]*) other than
// functions and aggregations (followed by "("), keywords, label names
// (inside {...}, by/without/on/ignoring/group_* lists), durations and
// Grafana variables ($name), and string contents.
func promqlMetrics(expr string) []string {
	if m := labelValuesRE.FindStringSubmatch(expr); m != nil {
		expr = m[1]
	} else if strings.HasPrefix(strings.TrimSpace(expr), "label_values(") {
		return nil // label_values(LABEL): no metric
	}
	// Strings go first: they may hold any of the characters below.
	var b strings.Builder
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		if c == '"' || c == '\'' || c == '`' {
			j := i + 1
			for j < len(expr) && expr[j] != c {
				if expr[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			b.WriteString(`""`)
			i = j
			continue
		}
		b.WriteByte(c)
	}
	s := b.String()
	// Label matchers {...}, ranges and subqueries [...], label lists.
	s = regexp.MustCompile(`\{[^{}]*\}`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\[[^\[\]]*\]`).ReplaceAllString(s, " ")
	s = labelListRE.ReplaceAllString(s, " ")

	seen := map[string]bool{}
	isStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' }
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c >= '0' && c <= '9' || c == '.':
			// A number or duration (0.9, 1e3, 0x1f, 5m): one run.
			for i < len(s) && (isPart(s[i]) || s[i] == '.') {
				i++
			}
		case c == '$':
			// A Grafana variable outside a string, such as $__range.
			for i++; i < len(s) && isPart(s[i]); i++ {
			}
		case isStart(c):
			j := i
			for j < len(s) && isPart(s[j]) {
				j++
			}
			word := s[i:j]
			k := j
			for k < len(s) && (s[k] == ' ' || s[k] == '\t' || s[k] == '\n') {
				k++
			}
			call := k < len(s) && s[k] == '('
			if !call && !promqlWords[strings.ToLower(word)] {
				seen[word] = true
			}
			i = j
		default:
			i++
		}
	}
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
