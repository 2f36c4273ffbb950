package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/jsonmessage"
)

// fakePullDocker is a dockerd with no images whose pulls the test drives:
// each ImagePull gets the next stream of streams; a nil one is a dockerd
// that never answers the call (it waits for a registry that hangs), a
// pullError the call's error (dockerd could not reach the registry).
type fakePullDocker struct {
	client.APIClient // any other call panics
	mu               sync.Mutex
	pulls            int
	streams          chan io.ReadCloser
}

func (f *fakePullDocker) ImageInspect(context.Context, string, ...client.ImageInspectOption) (image.InspectResponse, error) {
	return image.InspectResponse{}, errdefs.NotFound(io.EOF)
}

func (f *fakePullDocker) ImagePull(ctx context.Context, ref string, _ image.PullOptions) (io.ReadCloser, error) {
	f.mu.Lock()
	f.pulls++
	f.mu.Unlock()
	select {
	case s := <-f.streams:
		if e, ok := s.(pullError); ok {
			return nil, e.error
		}
		if s != nil {
			return s, nil
		}
		<-ctx.Done()
		return nil, ctx.Err()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pullError struct {
	io.ReadCloser
	error
}

func (f *fakePullDocker) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pulls
}

func msg(m jsonmessage.JSONMessage) string {
	b, _ := json.Marshal(m)
	return string(b) + "\n"
}

func downloading(id string, cur, total int64) string {
	return msg(jsonmessage.JSONMessage{ID: id, Status: "Downloading", Progress: &jsonmessage.JSONProgress{Current: cur, Total: total}})
}

func newTestPuller(d client.APIClient) *Puller {
	return &Puller{Docker: d, Stall: time.Minute, Attempts: 3, Backoff: 10 * time.Millisecond,
		MaxBackoff: 20 * time.Millisecond, Log: testLogger(), Metrics: NewMetrics(nil)}
}

func waitDone(t *testing.T, p *Pull) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("pull did not end")
	}
}

// Ten instances starting at once share one pull, and read its progress.
func TestPullSingleFlightAndProgress(t *testing.T) {
	d := &fakePullDocker{streams: make(chan io.ReadCloser, 1)}
	pl := newTestPuller(d)
	ctx := t.Context()
	first := pl.Start(ctx, "gw/app@sha256:aa")
	for i := 0; i < 9; i++ {
		if p := pl.Start(ctx, "gw/app@sha256:aa"); p != first {
			t.Fatal("a second pull of the same image while one is in flight")
		}
	}
	r, w := io.Pipe()
	d.streams <- r
	w.Write([]byte(downloading("l1", 50, 100) + downloading("l2", 10, 200)))
	deadline := time.Now().Add(30 * time.Second)
	for {
		done, total, _, _ := first.Progress()
		if done == 60 && total == 300 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("progress %d/%d, want 60/300", done, total)
		}
		time.Sleep(5 * time.Millisecond)
	}
	w.Write([]byte(msg(jsonmessage.JSONMessage{ID: "l1", Status: "Download complete"})))
	w.Write([]byte(downloading("l2", 200, 200)))
	w.Close()
	waitDone(t, first)
	if err := first.Err(); err != nil {
		t.Fatal(err)
	}
	if done, total, _, _ := first.Progress(); done != 300 || total != 300 {
		t.Fatalf("final progress %d/%d, want 300/300", done, total)
	}
	if n := d.count(); n != 1 {
		t.Fatalf("%d pulls from dockerd, want 1", n)
	}
}

// A pull that stops making progress is cut after the stall timeout and
// tried again, whether dockerd's call never answers (it waits for the
// manifest from a registry that hangs) or its stream stops.
func TestPullStallRetried(t *testing.T) {
	d := &fakePullDocker{streams: make(chan io.ReadCloser, 3)}
	pl := newTestPuller(d)
	pl.Stall = 100 * time.Millisecond
	stalled, w := io.Pipe()
	defer w.Close()
	w2 := func() io.ReadCloser {
		return io.NopCloser(strings.NewReader(downloading("l1", 10, 10) + msg(jsonmessage.JSONMessage{Status: "Status: Downloaded newer image"})))
	}
	d.streams <- nil
	d.streams <- stalled
	d.streams <- w2()
	p := pl.Start(t.Context(), "gw/app@sha256:bb")
	go w.Write([]byte(downloading("l1", 1, 10))) // then nothing
	waitDone(t, p)
	if err := p.Err(); err != nil {
		t.Fatalf("pull failed after a stall: %v", err)
	}
	if n := d.count(); n != 3 {
		t.Fatalf("%d pulls from dockerd, want 3 (the unanswered one, the stalled one, then the retry)", n)
	}
}

// A registry's error in the stream is the pull's error, after the
// configured attempts; a registry that cannot be reached is retried past
// them, its error shown, until it is back or no instance wants the image.
func TestPullRegistryErrorReported(t *testing.T) {
	d := &fakePullDocker{streams: make(chan io.ReadCloser, 2)}
	pl := newTestPuller(d)
	pl.Attempts = 2
	fail := msg(jsonmessage.JSONMessage{Error: &jsonmessage.JSONError{Message: "manifest unknown: manifest unknown"}})
	d.streams <- io.NopCloser(strings.NewReader(fail))
	d.streams <- io.NopCloser(strings.NewReader(fail))
	p := pl.Start(t.Context(), "gw/app@sha256:cc")
	waitDone(t, p)
	if p.Err() == nil || !strings.Contains(p.Err().Error(), "manifest unknown") {
		t.Fatalf("pull error %v, want the registry's manifest unknown", p.Err())
	}
	if n := d.count(); n != 2 {
		t.Fatalf("%d pulls, want 2 attempts", n)
	}
	// The next start is a new pull, not the failed one.
	d.streams <- io.NopCloser(strings.NewReader(""))
	p2 := pl.Start(t.Context(), "gw/app@sha256:cc")
	if p2 == p {
		t.Fatal("a finished pull was handed out again")
	}
	waitDone(t, p2)
	if p2.Err() != nil {
		t.Fatal(p2.Err())
	}

	// Unreachable, twice the attempts (as dockerd words it, and its pull
	// stream broken), then back.
	d = &fakePullDocker{streams: make(chan io.ReadCloser)}
	pl.Docker = d
	p3 := pl.Start(t.Context(), "gw/app@sha256:dd")
	down := []error{
		errors.New(`Error response from daemon: Get "http://gw/v2/": EOF`),
		errors.New(`Error response from daemon: Get "http://gw/v2/": dial tcp 10.0.0.1:443: connect: connection refused`),
		errors.New(`Error response from daemon: Get "http://gw/v2/": read tcp 10.0.0.2:5->10.0.0.1:443: read: connection reset by peer`),
		errors.New(`Error response from daemon: Get "http://gw/v2/": http: server closed idle connection`),
	}
	for i, err := range down {
		d.streams <- pullError{error: err}
		waitProgress(t, p3, func(attempt int, lastErr error) bool { return attempt == i+2 && lastErr == err })
	}
	r, w := io.Pipe()
	d.streams <- r
	w.CloseWithError(io.ErrUnexpectedEOF) // dockerd gone mid-stream
	waitProgress(t, p3, func(attempt int, lastErr error) bool {
		return attempt == len(down)+2 && lastErr != nil && strings.Contains(lastErr.Error(), "unexpected EOF")
	})
	d.streams <- io.NopCloser(strings.NewReader(downloading("l1", 10, 10)))
	waitDone(t, p3)
	if p3.Err() != nil {
		t.Fatalf("the pull failed once the registry was back: %v", p3.Err())
	}

	// Unreachable until no instance wants the image: the pull ends then.
	p4 := pl.Start(t.Context(), "gw/app@sha256:ee")
	d.streams <- pullError{error: down[0]}
	waitProgress(t, p4, func(attempt int, lastErr error) bool { return attempt == 2 })
	keep := pl.Start(t.Context(), "gw/app@sha256:ff")
	pl.Retain(map[string]bool{keep.Ref: true})
	// Wanted again at once: a new pull, not the cancelled one winding down.
	again := pl.Start(t.Context(), "gw/app@sha256:ee")
	if again == p4 {
		t.Fatal("Start handed out the pull Retain had cancelled")
	}
	waitDone(t, p4)
	if !errors.Is(p4.Err(), errUnwanted) {
		t.Errorf("an unwanted pull ended with %v, want %v", p4.Err(), errUnwanted)
	}
	select {
	case <-keep.Done():
		t.Errorf("a pull Retain keeps ended: %v", keep.Err())
	default:
	}
	// keep and again both wait for the fake's next stream: one each.
	d.streams <- io.NopCloser(strings.NewReader(""))
	d.streams <- io.NopCloser(strings.NewReader(""))
	waitDone(t, keep)
	waitDone(t, again)
	if again.Err() != nil || keep.Err() != nil {
		t.Errorf("the pulls wanted: %v, %v", again.Err(), keep.Err())
	}
}

// waitProgress waits until the pull's attempt and last error satisfy ok.
func waitProgress(t *testing.T, p *Pull, ok func(attempt int, lastErr error) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, attempt, lastErr := p.Progress()
		if ok(attempt, lastErr) {
			return
		}
		select {
		case <-p.Done():
			t.Fatalf("pull ended (%v) at attempt %d, last error %v", p.Err(), attempt, lastErr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pull at attempt %d, last error %v", attempt, lastErr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPullRef(t *testing.T) {
	for _, c := range []struct{ image, gw, want string }{
		{"127.0.0.1:5000/team/app@sha256:ab", "gw.idc-a:6000", "gw.idc-a:6000/team/app@sha256:ab"},
		{"registry.example/app@sha256:ab", "gw:1", "gw:1/app@sha256:ab"},
		{"team/app@sha256:ab", "gw:1", "gw:1/team/app@sha256:ab"},
		{"localhost/app@sha256:ab", "gw:1", "gw:1/app@sha256:ab"},
		{"127.0.0.1:5000/app@sha256:ab", "", "127.0.0.1:5000/app@sha256:ab"},
	} {
		if got := PullRef(c.image, c.gw); got != c.want {
			t.Errorf("PullRef(%q, %q) = %q, want %q", c.image, c.gw, got, c.want)
		}
	}
}

// A pulling instance reports the pull's progress in its reason, and the
// last failed attempt's error while a retry is on.
func TestPullingReported(t *testing.T) {
	p := &Pull{layers: map[string][2]int64{"a": {37 << 20, 50 << 20}, "b": {0, 50 << 20}}, attempt: 1}
	in := &instance{d: DesiredInstance{ID: "web-1"}, state: "pulling", pull: p}
	if r := in.report(); r.State != "pulling" || r.Reason != "pulling 37% (37.0 MiB of 100.0 MiB)" {
		t.Errorf("report %+v", r)
	}
	p.attempt, p.lastErr = 2, io.ErrUnexpectedEOF
	if r := in.report(); !strings.HasSuffix(r.Reason, "attempt 2 after: unexpected EOF") {
		t.Errorf("retry reported as %q", r.Reason)
	}
	// Before dockerd has the manifest (or while the registry is
	// unreachable) there is nothing to count.
	p.layers = map[string][2]int64{}
	if r := in.report(); r.Reason != "pulling, attempt 2 after: unexpected EOF" {
		t.Errorf("retry with no size known reported as %q", r.Reason)
	}
}

// A registry not reached is told from its answers by dockerd's text,
// which also holds the image reference: a name with "timeout" in it is
// no network failure.
func TestUnreachable(t *testing.T) {
	for msg, want := range map[string]bool{
		`Get "http://gw/v2/": dial tcp 127.0.0.1:1: i/o timeout`:                                          true,
		`Get "https://gw/v2/": net/http: TLS handshake timeout`:                                           true,
		`Get "http://gw/v2/": context deadline exceeded (Client.Timeout exceeded while awaiting headers)`: true,
		`Get "http://gw/v2/": EOF`:                                          true,
		`manifest for gw/team/timeout-svc:v1 not found: manifest unknown`:   false,
		`pull access denied for gw/team/timeout, repository does not exist`: false,
	} {
		if got := unreachable(errors.New(msg)); got != want {
			t.Errorf("unreachable(%q) = %v, want %v", msg, got, want)
		}
	}
}
