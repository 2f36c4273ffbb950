package replication

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"

	"github.com/gaia-registry/gaia/registry/internaltoken"
	"github.com/gaia-registry/gaia/registry/tlsfiles"
	"github.com/gaia-registry/gaia/registry/uploadsession"
	"github.com/gaia-registry/gaia/tests/testca"
)

// The internal token goes to peers over https (verified with the
// configured CA), or plain http on loopback; never over plain http to
// another host, and never on to where a peer redirects.
func TestTokenOnlyToSafePeers(t *testing.T) {
	r, _, data, d, calls := env(t, 0)
	ctx := context.Background()
	peer := r.o.Peers["a"]

	// A peer at a routable address over plain http: nothing is sent, even
	// with a dialer that would reach a server.
	r.o.Peers["a"] = "http://192.0.2.10:6000"
	client := *r.o.Client
	client.Transport = &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, peer[len("http://"):])
	}}
	saved := r.o.Client
	r.o.Client = &client
	if err := r.Fill(ctx, "r", d); !errors.Is(err, internaltoken.ErrPlainHTTP) || calls.Load() != 0 {
		t.Fatalf("fill from a plain-http peer off loopback: %v (%d requests reached it)", err, calls.Load())
	}
	r.o.Client = saved

	// A peer that redirects: the token does not follow.
	var leaked atomic.Int64
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(TokenHeader) != "" {
			leaked.Add(1)
		}
		w.Write(data)
	}))
	defer elsewhere.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	r.o.Peers["a"] = redirector.URL
	if err := r.Fill(ctx, "r", d); err == nil || leaked.Load() != 0 {
		t.Fatalf("fill through a redirect: %v; the token reached the redirect's target %d times", err, leaked.Load())
	}

	// Over https, verified with cluster.tls.ca.
	ca := testca.New(t)
	certFile, keyFile := ca.LeafFiles(t, "gw-a")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	var tlsCalls atomic.Int64
	secure := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || r.Header.Get(TokenHeader) != "tok" {
			http.Error(w, "bad fill request", 400)
			return
		}
		tlsCalls.Add(1)
		w.Write(data)
	}))
	secure.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	secure.Config.ErrorLog = stdlog.New(io.Discard, "", 0)
	secure.StartTLS()
	defer secure.Close()
	drv, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	o := r.o
	o.Client, o.Driver, o.Peers = nil, drv, map[string]string{"a": secure.URL}
	if err := New(o).Fill(ctx, "r", d); err == nil {
		t.Fatal("a peer certificate of an unknown CA was accepted")
	}
	o.TLS, err = tlsfiles.ClientConfig(ca.CertFile, "cluster.tls.ca")
	if err != nil {
		t.Fatal(err)
	}
	if err := New(o).Fill(ctx, "r", d); err != nil || tlsCalls.Load() != 1 {
		t.Fatalf("fill over https: %v (%d requests)", err, tlsCalls.Load())
	}
	if _, err := drv.Stat(ctx, uploadsession.BlobPath(d)); err != nil {
		t.Fatalf("blob filled over https not stored: %v", err)
	}
}
