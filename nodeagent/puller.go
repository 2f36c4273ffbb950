package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
)

// Puller pulls images into dockerd, one pull per reference at a time
// however many instances wait for it (single flight). A pull that makes
// no progress for Stall is cut and retried, waiting Backoff, then twice
// that, and so on up to MaxBackoff, at most Attempts times.
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
	p := &Pull{Ref: ref, done: make(chan struct{}), layers: map[string][2]int64{}}
	pl.inflight[ref] = p
	go func() {
		p.err = pl.run(ctx, p)
		pl.mu.Lock()
		delete(pl.inflight, ref)
		pl.mu.Unlock()
		close(p.done)
	}()
	return p
}

func (pl *Puller) run(ctx context.Context, p *Pull) error {
	if _, err := pl.Docker.ImageInspect(ctx, p.Ref); err == nil {
		p.fromDisk = true
		return nil
	}
	attempts := max(pl.Attempts, 1)
	wait := pl.Backoff
	var err error
	for i := 1; i <= attempts; i++ {
		p.mu.Lock()
		p.attempt = i
		p.layers = map[string][2]int64{}
		p.mu.Unlock()
		start := time.Now()
		err = pl.once(ctx, p)
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
			return ctx.Err()
		}
		pl.Metrics.pulls.WithLabelValues("error").Inc()
		pl.Log.Warn("pull failed", "image", p.Ref, "attempt", i, "of", attempts, "err", err)
		if i == attempts {
			break
		}
		p.mu.Lock()
		p.lastErr, p.retryAt = err, time.Now().Add(wait)
		p.mu.Unlock()
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, pl.MaxBackoff)
	}
	return err
}

// errStalled is a pull cut for making no progress.
var errStalled = errors.New("no progress")

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
			return fmt.Errorf("reading dockerd's pull stream: %w", err)
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
