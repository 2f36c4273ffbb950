package upstream

import (
	"context"
	"crypto/tls"
	"io"
	stdlog "log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/gaia-registry/gaia/registry/tlsfiles"
	"github.com/gaia-registry/gaia/tests/testca"
)

// An https registry whose certificate comes from a private CA (a Gaia
// gateway, for the mirror worker) is reached with Options.TLS.
func TestPrivateCA(t *testing.T) {
	ca := testca.New(t)
	certFile, keyFile := ca.LeafFiles(t, "gateway")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"name":"x","tags":["v1"]}`))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = stdlog.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	cfg, err := tlsfiles.ClientConfig(ca.CertFile, "registry.tls.ca")
	if err != nil {
		t.Fatal(err)
	}
	tags, err := New(Options{URL: srv.URL, TLS: cfg}).Tags(context.Background(), "x")
	if err != nil || !reflect.DeepEqual(tags, []string{"v1"}) {
		t.Fatalf("tags over https with the CA: %v %v", tags, err)
	}
}
