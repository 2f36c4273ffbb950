package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

// AppVersion is an item of GET /v1/apps/{name}/versions.
type AppVersion struct {
	Version   int64         `json:"version"`
	Spec      model.AppSpec `json:"spec"`
	CreatedAt time.Time     `json:"createdAt,omitzero"`
}

func appCmd(g *globals) *cobra.Command {
	s := newSched(g)
	cmd := group("app", "apps: submit, scale, update, roll back...")
	cmd.Long = `Apps on gaia-scheduler: a named group of identical instances in a pool.`
	var file, image string
	var limit int
	var version int64
	names := s.completeNames("/v1/apps", func(raw json.RawMessage) string {
		var a model.App
		json.Unmarshal(raw, &a)
		return a.Spec.Name
	})
	// action is a POST /v1/apps/NAME/VERB answered by the app.
	action := func(verb, short, done string, body func(a []string) (any, error), args ...string) *cobra.Command {
		return &cobra.Command{
			Use: verb + " NAME" + strings.Join(append([]string{""}, args...), " "), Short: short,
			Args: nargs(append([]string{"NAME"}, args...)...), ValidArgsFunction: names,
			RunE: func(c *cobra.Command, a []string) error {
				var b any
				if body != nil {
					var err error
					if b, err = body(a); err != nil {
						return err
					}
				}
				raw, err := s.call(c, "POST", "/v1/apps/"+pathEsc(a[0])+"/"+verb, b)
				if err != nil {
					return err
				}
				return s.showApp(raw, fmt.Sprintf(done, a[0]))
			},
		}
	}
	submit := &cobra.Command{
		Use: "submit -f APP.yaml", Short: "submit a new app", Args: nargs(),
		Example: "  gaiactl --cluster prod app submit -f configs/apps/web.yaml",
		RunE: func(c *cobra.Command, a []string) error {
			if file == "" {
				return usagef("-f FILE is needed")
			}
			spec, err := readSpec(file)
			if err != nil {
				return err
			}
			if image != "" {
				spec.Image = image
			}
			if err := checkSpec(file, spec); err != nil {
				return err
			}
			raw, err := s.call(c, "POST", "/v1/apps", spec)
			if err != nil {
				return err
			}
			return s.showApp(raw, "submitted "+spec.Name)
		},
	}
	update := &cobra.Command{
		Use: "update NAME [-f APP.yaml] [--image REF]", Short: "a new version: a new spec, a new image, or both", Args: nargs("NAME"),
		Long: `A new version of the app, rolled out by its update strategy (canary first
when spec.update.canary says so). -f gives the whole new spec; --image alone
keeps the current spec with a new image.`,
		ValidArgsFunction: names,
		RunE: func(c *cobra.Command, a []string) error {
			var spec *model.AppSpec
			switch {
			case file != "":
				var err error
				if spec, err = readSpec(file); err != nil {
					return err
				}
				if spec.Name == "" {
					spec.Name = a[0]
				} else if spec.Name != a[0] {
					return fmt.Errorf("%s: name: %q is not the app %q", file, spec.Name, a[0])
				}
			case image != "":
				var app model.App
				if _, err := s.get(c, "/v1/apps/"+pathEsc(a[0]), &app); err != nil {
					return err
				}
				spec = &app.Spec
			default:
				return usagef("-f FILE or --image REF is needed")
			}
			if image != "" {
				spec.Image = image
			}
			if err := checkSpec(file, spec); err != nil {
				return err
			}
			raw, err := s.call(c, "POST", "/v1/apps/"+pathEsc(a[0])+"/update", spec)
			if err != nil {
				return err
			}
			return s.showApp(raw, "updated "+a[0])
		},
	}
	for _, c := range []*cobra.Command{submit, update} {
		c.Flags().StringVarP(&file, "file", "f", "", "the app's spec, YAML or JSON (- for standard input)")
		c.Flags().StringVar(&image, "image", "", "image reference, instead of the spec's")
		c.MarkFlagFilename("file", "yaml", "yml", "json")
	}
	list := &cobra.Command{
		Use: "list", Short: "every app", Args: nargs(),
		RunE: func(c *cobra.Command, a []string) error {
			items, err := s.list(c, "/v1/apps", limit)
			if err != nil {
				return err
			}
			if s.output == "json" {
				return s.printJSON(items)
			}
			apps, err := decodeItems[model.App](items)
			if err != nil {
				return err
			}
			s.printApps(apps)
			return nil
		},
	}
	var all bool
	instances := &cobra.Command{
		Use: "instances NAME", Short: "the app's instances (--all: the stopped and failed ones too)", Args: nargs("NAME"), ValidArgsFunction: names,
		RunE: func(c *cobra.Command, a []string) error {
			path := "/v1/apps/" + pathEsc(a[0]) + "/instances"
			if all {
				path += "?all=true"
			}
			items, err := s.list(c, path, limit)
			if err != nil {
				return err
			}
			if s.output == "json" {
				return s.printJSON(items)
			}
			ins, err := decodeItems[model.Instance](items)
			if err != nil {
				return err
			}
			printInstances(s.stdout, ins)
			return nil
		},
	}
	versions := &cobra.Command{
		Use: "versions NAME", Short: "the app's versions, each spec change", Args: nargs("NAME"), ValidArgsFunction: names,
		RunE: func(c *cobra.Command, a []string) error {
			items, err := s.list(c, "/v1/apps/"+pathEsc(a[0])+"/versions", limit)
			if err != nil {
				return err
			}
			if s.output == "json" {
				return s.printJSON(items)
			}
			vs, err := decodeItems[AppVersion](items)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(s.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tIMAGE\tINSTANCES\tRESOURCES\tCREATED")
			for _, v := range vs {
				fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\n", v.Version, v.Spec.Image, v.Spec.Instances, vec(v.Spec.Resources), at(v.CreatedAt))
			}
			return tw.Flush()
		},
	}
	instances.Flags().BoolVar(&all, "all", false, "also the instances that stopped or failed")
	for _, c := range []*cobra.Command{list, instances, versions} {
		c.Flags().IntVar(&limit, "limit", 0, "at most this many (0: all, following the list's pages)")
	}
	rollback := action("rollback", "back to an earlier version (default: the one before)", "rolling back %s", func(a []string) (any, error) {
		if version < 0 {
			return nil, usagef("--version: %d is not a version", version)
		}
		if version == 0 {
			return map[string]any{}, nil
		}
		return map[string]any{"version": version}, nil
	})
	rollback.Flags().Int64Var(&version, "version", 0, "the version to return to (0: the one before the current)")
	cmd.AddCommand(
		submit, list,
		&cobra.Command{
			Use: "show NAME", Short: "an app and its spec", Args: nargs("NAME"), ValidArgsFunction: names,
			RunE: func(c *cobra.Command, a []string) error {
				raw, err := s.call(c, "GET", "/v1/apps/"+pathEsc(a[0]), nil)
				if err != nil {
					return err
				}
				return s.showApp(raw, "")
			},
		},
		action("scale", "change the number of instances", "scaling %s", func(a []string) (any, error) {
			n, err := strconv.Atoi(a[1])
			if err != nil || n < 0 {
				return nil, usagef("N: %q is not a number of instances", a[1])
			}
			return map[string]int{"instances": n}, nil
		}, "N"),
		action("restart", "replace every instance, maxParallel at a time", "restarting %s", nil),
		update,
		action("promote", "let a canaried version roll out to every instance", "promoted %s", nil),
		rollback,
		action("stop", "stop every instance; the app stays", "stopping %s", nil),
		action("start", "start a stopped app", "starting %s", nil),
		&cobra.Command{
			Use: "delete NAME", Short: "stop every instance and remove the app", Args: nargs("NAME"), ValidArgsFunction: names,
			RunE: func(c *cobra.Command, a []string) error {
				raw, err := s.call(c, "DELETE", "/v1/apps/"+pathEsc(a[0]), nil)
				if err != nil {
					return err
				}
				if s.output == "json" {
					return s.printJSON(raw)
				}
				fmt.Fprintf(s.stdout, "deleted %s\n", a[0])
				return nil
			},
		},
		instances, versions, logsCmd(s, names), execCmd(s, names),
		&cobra.Command{
			Use: "endpoints NAME", Short: "the app's instances as Consul lists them: address, port, named ports",
			Args: nargs("NAME"), ValidArgsFunction: names,
			RunE: func(c *cobra.Command, a []string) error {
				eps, err := appEndpoints(s.consul, a[0])
				if err != nil {
					return err
				}
				if s.output == "json" {
					return s.printJSON(eps)
				}
				tw := tabwriter.NewWriter(s.stdout, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "INSTANCE\tNODE\tADDRESS\tPORTS\tVERSION\tCANARY\tSTATUS")
				for _, e := range eps {
					canary := ""
					if e.Canary {
						canary = "canary"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Instance, dash(e.Node),
						net.JoinHostPort(e.Address, strconv.Itoa(e.Port)), dash(portList(e.Ports)), dash(e.Version), dash(canary), e.Status)
				}
				return tw.Flush()
			},
		},
	)
	return cmd
}

// showApp prints an app the API answered with (msg first, when given);
// an empty answer prints msg alone.
func (s *schedCLI) showApp(raw []byte, msg string) error {
	if s.output == "json" {
		return s.printJSON(raw)
	}
	if len(strings.TrimSpace(string(raw))) == 0 {
		if msg != "" {
			fmt.Fprintln(s.stdout, msg)
		}
		return nil
	}
	var app model.App
	if err := json.Unmarshal(raw, &app); err != nil {
		return err
	}
	if msg != "" {
		fmt.Fprintf(s.stdout, "%s: version %d, %s\n", msg, app.Version, app.State)
		return nil
	}
	fmt.Fprintf(s.stdout, "name:      %s\npool:      %s\nversion:   %d\nstate:     %s\nimage:     %s\ndigest:    %s\ncreated:   %s\nupdated:   %s\n",
		app.Spec.Name, app.Spec.Pool, app.Version, app.State, app.Spec.Image, dash(app.Digest), at(app.CreatedAt), at(app.UpdatedAt))
	if app.Spec.Update.Canary > 0 {
		fmt.Fprintf(s.stdout, "promoted:  %v\n", app.Promoted)
	}
	if rb := app.Rollback; rb != nil {
		how := "rolled back"
		if rb.Auto {
			how = "rolled back automatically"
		}
		fmt.Fprintf(s.stdout, "rollback:  %s from version %d to %d's spec at %s: %s\n", how, rb.From, rb.To, at(rb.At), rb.Reason)
	}
	if st := app.Status; st.Unplaced != "" {
		fmt.Fprintf(s.stdout, "waiting:   %s\n", st.Unplaced)
	}
	if st := app.Status; st.Failures > 0 {
		fmt.Fprintf(s.stdout, "failures:  %d, the last at %s: %s; replacements held until %s\n", st.Failures, at(st.FailedAt), st.LastFailure, at(st.HeldUntil))
	}
	spec, err := yaml.Marshal(app.Spec)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "spec:\n  %s\n", strings.ReplaceAll(strings.TrimRight(string(spec), "\n"), "\n", "\n  "))
	return nil
}

func (s *schedCLI) printApps(apps []model.App) {
	tw := tabwriter.NewWriter(s.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPOOL\tINSTANCES\tVERSION\tSTATE\tIMAGE\tRESOURCES\tUPDATED\tWAITING")
	for _, a := range apps {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", a.Spec.Name, a.Spec.Pool, a.Spec.Instances, a.Version,
			a.State, a.Spec.Image, vec(a.Spec.Resources), at(a.UpdatedAt), dash(a.Status.Unplaced))
	}
	tw.Flush()
}

func printInstances(w io.Writer, ins []model.Instance) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAPP\tVERSION\tNODE\tSTATE\tDESIRED\tRESTARTS\tPORTS\tUSAGE\tNET DROPS\tREASON")
	for _, i := range ins {
		var ports []string
		for name, p := range i.HostPorts {
			ports = append(ports, fmt.Sprintf("%s:%d", name, p))
		}
		sort.Strings(ports)
		reason := i.Reason
		if i.ExitCode != 0 {
			reason = strings.TrimSpace(fmt.Sprintf("%s (exit %d)", reason, i.ExitCode))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", i.ID, i.App, i.Version, dash(i.Node), i.State,
			dash(string(i.Desired)), i.Restarts, dash(strings.Join(ports, ",")), vec(i.Usage), netDrops(i.Net), dash(reason))
	}
	tw.Flush()
}

// netDrops is "out=N in=N retrans=N" for an instance whose node shapes
// its traffic, "-" otherwise.
func netDrops(n model.NetCounters) string {
	if n == (model.NetCounters{}) {
		return "-"
	}
	return fmt.Sprintf("out=%d in=%d retrans=%d", n.OutDrops, n.InDrops, n.Retransmits)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func at(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func vec(v resource.Vector) string {
	if v.IsZero() {
		return "-"
	}
	return v.String()
}
