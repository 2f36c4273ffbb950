package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/crypto/bcrypt"

	"github.com/gaia-registry/gaia/registry/internaltoken"
	"github.com/gaia-registry/gaia/tests/harness"
	"github.com/gaia-registry/gaia/tests/testca"
)

// TestClusterTLS: two IDCs with TLS on every hop and htpasswd auth on the
// servers. A client pushes through IDC A's gateway and reads through IDC
// B's, over https; B's server fills the blob from A's gateway over https
// with the internal token, which A's servers honour for blob reads only.
// The servers log the client's address (what the gateway forwarded),
// never a client's own X-Forwarded-For claim nor the gateway's address.
func TestClusterTLS(t *testing.T) {
	env := harness.Start(t, harness.Consul)
	ca := testca.New(t)
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(htpasswd, []byte("builder:"+string(hash)+"\n"), 0o600)
	consulAddr := env.Get(t, "GAIA_TEST_CONSUL_ADDR")
	service := fmt.Sprintf("gaia-registry-e2e-tls-%d", time.Now().UnixNano())
	db := harness.NewDatabase(t)
	gw := map[string]*harness.Registry{}
	gwAddr := map[string]string{"idc-a": harness.FreeAddr(t), "idc-b": harness.FreeAddr(t)}
	servers := map[string]*harness.Registry{}
	for idc, other := range map[string]string{"idc-a": "idc-b", "idc-b": "idc-a"} {
		addr := harness.FreeAddr(t)
		cert, key := ca.LeafFiles(t, "server-"+idc)
		cfg := strings.Replace(harness.RegistryConfig(addr, db, t.TempDir()), "draintimeout: 10s}",
			fmt.Sprintf("draintimeout: 10s, tls: {certificate: %q, key: %q}, trustedproxies: [127.0.0.1]}", cert, key), 1)
		cfg = strings.Replace(cfg, "level: warn", "level: info", 1) + fmt.Sprintf(`auth: {htpasswd: {realm: gaia-e2e, path: %q}}
cluster:
  idc: %s
  consul: {addr: %q, service: %q, checkinterval: 1s, deregisterafter: 30s}
  internaltoken: [e2e-new-token, e2e-old-token]
  peers: {%s: "https://%s"}
  tls: {ca: %q}
`, htpasswd, idc, consulAddr, service, other, gwAddr[other], ca.CertFile)
		servers[idc] = harness.StartTLSDaemon(t, "./registry/cmd/gaia-registry", []string{"serve"}, addr, cfg, ca)
	}
	for idc, addr := range gwAddr {
		cert, key := ca.LeafFiles(t, "gateway-"+idc)
		gw[idc] = harness.StartTLSDaemon(t, "./registry/cmd/gaia-gateway", nil, addr, fmt.Sprintf(`log: {level: warn}
http: {addr: %s, draintimeout: 10s, tls: {certificate: %q, key: %q}}
servers: {tls: {ca: %q}}
idc: %s
consul: {addr: %q, service: %q}
`, addr, cert, key, ca.CertFile, idc, consulAddr, service), ca)
	}

	// The client connects from 127.0.0.2, the gateways from 127.0.0.1.
	client := ca.Client()
	client.Transport.(*http.Transport).DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext
	do := func(method, url string, hdr map[string]string, body []byte) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, url, bytes.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.TLS == nil {
			t.Fatalf("%s %s answered without TLS", method, url)
		}
		return resp.StatusCode, b
	}
	user := map[string]string{"Authorization": "Basic YnVpbGRlcjpzM2NyZXQ="} // builder:s3cret
	a, b := "https://"+gwAddr["idc-a"], "https://"+gwAddr["idc-b"]
	push := func(data []byte) digest.Digest {
		d := digest.FromBytes(data)
		if code, body := do("POST", a+"/v2/tls/app/blobs/uploads/?digest="+d.String(), user, data); code != 201 {
			t.Fatalf("push through A: %d %s", code, body)
		}
		return d
	}
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	layer := make([]byte, 2<<20)
	rand.Read(layer)
	cd, ld := push(config), push(layer)
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
		"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},
		"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}]}`, cd, len(config), ld, len(layer))
	if code, body := do("PUT", a+"/v2/tls/app/manifests/v1", map[string]string{"Authorization": user["Authorization"],
		"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, []byte(manifest)); code != 201 {
		t.Fatalf("manifest push through A: %d %s", code, body)
	}

	// Read in B: filled from A over https, with the internal token.
	if code, got := do("GET", b+"/v2/tls/app/blobs/"+ld.String(), user, nil); code != 200 || !bytes.Equal(got, layer) {
		t.Fatalf("blob GET through B: %d, %d bytes", code, len(got))
	}
	if in := servers["idc-b"].Metric(t, "gaia_registry_cross_idc_bytes_total", `direction="in"`, `cause="fill"`, `peer="idc-a"`); in != float64(len(layer)) {
		t.Fatalf("B filled %.0f bytes from A, want %d", in, len(layer))
	}

	// The token through A's gateway: a blob read, nothing more.
	tok := map[string]string{internaltoken.Header: "e2e-old-token"}
	if code, got := do("GET", a+"/v2/tls/app/blobs/"+ld.String(), tok, nil); code != 200 || !bytes.Equal(got, layer) {
		t.Fatalf("blob GET with the internal token: %d", code)
	}
	for _, path := range []string{"/v2/tls/app/manifests/v1", "/v2/tls/app/tags/list", "/v2/_catalog"} {
		if code, _ := do("GET", a+path, tok, nil); code != 401 {
			t.Errorf("GET %s with only the internal token: %d, want 401", path, code)
		}
	}

	// The request log names the client, whatever it claims.
	do("GET", a+"/v2/tls/app/manifests/v1", map[string]string{"Authorization": user["Authorization"], "X-Forwarded-For": "203.0.113.9"}, nil)
	waitUntil(t, "the manifest GET logged by A's server", func() bool {
		return strings.Contains(servers["idc-a"].Log(), `"path":"/v2/tls/app/manifests/v1","route":"manifest","status":200`)
	})
	for _, line := range strings.Split(servers["idc-a"].Log(), "\n") {
		if !strings.Contains(line, `"msg":"request"`) || !strings.Contains(line, `"path":"/v2/tls/app/manifests/v1","route":"manifest","status":200`) {
			continue
		}
		if !strings.Contains(line, `"remote":"127.0.0.2"`) || !strings.Contains(line, `"proxy":"127.0.0.1:`) || strings.Contains(line, "203.0.113.9") {
			t.Fatalf("request log line: %s", line)
		}
	}
}

// TestMirrorAdminTLS: with http.tls, gaia-mirror's admin API speaks HTTPS
// only, and gaiactl reaches it trusting the CA through SSL_CERT_FILE.
func TestMirrorAdminTLS(t *testing.T) {
	ca := testca.New(t)
	cert, key := ca.LeafFiles(t, "mirror")
	addr := harness.FreeAddr(t)
	token := "e2e-admin-token-0123456789"
	harness.StartTLSDaemon(t, "./mirror-sync/cmd/gaia-mirror", nil, addr, fmt.Sprintf(`log: {level: warn}
http: {addr: %s, tls: {certificate: %q, key: %q}}
database: {url: %q, migrate: true}
admin: {token: %q}
worker: {disabled: true}
`, addr, cert, key, harness.NewDatabase(t), token), ca)
	gaiactl := harness.Binary(t, "./cmd/gaiactl")
	for _, tc := range []struct {
		server string
		ok     bool
	}{{"https://" + addr, true}, {"http://" + addr, false}} {
		cmd := exec.Command(gaiactl, "--server", tc.server, "--token", token, "mirror", "list")
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+ca.CertFile)
		out, err := cmd.CombinedOutput()
		if (err == nil) != tc.ok {
			t.Errorf("gaiactl --server %s mirror list: %v\n%s", tc.server, err, out)
		}
	}
}
