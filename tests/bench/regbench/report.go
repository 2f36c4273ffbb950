package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// bench holds the targets, the shared test image and the results so far.
type bench struct {
	cfg      config
	targets  []*target
	baseline *target
	img      *image
	results  []*result
	notes    []string
	tools    tools
	// busy scenario: cut uploads a target would not delete
	undeleted map[string]int

	// blob pushed by the push scenario (same seed, so the same digest, on
	// every target); the pull scenario reads it.
	blobDigest digest.Digest
	blobSeed   uint64
}

const (
	higherBetter = 1
	lowerBetter  = -1
	infoOnly     = 0
)

// val is one measurement; capped means the true value is above v (a walk
// that hit -catalog-walk-cap).
type val struct {
	v      float64
	capped bool
}

type result struct {
	scenario, metric string
	better           int
	values           map[string]val
}

func (b *bench) add(scenario, metric string, better int, values map[string]val) {
	b.results = append(b.results, &result{scenario: scenario, metric: metric, better: better, values: values})
}

func (b *bench) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

// order returns the targets rotated by i, so that no target always goes
// first in interleaved repetitions.
func (b *bench) order(i int) []*target { return rotate(b.targets, i) }

func rotate(ts []*target, i int) []*target {
	n := len(ts)
	out := make([]*target, 0, n)
	for k := range n {
		out = append(out, ts[(i+k)%n])
	}
	return out
}

func fmtNum(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 100:
		return fmt.Sprintf("%.1f", v)
	case a >= 10:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func (v val) String() string {
	if v.capped {
		return "> " + fmtNum(v.v)
	}
	return fmtNum(v.v)
}

// ratio of other vs base, oriented so that >1 means other is better.
func ratio(better int, base, other val) string {
	if better == infoOnly || base.v == 0 || other.v == 0 {
		return ""
	}
	if base.capped && other.capped {
		return "n/a"
	}
	var r float64
	if better == higherBetter {
		r = other.v / base.v
	} else {
		r = base.v / other.v
	}
	s := fmt.Sprintf("%.2f", r)
	switch {
	case other.capped && better == lowerBetter, !other.capped && base.capped && better == higherBetter:
		return "< " + s
	case base.capped && better == lowerBetter, other.capped && better == higherBetter:
		return "> " + s
	}
	return s
}

func (b *bench) printTable(w io.Writer, elapsed time.Duration) {
	var others []*target
	for _, t := range b.targets {
		if t != b.baseline {
			others = append(others, t)
		}
	}
	c := b.cfg
	fmt.Fprintf(w, "## regbench: %s\n\n", targetList(b.targets))
	fmt.Fprintf(w, "%s, GOMAXPROCS %d (client), %s on %s/%s; scenarios %s; blob %s, %d pushes and %d pulls per client and target; manifest %d clients x %s; %d tags; %d repos; seeding concurrency %d; listings median of %d.\n\n",
		time.Now().Format("2006-01-02 15:04 MST"), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH,
		strings.Join(c.scenarios, ","), formatSize(c.blobSize), c.n, c.pullN, c.concurrency, c.duration, c.tags, c.repos, c.seedConcurrency, c.reps)
	header := []string{"scenario", "metric"}
	for _, t := range b.targets {
		header = append(header, t.name)
	}
	for _, t := range others {
		header = append(header, fmt.Sprintf("%s vs %s (>1 = %s better)", t.name, b.baseline.name, t.name))
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(header, " | "))
	seps := make([]string, len(header))
	for i := range seps {
		if i < 2 {
			seps[i] = "---"
		} else {
			seps[i] = "---:"
		}
	}
	fmt.Fprintf(w, "| %s |\n", strings.Join(seps, " | "))
	for _, r := range b.results {
		row := []string{r.scenario, r.metric}
		for _, t := range b.targets {
			if v, ok := r.values[t.name]; ok {
				row = append(row, v.String())
			} else {
				row = append(row, "")
			}
		}
		for _, t := range others {
			bv, ok1 := r.values[b.baseline.name]
			ov, ok2 := r.values[t.name]
			if ok1 && ok2 {
				row = append(row, ratio(r.better, bv, ov))
			} else {
				row = append(row, "")
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(row, " | "))
	}
	fmt.Fprintln(w)
	if len(others) > 0 {
		o := others[0].name
		fmt.Fprintf(w, "Ratios: for throughputs and rates (higher is better) %s/%s; for latencies and durations (lower is better) %s/%s; either way > 1 means %s is better. \"> X\" marks a walk stopped at -catalog-walk-cap.\n\n",
			o, b.baseline.name, b.baseline.name, o, o)
	}
	for _, n := range b.notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	fmt.Fprintf(w, "- total benchmark time %s\n", elapsed.Round(time.Second))
}

// --- statistics

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// --- concurrency

// parallel runs fn(i) for i in [0, n) on workers goroutines; the first
// error stops the rest and is returned. done counts finished items.
func parallel(ctx context.Context, n, workers int, done *atomic.Int64, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
	)
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { firstErr = err; cancel() })
					return
				}
				if done != nil {
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}
