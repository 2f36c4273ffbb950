package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/tests/harness"
)

// TestGaiactlAccess: gaiactl user|namespace|member|robot against a
// cluster with the built-in auth: with the admin token, then as a
// namespace's admin (GAIA_REGISTRY_USER/PASSWORD); a robot's secret is
// printed once and works at the token service (rotated: only the new
// one); lists page (--limit, --all, -o json); errors name the field;
// what a namespace admin may not do is refused.
func TestGaiactlAccess(t *testing.T) {
	a := startAccessCluster(t)
	ctl := harness.Binary(t, "./cmd/gaiactl")
	server := a.servers["idc-a"][0].URL()
	// run runs gaiactl with only the variables given (none of the
	// caller's GAIA_REGISTRY_*), failing the test when ok and it fails
	// or !ok and it succeeds.
	run := func(ok bool, env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(ctl, append([]string{"--server", server}, args...)...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
		out, err := cmd.CombinedOutput()
		if (err == nil) != ok {
			t.Fatalf("gaiactl %s: %v, want success %v\n%s", strings.Join(args, " "), err, ok, out)
		}
		return string(out)
	}
	asAdmin := []string{"GAIA_REGISTRY_ADMIN_TOKEN=" + accessAdminToken}
	asAlice := []string{"GAIA_REGISTRY_USER=alice", "GAIA_REGISTRY_PASSWORD=alice-pass-1"}

	run(true, asAdmin, "user", "create", "root", "--password", "root-pass-1", "--admin")
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		if out := run(true, asAdmin, "user", "create", u, "--password", u+"-pass-1"); !regexp.MustCompile(`(?m)^` + u + `\s+local\s+false\s`).MatchString(out) {
			t.Fatalf("user create %s printed:\n%s", u, out)
		}
	}
	if out := run(false, asAdmin, "user", "create", "eve", "--password", "short"); !strings.Contains(out, "password: must be 8 to 72 bytes") {
		t.Fatalf("a short password: %s", out)
	}
	if out := run(false, asAdmin, "user", "create", "alice", "--password", "alice-pass-1"); !strings.Contains(out, "name: user alice exists already") {
		t.Fatalf("a taken name: %s", out)
	}
	if out := run(true, asAdmin, "user", "list", "--limit", "2"); !strings.Contains(out, "alice") || !strings.Contains(out, "bob") ||
		strings.Contains(out, "carol") || !strings.Contains(out, "(more: --last bob, or --all)") {
		t.Fatalf("user list --limit 2:\n%s", out)
	}
	if out := run(true, asAdmin, "user", "list", "--limit", "2", "--last", "bob"); !strings.Contains(out, "carol") || strings.Contains(out, "alice") {
		t.Fatalf("user list --last bob:\n%s", out)
	}
	var users struct{ Users []struct{ Name string } }
	if err := json.Unmarshal([]byte(run(true, asAdmin, "-o", "json", "user", "list", "--limit", "2", "--all")), &users); err != nil || len(users.Users) != 5 {
		t.Fatalf("user list --all -o json: %+v %v", users, err)
	}
	if out := run(true, asAdmin, "user", "list", "--limit", "2", "--all"); strings.Count(out, " local ") != 5 || strings.Contains(out, "more:") {
		t.Fatalf("user list --all:\n%s", out)
	}
	if out := run(true, asAdmin, "namespace", "create", "team", "--owner", "alice", "--quota", "1Gi", "--description", "the team"); !regexp.MustCompile(`(?m)^team\s+private\s+the team\s`).MatchString(out) {
		t.Fatalf("namespace create:\n%s", out)
	}
	run(true, asAdmin, "namespace", "create", "other")
	if out := run(false, asAdmin, "namespace", "create", "Team"); !strings.Contains(out, "name: ") {
		t.Fatalf("a bad namespace name: %s", out)
	}

	// alice, team's admin, manages its members and robots.
	run(true, asAlice, "member", "set", "team", "bob", "developer")
	run(true, asAlice, "member", "set", "team", "carol", "guest")
	if out := run(true, asAlice, "member", "set", "team", "devs", "maintainer", "--group"); !strings.Contains(out, "group devs is maintainer of team") {
		t.Fatalf("member set --group: %s", out)
	}
	if out := run(false, asAlice, "member", "set", "team", "dave", "owner"); !strings.Contains(out, "role: ") {
		t.Fatalf("a bad role: %s", out)
	}
	var members struct {
		Members []struct{ Kind, Name, Role string }
	}
	if err := json.Unmarshal([]byte(run(true, asAlice, "-o", "json", "member", "list", "team", "--limit", "1", "--all")), &members); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(members.Members) != "[{group devs maintainer} {user alice admin} {user bob developer} {user carol guest}]" {
		t.Fatalf("member list --all -o json: %v", members.Members)
	}
	run(true, asAlice, "member", "remove", "team", "carol")
	if out := run(true, asAlice, "member", "list", "team"); strings.Contains(out, "carol") || !regexp.MustCompile(`(?m)^user\s+bob\s+developer$`).MatchString(out) {
		t.Fatalf("member list after remove:\n%s", out)
	}
	if out := run(false, asAlice, "member", "remove", "team", "carol"); !strings.Contains(out, "not found") {
		t.Fatalf("removing a removed member: %s", out)
	}

	out := run(true, asAlice, "robot", "create", "ci", "--namespace", "team", "--perm", "pull,push@team", "--expires", "720h")
	m := regexp.MustCompile(`secret \(shown once\): (\S+)`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "robot$team+ci") || !strings.Contains(out, "pull,push@team") {
		t.Fatalf("robot create:\n%s", out)
	}
	secret := m[1]
	if _, code := a.token(t, "robot$team+ci", secret, "repository:team/app:pull,push"); code != 200 {
		t.Fatalf("the printed secret at the token service: %d", code)
	}
	if out := run(true, asAlice, "-o", "json", "robot", "list", "--namespace", "team"); !strings.Contains(out, "robot$team+ci") || strings.Contains(out, secret) || strings.Contains(out, "secret") {
		t.Fatalf("robot list shows the secret again, or not the robot:\n%s", out)
	}
	if out := run(false, asAlice, "robot", "create", "x", "--namespace", "team", "--perm", "pull@other"); !strings.Contains(out, "permissions[0].namespace: ") {
		t.Fatalf("a permission on another namespace: %s", out)
	}
	if out := run(false, asAlice, "robot", "create", "x", "--namespace", "team", "--perm", "fly@team"); !strings.Contains(out, "permissions[0].actions: ") {
		t.Fatalf("a bad action: %s", out)
	}
	out = run(true, asAlice, "robot", "rotate", "robot$team+ci")
	m = regexp.MustCompile(`robot\$team\+ci: new secret \(shown once\): (\S+)`).FindStringSubmatch(out)
	if m == nil || m[1] == secret {
		t.Fatalf("robot rotate:\n%s", out)
	}
	if _, code := a.token(t, "robot$team+ci", secret, "repository:team/app:pull"); code != 401 {
		t.Fatalf("the old secret after rotation: %d, want 401", code)
	}
	if _, code := a.token(t, "robot$team+ci", m[1], "repository:team/app:pull"); code != 200 {
		t.Fatalf("the new secret: %d", code)
	}

	// What alice may not do: each refused, saying so.
	for _, args := range [][]string{
		{"user", "create", "eve", "--password", "eve-pass-12"},
		{"user", "list"},
		{"namespace", "list"},
		{"namespace", "create", "mine"},
		{"namespace", "update", "team", "--public"},
		{"namespace", "update", "team", "--quota", "none"},
		{"namespace", "delete", "team"},
		{"member", "set", "other", "alice", "admin"},
		{"robot", "list"},
		{"robot", "create", "sys", "--perm", "pull@team"},
		{"robot", "list", "--namespace", "other"},
	} {
		if out := run(false, asAlice, args...); !strings.Contains(out, "may not") && !strings.Contains(out, "only a system admin") {
			t.Errorf("alice: gaiactl %s: %s", strings.Join(args, " "), out)
		}
	}
	// Not a namespace admin: bob may not manage team; wrong credentials.
	if out := run(false, []string{"GAIA_REGISTRY_USER=bob", "GAIA_REGISTRY_PASSWORD=bob-pass-1"}, "member", "list", "team"); !strings.Contains(out, "bob may not") {
		t.Errorf("bob lists team's members: %s", out)
	}
	if out := run(false, []string{"GAIA_REGISTRY_USER=alice", "GAIA_REGISTRY_PASSWORD=wrong-pass"}, "member", "list", "team"); !strings.Contains(out, "credentials") {
		t.Errorf("a wrong password: %s", out)
	}
	// A system admin by name does what the token does.
	asRoot := []string{"GAIA_REGISTRY_USER=root", "GAIA_REGISTRY_PASSWORD=root-pass-1"}
	if out := run(true, asRoot, "namespace", "update", "team", "--public", "--quota", "none"); !regexp.MustCompile(`(?m)^team\s+public\s`).MatchString(out) {
		t.Fatalf("namespace update as root:\n%s", out)
	}
	if out := run(true, asRoot, "namespace", "list", "--limit", "1", "--all"); !strings.Contains(out, "other") || !strings.Contains(out, "team") {
		t.Fatalf("namespace list --all as root:\n%s", out)
	}
	run(true, asRoot, "robot", "create", "mirror", "--perm", "pull@*")
	run(true, asAlice, "robot", "delete", "robot$team+ci")
	if out := run(true, asRoot, "-o", "json", "robot", "list"); !strings.Contains(out, "robot$mirror") {
		t.Fatalf("system robots: %s", out)
	}
	run(true, asRoot, "namespace", "delete", "other")
	run(true, asRoot, "user", "delete", "dave")
	var nss struct{ Namespaces []struct{ Name string } }
	json.Unmarshal([]byte(run(true, asAdmin, "-o", "json", "namespace", "list")), &nss)
	if len(nss.Namespaces) != 1 || nss.Namespaces[0].Name != "team" {
		t.Fatalf("namespaces after delete: %+v", nss)
	}
	var us struct{ Users []struct{ Name string } }
	json.Unmarshal([]byte(run(true, asAdmin, "-o", "json", "user", "list")), &us)
	if slices.ContainsFunc(us.Users, func(u struct{ Name string }) bool { return u.Name == "dave" }) {
		t.Fatalf("dave after delete: %+v", us)
	}
}
