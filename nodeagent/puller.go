package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
)

// Puller pulls images into dockerd, one pull per reference at a time
// however many instances wait for it (single flight). A pull that makes
// no progress for Stall is cut and retried, waiting Backoff, then twice
// that, and so on up to MaxBackoff. A pull the registry refuses (manifest
// unknown, unauthorized) fails after Attempts; one that cannot reach the
// registry is retried until the registry is back, or until Retain says no
// instance wants the image any more.
type Puller struct {
	Docker     client.APIClient
	Auth       string // encoded registry.AuthConfig (X-Registry-Auth), "" for none
	Stall      time.Duration
	Attempts   int
	Backoff    time.Duration
	MaxBackoff time.Duration
	Log        *slog.Logger
	Metrics    *Metrics

	mu       sync.Mutex
	inflight map[string]*Pull
	pulled   map[string]bool // references pulled by this process
}

// pulledRefs is a copy of the references this process pulled.
func (pl *Puller) pulledRefs() map[string]bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	out := make(map[string]bool, len(pl.pulled))
	for r := range pl.pulled {
		out[r] = true
	}
	return out
}

// Pull is one image's pull in flight (or done).
type Pull struct {
	Ref  string
	done chan struct{}
	err  error

	mu       sync.Mutex
	layers   map[string][2]int64 // layer id → current, total
	attempt  int
	lastErr  error
	retryAt  time.Time
	fromDisk bool // the image was present: nothing pulled
	cancel   context.CancelCauseFunc
}

// Progress is the pull's bytes done and total (over the layers whose size
// is known so far), the attempt (1-based) and the last failed attempt's
// error while a retry waits.
func (p *Pull) Progress() (done, total int64, attempt int, lastErr error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.layers {
		done += l[0]
		total += l[1]
	}
	return done, total, p.attempt, p.lastErr
}

// Done is closed when the pull has ended.
func (p *Pull) Done() <-chan struct{} { return p.done }

// Err is the pull's outcome once Done is closed.
func (p *Pull) Err() error { return p.err }

// Start returns the pull of ref in flight, or starts one (which first
// checks whether dockerd has the image already). The pull runs under ctx,
// not under any one waiter's context.
func (pl *Puller) Start(ctx context.Context, ref string) *Pull {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if p, ok := pl.inflight[ref]; ok {
		return p
	}
	if pl.inflight == nil {
		pl.inflight = map[string]*Pull{}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	p := &Pull{Ref: ref, done: make(chan struct{}), layers: map[string][2]int64{}, cancel: cancel}
	pl.inflight[ref] = p
	go func() {
		p.err = pl.run(ctx, p)
		cancel(nil)
		pl.mu.Lock()
		if pl.inflight[ref] == p { // Retain may have let a new one start
			delete(pl.inflight, ref)
		}
		pl.mu.Unlock()
		close(p.done)
	}()
	return p
}

// errUnwanted ends a pull no instance wants any more.
var errUnwanted = errors.New("pull cancelled: no instance wants the image any more")

// Retain cancels the pulls in flight of references not in refs: without
// it, a pull from a registry that stays unreachable would retry for as
// long as the agent runs.
func (pl *Puller) Retain(refs map[string]bool) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for ref, p := range pl.inflight {
		if !refs[ref] {
			p.cancel(errUnwanted)
			// Not handed out again while it winds down: an instance
			// wanting the image anew gets a new pull.
			delete(pl.inflight, ref)
		}
	}
}

func (pl *Puller) run(ctx context.Context, p *Pull) error {
	if _, err := pl.Docker.ImageInspect(ctx, p.Ref); err == nil {
		p.fromDisk = true
		return nil
	}
	attempts := max(pl.Attempts, 1)
	wait := pl.Backoff
	refused := 0 // attempts the registry answered with an error
	for i := 1; ; i++ {
		p.mu.Lock()
		p.attempt = i
		p.layers = map[string][2]int64{}
		p.mu.Unlock()
		start := time.Now()
		err := pl.once(ctx, p)
		if err == nil {
			pl.mu.Lock()
			if pl.pulled == nil {
				pl.pulled = map[string]bool{}
			}
			pl.pulled[p.Ref] = true
			pl.mu.Unlock()
			pl.Metrics.pulls.WithLabelValues("ok").Inc()
			pl.Metrics.pullSeconds.Observe(time.Since(start).Seconds())
			done, _, _, _ := p.Progress()
			pl.Metrics.pullBytes.Add(float64(done))
			pl.Log.Info("pulled image", "image", p.Ref, "attempt", i, "bytes", done, "took", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		result := "error"
		if unreachable(err) {
			result = "unreachable"
		} else {
			refused++
		}
		pl.Metrics.pulls.WithLabelValues(result).Inc()
		pl.Log.Warn("pull failed", "image", p.Ref, "attempt", i, "refused", refused, "of", attempts, "err", err)
		if refused == attempts {
			return err
		}
		p.mu.Lock()
		p.lastErr, p.retryAt = err, time.Now().Add(wait)
		p.mu.Unlock()
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		wait = min(2*wait, pl.MaxBackoff)
	}
}

// unreachable tells a registry that could not be reached, or did not
// answer in time, from the registry's answers: dockerd hands both over as
// text, so it goes by the text of network failures (and the registry's
// "try later" statuses).
func unreachable(err error) bool {
	if errors.Is(err, errStalled) || errors.Is(err, errStream) {
		return true
	}
	s := strings.ToLower(err.Error())
	for _, m := range []string{": eof", "unexpected eof", "connection reset", "connection refused", "broken pipe",
		"server closed idle connection", "transport connection broken", "use of closed network connection",
		"no route to host", "network is unreachable", "no such host", "i/o timeout", "handshake timeout",
		"client.timeout", "timeout awaiting", "deadline exceeded",
		"cannot connect to the docker daemon", "unexpected http status: 5", "service unavailable", "toomanyrequests"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

var (
	// errStalled is a pull cut for making no progress.
	errStalled = errors.New("no progress")
	// errStream is dockerd's pull stream broken (dockerd restarting).
	errStream = errors.New("reading dockerd's pull stream")
)

// once is one attempt: dockerd's pull, its progress stream read to the end
// (an error in it is the registry's answer), cut when no message arrives
// for Stall.
func (pl *Puller) once(ctx context.Context, p *Pull) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Armed before the call: dockerd answers it only once it has the
	// manifest, so a registry that accepts connections and never answers
	// would hold the call (and the instance) for good.
	stall := time.AfterFunc(pl.Stall, func() { cancel(fmt.Errorf("%w for %s", errStalled, pl.Stall)) })
	defer stall.Stop()
	rc, err := pl.Docker.ImagePull(ctx, p.Ref, image.PullOptions{RegistryAuth: pl.Auth})
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			return cause
		}
		return err
	}
	defer rc.Close()
	stop := context.AfterFunc(ctx, func() { rc.Close() })
	defer stop()
	stall.Reset(pl.Stall)
	dec := json.NewDecoder(rc)
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				return cause
			}
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("%w: %w", errStream, err)
		}
		stall.Reset(pl.Stall)
		if m.Error != nil {
			return errors.New(m.Error.Message)
		}
		if m.ID == "" || m.Progress == nil {
			if m.ID != "" && (m.Status == "Download complete" || m.Status == "Already exists" || m.Status == "Pull complete") {
				p.mu.Lock()
				l := p.layers[m.ID]
				l[0] = l[1]
				p.layers[m.ID] = l
				p.mu.Unlock()
			}
			continue
		}
		if m.Status == "Downloading" {
			p.mu.Lock()
			p.layers[m.ID] = [2]int64{m.Progress.Current, m.Progress.Total}
			p.mu.Unlock()
		}
	}
}
