// Command regbench is a side-by-side load benchmark for registries that
// speak the OCI distribution HTTP API. It runs each scenario against every
// target in turn (interleaved per scenario, and per repetition, round or
// seeding chunk within one), so all targets see the same machine state, and prints
// a markdown table with one column per target and a ratio column per
// non-baseline target (>1 always means "better than the baseline").
//
//	go run ./tests/bench/regbench \
//	    -target stock=http://127.0.0.1:5101 -target gaia=http://127.0.0.1:5102 \
//	    -scenarios push,pull,manifest,tags,catalog
//
// Scenarios:
//
//	push      POST + one streamed PATCH of -blob-size bytes + PUT ?digest=, MiB/s, median of -n
//	pull      GET of the pushed blob, discarded, MiB/s, median of -n
//	manifest  GET /v2/<repo>/manifests/latest from -concurrency clients for -duration: req/s, p50, p99
//	tags      PUT one manifest under -tags tags (rate), then GET tags/list (full) and a n=1000 walk
//	catalog   seed -repos repositories (mount + manifest PUT; rate), then _catalog?n=100 and a n=1000 walk
//
// Progress goes to stderr, the table to stdout. Any error aborts (exit 1).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

type config struct {
	scenarios       []string
	blobSize        int64
	n               int
	concurrency     int
	duration        time.Duration
	tags            int
	repos           int
	seedConcurrency int
	reps            int
	walkCap         time.Duration
	prefix          string
	seedCatalogFS   map[string]string // target name -> registry rootdirectory
	sync            bool
	manifestRounds  int
	seedRounds      int
}

var allScenarios = []string{"push", "pull", "manifest", "tags", "catalog"}

func main() {
	var (
		targets, notes, fsSeeds listFlag
		cfg                     config
		scenarios, blobSize     string
		baseline                string
	)
	flag.Var(&targets, "target", "`name=URL` of a registry (repeat; the first, or -baseline, is the ratio baseline)")
	flag.StringVar(&baseline, "baseline", "", "target name the ratios compare against (default: the first -target)")
	flag.StringVar(&scenarios, "scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios: "+strings.Join(allScenarios, ","))
	flag.StringVar(&blobSize, "blob-size", "1GiB", "push/pull blob size (bytes, or with KiB/MiB/GiB suffix)")
	flag.IntVar(&cfg.n, "n", 3, "push/pull repetitions (median reported); each push is a new blob")
	flag.IntVar(&cfg.concurrency, "concurrency", 32, "manifest scenario: concurrent clients")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "manifest scenario: measured duration per target")
	flag.IntVar(&cfg.manifestRounds, "manifest-rounds", 5, "manifest scenario: split -duration into this many rounds, interleaved between targets")
	flag.BoolVar(&cfg.sync, "sync", true, "call sync(2), untimed, before every push and pull, so writeback of earlier data does not land in a measurement (meaningful when the registries store on this machine)")
	flag.IntVar(&cfg.tags, "tags", 10000, "tags scenario: number of tags")
	flag.IntVar(&cfg.repos, "repos", 100000, "catalog scenario: number of repositories")
	flag.IntVar(&cfg.seedConcurrency, "seed-concurrency", 16, "tags/catalog seeding: concurrent clients")
	flag.IntVar(&cfg.seedRounds, "seed-rounds", 10, "tags/catalog seeding: split the work into this many chunks, alternating between targets")
	flag.IntVar(&cfg.reps, "reps", 5, "tags/catalog listing: repetitions (median reported)")
	flag.DurationVar(&cfg.walkCap, "catalog-walk-cap", 5*time.Minute, "catalog: give up a paginated walk after this long and report \"> cap\"")
	flag.StringVar(&cfg.prefix, "repo-prefix", "regbench", "namespace of every repository the benchmark writes")
	flag.Var(&fsSeeds, "seed-catalog-fs", "`name=DIR`: seed the catalog repositories of target name by writing distribution's filesystem layout under its storage rootdirectory DIR instead of through the API (stock registry only; repeatable)")
	flag.Var(&notes, "note", "a line to print under the table (repeatable)")
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %v", flag.Args())
	}
	if len(targets) == 0 {
		fatalf("at least one -target name=URL is required")
	}
	var err error
	if cfg.blobSize, err = parseSize(blobSize); err != nil || cfg.blobSize <= 0 {
		fatalf("-blob-size %q: want a positive size such as 1GiB", blobSize)
	}
	for s := range strings.SplitSeq(scenarios, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !contains(allScenarios, s) {
			fatalf("unknown scenario %q (have %s)", s, strings.Join(allScenarios, ","))
		}
		cfg.scenarios = append(cfg.scenarios, s)
	}
	if cfg.n < 1 || cfg.reps < 1 || cfg.manifestRounds < 1 || cfg.seedRounds < 1 || cfg.concurrency < 1 || cfg.seedConcurrency < 1 || cfg.tags < 1 || cfg.repos < 1 {
		fatalf("-n, -reps, -manifest-rounds, -seed-rounds, -concurrency, -seed-concurrency, -tags and -repos must be >= 1")
	}
	cfg.seedCatalogFS = map[string]string{}
	for _, s := range fsSeeds {
		name, dir, ok := strings.Cut(s, "=")
		if !ok || name == "" || dir == "" {
			fatalf("-seed-catalog-fs %q: want name=DIR", s)
		}
		cfg.seedCatalogFS[name] = dir
	}

	maxConns := max(cfg.concurrency, cfg.seedConcurrency) + 4
	b := &bench{cfg: cfg, notes: notes}
	seen := map[string]bool{}
	for _, s := range targets {
		name, raw, ok := strings.Cut(s, "=")
		if !ok {
			fatalf("-target %q: want name=URL", s)
		}
		if seen[name] {
			fatalf("-target name %q given twice", name)
		}
		seen[name] = true
		t, err := newTarget(name, raw, maxConns)
		if err != nil {
			fatalf("%v", err)
		}
		b.targets = append(b.targets, t)
	}
	for name := range cfg.seedCatalogFS {
		if !seen[name] {
			fatalf("-seed-catalog-fs: no target named %q", name)
		}
	}
	b.baseline = b.targets[0]
	if baseline != "" {
		b.baseline = nil
		for _, t := range b.targets {
			if t.name == baseline {
				b.baseline = t
			}
		}
		if b.baseline == nil {
			fatalf("-baseline %q: no such target", baseline)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if b.img, err = newImage(); err != nil {
		fatalf("building the test image: %v", err)
	}
	for _, t := range b.targets {
		if err := t.ping(ctx); err != nil {
			fatalf("target %s not answering GET /v2/: %v", t.name, err)
		}
	}

	start := time.Now()
	logf("targets: %s; scenarios: %s; GOMAXPROCS=%d", targetList(b.targets), strings.Join(cfg.scenarios, ","), runtime.GOMAXPROCS(0))
	for _, s := range cfg.scenarios {
		t0 := time.Now()
		var err error
		switch s {
		case "push":
			err = b.runPush(ctx)
		case "pull":
			err = b.runPull(ctx)
		case "manifest":
			err = b.runManifest(ctx)
		case "tags":
			err = b.runTags(ctx)
		case "catalog":
			err = b.runCatalog(ctx)
		}
		if err != nil {
			if len(b.results) > 0 {
				fmt.Fprintln(os.Stderr, "\nregbench: results so far:")
				b.printTable(os.Stderr, time.Since(start))
			}
			fatalf("scenario %s: %v", s, err)
		}
		logf("scenario %s done in %s", s, time.Since(t0).Round(time.Millisecond))
	}
	b.printTable(os.Stdout, time.Since(start))
}

func targetList(ts []*target) string {
	var s []string
	for _, t := range ts {
		s = append(s, t.name+"="+t.base.String())
	}
	return strings.Join(s, " ")
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// parseSize parses "1073741824", "1GiB", "8MiB", "512KiB" (also G/M/K, GB/MB/KB as binary units).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	up := strings.ToUpper(s)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(up, u.suffix) {
			mult = u.m
			s = strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	return n * mult, nil
}

func formatSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "regbench %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "regbench: ERROR: %s\n", fmt.Sprintf(format, args...))
	os.Exit(1)
}
