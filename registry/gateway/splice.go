package gateway

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Blob downloads are most of a registry's bytes. For a large plain GET of
// a blob, the gateway talks to the server over a connection of its own and
// hands the body from one socket to the other in the kernel (Go's
// TCPConn.ReadFrom uses splice(2) on Linux), instead of copying every byte
// through user space. The client's connection is hijacked for it and
// closed after the body (docker opens a connection per layer anyway).
// With TLS on either side the bytes pass through user space, but the
// exchange is the same: a server registered as https is dialled with TLS.

// transferDeadline bounds a spliced transfer, whose bytes the gateway
// never sees (so it cannot watch progress): ten minutes plus a second per
// MiB, i.e. it fails only below about 1 MiB/s. A stalled peer then frees
// both connections instead of holding them, and shutdown, forever.
func transferDeadline(size int64, conns ...net.Conn) {
	d := time.Now().Add(10*time.Minute + time.Duration(size>>20)*time.Second)
	for _, c := range conns {
		c.SetDeadline(d)
	}
}

// spliceMin is the smallest body worth a connection of its own.
const spliceMin = 1 << 20

// dialable: a scheme dial speaks.
func dialable(u *Upstream) bool { return u.Scheme == "http" || u.Scheme == "https" }

// dial connects to u for a spliced exchange, with TLS (verified as the
// transport verifies) when u speaks https.
func (g *Gateway) dial(ctx context.Context, u *Upstream) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	if u.Scheme != "https" {
		return d.DialContext(ctx, "tcp", u.Addr)
	}
	return (&tls.Dialer{NetDialer: d, Config: g.cfg.serverTLS}).DialContext(ctx, "tcp", u.Addr)
}

// spliceable: a GET of a blob (not an upload), over HTTP/1.x, without a
// Range.
func spliceable(r *http.Request, u *Upstream) bool {
	if r.Method != http.MethodGet || !dialable(u) || r.ProtoMajor != 1 || r.Header.Get("Range") != "" {
		return false
	}
	i := strings.LastIndex(r.URL.Path, "/blobs/")
	return i > 0 && !strings.HasSuffix(r.URL.Path[:i+len("/blobs/")], "/uploads/") &&
		!strings.Contains(r.URL.Path[i:], "/uploads")
}

// isBlobGet: r's path names a blob (not an upload).
func isBlobGet(r *http.Request) bool {
	i := strings.LastIndex(r.URL.Path, "/blobs/")
	return i > 0 && !strings.HasSuffix(r.URL.Path[:i+len("/blobs/")], "/uploads/") &&
		!strings.Contains(r.URL.Path[i:], "/uploads")
}

// splice serves r from u as described above. It returns a non-nil error
// only when nothing reached the client (the caller may retry elsewhere).
func (g *Gateway) splice(w http.ResponseWriter, r *http.Request, out *http.Request, u *Upstream, start time.Time) error {
	conn, err := g.dial(r.Context(), u)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Until the hijack, the client going away ends the upstream exchange.
	stop := context.AfterFunc(r.Context(), func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(5 * time.Minute)) // to the response headers
	out.Header.Set("Connection", "close")
	if err := out.Write(conn); err != nil {
		return err
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	resp, err := http.ReadResponse(br, out)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	g.succeeded(u)
	hj, ok := w.(http.Hijacker)
	if resp.StatusCode != http.StatusOK || resp.ContentLength < spliceMin || !ok {
		g.respond(w, r, u, resp, &body{ReadCloser: http.NoBody}, start)
		return nil
	}
	g.spliced.Add(1) // before the hijack: Shutdown stops seeing the connection then
	defer g.spliced.Done()
	client, bufrw, err := hj.Hijack()
	if err != nil {
		g.respond(w, r, u, resp, &body{ReadCloser: http.NoBody}, start)
		return nil
	}
	defer client.Close()
	transferDeadline(resp.ContentLength, conn, client)
	hdr := clientHeader(resp.Header, u)
	hdr.Set("Connection", "close")
	hdr.Set("Content-Length", fmt.Sprint(resp.ContentLength))
	fmt.Fprintf(bufrw, "HTTP/1.1 %s\r\n", resp.Status)
	hdr.Write(bufrw)
	bufrw.WriteString("\r\n")
	var n int64
	err = bufrw.Flush()
	if err == nil {
		// What the header read buffered, then the rest socket to socket.
		var k int64
		k, err = io.CopyN(client, br, int64(br.Buffered()))
		n += k
		if err == nil {
			rest := io.LimitReader(conn, resp.ContentLength-n)
			if tc, ok := client.(*net.TCPConn); ok {
				k, err = tc.ReadFrom(rest)
			} else {
				k, err = io.Copy(client, rest)
			}
			n += k
		}
	}
	code := "200"
	if err != nil || n != resp.ContentLength {
		g.log.Warn("blob download cut short", "upstream", u.ID, "path", r.URL.Path, "after_bytes", n, "of", resp.ContentLength, "err", err)
		g.failed(u, fmt.Errorf("after %d of %d bytes: %v", n, resp.ContentLength, err))
		code = "cut"
	}
	g.countRequest(u, code)
	g.countBytes(u, "out", n)
	g.m.blobBytes.Add(float64(n))
	g.m.duration.WithLabelValues(u.IDC).Observe(time.Since(start).Seconds())
	return nil
}

// uploadSpliceable: a chunk or final PUT of a blob upload with a known,
// large body, over HTTP/1.x. (Chunked request bodies, which docker sends,
// take the ordinary path.)
func uploadSpliceable(r *http.Request, u *Upstream) bool {
	return (r.Method == http.MethodPatch || r.Method == http.MethodPut) && dialable(u) && r.ProtoMajor == 1 &&
		r.ContentLength >= spliceMin && strings.Contains(r.URL.Path, "/blobs/uploads/")
}

// spliceUpload forwards a large upload body socket to socket. It returns
// a non-nil error only when nothing of the body was consumed (the caller
// may retry elsewhere); later failures are answered here.
func (g *Gateway) spliceUpload(w http.ResponseWriter, r *http.Request, out *http.Request, u *Upstream, start time.Time) error {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return fmt.Errorf("not hijackable")
	}
	conn, err := g.dial(r.Context(), u)
	if err != nil {
		return err
	}
	defer conn.Close()
	g.spliced.Add(1) // before the hijack: Shutdown stops seeing the connection then
	defer g.spliced.Done()
	client, bufrw, err := hj.Hijack()
	if err != nil {
		return err
	}
	defer lingerClose(client)
	transferDeadline(r.ContentLength, conn, client)

	hdr := out.Header.Clone() // hop-by-hop headers already gone (proxy)
	// The client already sent its body or will: no 100-continue dance
	// through a hijacked connection.
	hdr.Del("Expect")
	hdr.Set("Connection", "close")
	hdr.Set("Content-Length", fmt.Sprint(r.ContentLength))
	bw := bufio.NewWriterSize(conn, 4<<10)
	fmt.Fprintf(bw, "%s %s HTTP/1.1\r\nHost: %s\r\n", r.Method, out.URL.RequestURI(), r.Host)
	hdr.Write(bw)
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		rawUnavailable(client, "the registry server could not be reached; retry the request")
		g.failed(u, err)
		return nil
	}

	// The body goes socket to socket while the answer is awaited: a server
	// may answer early (401, 404, 416) without reading the body.
	type sent struct {
		n   int64
		err error
	}
	bodyDone := make(chan sent, 1)
	go func() {
		// What the server's reader buffered of the body, then the rest.
		n, err := io.CopyN(conn, bufrw.Reader, min(int64(bufrw.Reader.Buffered()), r.ContentLength))
		if err == nil && n < r.ContentLength {
			var k int64
			k, err = io.Copy(conn, io.LimitReader(client, r.ContentLength-n)) // splice(2) between plain TCP sockets
			n += k
		}
		if err == nil && n < r.ContentLength {
			err = fmt.Errorf("client sent %d of %d body bytes", n, r.ContentLength)
		}
		bodyDone <- sent{n, err}
	}()
	br := bufio.NewReader(conn)
	var resp *http.Response
	for {
		resp, err = http.ReadResponse(br, out)
		if err != nil || resp.StatusCode >= 200 {
			break
		}
		resp.Body.Close() // 1xx: informational, the real answer follows
	}
	var body sent
	select {
	case body = <-bodyDone:
	default:
		// Answered before the body was through: stop sending.
		client.SetReadDeadline(time.Now())
		conn.(closeWriter).CloseWrite()
		body = <-bodyDone
	}
	g.countBytes(u, "in", body.n)
	if err != nil {
		if body.err == nil || errors.Is(body.err, net.ErrClosed) || isUpstreamErr(body.err) {
			g.failed(u, err)
		}
		g.countRequest(u, "502")
		rawUnavailable(client, "the registry server failed after the request body was sent; retry the request")
		return nil
	}
	defer resp.Body.Close()
	g.succeeded(u)
	rh := clientHeader(resp.Header, u)
	rh.Set("Connection", "close")
	respBody, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20)) // upload answers are tiny
	rh.Set("Content-Length", fmt.Sprint(len(respBody)))
	client.SetWriteDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(client, "HTTP/1.1 %s\r\n", resp.Status)
	rh.Write(client)
	io.WriteString(client, "\r\n")
	client.Write(respBody)
	g.countRequest(u, fmt.Sprint(resp.StatusCode))
	g.countBytes(u, "out", int64(len(respBody)))
	g.m.duration.WithLabelValues(u.IDC).Observe(time.Since(start).Seconds())
	return nil
}

// rawUnavailable answers 503 with the spec's error body on a hijacked
// connection.
func rawUnavailable(c net.Conn, msg string) {
	body := `{"errors":[{"code":"UNAVAILABLE","message":"` + msg + `"}]}`
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

// isUpstreamErr: a failure on the server's side of a copy, as far as the
// error says (a client that went away is not the server's fault).
func isUpstreamErr(err error) bool {
	return !strings.Contains(err.Error(), "client sent")
}

// closeWriter: a TCP or TLS connection, which can end its sending side
// alone.
type closeWriter interface{ CloseWrite() error }

// lingerClose ends a hijacked connection whose client may still be sending
// a body we stopped reading: FIN first, then discard what still arrives
// for a moment, so the kernel does not answer with a reset that destroys
// the response before the client reads it.
func lingerClose(c net.Conn) {
	if cw, ok := c.(closeWriter); ok {
		cw.CloseWrite()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, io.LimitReader(c, 256<<20))
	}
	c.Close()
}
