package watchdog

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A response body that stops arriving fails with the stall error (told by
// the error, whatever the time it took); one that arrives whole does not,
// under a timeout no scheduling delay between two reads reaches.
func TestStalledBody(t *testing.T) {
	stall := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 5; i++ {
			w.Write([]byte("progress"))
			w.(http.Flusher).Flush()
		}
		if r.URL.Path == "/stall" {
			select {
			case <-stall:
			case <-r.Context().Done():
			}
		}
	}))
	defer srv.Close()
	defer close(stall) // before Close, which waits for the handler

	get := func(path string, idle time.Duration) ([]byte, error) {
		stalled := errors.New("no progress")
		wd, ctx := New(context.Background(), idle, stalled)
		defer wd.Done()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(wd.Body(resp.Body))
		if err != nil && err != stalled {
			t.Fatalf("%s: %v; want the stall error itself", path, err)
		}
		return b, err
	}
	if b, err := get("/stall", 100*time.Millisecond); err == nil || string(b) != "progressprogressprogressprogressprogress" {
		t.Fatalf("stalled body: %q, %v", b, err)
	}
	if b, err := get("/", time.Minute); err != nil || len(b) != 40 {
		t.Fatalf("whole body: %q, %v", b, err)
	}
}
