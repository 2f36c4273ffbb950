package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/gaia-registry/gaia/scheduler/model"
)

func nodeCmd(g *globals) *cobra.Command {
	s := newSched(g)
	cmd := group("node", "nodes: list, show, drain")
	var limit int
	names := s.completeNames("/v1/nodes", func(raw json.RawMessage) string {
		var n model.Node
		json.Unmarshal(raw, &n)
		return n.Name
	})
	list := &cobra.Command{
		Use: "list", Short: "every node", Args: nargs(),
		RunE: func(c *cobra.Command, a []string) error {
			items, err := s.list(c, "/v1/nodes", limit)
			if err != nil {
				return err
			}
			if s.output == "json" {
				return s.printJSON(items)
			}
			nodes, err := decodeItems[model.Node](items)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(s.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tIDC\tSTATE\tADDRESS\tALLOCATABLE\tUSAGE\tLABELS\tHEARTBEAT")
			for _, n := range nodes {
				var labels []string
				for k, v := range n.Labels {
					labels = append(labels, k+"="+v)
				}
				sort.Strings(labels)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, dash(n.IDC), n.State, dash(n.Address),
					vec(n.Allocatable()), vec(n.Usage), dash(strings.Join(labels, ",")), at(n.LastHeartbeat))
			}
			return tw.Flush()
		},
	}
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (0: all, following the list's pages)")
	cmd.AddCommand(
		list,
		&cobra.Command{
			Use: "show NAME", Short: "a node", Args: nargs("NAME"), ValidArgsFunction: names,
			RunE: func(c *cobra.Command, a []string) error {
				raw, err := s.call(c, "GET", "/v1/nodes/"+pathEsc(a[0]), nil)
				if err != nil {
					return err
				}
				if s.output == "json" {
					return s.printJSON(raw)
				}
				return printYAML[model.Node](s, raw)
			},
		},
		&cobra.Command{
			Use: "drain NAME", Short: "move every instance off the node, each app's maxParallel at a time", Args: nargs("NAME"), ValidArgsFunction: names,
			RunE: func(c *cobra.Command, a []string) error {
				raw, err := s.call(c, "POST", "/v1/nodes/"+pathEsc(a[0])+"/drain", nil)
				if err != nil {
					return err
				}
				if s.output == "json" {
					return s.printJSON(raw)
				}
				fmt.Fprintf(s.stdout, "draining %s\n", a[0])
				return nil
			},
		},
	)
	return cmd
}

func instanceCmd(g *globals) *cobra.Command {
	s := newSched(g)
	cmd := group("instance", "instances: stop one")
	cmd.AddCommand(&cobra.Command{
		Use: "stop ID", Short: "stop one instance (its app's scheduler replaces it unless the app is scaled down)", Args: nargs("ID"),
		RunE: func(c *cobra.Command, a []string) error {
			raw, err := s.call(c, "POST", "/v1/instances/"+pathEsc(a[0])+"/stop", nil)
			if err != nil {
				return err
			}
			if s.output == "json" {
				return s.printJSON(raw)
			}
			fmt.Fprintf(s.stdout, "stopping %s\n", a[0])
			return nil
		},
	})
	return cmd
}
