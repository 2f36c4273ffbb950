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

// A response body that stops arriving fails with the stall error; one
// that arrives whole does not.
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

	get := func(path string) ([]byte, error) {
		stalled := errors.New("no progress")
		wd, ctx := New(context.Background(), 100*time.Millisecond, stalled)
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
	if b, err := get("/stall"); err == nil || string(b) != "progressprogressprogressprogressprogress" {
		t.Fatalf("stalled body: %q, %v", b, err)
	}
	if b, err := get("/"); err != nil || len(b) != 40 {
		t.Fatalf("whole body: %q, %v", b, err)
	}
}
