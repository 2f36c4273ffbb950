package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gaia-registry/gaia/registry/gc"
	"github.com/gaia-registry/gaia/registry/server"
)

const gcUsage = `usage: gaia-registry gc status [--config FILE] [--json]
       gaia-registry gc run [--config FILE] [--dry-run] [--limit N] [--loop] [--walk] [--metrics ADDR]

status  queue depths, how many entries are due and how long the oldest has
        been due, bytes reclaimed per IDC.
run     one garbage collection pass in the config's IDC (cluster.idc):
        reviews every due entry, deletes this IDC's queued bytes.
        --dry-run lists what the due entries' reviews would decide, and
        why, deleting nothing. --loop keeps collecting (a worker; any
        number may run beside the servers). --walk also walks the IDC's
        storage for crash-left objects (gc.walk.*), ignoring gc.walk.every.
`

func gcCmd(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, gcUsage)
		os.Exit(2)
	}
	action := args[0]
	fs := flag.NewFlagSet("gc "+action, flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, gcUsage) }
	configPath := fs.String("config", "", "registry configuration file (YAML)")
	asJSON := fs.Bool("json", false, "status: print JSON")
	dry := fs.Bool("dry-run", false, "run: decide, delete nothing, list the decisions")
	limit := fs.Int("limit", 1000, "run --dry-run: entries of each kind to look at")
	loop := fs.Bool("loop", false, "run: keep collecting until SIGTERM")
	walk := fs.Bool("walk", false, "run: also walk the storage for crash-left objects")
	metricsAddr := fs.String("metrics", "", "run --loop: serve /metrics on this address")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *configPath == "" {
		return fmt.Errorf("gc %s: --config FILE is required", action)
	}
	cfg, err := server.LoadConfig(*configPath, os.Environ())
	if err != nil {
		return err
	}
	log := cfg.Log.New()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w, err := server.NewGCWorker(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer w.Close()
	switch action {
	case "status":
		st, err := gc.ReadStatus(ctx, w.DB, cfg.GC.ReviewDelay())
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(st)
		}
		fmt.Printf("review after: %s\n", st.ReviewAfter)
		fmt.Printf("%-20s %10s %10s %16s\n", "QUEUE", "DEPTH", "DUE", "OLDEST DUE FOR")
		for _, q := range st.Queues {
			fmt.Printf("%-20s %10d %10d %16s\n", q.Name, q.Depth, q.Due, q.Oldest)
		}
		fmt.Printf("\n%-20s %12s %12s %16s\n", "IDC", "MANIFESTS", "BLOBS", "BYTES RECLAIMED")
		for _, t := range st.Totals {
			name := t.IDC
			if name == "" {
				name = "(cluster)"
			}
			fmt.Printf("%-20s %12d %12d %16d\n", name, t.ManifestsDeleted, t.BlobsDeleted, t.BytesReclaimed)
		}
		return nil
	case "run":
		if *dry {
			ds, err := w.DryRun(ctx, *limit)
			for _, d := range ds {
				fmt.Println(d.String())
			}
			return err
		}
		if *metricsAddr != "" {
			ln, err := net.Listen("tcp", *metricsAddr)
			if err != nil {
				return fmt.Errorf("--metrics: %w", err)
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", promhttp.HandlerFor(w.Metrics, promhttp.HandlerOpts{}))
			go (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
		}
		if *walk {
			o := w.Walk
			o.Every = time.Nanosecond
			res, err := w.Collector.Walk(ctx, o)
			fmt.Printf("storage walk: examined %d, removed %d objects and %d staging files\n", res.Examined, res.Removed, res.Staging)
			if err != nil {
				return err
			}
		}
		if *loop {
			w.Run(ctx, cfg.GC.IdleInterval())
			return nil
		}
		st, err := w.Pass(ctx)
		fmt.Printf("reviewed %d manifests (%d deleted) and %d blobs (%d deleted); removed %d objects, %d bytes, from %s's storage\n",
			st.ManifestsReviewed, st.ManifestsDeleted, st.BlobsReviewed, st.BlobsDeleted, st.BytesDeleted, st.BytesReclaimed, cfg.Cluster.IDC)
		return err
	default:
		fmt.Fprint(os.Stderr, gcUsage)
		os.Exit(2)
	}
	return nil
}
