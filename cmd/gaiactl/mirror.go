package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/gaia-registry/gaia/mirror-sync/admin"
	"github.com/gaia-registry/gaia/mirror-sync/store"
)

// mirrorCLI talks to gaia-mirror's admin API.
type mirrorCLI struct {
	*globals
	client *http.Client
	// user and password, when set, replace the token (Basic auth: the
	// registry's built-in users).
	user, password string
}

func mirrorCmd(g *globals) *cobra.Command {
	m := &mirrorCLI{globals: g, client: &http.Client{Timeout: 30 * time.Second}}
	cmd := group("mirror", "mirror rules, through gaia-mirror's admin API")
	cmd.Long = `Mirror rules, through gaia-mirror's admin API. --server and --token default
to $GAIA_ADMIN_URL (else http://127.0.0.1:5100) and $GAIA_ADMIN_TOKEN.
Errors from the server name the rule field at fault.`
	var file string
	var check bool
	var limit int
	fileFlags := func(c *cobra.Command) *cobra.Command {
		c.Flags().StringVarP(&file, "file", "f", "", "rule file (JSON, or YAML when named .yaml or .yml)")
		c.Flags().BoolVar(&check, "check", false, "the server asks the upstream's /v2/ first")
		c.MarkFlagFilename("file", "json", "yaml", "yml")
		return c
	}
	needFile := func(c *cobra.Command) error {
		if file == "" {
			return usagef("-f FILE is needed")
		}
		return nil
	}
	q := func() string {
		if check {
			return "?check=1"
		}
		return ""
	}
	history := &cobra.Command{
		Use: "history NAME", Short: "past runs, newest first", Args: nargs("NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			var runs []store.Run
			return m.do("GET", fmt.Sprintf("%s/%s/runs?limit=%d", base, a[0], limit), nil, &runs, func() { m.printRuns(runs) })
		},
	}
	history.Flags().IntVar(&limit, "limit", 20, "runs to show")
	cmd.AddCommand(
		&cobra.Command{
			Use: "list", Short: "every rule", Args: nargs(),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				var rules []admin.Status
				return m.do("GET", base, nil, &rules, func() { m.printRules(rules) })
			},
		},
		&cobra.Command{
			Use: "show NAME", Aliases: []string{"status"}, Short: "a rule and its latest runs", Args: nargs("NAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				var s admin.Status
				return m.do("GET", base+"/"+a[0], nil, &s, func() { m.printStatus(s) })
			},
		},
		fileFlags(&cobra.Command{
			Use: "create -f FILE [--check]", Short: "a new rule", Args: nargs(),
			RunE: func(c *cobra.Command, a []string) error {
				if err := needFile(c); err != nil {
					return err
				}
				base, err := m.base(c)
				if err != nil {
					return err
				}
				body, err := readRule(file)
				if err != nil {
					return err
				}
				var s admin.Status
				return m.do("POST", base+q(), body, &s, func() { m.printStatus(s) })
			},
		}),
		fileFlags(&cobra.Command{
			Use: "update NAME -f FILE [--check]", Short: "replace a rule (a password left out is kept)", Args: nargs("NAME"),
			RunE: func(c *cobra.Command, a []string) error {
				if err := needFile(c); err != nil {
					return err
				}
				base, err := m.base(c)
				if err != nil {
					return err
				}
				body, err := readRule(file)
				if err != nil {
					return err
				}
				var s admin.Status
				return m.do("PUT", base+"/"+a[0]+q(), body, &s, func() { m.printStatus(s) })
			},
		}),
		&cobra.Command{
			Use: "delete NAME", Short: "delete a rule", Args: nargs("NAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				return m.do("DELETE", base+"/"+a[0], nil, nil, func() { fmt.Fprintf(m.stdout, "deleted %s\n", a[0]) })
			},
		},
		&cobra.Command{
			Use: "run NAME", Short: "run now", Args: nargs("NAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				var r store.Run
				return m.do("POST", base+"/"+a[0]+"/run", nil, &r, func() { m.printRuns([]store.Run{r}) })
			},
		},
		history,
	)
	return cmd
}

// base is the rules' URL. gaia-mirror is not registered in Consul, so
// --cluster does not apply here.
func (m *mirrorCLI) base(c *cobra.Command) (string, error) {
	return m.adminBase(c, "gaia-mirror is not found through Consul; give --server URL",
		"GAIA_ADMIN_URL", "http://127.0.0.1:5100", "GAIA_ADMIN_TOKEN", admin.Prefix)
}

// adminBase is the URL of an admin API that is not found through Consul:
// --server, else $urlEnv, else def, followed by prefix; the token defaults
// to $tokenEnv. --cluster is a usage error naming why (noCluster).
func (m *mirrorCLI) adminBase(c *cobra.Command, noCluster, urlEnv, def, tokenEnv, prefix string) (string, error) {
	if c.Flags().Changed("cluster") {
		return "", usagef("--cluster does not apply: %s", noCluster)
	}
	server := m.server
	if server == "" {
		server = os.Getenv(urlEnv)
	}
	if server == "" {
		server = def
	}
	if m.token == "" {
		m.token = os.Getenv(tokenEnv)
	}
	return strings.TrimRight(server, "/") + prefix, nil
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
func (m *mirrorCLI) do(method, url string, body []byte, v any, show func()) error {
	raw, err := m.call(method, url, body)
	if err != nil {
		return err
	}
	if m.output == "json" {
		m.stdout.Write(raw)
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

// call makes an admin API request and returns the answer's body, or its
// error (naming the field, when the API does).
func (m *mirrorCLI) call(method, url string, body []byte) ([]byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if m.user != "" && m.token == "" {
		req.SetBasicAuth(m.user, m.password)
	} else {
		req.Header.Set("Authorization", "Bearer "+m.token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		var e struct {
			Error struct{ Field, Message string }
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			if e.Error.Field != "" {
				return nil, fmt.Errorf("%s: %s", e.Error.Field, e.Error.Message)
			}
			return nil, errors.New(e.Error.Message)
		}
		return nil, fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	return raw, err
}

func when(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func (m *mirrorCLI) printRules(rules []admin.Status) {
	tw := tabwriter.NewWriter(m.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tUPSTREAM\tREPOSITORIES\tDESTINATION\tSCHEDULE\tENABLED\tNEXT RUN")
	for _, s := range rules {
		r := s.Rule
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", r.Name, r.Upstream.URL, strings.Join(r.Repositories, ","),
			r.Destination, r.Schedule, r.Enabled, when(s.NextRunAt))
	}
	tw.Flush()
}

func (m *mirrorCLI) printStatus(s admin.Status) {
	m.printRules([]admin.Status{s})
	if len(s.Runs) > 0 {
		fmt.Fprintln(m.stdout)
		m.printRuns(s.Runs)
	}
}

func (m *mirrorCLI) printRuns(runs []store.Run) {
	tw := tabwriter.NewWriter(m.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tTRIGGER\tSTATE\tSTARTED\tFINISHED\tIMAGES\tTAGS\tBLOBS\tBYTES\tERRORS")
	for _, r := range runs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", r.ID, r.Trigger, r.State, when(r.StartedAt),
			when(r.FinishedAt), r.Images, r.Tags, r.Blobs, r.Bytes, len(r.Errors))
	}
	tw.Flush()
}
