//go:build soak

package tests

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	soakFor   = flag.Duration("soak", 10*time.Minute, "how long TestSoak keeps the load on")
	soakOut   = flag.String("soak-out", "soak", "directory for soak.csv and soak.svg")
	soakRelay = flag.String("soak-relay", "splice", "relay mode under soak: splice or copy")
)

const (
	// soakEvery is the sampling interval.
	soakEvery = 10 * time.Second
	// soakWorkers run mixed transfers back to back (up to soakMax bytes
	// each way, random half-close order, 5% client resets); soakIdlers
	// open connections that send nothing and vanish after up to 2 s.
	soakWorkers = 100
	soakIdlers  = 10
	soakMax     = 8 << 20
	// soakBackends servers on 127.0.0.11.. and client source addresses
	// 127.0.0.2..9 spread the connections over many address pairs.
	soakBackends = 4
	soakSources  = 8
	// soakReload is how often the configuration is reloaded (SIGHUP).
	soakReload = time.Minute
)

// soakLimits are the largest fitted growth per minute, over the last half
// of the run, that still counts as flat. The load opens about 300
// connections a second here (18,000 a minute), so these catch a leak of 32
// bytes, or one fd or goroutine per 36,000 connections, or one pipe per
// 18,000. fds_other and goroutines_other leave out what live connections
// hold (their sockets, pipes and, in the copy relay, their two goroutines),
// which moves with the load from sample to sample.
var soakLimits = map[string]float64{
	"rss_kib":          512, // KiB per minute
	"fds_other":        0.5,
	"goroutines_other": 0.5,
	"pipes":            1,
}

// soakSample is one row of soak.csv.
type soakSample struct {
	at                                       time.Duration
	rssKiB, fds, fdsOther, goroutines, pipes int
	goroutinesOther                          int
	active, accepted                         int
	completed, resets                        int
	bytes                                    int64
}

// column returns the sample's value of a soakLimits key.
func (s soakSample) column(name string) float64 {
	switch name {
	case "rss_kib":
		return float64(s.rssKiB)
	case "fds_other":
		return float64(s.fdsOther)
	case "goroutines_other":
		return float64(s.goroutinesOther)
	case "pipes":
		return float64(s.pipes)
	}
	panic("no column " + name)
}

// counts returns the completed and reset transfers and the bytes moved so
// far.
func (y *mixedTally) counts() (done, resets int, bytes int64) {
	y.mu.Lock()
	defer y.mu.Unlock()
	return y.done, y.resets, y.bytes
}

// TestSoak keeps a steady mixed load on rsp for -soak (make soak; SOAK=
// sets the time) with a reload every minute, samples rsp's RSS, fds,
// goroutines and pipes every 10 s into soak.csv and soak.svg, and fails if
// any of them keeps growing over the last half of the run, if a transfer
// is corrupted or lost, or if rsp does not return to its starting fds and
// goroutines once the load stops.
func TestSoak(t *testing.T) {
	// The first two minutes are warm-up: the pipe pool and the heap grow
	// to the load (RSS climbs ~4 MiB, then stays). The fitted half must
	// start after them.
	if *soakFor < 6*time.Minute {
		t.Fatalf("-soak %v: use at least 6m, so that the fitted last half starts after the warm-up", *soakFor)
	}
	var got sync.Map
	conf := fmt.Sprintf("[global]\nrelay = %q\n[frontend.soak]\nlisten = \"127.0.0.1:0\"\nbackend = \"mixed\"\n", *soakRelay)
	for i := range soakBackends {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", 11+i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		mixedServe(ln, &got)
		conf += fmt.Sprintf("[backend.mixed.server.s%d]\naddress = %q\n", i, ln.Addr().String())
	}
	path := writeConfig(t, "", conf)
	p := startRsp(t, "-config", path)
	base := baselineOf(p.stats())

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var tally mixedTally
	for i := range soakWorkers {
		wg.Add(1)
		go soakWorker(t, &wg, stop, p.addr, uint64(i), &got, &tally)
	}
	for i := range soakIdlers {
		wg.Add(1)
		go soakIdler(&wg, stop, p.addr, uint64(i))
	}

	// The copy relay runs two goroutines per connection; the splice
	// engine none.
	perConn := 0
	if *soakRelay == "copy" {
		perConn = 2
	}
	start := time.Now()
	var samples []soakSample
	nextReload := start.Add(soakReload)
	tick := time.NewTicker(soakEvery)
	for time.Since(start) < *soakFor {
		<-tick.C
		s := p.stats()
		done, resets, bytes := tally.counts()
		samples = append(samples, soakSample{
			at: time.Since(start), rssKiB: rssKiB(t, p.pid()), fds: s.fds,
			fdsOther: s.selfFDs - 2*s.active - 2*s.pipes, goroutines: s.goroutines, pipes: s.pipes,
			goroutinesOther: s.goroutines - perConn*s.active,
			active:          s.active, accepted: s.accepted,
			completed: done, resets: resets, bytes: bytes,
		})
		if time.Now().After(nextReload) {
			reloadConfig(t, p, path, conf)
			nextReload = nextReload.Add(soakReload)
		}
	}
	tick.Stop()
	close(stop)
	wg.Wait()

	if err := os.MkdirAll(*soakOut, 0o755); err != nil {
		t.Fatal(err)
	}
	csvPath, svgPath := filepath.Join(*soakOut, "soak.csv"), filepath.Join(*soakOut, "soak.svg")
	writeSoakCSV(t, csvPath, samples)

	half := samples[len(samples)/2:]
	slopes := map[string]float64{}
	var failed []string
	for _, name := range sortedKeys(soakLimits) {
		slope := fitSlope(half, name)
		slopes[name] = slope
		t.Logf("%-10s fitted slope over the last %v: %+.2f per minute (limit %.1f)", name,
			(half[len(half)-1].at - half[0].at).Round(time.Second), slope, soakLimits[name])
		if slope > soakLimits[name] {
			failed = append(failed, fmt.Sprintf("%s grows %.2f per minute (limit %.1f)", name, slope, soakLimits[name]))
		}
	}
	writeSoakSVG(t, svgPath, samples, slopes)
	last := samples[len(samples)-1]
	t.Logf("soak (%s) %v: %d connections accepted, %v; RSS %d→%d KiB; wrote %s and %s",
		*soakRelay, soakFor.Round(time.Second), last.accepted, &tally, samples[0].rssKiB, last.rssKiB, csvPath, svgPath)
	if tally.corrupted != 0 || tally.lost != 0 {
		t.Errorf("%d transfers corrupted, %d lost", tally.corrupted, tally.lost)
	}
	if len(failed) > 0 {
		t.Errorf("growth without bound: %s", strings.Join(failed, "; "))
	}
	settle(t, p, base)
}

// soakWorker runs mixed transfers back to back until stop closes.
func soakWorker(t *testing.T, wg *sync.WaitGroup, stop <-chan struct{}, addr string, id uint64, got *sync.Map, tally *mixedTally) {
	defer wg.Done()
	d := &net.Dialer{Timeout: 30 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+id%soakSources))}}
	for n := uint64(0); ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		tally.add(t, mixedClient(d, addr, 9<<56|id<<32|n, got, soakMax))
	}
}

// soakIdler opens connections that send nothing, or half a header, and
// go away after up to 2 s, until stop closes.
func soakIdler(wg *sync.WaitGroup, stop <-chan struct{}, addr string, id uint64) {
	defer wg.Done()
	r := rand.New(rand.NewPCG(id, 2))
	d := &net.Dialer{Timeout: 30 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+id%soakSources))}}
	for {
		c, err := d.Dial("tcp", addr)
		if err == nil {
			if r.IntN(2) == 0 {
				c.Write([]byte("c1234567"))
			}
			select {
			case <-stop:
				c.Close()
				return
			case <-time.After(time.Duration(r.IntN(2000)) * time.Millisecond):
			}
			c.Close()
		}
		select {
		case <-stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// fitSlope is the Theil–Sen slope of column name against time, per
// minute: the median of the slopes between every pair of samples. Unlike
// least squares it is not swung by one sample taken while a connection
// was half set up, yet it follows a steady climb.
func fitSlope(samples []soakSample, name string) float64 {
	var slopes []float64
	for i := range samples {
		for j := i + 1; j < len(samples); j++ {
			dx := samples[j].at.Minutes() - samples[i].at.Minutes()
			if dx > 0 {
				slopes = append(slopes, (samples[j].column(name)-samples[i].column(name))/dx)
			}
		}
	}
	if len(slopes) == 0 {
		return 0
	}
	sort.Float64s(slopes)
	if n := len(slopes); n%2 == 0 {
		return (slopes[n/2-1] + slopes[n/2]) / 2
	}
	return slopes[len(slopes)/2]
}

func sortedKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func writeSoakCSV(t *testing.T, path string, samples []soakSample) {
	var b strings.Builder
	b.WriteString("seconds,rss_kib,fds,fds_other,goroutines,goroutines_other,pipes,active,accepted,completed,resets,bytes\n")
	for _, s := range samples {
		fmt.Fprintf(&b, "%.0f,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d\n", s.at.Seconds(), s.rssKiB, s.fds, s.fdsOther,
			s.goroutines, s.goroutinesOther, s.pipes, s.active, s.accepted, s.completed, s.resets, s.bytes)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeSoakSVG draws one panel per checked column against minutes, with
// the line fitted over the last half in red.
func writeSoakSVG(t *testing.T, path string, samples []soakSample, slopes map[string]float64) {
	const w, ph, left, top = 720.0, 150.0, 70.0, 40.0
	names := sortedKeys(soakLimits)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n",
		w, top+float64(len(names))*(ph+40))
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="14">rsp soak (%s, %v): sampled every %v</text>`+"\n", left, *soakRelay, soakFor.Round(time.Second), soakEvery)
	end := samples[len(samples)-1].at.Minutes()
	half := samples[len(samples)/2:]
	for i, name := range names {
		y0 := top + float64(i)*(ph+40) + 20
		lo, hi := samples[0].column(name), samples[0].column(name)
		for _, s := range samples {
			lo, hi = min(lo, s.column(name)), max(hi, s.column(name))
		}
		if hi-lo < 1 {
			hi, lo = hi+1, lo-1
		}
		px := func(m float64) float64 { return left + (w-left-20)*m/end }
		py := func(v float64) float64 { return y0 + ph - ph*(v-lo)/(hi-lo) }
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`+"\n", left, y0, w-left-20, ph)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%s: last-half slope %+.2f/min (limit %.1f)</text>`+"\n", left, y0-5, name, slopes[name], soakLimits[name])
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="end">%.0f</text><text x="%.0f" y="%.0f" text-anchor="end">%.0f</text>`+"\n",
			left-4, y0+10, hi, left-4, y0+ph, lo)
		var pts []string
		for _, s := range samples {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.at.Minutes()), py(s.column(name))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="%s"/>`+"\n", strings.Join(pts, " "))
		// The fitted line over the last half, through the median of
		// value - slope*time (the Theil–Sen intercept).
		var icpts []float64
		for _, s := range half {
			icpts = append(icpts, s.column(name)-slopes[name]*s.at.Minutes())
		}
		sort.Float64s(icpts)
		mx, my := 0.0, icpts[len(icpts)/2]
		x1, x2 := half[0].at.Minutes(), end
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#d62728" stroke-width="1.5"/>`+"\n",
			px(x1), py(my+slopes[name]*(x1-mx)), px(x2), py(my+slopes[name]*(x2-mx)))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">minutes →</text>`+"\n", w-100, top+float64(len(names))*(ph+40))
	b.WriteString("</svg>\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
