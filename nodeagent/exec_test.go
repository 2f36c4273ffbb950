package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/nodeagent/execproto"
	"github.com/gaia-registry/gaia/scheduler/model"
)

// TestExecInteractive: an exec with stdin gets the client's input until
// it closes it, on a terminal when asked (a shell sees a tty of the
// given size, resizable), and its exit code comes back; the exec status
// endpoint serves only execs of the instance's container.
func TestExecInteractive(t *testing.T) {
	e := setup(t)
	ref, _ := e.pushImage(t, "exec-"+randHex(3))
	app := "agentexec-" + randHex(3)
	d := webInstance(t, app, app+"-0", ref)
	sched := newFakeScheduler()
	sched.Set(d)
	a := e.agent(t, sched, nil)
	runAgent(t, a)
	waitStates(t, sched, model.Healthy, d.ID)

	const token = "node-token"
	mux := http.NewServeMux()
	mux.Handle("POST /v1/instances/{id}/exec", a.ExecHandler(token))
	mux.Handle("GET /v1/instances/{id}/exec/{exec}", a.ExecStatusHandler(token))
	mux.Handle("POST /v1/instances/{id}/exec/{exec}/resize", a.ExecResizeHandler(token))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	url := srv.URL + "/v1/instances/" + d.ID + "/exec"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("stdin without a tty", func(t *testing.T) {
		var out bytes.Buffer
		code, err := execproto.Interactive(ctx, url, token, execproto.Request{Cmd: []string{"/bin/busybox", "sh", "-c",
			`read a; read b; echo "got $a and $b"; [ -t 0 ] && echo tty; exit 3`}},
			strings.NewReader("one\ntwo\n"), &out, nil)
		if err != nil || code != 3 || strings.TrimSpace(out.String()) != "got one and two" {
			t.Fatalf("exit %d, %v, output %q; want 3 and %q", code, err, out.String(), "got one and two")
		}
	})
	t.Run("a shell on a tty, resized", func(t *testing.T) {
		out := &watchedBuffer{seen: make(chan struct{})}
		out.want = "30 100"
		pr, pw := io.Pipe()
		var statusURL string
		started := make(chan struct{})
		go func() {
			io.WriteString(pw, "[ -t 0 ] && echo is-a-tty\n/bin/busybox stty size\n")
			<-started
			select {
			case <-out.seen: // the first size was printed: now resize
			case <-ctx.Done():
				return
			}
			if err := execproto.Resize(ctx, statusURL, token, 40, 120); err != nil {
				t.Errorf("resize: %v", err)
			}
			io.WriteString(pw, "/bin/busybox stty size\nexit 7\n")
		}()
		code, err := execproto.Interactive(ctx, url, token, execproto.Request{Cmd: []string{"/bin/busybox", "sh"}, TTY: true, Height: 30, Width: 100},
			pr, out, func(u string) { statusURL = u; close(started) })
		pw.Close()
		got := out.String()
		if err != nil || code != 7 {
			t.Fatalf("exit %d, %v; want 7; output %q", code, err, got)
		}
		if !strings.Contains(got, "is-a-tty") || !strings.Contains(got, "30 100") || !strings.Contains(got, "40 120") {
			t.Fatalf("the shell's output %q: want it on a tty of 30 rows and 100 columns, then 40 and 120", got)
		}
		// The exec's status is not reachable through another instance's path.
		req, _ := http.NewRequest("GET", strings.Replace(statusURL, d.ID, app+"-9", 1), nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("the exec's status under another instance: %d, want 404", resp.StatusCode)
		}
	})
	t.Run("a terminal session whose client goes ends", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		defer pw.Close()
		urls := make(chan string, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			execproto.Interactive(cctx, url, token, execproto.Request{Cmd: []string{"/bin/busybox", "sh"}, TTY: true, Height: 24, Width: 80},
				pr, io.Discard, func(u string) { urls <- u })
		}()
		statusURL := <-urls
		ccancel() // the client goes; the shell waits for input
		<-done
		deadline := time.Now().Add(20 * time.Second)
		for {
			req, _ := http.NewRequest("GET", statusURL, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var st execproto.Status
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if !st.Running {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the shell of a session whose client went still runs after 20s")
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		if _, err := execproto.Interactive(ctx, url, "wrong", execproto.Request{Cmd: []string{"true"}}, strings.NewReader(""), &bytes.Buffer{}, nil); err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("a wrong token: %v, want a 401", err)
		}
		resp, err := http.Post(url, "application/json", strings.NewReader(`{"cmd":["true"],"stdin":true}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no token: %d", resp.StatusCode)
		}
		req, _ := http.NewRequest("POST", url, strings.NewReader(`{"cmd":["true"],"stdin":true}`))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("stdin without the upgrade: %d, want 400", resp.StatusCode)
		}
	})
}

// watchedBuffer is a buffer written concurrently that closes seen once
// it holds want.
type watchedBuffer struct {
	mu   sync.Mutex
	b    bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *watchedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.b.Write(p)
	if strings.Contains(w.b.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return n, err
}

func (w *watchedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
