package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The busy scenario: manifest GET latency while many uploads stream,
// against the same with no uploads. Each round, per target in turn: an
// idle window of manifest GETs; then -busy-pushes uploads start (POST, then
// one PATCH announcing -busy-push-size and sending at -busy-push-rate), and
// once every one of them is streaming, a second window of manifest GETs;
// then the uploads are cut (the client closes its connections) and deleted.

type busyConfig struct {
	pushes      int
	rate        int64 // bytes/s per push; 0: unpaced
	pushSizeStr string
	pushSize    int64
	window      time.Duration
	rounds      int
	clients     int
}

// rampBytes is how far every push must have sent before the window opens:
// more than loopback socket buffers hold, so the server is reading it.
const rampBytes = 2 << 20

// pacedGen is generator content sent at no more than rate bytes/s, as
// through a link of that speed: a stream held up cannot catch up later
// beyond a burst of 64 KiB. It counts what it has handed out.
type pacedGen struct {
	ctx  context.Context
	g    *genReader
	rate int64
	next time.Time // when the next read may go
	sent atomic.Int64
}

const pacedBurst = 64 << 10

func (p *pacedGen) Read(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	if p.rate > 0 {
		b = b[:min(len(b), 32<<10)]
		per := func(n int) time.Duration { return time.Duration(float64(n) / float64(p.rate) * float64(time.Second)) }
		now := time.Now()
		if earliest := now.Add(-per(pacedBurst)); p.next.Before(earliest) {
			p.next = earliest
		}
		if wait := p.next.Sub(now); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return 0, p.ctx.Err()
			}
		}
		p.next = p.next.Add(per(len(b)))
	}
	n, err := p.g.Read(b)
	p.sent.Add(int64(n))
	return n, err
}

// busyPush is one streaming upload.
type busyPush struct {
	loc  *url.URL
	body *pacedGen
	err  error // how the PATCH ended, if it did
	done chan struct{}
}

// startPushes opens n uploads on t and starts streaming them; cancel ctx to
// cut them.
func (b *bench) startPushes(ctx context.Context, t *target, repo string) ([]*busyPush, error) {
	n, size := b.cfg.busy.pushes, b.cfg.busy.pushSize
	pushes := make([]*busyPush, n)
	err := parallel(ctx, n, 16, nil, func(ctx context.Context, i int) error {
		loc, err := t.startUpload(ctx, repo)
		pushes[i] = &busyPush{loc: loc, done: make(chan struct{})}
		return err
	})
	if err != nil {
		return nil, err
	}
	hdr := http.Header{"Content-Type": {"application/octet-stream"}}
	for _, p := range pushes {
		p.body = &pacedGen{ctx: ctx, g: newGen(rand.Uint64(), size), rate: b.cfg.busy.rate}
		go func() {
			defer close(p.done)
			resp, err := t.do(ctx, "PATCH", p.loc.String(), hdr, p.body, size, 202)
			if err == nil {
				drain(resp)
				err = errors.New("the upload finished before it was cut (raise -busy-push-size)")
			}
			p.err = err
		}()
	}
	return pushes, nil
}

// failed returns the first push that ended.
func failed(pushes []*busyPush) *busyPush {
	for _, p := range pushes {
		select {
		case <-p.done:
			return p
		default:
		}
	}
	return nil
}

func sentTotal(pushes []*busyPush) (total int64, each []int64) {
	for _, p := range pushes {
		s := p.body.sent.Load()
		total += s
		each = append(each, s)
	}
	return total, each
}

// cleanUploads deletes the cut uploads. A server may still be settling a
// cut request and answer 416 for a moment: retried for up to 10 s. It
// returns how many uploads could not be deleted (still 416: the stock
// registry refuses a DELETE whose _state token predates the cut PATCH).
func (t *target) cleanUploads(ctx context.Context, pushes []*busyPush) (int, error) {
	var refused atomic.Int64
	err := parallel(ctx, len(pushes), 16, nil, func(ctx context.Context, i int) error {
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := t.do(ctx, "DELETE", pushes[i].loc.String(), nil, nil, 0, 204, 404)
			if err == nil {
				drain(resp)
				return nil
			}
			var he *httpError
			if !errors.As(err, &he) || he.status != http.StatusRequestedRangeNotSatisfiable {
				return fmt.Errorf("deleting a cut upload: %w", err)
			}
			if time.Now().After(deadline) {
				refused.Add(1)
				return nil
			}
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	return int(refused.Load()), err
}

// The uploads stream from a process of their own (regbench -busy-worker),
// so that the hundreds of streams do not share a Go runtime with the
// manifest GETs whose latency is measured. It talks over stdin/stdout, one
// line each way: it says "ready RAMP" once every push is past rampBytes;
// "mark" asks it to note what each has sent ("ok"); "stop" asks for the
// bytes sent since the mark ("sent N", or "error ..." if a push ended or
// sent nothing meanwhile), after which it cuts and deletes the uploads and
// says "done REFUSED" (uploads the server would not delete).

// underPushes runs the manifest GET window on t while the pushes stream,
// and returns the latencies, the bytes the pushes sent in the window and
// how long they took to get going.
func (b *bench) underPushes(ctx context.Context, t *target, manifestURL, repo string) ([]time.Duration, int64, time.Duration, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, 0, 0, err
	}
	bc := b.cfg.busy
	cmd := exec.CommandContext(ctx, self, "-busy-worker", t.base.String(), "-busy-repo", repo,
		"-busy-pushes", strconv.Itoa(bc.pushes), "-busy-push-rate", strconv.FormatInt(bc.rate, 10),
		"-busy-push-size", strconv.FormatInt(bc.pushSize, 10))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, 0, 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, 0, 0, err
	}
	if err := cmd.Start(); err != nil {
		return nil, 0, 0, err
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	lines := bufio.NewScanner(stdout)
	expect := func(word string) (string, error) {
		if !lines.Scan() {
			return "", fmt.Errorf("[%s] busy worker: ended before %q (see its log above)", t.name, word)
		}
		w, rest, _ := strings.Cut(lines.Text(), " ")
		if w != word {
			return "", fmt.Errorf("[%s] busy worker: %s", t.name, lines.Text())
		}
		return rest, nil
	}
	say := func(line string) error {
		_, err := io.WriteString(stdin, line+"\n")
		return err
	}
	r, err := expect("ready")
	if err != nil {
		return nil, 0, 0, err
	}
	ramp, _ := time.ParseDuration(r)
	if err := say("mark"); err != nil {
		return nil, 0, 0, err
	}
	if _, err := expect("ok"); err != nil {
		return nil, 0, 0, err
	}
	lats, _, err := t.hammer(ctx, manifestURL, b.img, bc.clients, bc.window)
	if err != nil {
		return nil, 0, 0, err
	}
	if err := say("stop"); err != nil {
		return nil, 0, 0, err
	}
	r, err = expect("sent")
	if err != nil {
		return nil, 0, 0, err
	}
	sent, _ := strconv.ParseInt(r, 10, 64)
	r, err = expect("done")
	if err != nil {
		return nil, 0, 0, err
	}
	if refused, _ := strconv.Atoi(r); refused > 0 {
		logf("[%s] %d of %d cut uploads could not be deleted (416 for 10 s); their data stays in storage", t.name, refused, bc.pushes)
		b.undeleted[t.name] += refused
	}
	return lats, sent, ramp, nil
}

// busyWorker is the -busy-worker process: it streams the uploads to the
// registry at rawURL, in repository repo (see underPushes).
func busyWorker(ctx context.Context, cfg config, rawURL, repo string) error {
	t, err := newTarget("worker", rawURL, cfg.busy.pushes+4)
	if err != nil {
		return err
	}
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	b := &bench{cfg: cfg}
	pctx, cut := context.WithCancel(ctx)
	var pushes []*busyPush
	defer func() {
		cut()
		for _, p := range pushes {
			<-p.done
		}
	}()
	t0 := time.Now()
	if pushes, err = b.startPushes(pctx, t, repo); err != nil {
		return err
	}
	// Ramp: every push past rampBytes (or the whole body, if smaller).
	need := min(int64(rampBytes), cfg.busy.pushSize)
	rampDeadline := time.Now().Add(3 * time.Minute)
	for {
		if p := failed(pushes); p != nil {
			return fmt.Errorf("a push ended before the window: %v", p.err)
		}
		_, each := sentTotal(pushes)
		if slices.Min(each) >= need {
			break
		}
		if time.Now().After(rampDeadline) {
			slow := 0
			for _, s := range each {
				if s < need {
					slow++
				}
			}
			return fmt.Errorf("%d of %d pushes had not sent %d bytes after 3 minutes", slow, len(pushes), need)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	say("ready %s", time.Since(t0))
	in := bufio.NewScanner(os.Stdin)
	var before int64
	var eachBefore []int64
	for in.Scan() {
		switch in.Text() {
		case "mark":
			before, eachBefore = sentTotal(pushes)
			say("ok")
		case "stop":
			after, eachAfter := sentTotal(pushes)
			if p := failed(pushes); p != nil {
				return fmt.Errorf("a push ended during the window: %v", p.err)
			}
			for i := range eachAfter {
				if eachAfter[i] == eachBefore[i] {
					return fmt.Errorf("push %d sent nothing during the window", i)
				}
			}
			say("sent %d", after-before)
			cut()
			for _, p := range pushes {
				<-p.done
			}
			refused, err := t.cleanUploads(ctx, pushes)
			if err != nil {
				return err
			}
			say("done %d", refused)
			return nil
		default:
			return fmt.Errorf("unexpected %q", in.Text())
		}
	}
	return errors.New("stdin closed before stop")
}

func (b *bench) runBusy(ctx context.Context) error {
	bc := b.cfg.busy
	repo := b.repo("image")
	for _, t := range b.targets {
		if err := b.img.push(ctx, t, repo, "latest"); err != nil {
			return err
		}
		if _, _, err := t.hammer(ctx, t.url("/v2/"+repo+"/manifests/latest"), b.img, bc.clients, 500*time.Millisecond); err != nil {
			return err
		}
	}
	idle, busy := map[string][]time.Duration{}, map[string][]time.Duration{}
	sent := map[string]int64{}
	b.undeleted = map[string]int{}
	for r := range bc.rounds {
		for _, t := range b.order(r) {
			u := t.url("/v2/" + repo + "/manifests/latest")
			l, _, err := t.hammer(ctx, u, b.img, bc.clients, bc.window)
			if err != nil {
				return err
			}
			idle[t.name] = append(idle[t.name], l...)
			sl := slices.Clone(l)
			slices.Sort(sl)
			logf("[%s] busy round %d/%d: idle: %d manifest GETs, p50 %.2f ms, p99 %.2f ms", t.name, r+1, bc.rounds, len(l), ms(percentile(sl, 0.5)), ms(percentile(sl, 0.99)))
			b.syncDisks()
			l, n, ramp, err := b.underPushes(ctx, t, u, b.repo("busy"))
			if err != nil {
				return err
			}
			busy[t.name] = append(busy[t.name], l...)
			sent[t.name] += n
			sl = slices.Clone(l)
			slices.Sort(sl)
			logf("[%s] busy round %d/%d: %d pushes streaming (all past %s after %s), %.0f MiB/s in total during the window: %d manifest GETs, p50 %.2f ms, p99 %.2f ms",
				t.name, r+1, bc.rounds, bc.pushes, formatSize(rampBytes), ramp.Round(time.Millisecond), float64(n)/(1<<20)/bc.window.Seconds(), len(l), ms(percentile(sl, 0.5)), ms(percentile(sl, 0.99)))
		}
	}
	p50i, p99i, p50b, p99b, rel, rate := map[string]val{}, map[string]val{}, map[string]val{}, map[string]val{}, map[string]val{}, map[string]val{}
	for _, t := range b.targets {
		li, lb := idle[t.name], busy[t.name]
		if len(li) == 0 || len(lb) == 0 {
			return fmt.Errorf("[%s] busy: no manifest GET completed", t.name)
		}
		slices.Sort(li)
		slices.Sort(lb)
		p50i[t.name] = val{v: ms(percentile(li, 0.5))}
		p99i[t.name] = val{v: ms(percentile(li, 0.99))}
		p50b[t.name] = val{v: ms(percentile(lb, 0.5))}
		p99b[t.name] = val{v: ms(percentile(lb, 0.99))}
		rel[t.name] = val{v: p99b[t.name].v / p99i[t.name].v}
		rate[t.name] = val{v: float64(sent[t.name]) / (1 << 20) / (bc.window.Seconds() * float64(bc.rounds))}
	}
	sc := fmt.Sprintf("manifest GET, %d clients, idle vs %d pushes streaming", bc.clients, bc.pushes)
	b.add(sc, "p50 idle (ms)", lowerBetter, p50i)
	b.add(sc, "p99 idle (ms)", lowerBetter, p99i)
	b.add(sc, fmt.Sprintf("p50 while %d pushes stream (ms)", bc.pushes), lowerBetter, p50b)
	b.add(sc, fmt.Sprintf("p99 while %d pushes stream (ms)", bc.pushes), lowerBetter, p99b)
	b.add(sc, "p99 while pushing / p99 idle", infoOnly, rel)
	b.add(sc, "pushes: MiB/s sent in total during the windows", infoOnly, rate)
	for _, t := range b.targets {
		if n := b.undeleted[t.name]; n > 0 {
			b.note("busy: %s answered 416 to the DELETE of %d of its %d cut uploads (for 10 s each); their partial data stayed in its storage until the end of the run", t.name, n, bc.pushes*bc.rounds)
		}
	}
	rateNote := "as fast as they can"
	if bc.rate > 0 {
		rateNote = fmt.Sprintf("at %s/s each", formatSize(bc.rate))
	}
	b.note("busy: per round and target in turn, %s of manifest GETs (%d clients) with nothing else running, then %d uploads are opened (POST) and each streams one PATCH announcing %s (Content-Length), %s; once every one has sent %s, a second %s window of manifest GETs runs while all of them keep streaming (checked: each sent more during the window, none ended); then the client cuts them (closes the connections) and DELETEs each upload; %d rounds", bc.window, bc.clients, bc.pushes, formatSize(bc.pushSize), rateNote, formatSize(rampBytes), bc.window, bc.rounds)
	return nil
}
