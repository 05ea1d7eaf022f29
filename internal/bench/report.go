package bench

import (
	"fmt"
	"html"
	"slices"
	"strconv"
	"strings"
)

// ratios maps each workload to direct's median, for "× direct".
func ratios(results []Result) map[string]float64 {
	direct := map[string]float64{}
	for _, r := range results {
		if r.Contender == "direct" && len(r.Values) > 0 {
			direct[r.Workload] = r.Median()
		}
	}
	return direct
}

// Markdown renders results as one table: each figure's median, the spread
// of its runs and its ratio to direct.
func Markdown(results []Result) string {
	direct := ratios(results)
	var b strings.Builder
	b.WriteString("| workload | contender | median | runs: min–max | × direct |\n|---|---|---|---|---|\n")
	for _, r := range results {
		med, spread, ratio := "—", "", ""
		if len(r.Values) > 0 {
			med = num(r.Median()) + " " + r.Unit
			spread = fmt.Sprintf("%d: %s–%s", len(r.Values), num(slices.Min(r.Values)), num(slices.Max(r.Values)))
			if d, ok := direct[r.Workload]; ok && d > 0 && r.Contender != "direct" && !strings.Contains(r.Workload, " — ") {
				ratio = fmt.Sprintf("%.2f", r.Median()/d)
			}
		}
		if r.Note != "" {
			med += " (" + r.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", r.Workload, r.Contender, med, spread, ratio)
	}
	return b.String()
}

// num formats a figure with three significant digits, whole numbers from
// 1000 up.
func num(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

// find returns the median of workload for contender, if measured.
func find(results []Result, workload, contender string) (float64, bool) {
	for _, r := range results {
		if r.Workload == workload && r.Contender == contender && len(r.Values) > 0 {
			return r.Median(), true
		}
	}
	return 0, false
}

// SVG draws the headline figures as horizontal bar panels: throughput,
// round trips and connection rate as ratios to direct, proxy CPU per GiB
// and idle memory per connection as absolute values.
func SVG(results []Result) string {
	var names []string
	for _, r := range results {
		if r.Contender != "direct" && !slices.Contains(names, r.Contender) {
			names = append(names, r.Contender)
		}
	}
	direct := ratios(results)
	type panel struct {
		title    string
		workload string
		ratio    bool
		unit     string
	}
	idleW := ""
	for _, r := range results {
		if strings.HasPrefix(r.Workload, wIdleRSS) {
			idleW = r.Workload
			break
		}
	}
	panels := []panel{
		{"upload, 1 stream (× direct, higher is better)", wUp1, true, ""},
		{"upload, 8 streams (× direct)", wUp8, true, ""},
		{"proxy CPU per GiB, 8 streams up (s, lower is better)", wUp8 + wCPU, false, "s"},
		{"64 B round trips, 1 conn (× direct)", wRR1, true, ""},
		{"64 B round trips, 64 conns (× direct)", wRR64, true, ""},
		{"new connections/s, 16 clients (× direct)", wConns, true, ""},
		{"RSS per idle connection (KiB, lower is better)", idleW, false, "KiB"},
	}
	const (
		width    = 760
		labelW   = 190
		barMax   = 470
		rowH     = 18
		titleH   = 24
		panelGap = 14
	)
	var b strings.Builder
	y := 10
	var body strings.Builder
	for _, pn := range panels {
		type bar struct {
			name string
			v    float64
		}
		var bars []bar
		for _, n := range names {
			v, ok := find(results, pn.workload, n)
			if !ok {
				continue
			}
			if pn.ratio {
				d := direct[pn.workload]
				if d <= 0 {
					continue
				}
				v /= d
			}
			bars = append(bars, bar{n, v})
		}
		if len(bars) == 0 {
			continue
		}
		maxV := 0.0
		for _, br := range bars {
			maxV = max(maxV, br.v)
		}
		if pn.ratio {
			maxV = max(maxV, 1)
		}
		fmt.Fprintf(&body, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y+16, html.EscapeString(pn.title))
		y += titleH
		for _, br := range bars {
			w := int(br.v / maxV * barMax)
			color := "#8a9bb0"
			if strings.HasPrefix(br.name, "rsp splice") {
				color = "#d9534f"
			}
			label := fmt.Sprintf("%.2f", br.v)
			if !pn.ratio {
				label = num(br.v) + " " + pn.unit
			}
			fmt.Fprintf(&body, `<text x="%d" y="%d" text-anchor="end">%s</text>`, labelW-6, y+13, html.EscapeString(br.name))
			fmt.Fprintf(&body, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`, labelW, y+2, max(w, 1), rowH-4, color)
			fmt.Fprintf(&body, `<text x="%d" y="%d">%s</text>`+"\n", labelW+w+4, y+13, label)
			y += rowH
		}
		if pn.ratio {
			x := labelW + int(1/maxV*barMax)
			fmt.Fprintf(&body, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-dasharray="3,2"/>`+"\n", x, y-len(bars)*rowH, x, y)
		}
		y += panelGap
	}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, y+10)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	b.WriteString(body.String())
	b.WriteString("</svg>\n")
	return b.String()
}
