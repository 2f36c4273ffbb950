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
//	push      -blob-size of new content per client and repetition, pushed by each of -push-clients
//	          (curl monolithic PUT, curl streamed PATCH, crane push, regbench's streamed PATCH): MiB/s, median of -n
//	pull      the pushed blob read by each of -pull-clients (curl, crane blob, ctr content fetch of an
//	          image of -layers layers, regbench's 1 MiB reads): MiB/s, median of -n
//	manifest  GET /v2/<repo>/manifests/latest (or by digest: -manifest-ref digest) from -concurrency clients for -duration: req/s, p50, p99
//	busy      manifest GET p50/p99 from -busy-clients clients, idle and while -busy-pushes uploads stream
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
	"os/exec"
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
	manifestRef     string // "tag" or "digest"
	seedRounds      int
	pushClients     []string
	pullClients     []string
	layers          int
	pullN           int
	busy            busyConfig
}

var (
	allScenarios   = []string{"push", "pull", "manifest", "busy", "tags", "catalog"}
	allPushClients = []string{"curl-put", "curl-patch", clientCrane, clientRegbench}
	allPullClients = []string{clientCurl, clientCrane, clientCtr, clientRegbench}
)

func main() {
	var (
		targets, notes, fsSeeds  listFlag
		cfg                      config
		scenarios, blobSize      string
		baseline                 string
		pushClients, pullClients string
		busyRate                 string
		busyWorkerURL, busyRepo  string
		tl                       tools
	)
	flag.Var(&targets, "target", "`name=URL` of a registry (repeat; the first, or -baseline, is the ratio baseline)")
	flag.StringVar(&baseline, "baseline", "", "target name the ratios compare against (default: the first -target)")
	flag.StringVar(&scenarios, "scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios: "+strings.Join(allScenarios, ","))
	flag.StringVar(&blobSize, "blob-size", "1GiB", "push/pull blob size (bytes, or with KiB/MiB/GiB suffix)")
	flag.IntVar(&cfg.n, "n", 3, "push/pull repetitions (median reported); each push is a new blob")
	flag.IntVar(&cfg.pullN, "pull-n", 0, "pull repetitions, if not -n (pulls leave nothing on disk; every push leaves -blob-size per target)")
	flag.IntVar(&cfg.concurrency, "concurrency", 32, "manifest scenario: concurrent clients")
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "manifest scenario: measured duration per target")
	flag.StringVar(&cfg.manifestRef, "manifest-ref", "tag", "manifest scenario: GET by tag (latest) or by digest")
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
	flag.StringVar(&pushClients, "push-clients", strings.Join(allPushClients, ","), "push scenario: clients, each a row: "+strings.Join(allPushClients, ","))
	flag.StringVar(&pullClients, "pull-clients", strings.Join(allPullClients, ","), "pull scenario: clients, each a row: "+strings.Join(allPullClients, ","))
	flag.StringVar(&tl.curl, "curl", "curl", "curl command")
	flag.StringVar(&tl.crane, "crane", "crane", "crane command (go-containerregistry)")
	flag.StringVar(&tl.ctr, "ctr", "ctr", "containerd's ctr command")
	flag.StringVar(&tl.ctrAddress, "ctr-address", "", "containerd socket for the ctr client (required when -pull-clients has ctr); its content store should be on tmpfs")
	flag.StringVar(&tl.ctrNamespace, "ctr-namespace", "regbench", "containerd namespace the ctr client uses (emptied before and after each fetch)")
	flag.StringVar(&tl.workDir, "work-dir", os.TempDir(), "where content for the external clients' pushes is written (one -blob-size file at a time)")
	flag.IntVar(&cfg.layers, "layers", 4, "pull scenario, ctr client: layers of the image fetched (-blob-size in total)")
	flag.IntVar(&cfg.busy.pushes, "busy-pushes", 200, "busy scenario: concurrent pushes, each streaming toward -busy-push-size")
	flag.StringVar(&busyRate, "busy-push-rate", "1MiB", "busy scenario: bytes per second each push sends (0: as fast as it can)")
	flag.StringVar(&cfg.busy.pushSizeStr, "busy-push-size", "1GiB", "busy scenario: Content-Length each push announces")
	flag.DurationVar(&cfg.busy.window, "busy-window", 10*time.Second, "busy scenario: manifest GET measurement window, idle and with the pushes streaming, per round")
	flag.IntVar(&cfg.busy.rounds, "busy-rounds", 2, "busy scenario: rounds (each: idle window, then window under pushes, per target in turn)")
	flag.IntVar(&cfg.busy.clients, "busy-clients", 4, "busy scenario: concurrent manifest GET clients")
	flag.Var(&notes, "note", "a line to print under the table (repeatable)")
	flag.StringVar(&busyWorkerURL, "busy-worker", "", "internal: run as the busy scenario's upload process against this registry URL")
	flag.StringVar(&busyRepo, "busy-repo", "", "internal: the -busy-worker's repository")
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %v", flag.Args())
	}
	var err error
	if cfg.busy.pushSize, err = parseSize(cfg.busy.pushSizeStr); err != nil || cfg.busy.pushSize <= 0 {
		fatalf("-busy-push-size %q: want a positive size", cfg.busy.pushSizeStr)
	}
	if cfg.busy.rate, err = parseSize(busyRate); err != nil || cfg.busy.rate < 0 {
		fatalf("-busy-push-rate %q: want a size per second, or 0", busyRate)
	}
	if cfg.busy.pushes < 1 || cfg.busy.rounds < 1 || cfg.busy.clients < 1 || cfg.busy.window <= 0 {
		fatalf("-busy-pushes, -busy-rounds, -busy-clients and -busy-window must be positive")
	}
	if busyWorkerURL != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := busyWorker(ctx, cfg, busyWorkerURL, busyRepo); err != nil {
			fmt.Printf("error %v\n", err)
			fatalf("busy worker: %v", err)
		}
		return
	}
	if len(targets) == 0 {
		fatalf("at least one -target name=URL is required")
	}
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
	if cfg.pullN == 0 {
		cfg.pullN = cfg.n
	}
	if cfg.manifestRef != "tag" && cfg.manifestRef != "digest" {
		fatalf("-manifest-ref: %q is not tag or digest", cfg.manifestRef)
	}
	if cfg.n < 1 || cfg.pullN < 1 || cfg.reps < 1 || cfg.manifestRounds < 1 || cfg.seedRounds < 1 || cfg.concurrency < 1 || cfg.seedConcurrency < 1 || cfg.tags < 1 || cfg.repos < 1 {
		fatalf("-n, -pull-n, -reps, -manifest-rounds, -seed-rounds, -concurrency, -seed-concurrency, -tags and -repos must be >= 1")
	}
	if cfg.pushClients, err = pickList("-push-clients", pushClients, allPushClients); err != nil {
		fatalf("%v", err)
	}
	if cfg.pullClients, err = pickList("-pull-clients", pullClients, allPullClients); err != nil {
		fatalf("%v", err)
	}
	if cfg.layers < 1 {
		fatalf("-layers must be >= 1")
	}
	uses := func(scenario string, clients []string, client string) bool {
		return contains(cfg.scenarios, scenario) && contains(clients, client)
	}
	for _, c := range []struct {
		used      bool
		flag, cmd string
	}{
		{uses("push", cfg.pushClients, "curl-put") || uses("push", cfg.pushClients, "curl-patch") || uses("pull", cfg.pullClients, clientCurl), "-curl", tl.curl},
		{uses("push", cfg.pushClients, clientCrane) || uses("pull", cfg.pullClients, clientCrane), "-crane", tl.crane},
		{uses("pull", cfg.pullClients, clientCtr), "-ctr", tl.ctr},
	} {
		if _, err := exec.LookPath(c.cmd); c.used && err != nil {
			fatalf("%s %q: %v (or leave that client out with -push-clients / -pull-clients)", c.flag, c.cmd, err)
		}
	}
	if uses("pull", cfg.pullClients, clientCtr) && tl.ctrAddress == "" {
		fatalf("-pull-clients has ctr: -ctr-address (a containerd socket) is required")
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
	b := &bench{cfg: cfg, notes: notes, tools: tl}
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
		case "busy":
			err = b.runBusy(ctx)
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

// pickList parses a comma-separated subset of all.
func pickList(flagName, list string, all []string) ([]string, error) {
	var out []string
	for s := range strings.SplitSeq(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !contains(all, s) {
			return nil, fmt.Errorf("%s: unknown %q (have %s)", flagName, s, strings.Join(all, ","))
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: empty", flagName)
	}
	return out, nil
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
