package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gaia-registry/gaia/registry/gc"
	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/retention"
)

// registryCLI talks to gaia-registry's admin API (admin.token).
type registryCLI struct{ mirrorCLI }

func (m *registryCLI) base(c *cobra.Command) (string, error) {
	m.user, m.password = os.Getenv("GAIA_REGISTRY_USER"), os.Getenv("GAIA_REGISTRY_PASSWORD")
	return m.adminBase(c, "give the registry's --server URL",
		"GAIA_REGISTRY_URL", "http://127.0.0.1:5000", "GAIA_REGISTRY_ADMIN_TOKEN", strings.TrimRight(serverAdminPrefix, "/"))
}

// serverAdminPrefix is registry/server.AdminPrefix (not imported: gaiactl
// does not link the registry server).
const serverAdminPrefix = "/admin/v1/"

const registryLong = `--server and --token default to $GAIA_REGISTRY_URL (else
http://127.0.0.1:5000) and $GAIA_REGISTRY_ADMIN_TOKEN (the registry's
admin.token).`

func newRegistryCLI(g *globals) *registryCLI {
	return &registryCLI{mirrorCLI{globals: g, client: &http.Client{Timeout: 10 * time.Minute}}}
}

func gcCmd(g *globals) *cobra.Command {
	m := newRegistryCLI(g)
	cmd := group("gc", "garbage collection, through gaia-registry's admin API")
	cmd.Long = "Garbage collection's state, through gaia-registry's admin API. " + registryLong +
		"\nTo run a pass or a dry run: gaia-registry gc run --config FILE [--dry-run] on a registry host."
	cmd.AddCommand(&cobra.Command{
		Use: "status", Short: "queue depths, due entries, bytes reclaimed per IDC", Args: nargs(),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			var st gc.Status
			return m.do("GET", base+"/gc/status", nil, &st, func() {
				tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "QUEUE\tDEPTH\tDUE\tOLDEST DUE FOR\n")
				for _, q := range st.Queues {
					fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", q.Name, q.Depth, q.Due, q.Oldest)
				}
				fmt.Fprintf(tw, "\nIDC\tMANIFESTS\tBLOBS\tBYTES RECLAIMED\n")
				for _, t := range st.Totals {
					name := t.IDC
					if name == "" {
						name = "(cluster)"
					}
					fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", name, t.ManifestsDeleted, t.BlobsDeleted, t.BytesReclaimed)
				}
				tw.Flush()
			})
		},
	})
	return cmd
}

func retentionCmd(g *globals) *cobra.Command {
	m := newRegistryCLI(g)
	cmd := group("retention", "retention policies and tag immutability, through gaia-registry's admin API")
	cmd.Long = `Retention policies per repository pattern (keep the latest N tags, keep
by regex or semver range, delete older than, protect, immutable tags).
` + registryLong
	var file string
	var dry bool
	set := &cobra.Command{
		Use: "set NAME -f FILE", Short: "create or replace a policy (JSON, or YAML when named .yaml/.yml)", Args: nargs("NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			if file == "" {
				return usagef("-f FILE is needed")
			}
			base, err := m.base(c)
			if err != nil {
				return err
			}
			body, err := readRule(file)
			if err != nil {
				return err
			}
			var p retention.Policy
			return m.do("PUT", base+"/retention/"+url.PathEscape(a[0]), body, &p, func() { m.printPolicies([]retention.Policy{p}) })
		},
	}
	set.Flags().StringVarP(&file, "file", "f", "", "policy file")
	run := &cobra.Command{
		Use: "run NAME [--dry-run]", Short: "apply a policy now; --dry-run lists what would go and why", Args: nargs("NAME"),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			u := base + "/retention/" + url.PathEscape(a[0]) + "/run"
			if dry {
				u += "?dryrun=1"
			}
			var res retention.Result
			return m.do("POST", u, nil, &res, func() {
				tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "REPOSITORY\tTAG\tPUSHED\tACTION\tWHY\n")
				for _, d := range res.Decisions {
					action := "keep"
					if d.Delete {
						action = "delete"
						if res.DryRun {
							action = "would delete"
						}
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Repository, d.Tag, d.PushedAt.UTC().Format(time.RFC3339), action, d.Reason)
				}
				tw.Flush()
				fmt.Fprintf(m.stdout, "%d deleted, %d kept\n", res.Deleted, res.Kept)
			})
		},
	}
	run.Flags().BoolVar(&dry, "dry-run", false, "decide only")
	cmd.AddCommand(
		&cobra.Command{
			Use: "list", Short: "every policy", Args: nargs(),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				var ps []retention.Policy
				return m.do("GET", base+"/retention", nil, &ps, func() { m.printPolicies(ps) })
			},
		},
		&cobra.Command{
			Use: "show NAME", Short: "a policy and its last run", Args: nargs("NAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				var p retention.Policy
				return m.do("GET", base+"/retention/"+url.PathEscape(a[0]), nil, &p, func() {
					b, _ := json.MarshalIndent(p, "", "  ")
					fmt.Fprintln(m.stdout, string(b))
				})
			},
		},
		set,
		&cobra.Command{
			Use: "delete NAME", Short: "remove a policy", Args: nargs("NAME"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				return m.do("DELETE", base+"/retention/"+url.PathEscape(a[0]), nil, nil, func() {})
			},
		},
		run,
	)
	return cmd
}

func (m *registryCLI) printPolicies(ps []retention.Policy) {
	tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NAME\tREPOSITORIES\tKEEP LATEST\tPROTECT\tIMMUTABLE\tNEXT RUN\tLAST RUN\n")
	for _, p := range ps {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p.Name, p.Spec.Repositories, p.Spec.KeepLatest,
			dash(p.Spec.Protect), dash(p.Spec.Immutable), when(p.NextRunAt), when(p.LastRunAt))
	}
	tw.Flush()
}

func storageCmd(g *globals) *cobra.Command {
	m := newRegistryCLI(g)
	cmd := group("storage", "storage usage and namespace quotas, through gaia-registry's admin API")
	cmd.Long = "Storage usage per namespace and repository (deduplicated and logical) and namespace quotas. " + registryLong
	cmd.AddCommand(
		&cobra.Command{
			Use: "usage [PREFIX]", Short: "bytes per namespace and repository (names starting with PREFIX)", Args: cobra.MaximumNArgs(1),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				prefix := ""
				if len(a) == 1 {
					prefix = a[0]
				}
				var u struct {
					Namespaces   []metadata.Usage `json:"namespaces"`
					Repositories []metadata.Usage `json:"repositories"`
				}
				return m.do("GET", base+"/storage/usage?prefix="+url.QueryEscape(prefix), nil, &u, func() {
					tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintf(tw, "NAMESPACE\tDEDUPLICATED\tLOGICAL\tQUOTA\n")
					for _, n := range u.Namespaces {
						q := "-"
						if n.QuotaBytes != nil {
							q = strconv.FormatInt(*n.QuotaBytes, 10)
						}
						fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", n.Name, n.DedupBytes, n.LogicalBytes, q)
					}
					fmt.Fprintf(tw, "\nREPOSITORY\tDEDUPLICATED\tLOGICAL\t\n")
					for _, r := range u.Repositories {
						fmt.Fprintf(tw, "%s\t%d\t%d\t\n", r.Name, r.DedupBytes, r.LogicalBytes)
					}
					tw.Flush()
				})
			},
		},
		&cobra.Command{
			Use: "quota NAMESPACE BYTES|none", Short: "set or remove a namespace's quota (deduplicated bytes)", Args: nargs("NAMESPACE", "BYTES"),
			RunE: func(c *cobra.Command, a []string) error {
				base, err := m.base(c)
				if err != nil {
					return err
				}
				u := base + "/storage/quotas/" + url.PathEscape(a[0])
				if a[1] == "none" {
					return m.do("DELETE", u, nil, nil, func() {})
				}
				n, err := strconv.ParseInt(a[1], 10, 64)
				if err != nil || n < 0 {
					return usagef("BYTES: %q is not a number of bytes (or none)", a[1])
				}
				return m.do("PUT", u, fmt.Appendf(nil, `{"bytes":%d}`, n), nil, func() {})
			},
		},
	)
	return cmd
}
