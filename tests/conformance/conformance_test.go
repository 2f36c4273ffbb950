// Package conformance runs the OCI distribution-spec conformance suite
// against two gaia-registry processes sharing one PostgreSQL and one
// storage, with a proxy in front that sends each request to the other
// server than the one before: every multi-request flow (chunked uploads,
// push then pull, delete then check) crosses servers.
package conformance

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gaia-registry/gaia/tests/harness"
)

// The suite's newest version on the Go module proxy (../shared/anchors.md).
const (
	suite        = "github.com/opencontainers/distribution-spec/conformance"
	suiteVersion = "v0.0.0-20260831232431-97274622c111"
)

// alternator sends request i to backend i mod 2.
type alternator struct {
	proxies []*httputil.ReverseProxy
	next    atomic.Int64
	served  []atomic.Int64
}

func newAlternator(t *testing.T, backends ...string) *alternator {
	a := &alternator{served: make([]atomic.Int64, len(backends))}
	for _, b := range backends {
		u, err := url.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		p := httputil.NewSingleHostReverseProxy(u)
		p.FlushInterval = -1 // stream bodies as they come
		a.proxies = append(a.proxies, p)
	}
	return a
}

func (a *alternator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	i := int(a.next.Add(1)) % len(a.proxies)
	a.served[i].Add(1)
	a.proxies[i].ServeHTTP(w, r)
}

type junitSuites struct {
	Suites []struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Errors   int `xml:"errors,attr"`
		Skipped  int `xml:"skipped,attr"`
		Cases    []struct {
			Name    string `xml:"name,attr"`
			Failure *struct {
				Message string `xml:"message,attr"`
				Text    string `xml:",chardata"`
			} `xml:"failure"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// runSuite runs the conformance suite against two servers built from the
// storage YAML and fails the test on any failure, listing each.
func runSuite(t *testing.T, storage string) {
	conformance := harness.GoTool(t, suite, suiteVersion)
	db := harness.NewDatabase(t)
	a, b := harness.FreeAddr(t), harness.FreeAddr(t)
	ra := harness.StartRegistry(t, a, harness.RegistryConfig(a, db, storage))
	rb := harness.StartRegistry(t, b, harness.RegistryConfig(b, db, storage))
	alt := newAlternator(t, ra.URL(), rb.URL())
	proxy := httptest.NewServer(alt)
	defer proxy.Close()

	results := t.TempDir()
	cmd := exec.Command(conformance)
	cmd.Dir = results
	cmd.Env = append(os.Environ(),
		"OCI_REGISTRY="+strings.TrimPrefix(proxy.URL, "http://"),
		"OCI_TLS=disabled",
		"OCI_REPO1=conformance/repo1",
		"OCI_REPO2=conformance/repo2",
		"OCI_RESULTS_DIR="+results,
		"OCI_LOG=warn",
		"OCI_VERSION=1.1",
	)
	start := time.Now()
	out, runErr := cmd.CombinedOutput()
	t.Logf("conformance suite ran in %s; requests served: A %d, B %d", time.Since(start).Round(time.Millisecond),
		alt.served[0].Load(), alt.served[1].Load())

	raw, err := os.ReadFile(filepath.Join(results, "junit.xml"))
	if err != nil {
		t.Fatalf("conformance wrote no junit.xml (%v); exit %v; output:\n%s", err, runErr, out)
	}
	var js junitSuites
	if err := xml.Unmarshal(raw, &js); err != nil {
		t.Fatalf("junit.xml: %v", err)
	}
	var tests, failures, skipped int
	var failed []string
	for _, s := range js.Suites {
		tests += s.Tests
		failures += s.Failures + s.Errors
		skipped += s.Skipped
		for _, c := range s.Cases {
			if c.Failure != nil {
				failed = append(failed, fmt.Sprintf("%s: %s %s", c.Name, c.Failure.Message, strings.TrimSpace(c.Failure.Text)))
			}
		}
	}
	t.Logf("conformance: %d tests, %d failures, %d skipped (report: %s)", tests, failures, skipped, filepath.Join(results, "report.html"))
	if tests == 0 {
		t.Fatalf("the suite ran no tests; output:\n%s", out)
	}
	if failures > 0 || runErr != nil {
		t.Fatalf("conformance: %d of %d failed (exit %v):\n%s\noutput tail:\n%s", failures, tests, runErr,
			strings.Join(failed, "\n"), tail(string(out), 4000))
	}
	if alt.served[0].Load() == 0 || alt.served[1].Load() == 0 {
		t.Fatalf("requests did not reach both servers: %d and %d", alt.served[0].Load(), alt.served[1].Load())
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// TestConformanceTwoServers: filesystem storage shared by both servers.
func TestConformanceTwoServers(t *testing.T) {
	runSuite(t, t.TempDir())
}
