package harness

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
)

// PostgresServer is a PostgreSQL server of one test's own: a throwaway
// cluster in a temporary directory on a free port, for tests that stop and
// restart it. Every other test shares svc.sh's server (NewDatabase).
type PostgresServer struct {
	URL  string // postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
	bin  string // Debian's /usr/lib/postgresql/N/bin
	dir  string // holds data/, the socket and the log
	port int
}

// StartPostgres initialises and starts a PostgreSQL cluster with Debian's
// binaries (initdb + pg_ctl, as svc.sh does), stopped and removed when the
// test ends. Missing binaries fail the test, loudly.
func StartPostgres(t testing.TB) *PostgresServer {
	t.Helper()
	// svc.sh installs the binaries and, as root, the postgres user.
	if out, err := exec.Command("bash", Script(), "install", Postgres).CombinedOutput(); err != nil {
		t.Fatalf("harness: installing PostgreSQL's binaries failed (%v):\n%s", err, out)
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(bins) == 0 {
		t.Fatal("harness: no /usr/lib/postgresql/*/bin/pg_ctl: install Debian's postgresql (bash tests/services/svc.sh install postgres)")
	}
	sort.Strings(bins)
	p := &PostgresServer{bin: filepath.Dir(bins[len(bins)-1])}
	// Not t.TempDir(): the postgres user must be able to reach it.
	dir, err := os.MkdirTemp("", "gaia-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p.dir = dir
	t.Cleanup(func() {
		p.pgctl("-m", "immediate", "-w", "stop")
		os.RemoveAll(dir)
	})
	if os.Getuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("harness: running as root, PostgreSQL needs the postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := p.as(filepath.Join(p.bin, "initdb"), "-D", p.data(), "-U", "postgres", "--auth=trust", "--no-sync"); err != nil {
		t.Fatalf("harness: initdb failed (%v):\n%s", err, out)
	}
	p.port = freeLowPort(t)
	p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
	p.Start(t)
	return p
}

// Start starts the (stopped) server and waits until it accepts connections.
func (p *PostgresServer) Start(t testing.TB) {
	t.Helper()
	out, err := p.pgctl("-l", filepath.Join(p.dir, "postgres.log"), "-w", "-t", "60", "start",
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", p.port, p.dir))
	if err != nil {
		t.Fatalf("harness: pg_ctl start on port %d failed (%v):\n%s\n%s", p.port, err, out, p.Log())
	}
}

// Stop shuts the server down in fast mode (what a restart by an operator
// does): sessions are ended with 57P01 admin_shutdown, open transactions
// roll back, committed ones are kept. It returns once the server is gone.
func (p *PostgresServer) Stop(t testing.TB) {
	t.Helper()
	if out, err := p.pgctl("-m", "fast", "-w", "-t", "60", "stop"); err != nil {
		t.Fatalf("harness: pg_ctl stop failed (%v):\n%s\n%s", err, out, p.Log())
	}
}

// Log is the server's log, for failure messages.
func (p *PostgresServer) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
	return string(b)
}

func (p *PostgresServer) data() string { return filepath.Join(p.dir, "data") }

func (p *PostgresServer) pgctl(args ...string) ([]byte, error) {
	return p.as(filepath.Join(p.bin, "pg_ctl"), append([]string{"-D", p.data()}, args...)...)
}

// as runs a PostgreSQL binary, as the postgres user when we are root
// (PostgreSQL refuses to run as root).
func (p *PostgresServer) as(bin string, args ...string) ([]byte, error) {
	cmd := exec.Command(bin, args...)
	if os.Getuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", bin}, args...)...)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// freeLowPort returns a free loopback port below the kernel's ephemeral
// range (32768 and up by default), which a client connection cannot take
// while the server is down between a Stop and a Start.
func freeLowPort(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := 26000 + rand.IntN(6000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("harness: no free port in 26000-31999")
	return 0
}
