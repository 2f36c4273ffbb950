# Gaia's entry points. Every target installs and starts what it needs
# (tests/services/svc.sh); nothing is done by hand on a fresh machine.
GO       ?= go
SVC      := tests/services/svc.sh
PKGS     := ./...
# The whole suite, under the race detector; distribution's driver suite runs
# in its short mode here.
TESTFLAGS ?= -count=1 -short -race -timeout 40m

# Go fuzz targets, package:target, each with its seed corpus in the
# package's testdata/fuzz/. FUZZ_SMOKE is fuzzed for FUZZ_SMOKE_TIME each
# at the end of `make test`: the targets whose packages build with fuzzing
# instrumentation in seconds (measured on 2 cores: 32 s with a warm build
# cache, 67 s from a cold one with the machine busy, 68 CPU-seconds). The
# daemons' config targets need distribution, pgx, Consul's client and more
# instrumented (about 170 CPU-seconds more from a cold cache), so `make
# test` runs only their seeds (with the unit tests) and `make fuzz` fuzzes
# every target for FUZZTIME.
FUZZ_SMOKE := ./registry/grammar:FuzzParse ./registry/grammar:FuzzReference ./registry/grammar:FuzzByteRange \
	./registry/grammar:FuzzContentRange ./registry/manifest:FuzzParse ./mirror-sync/rule:FuzzRule ./registry/yamlconfig:FuzzLoad
FUZZ_ALL   := $(FUZZ_SMOKE) ./registry/server:FuzzLoadConfig ./registry/gateway:FuzzLoadConfig \
	./mirror-sync/cmd/gaia-mirror:FuzzLoad ./nodeagent/cmd/gaia-nodeagent:FuzzLoad ./storage-hdfs:FuzzParameters
FUZZ_SMOKE_TIME ?= 3s
FUZZTIME        ?= 2m

.PHONY: all build run cluster test test-long fuzz-smoke fuzz test-hdfs-full bench bench-registry bench-gateway bench-hdfs bench-mirror bench-scheduler bench-scheduler-fairness bench-scheduler-cp bench-node bench-nodeagent bench-gc bench-auth services services-stop vet clean

all: build

build:
	$(GO) build -o bin/ ./registry/cmd/... ./mirror-sync/cmd/... ./scheduler/cmd/... ./nodeagent/cmd/... ./cmd/...   # gaia-registry, gaia-gateway, gaia-mirror, gaia-scheduler, gaia-nodeagent, gaia-gate (static), gaiactl

# A registry on 127.0.0.1:5000 with filesystem storage (configs/registry-local.yml)
# and the local PostgreSQL (installed and started here if needed), in the
# foreground; Ctrl-C stops it gracefully.
run: build
	bash $(SVC) start postgres
	@mkdir -p data
	exec bin/gaia-registry serve --config configs/registry-local.yml

# A two-IDC cluster on this machine: two servers and a gateway per IDC, a
# scheduler and three node agents (127.0.0.2-4) on the test dockerd
# (configs/cluster/), gateways on 127.0.0.1:6000 (idc-a) and :6001 (idc-b).
# STORAGE=hdfs for HDFS storage. Ctrl-C stops it.
cluster: build
	exec bash tests/cluster/cluster.sh

# Starts PostgreSQL, HDFS (two clusters), Consul, dockerd and slapd, then runs every
# test (fuzz targets' seed corpora included), then fuzz-smoke.
test: services vet
	$(GO) test $(TESTFLAGS) $(PKGS)
	@$(MAKE) --no-print-directory fuzz-smoke

# A bounded fuzzing run per target (go test -fuzz takes one at a time). A
# failure leaves the input in the package's testdata/fuzz/<target>/: fix
# the cause and keep the input there as a seed.
fuzz-smoke:
	@set -e; for t in $(FUZZ_SMOKE); do \
		echo "fuzz $${t#*:} in $${t%%:*} for $(FUZZ_SMOKE_TIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZ_SMOKE_TIME) $${t%%:*} \
		|| { echo "fuzz $${t#*:}: once more (the fuzzing engine itself fails now and then with 'context deadline exceeded' at the end; a real failure's input is saved and fails the second run too)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZ_SMOKE_TIME) $${t%%:*}; }; \
	done

# Every fuzz target for FUZZTIME each (make fuzz FUZZTIME=1h).
fuzz:
	@set -e; for t in $(FUZZ_ALL); do \
		echo "fuzz $${t#*:} in $${t%%:*} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) $${t%%:*}; \
	done

vet:
	$(GO) vet $(PKGS)

# What make test's short mode leaves out and CI still runs: distribution's
# 5 GiB stream test against the real HDFS (about a minute).
test-long:
	bash $(SVC) start hdfs
	$(GO) test -count=1 -timeout 20m -v -run 'TestDriverSuite/TestWriteReadLargeStreams$$' ./storage-hdfs/

# distribution's full driver suite against the real HDFS, including the
# 5 GiB stream test (about 10 minutes on 2 cores).
test-hdfs-full:
	bash $(SVC) start hdfs
	$(GO) test -count=1 -timeout 60m -v -run 'TestDriverSuite' ./storage-hdfs/

# Gaia vs the stock distribution registry (v3.1.2, built from the Go module
# proxy), then the HDFS driver vs distribution's filesystem driver vs the raw
# colinmarc client, then gaia-mirror vs skopeo sync, then gaia-scheduler's
# placement engine. Results: docs/benchmarks.md.
bench: bench-registry bench-gateway bench-hdfs bench-mirror bench-scheduler bench-scheduler-cp bench-node bench-nodeagent bench-gc bench-auth

# 1 GiB pushes and pulls with curl, crane, containerd's ctr and regbench's
# own client; manifest GETs at 32 clients; manifest GET latency while 200
# uploads stream; tags/list of 10,000 tags; _catalog of 100,000 repositories
# (about 25 minutes; `bash tests/bench/compare.sh --quick` for a smoke run).
bench-registry:
	bash tests/bench/compare.sh

# gaia-gateway vs direct access to one server: 1 GiB push/pull, manifest GETs.
bench-gateway:
	bash tests/bench/gateway.sh

# gaia-mirror vs `skopeo sync --all` (Debian's skopeo): 30 images, 92 MiB,
# from a stock registry with token auth into fresh Gaias, 5 rounds alternating.
bench-mirror:
	bash $(SVC) start postgres dockerd   # dockerd's install step brings skopeo
	MIRROR_BENCH_ROUNDS=$${MIRROR_BENCH_ROUNDS:-5} $(GO) test -count=1 -timeout 30m -run '^$$' -bench BenchmarkMirrorVsSkopeo -benchtime 1x ./tests/bench/mirror/

# gaia-scheduler's placement engine alone, in process: 10,000 simulated
# nodes, 2,500 pools, 150,000 instances fed in bursts; placements/s, p50/p99
# decision latency, heap, invariants checked at the end; then the fixed cost
# of a steady scheduling pass at that size (about 15 seconds in all).
bench-scheduler:
	$(GO) test -count=1 -timeout 20m -run '^$$' -bench 'BenchmarkPlacement|BenchmarkPlanSteady' -benchtime 1x -benchmem ./scheduler/engine/

# How close the scheduler's fairness comes to "every pool within one
# instance of its fair share" over many simulated clusters (seeds 1 to
# FAIRNESS_SEEDS, default 40; both scorings; 600 nodes, then 200): about
# 2 minutes. Not in `make bench` (a property, not a speed).
bench-scheduler-fairness:
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench BenchmarkFairnessSweep -benchtime 1x -v ./scheduler/engine/
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench BenchmarkFairnessSweep -benchtime 1x -v -short ./scheduler/engine/

# gaia-scheduler's control plane: 10,000 simulated node agents (one process,
# real HTTP, nodeclient) long-polling one leader on the real PostgreSQL and
# Consul; user-API p50/p99, PostgreSQL transactions/s at steady state, time
# from submitting a 1,000-instance app to every instance running on its
# agent (about 3 minutes; SCHEDCP_NODES=1000 for a smoke run).
bench-scheduler-cp:
	bash $(SVC) start postgres consul
	$(GO) test -count=1 -timeout 20m -run '^$$' -bench BenchmarkControlPlane -benchtime 1x -v ./tests/bench/schedcp/

# Node enforcement (nodeagent/enforce, issue 13 §8): setup time per
# instance incl. tc classes, volume creation, and the control overhead with
# 50 instances (about 15 s; root, its own dockerd from
# tests/services/enforce-node.sh).
bench-node:
	$(GO) test -count=1 -timeout 10m -run '^$$' -bench BenchmarkNode50 -benchtime 1x ./nodeagent/enforce/

# gaia-nodeagent (issue 12 §5): start latency of 30 instances on one node,
# image present (p50/p99, beside dockerd alone), and a deploy of three
# 200 MiB, 5-layer images to three agents through the gateway vs three
# `docker pull`s, in one run on the harness's dockerd (about 3 minutes;
# NODEAGENT_BENCH_ROUNDS, NODEAGENT_BENCH_INSTANCES, NODEAGENT_BENCH_LAYER_MIB).
bench-nodeagent:
	bash $(SVC) start postgres consul dockerd
	$(GO) test -count=1 -timeout 30m -run '^$$' -bench BenchmarkNodeAgent -benchtime 1x -v ./tests/bench/nodeagent/

# Online garbage collection: one `gaia-registry gc run` pass over 100,000
# unreferenced blobs (filesystem); the stock registry's garbage-collect over
# as many; manifest GET p99 and a 1 GiB push with no collector, one flat out
# and one paced, and for reference a SCHED_IDLE busy loop per core,
# interleaved over rounds (GC_BENCH_BLOBS, GC_BENCH_PUSH, GC_BENCH_ROUNDS, GC_BENCH_RATE).
bench-gc:
	bash $(SVC) start postgres
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench BenchmarkGC -benchtime 1x -v ./tests/bench/gc/

# The built-in token auth (issue 15 §5): manifest GET by tag at 32
# clients with a Bearer token vs no auth, for gaia-registry and for the
# stock registry (token auth trusting our JWKS), and the token issue rate
# (one user; 64 users' first logins), in one run (about 1 minute;
# AUTH_BENCH_DURATION, AUTH_BENCH_ROUNDS, AUTH_BENCH_USERS to change,
# AUTH_BENCH_BASELINE=<git rev> to add that revision's gaia-registry).
bench-auth:
	bash $(SVC) start postgres
	$(GO) test -count=1 -timeout 20m -run '^$$' -bench BenchmarkAuth -benchtime 1x -v ./tests/bench/auth/

bench-hdfs:
	bash $(SVC) start hdfs
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench 'BenchmarkHDFSDriver|BenchmarkFilesystemDriver' ./storage-hdfs/
	$(GO) test -count=5 -timeout 60m -run '^$$' -bench 'BenchmarkStream' -benchtime 4x ./storage-hdfs/

services:
	bash $(SVC) start all

services-stop:
	bash $(SVC) stop all
	bash tests/services/enforce-node.sh stop

clean:
	rm -rf bin data
