package httptimeouts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// bigFile is a file of n bytes, larger than loopback's socket buffers can
// hold, so a client that reads nothing blocks the server's writes.
func bigFile(t *testing.T, n int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "blob")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(n); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

// download serves the file with an IdleWriter, through ReadFrom (the
// sendfile path) or through Write, and reports each handler's result.
func download(t *testing.T, path string, idle time.Duration, viaWrite bool) (string, <-chan error) {
	t.Helper()
	ended := make(chan error, 4)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			ended <- err
			return
		}
		defer f.Close()
		st, _ := f.Stat()
		w.Header().Set("Content-Length", fmt.Sprint(st.Size()))
		iw := NewIdleWriter(w, idle)
		defer iw.Close()
		src := io.LimitReader(f, st.Size())
		if viaWrite {
			_, err = io.CopyBuffer(struct{ io.Writer }{iw}, struct{ io.Reader }{src}, make([]byte, 256<<10))
		} else {
			_, err = iw.ReadFrom(src)
		}
		ended <- err
	}))
	t.Cleanup(s.Close)
	return s.Listener.Addr().String(), ended
}

// TestIdleWriterCutsAClientThatStopsReading: a download whose client takes
// nothing ends with a timeout after the idle bound, on both paths, so the
// handler releases what it holds. Without the deadline the handler stays
// blocked in write(2) for as long as the client keeps the connection.
func TestIdleWriterCutsAClientThatStopsReading(t *testing.T) {
	path := bigFile(t, 64<<20)
	for _, viaWrite := range []bool{false, true} {
		t.Run(fmt.Sprintf("viaWrite=%v", viaWrite), func(t *testing.T) {
			addr, ended := download(t, path, 300*time.Millisecond, viaWrite)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
			// The client reads nothing from here on and keeps the
			// connection open; 30 s only bounds the failure.
			select {
			case err := <-ended:
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					t.Fatalf("the download ended with %v, want a write timeout", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the handler is still writing to a client that has read nothing for 30 s")
			}
		})
	}
}

// TestIdleWriterKeepsASlowClient: a client that reads slowly but steadily
// gets the whole body although the download lasts many idle timeouts, and
// the connection then serves another request after a pause longer than the
// timeout.
func TestIdleWriterKeepsASlowClient(t *testing.T) {
	const size = 16 << 20
	const idle = time.Second
	path := bigFile(t, size)
	for _, viaWrite := range []bool{false, true} {
		t.Run(fmt.Sprintf("viaWrite=%v", viaWrite), func(t *testing.T) {
			addr, ended := download(t, path, idle, viaWrite)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			get := func(slow bool) {
				t.Helper()
				fmt.Fprintf(c, "GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				start := time.Now()
				var got int64
				buf := make([]byte, 512<<10)
				for {
					n, err := io.ReadFull(resp.Body, buf)
					got += int64(n)
					if err != nil {
						break
					}
					if slow {
						time.Sleep(idle / 10) // about 5 MiB/s: slow, never idle for long
					}
				}
				if got != size {
					t.Fatalf("got %d of %d bytes", got, size)
				}
				if err := <-ended; err != nil {
					t.Fatalf("handler: %v", err)
				}
				if slow && time.Since(start) < 2*idle {
					t.Logf("the slow read took only %s; the test shows less than it should", time.Since(start))
				}
			}
			get(true)
			time.Sleep(2 * idle)
			get(false)
		})
	}
}
