package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/tests/harness"
)

// TestMigrateCommand drives `gaia-registry migrate` against a fresh
// database: status, up, idempotent up, down, bad input.
func TestMigrateCommand(t *testing.T) {
	dbURL := harness.NewDatabase(t)

	bin := harness.Binary(t, "./registry/cmd/gaia-registry")
	config := filepath.Join(t.TempDir(), "registry.yml")
	os.WriteFile(config, []byte("database:\n  url: "+dbURL+"\n"), 0o644)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"migrate"}, args...)...)
		cmd.Env = append(os.Environ(), "GAIA_DATABASE_URL=")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	latest := metadata.Latest()
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"status", "--config", config}, fmt.Sprintf("schema version 0, binary knows %d: %d migration(s) pending", latest, latest)},
		{[]string{"--config", config}, fmt.Sprintf("migrated schema from version 0 to %d", latest)},
		{[]string{"up", "--database-url", dbURL}, fmt.Sprintf("schema is up to date at version %d", latest)},
		{[]string{"status", "--config", config}, fmt.Sprintf("schema version %d, binary knows %d: up to date", latest, latest)},
		{[]string{"down", "1", "--config", config}, fmt.Sprintf("reverted schema from version %d to %d", latest, latest-1)},
	}
	for _, s := range steps {
		out, err := run(s.args...)
		if err != nil || out != s.want {
			t.Fatalf("migrate %v: %v\n got %q\nwant %q", s.args, err, out, s.want)
		}
	}
	for _, bad := range [][]string{
		{"down", "zero", "--config", config},
		{"sideways", "--config", config},
		{"status"}, // no database anywhere
	} {
		out, err := run(bad...)
		if err == nil {
			t.Fatalf("migrate %v succeeded: %s", bad, out)
		}
		if !strings.Contains(out, "gaia-registry:") {
			t.Fatalf("migrate %v: no error message: %s", bad, out)
		}
	}
}
