// Command gaiactl is Gaia's admin CLI. Today: mirror rules, through
// gaia-mirror's admin API.
//
//	gaiactl [--server URL] [--token TOKEN] [-o table|json] mirror list
//	gaiactl mirror show NAME            (also: status NAME)
//	gaiactl mirror create -f RULE.{json,yaml} [--check]
//	gaiactl mirror update NAME -f RULE.{json,yaml} [--check]
//	gaiactl mirror delete NAME
//	gaiactl mirror run NAME
//	gaiactl mirror history NAME [--limit N]
//
// --server and --token default to $GAIA_ADMIN_URL (http://127.0.0.1:5100)
// and $GAIA_ADMIN_TOKEN. Errors from the server name the rule field at
// fault; the exit status is 1 for them, 2 for usage errors.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/gaia-registry/gaia/mirror-sync/admin"
	"github.com/gaia-registry/gaia/mirror-sync/store"
)

type cli struct {
	server, token, output string
	out                   io.Writer
	client                *http.Client
}

var errUsage = errors.New("usage")

const usage = `usage: gaiactl [--server URL] [--token TOKEN] [-o table|json] mirror COMMAND
commands:
  list                                 every rule
  show NAME | status NAME              a rule and its latest runs
  create -f FILE [--check]             a new rule (JSON or YAML; --check: the upstream must answer)
  update NAME -f FILE [--check]        replace a rule (a password left out is kept)
  delete NAME
  run NAME                             run now
  history NAME [--limit N]             past runs, newest first`

func main() {
	err := run(os.Args[1:], os.Stdout)
	if errors.Is(err, errUsage) {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "gaiactl: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("gaiactl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c := &cli{out: out, client: &http.Client{Timeout: 30 * time.Second}}
	def := os.Getenv("GAIA_ADMIN_URL")
	if def == "" {
		def = "http://127.0.0.1:5100"
	}
	fs.StringVar(&c.server, "server", def, "gaia-mirror admin API base URL")
	fs.StringVar(&c.token, "token", os.Getenv("GAIA_ADMIN_TOKEN"), "admin token")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil || fs.NArg() < 2 || fs.Arg(0) != "mirror" {
		return errUsage
	}
	if c.output != "table" && c.output != "json" {
		return fmt.Errorf("-o: %q is not table or json", c.output)
	}
	return c.mirror(fs.Arg(1), fs.Args()[2:])
}

func (c *cli) mirror(cmd string, args []string) error {
	sub := flag.NewFlagSet(cmd, flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	file := sub.String("f", "", "rule file")
	check := sub.Bool("check", false, "check the upstream answers")
	limit := sub.Int("limit", 20, "runs to show")
	// Flags may follow the rule name.
	var pos []string
	for len(args) > 0 {
		if err := sub.Parse(args); err != nil {
			return errUsage
		}
		if sub.NArg() == 0 {
			break
		}
		pos = append(pos, sub.Arg(0))
		args = sub.Args()[1:]
	}
	base := strings.TrimRight(c.server, "/") + admin.Prefix
	q := ""
	if *check {
		q = "?check=1"
	}
	need := func(n int) error {
		if len(pos) != n {
			return errUsage
		}
		return nil
	}
	switch cmd {
	case "list":
		if err := need(0); err != nil {
			return err
		}
		var rules []admin.Status
		return c.do("GET", base, nil, &rules, func() { c.printRules(rules) })
	case "show", "status":
		if err := need(1); err != nil {
			return err
		}
		var s admin.Status
		return c.do("GET", base+"/"+pos[0], nil, &s, func() { c.printStatus(s) })
	case "create", "update":
		if *file == "" {
			return errUsage
		}
		body, err := readRule(*file)
		if err != nil {
			return err
		}
		method, url := "POST", base+q
		if cmd == "update" {
			if err := need(1); err != nil {
				return err
			}
			method, url = "PUT", base+"/"+pos[0]+q
		} else if err := need(0); err != nil {
			return err
		}
		var s admin.Status
		return c.do(method, url, body, &s, func() { c.printStatus(s) })
	case "delete":
		if err := need(1); err != nil {
			return err
		}
		return c.do("DELETE", base+"/"+pos[0], nil, nil, func() { fmt.Fprintf(c.out, "deleted %s\n", pos[0]) })
	case "run":
		if err := need(1); err != nil {
			return err
		}
		var r store.Run
		return c.do("POST", base+"/"+pos[0]+"/run", nil, &r, func() { c.printRuns([]store.Run{r}) })
	case "history":
		if err := need(1); err != nil {
			return err
		}
		var runs []store.Run
		return c.do("GET", fmt.Sprintf("%s/%s/runs?limit=%d", base, pos[0], *limit), nil, &runs, func() { c.printRuns(runs) })
	}
	return errUsage
}

// readRule reads a JSON or YAML rule file and returns JSON.
func readRule(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".yaml" && ext != ".yml" {
		return raw, nil
	}
	var v any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return json.Marshal(v)
}

// do calls the API; with -o json it prints the body as it came, else it
// decodes into v and calls show.
func (c *cli) do(method, url string, body []byte, v any, show func()) error {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Field, Message string }
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			if e.Error.Field != "" {
				return fmt.Errorf("%s: %s", e.Error.Field, e.Error.Message)
			}
			return errors.New(e.Error.Message)
		}
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	if c.output == "json" {
		c.out.Write(raw)
		return nil
	}
	if v != nil {
		if err := json.Unmarshal(raw, v); err != nil {
			return err
		}
	}
	show()
	return nil
}

func when(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func (c *cli) printRules(rules []admin.Status) {
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tUPSTREAM\tREPOSITORIES\tDESTINATION\tSCHEDULE\tENABLED\tNEXT RUN")
	for _, s := range rules {
		r := s.Rule
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", r.Name, r.Upstream.URL, strings.Join(r.Repositories, ","),
			r.Destination, r.Schedule, r.Enabled, when(s.NextRunAt))
	}
	tw.Flush()
}

func (c *cli) printStatus(s admin.Status) {
	c.printRules([]admin.Status{s})
	if len(s.Runs) > 0 {
		fmt.Fprintln(c.out)
		c.printRuns(s.Runs)
	}
}

func (c *cli) printRuns(runs []store.Run) {
	tw := tabwriter.NewWriter(c.out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tTRIGGER\tSTATE\tSTARTED\tFINISHED\tIMAGES\tTAGS\tBLOBS\tBYTES\tERRORS")
	for _, r := range runs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", r.ID, r.Trigger, r.State, when(r.StartedAt),
			when(r.FinishedAt), r.Images, r.Tags, r.Blobs, r.Bytes, len(r.Errors))
	}
	tw.Flush()
}
