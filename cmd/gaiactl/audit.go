package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gaia-registry/gaia/registry/audit"
)

// auditPage is GET /admin/v1/audit's answer.
type auditPage struct {
	Events []audit.Event `json:"events"`
	Next   string        `json:"next"`
}

func auditCmd(g *globals) *cobra.Command {
	m := newRegistryCLI(g)
	var f struct{ namespace, user, action, repository, since, until, cursor string }
	var limit int
	var all bool
	cmd := &cobra.Command{
		Use:   "audit [--namespace NS] [--user NAME] [--action ACTION] [--repository REPO] [--since T] [--until T] [--all]",
		Short: "the audit log (pushes, pulls, deletes, logins, membership changes), newest first",
		Long: `The audit log, newest first, through gaia-registry's admin API. --since and
--until take an RFC 3339 time (2026-01-02T15:04:05Z) or a duration before now
(24h). One page (--limit, default 100, at most 1000) unless --all follows
every page; otherwise the next page's --cursor is printed last. ` + registryLong,
		Args: nargs(),
		RunE: func(c *cobra.Command, a []string) error {
			base, err := m.base(c)
			if err != nil {
				return err
			}
			q := url.Values{}
			for k, v := range map[string]string{"namespace": f.namespace, "actor": f.user, "action": f.action,
				"repository": f.repository, "since": f.since, "until": f.until, "cursor": f.cursor} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if limit != 0 {
				q.Set("limit", strconv.Itoa(limit))
			}
			// Pages are decoded here and printed once, whatever -o says.
			jsonOut := m.output == "json"
			m.output = ""
			var res auditPage
			for {
				var p auditPage
				if err := m.do("GET", base+"/audit?"+q.Encode(), nil, &p, func() {}); err != nil {
					return err
				}
				res.Events = append(res.Events, p.Events...)
				res.Next = p.Next
				if !all || p.Next == "" {
					break
				}
				q.Set("cursor", p.Next)
			}
			if res.Events == nil {
				res.Events = []audit.Event{}
			}
			if jsonOut {
				b, _ := json.MarshalIndent(res, "", "  ")
				fmt.Fprintln(m.stdout, string(b))
				return nil
			}
			tw := tabwriter.NewWriter(m.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "TIME\tACTION\tACTOR\tKIND\tREPOSITORY\tREFERENCE\tREMOTE\tDETAIL\n")
			for _, e := range res.Events {
				detail := "-"
				if len(e.Detail) > 0 {
					b, _ := json.Marshal(e.Detail)
					detail = string(b)
				}
				repo := e.Repository
				if repo == "" {
					repo = e.Namespace
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.At.UTC().Format(time.RFC3339), e.Action, dash(e.Actor),
					e.ActorKind, dash(repo), dash(e.Reference), dash(e.Remote), detail)
			}
			tw.Flush()
			if res.Next != "" {
				fmt.Fprintf(m.stdout, "more: --cursor %s (or --all)\n", res.Next)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.namespace, "namespace", "", "only this namespace's events")
	fl.StringVar(&f.user, "user", "", "only this user's (or robot's) events")
	fl.StringVar(&f.action, "action", "", "only this action (push, pull, delete, login_failed, ...)")
	fl.StringVar(&f.repository, "repository", "", "only this repository's events")
	fl.StringVar(&f.since, "since", "", "events at or after: RFC 3339 time or a duration before now (24h)")
	fl.StringVar(&f.until, "until", "", "events before: RFC 3339 time or a duration before now")
	fl.IntVar(&limit, "limit", 0, "events per page (default 100, at most 1000)")
	fl.StringVar(&f.cursor, "cursor", "", "start at this page (a previous run's next)")
	fl.BoolVar(&all, "all", false, "follow every page")
	return cmd
}
