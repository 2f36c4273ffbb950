package httptimeouts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// server runs h behind BodyIdle(d) and returns its address.
func server(t *testing.T, d time.Duration, h http.HandlerFunc) string {
	t.Helper()
	s := httptest.NewServer(BodyIdle(h, d))
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// TestStalledBodyIsCut: a client that sends headers and part of a body,
// then nothing, has its body read fail with a timeout, so the handler (and
// whatever it holds) is released.
func TestStalledBodyIsCut(t *testing.T) {
	readErr := make(chan error, 1)
	addr := server(t, 300*time.Millisecond, func(w http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(io.Discard, r.Body)
		readErr <- err
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "PATCH /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly a few bytes")
	select {
	case err := <-readErr:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("body read of a stalled client: %v; want a timeout", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("a stalled body was never cut")
	}
}

// slowBody sends n bytes, one every gap.
type slowBody struct {
	n   int
	gap time.Duration
}

func (s *slowBody) Read(p []byte) (int, error) {
	if s.n == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.gap)
	s.n--
	p[0] = 'x'
	return 1, nil
}

// TestSlowMovingBodyCompletes: a body that keeps moving, however slowly
// overall, is never cut; and a handler that answers long after the body
// ended is not cut either (the deadline is lifted at the body's end).
func TestSlowMovingBodyCompletes(t *testing.T) {
	const idle = 500 * time.Millisecond
	addr := server(t, idle, func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select { // answer well after the body ended
		case <-time.After(3 * idle):
		case <-r.Context().Done():
			return // the request was cancelled: the client sees no answer
		}
		fmt.Fprintf(w, "%d", n)
	})
	// 20 bytes a tenth of the idle timeout apart: twice the timeout in all.
	req, _ := http.NewRequest("PATCH", "http://"+addr+"/x", &slowBody{n: 20, gap: idle / 10})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(got) != "20" {
		t.Fatalf("slow body: %d %q; want 200 \"20\"", resp.StatusCode, got)
	}
}

// TestHeaderTimeout: Server applies the header timeout: a client that
// never finishes its headers is disconnected.
func TestHeaderTimeout(t *testing.T) {
	srv := Config{ReadHeaderTimeout: 200 * time.Millisecond}.Server(http.NotFoundHandler())
	if srv.IdleTimeout != DefaultIdleTimeout {
		t.Fatalf("IdleTimeout %s; want the default %s", srv.IdleTimeout, DefaultIdleTimeout)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n") // and never the blank line
	c.SetReadDeadline(time.Now().Add(time.Minute))
	_, err = bufio.NewReader(c).ReadString('\n')
	if err == nil || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "i/o timeout") {
		t.Fatalf("after unfinished headers: %v; want the server to close the connection", err)
	}
}

func TestValidate(t *testing.T) {
	if err := (Config{BodyIdleTimeout: -time.Second}).Validate("http"); err == nil || !strings.Contains(err.Error(), "http.bodyidletimeout") {
		t.Fatalf("negative timeout: %v; want an error naming http.bodyidletimeout", err)
	}
	if err := (Config{}).Validate("http"); err != nil {
		t.Fatal(err)
	}
}

// TestUnreadBodyIsBounded: a handler that answers without reading (a 401)
// leaves net/http to discard the body; a client that sent headers and no
// body is then cut by the idle timeout instead of holding the connection.
func TestUnreadBodyIsBounded(t *testing.T) {
	addr := server(t, 300*time.Millisecond, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "PATCH /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n") // and no body
	c.SetReadDeadline(time.Now().Add(time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a request whose body never came: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("answer %d; want the handler's 401", resp.StatusCode)
	}
}
