package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/gaia-registry/gaia/scheduler/allocfile"
	"github.com/gaia-registry/gaia/scheduler/model"
)

func poolCmd(g *globals) *cobra.Command {
	s := newSched(g)
	cmd := group("pool", "resource pools: list, create, load an allocation file...")
	cmd.Long = `Resource pools on gaia-scheduler: a tree under root ("root.ads.search"), each
with a weight, min and max resources, a policy and preemption settings.`
	var file string
	var limit int
	var dryRun bool
	names := s.completeNames("/v1/pools", func(raw json.RawMessage) string {
		var p model.Pool
		json.Unmarshal(raw, &p)
		return p.Name
	})
	list := &cobra.Command{
		Use: "list", Short: "every pool", Args: nargs(),
		RunE: func(c *cobra.Command, a []string) error {
			items, err := s.list(c, "/v1/pools", limit)
			if err != nil {
				return err
			}
			if s.output == "json" {
				return s.printJSON(items)
			}
			pools, err := decodeItems[model.Pool](items)
			if err != nil {
				return err
			}
			s.printPools(pools)
			return nil
		},
	}
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (0: all, following the list's pages)")
	// write sends each pool of -f FILE.
	write := func(verb, short string, send func(c *cobra.Command, p model.Pool) ([]byte, error)) *cobra.Command {
		c := &cobra.Command{
			Use: verb + " -f POOLS.yaml", Short: short, Args: nargs(),
			RunE: func(c *cobra.Command, a []string) error {
				if file == "" {
					return usagef("-f FILE is needed")
				}
				pools, err := readPools(file)
				if err != nil {
					return err
				}
				return s.eachPool(c, pools, func(p model.Pool) (string, []byte, error) {
					raw, err := send(c, p)
					return verb + "d", raw, err
				})
			},
		}
		c.Flags().StringVarP(&file, "file", "f", "", "a pool, a list of pools, or pools: [...] (YAML or JSON; - for standard input)")
		c.MarkFlagFilename("file", "yaml", "yml", "json")
		return c
	}
	load := &cobra.Command{
		Use: "load -f ALLOCATION.xml", Short: "create or update the pools of a YARN-style allocation file", Args: nargs(),
		Long: `Reads an allocation file in the vocabulary of YARN's fair scheduler (see
docs/cli.md) and creates the pools the scheduler does not have and updates
those it has, parents first. Pools the file does not name are left alone.
Ignored YARN elements are listed on standard error. --dry-run prints the
pools without sending them.`,
		RunE: func(c *cobra.Command, a []string) error {
			if file == "" {
				return usagef("-f FILE is needed")
			}
			pools, warnings, err := allocfile.Load(file)
			if err != nil {
				return err
			}
			for _, w := range warnings {
				fmt.Fprintf(s.stderr, "gaiactl: %s: %s\n", file, w)
			}
			if dryRun {
				if s.output == "json" {
					return s.printJSON(pools)
				}
				s.printPools(pools)
				return nil
			}
			items, err := s.list(c, "/v1/pools", 0)
			if err != nil {
				return err
			}
			have := map[string]bool{model.RootPool: true}
			existing, err := decodeItems[model.Pool](items)
			if err != nil {
				return err
			}
			for _, p := range existing {
				have[p.Name] = true
			}
			return s.eachPool(c, pools, func(p model.Pool) (string, []byte, error) {
				if have[p.Name] {
					raw, err := s.call(c, "PUT", "/v1/pools/"+pathEsc(p.Name), p)
					return "updated", raw, err
				}
				raw, err := s.call(c, "POST", "/v1/pools", p)
				return "created", raw, err
			})
		},
	}
	load.Flags().StringVarP(&file, "file", "f", "", "the allocation file")
	load.Flags().BoolVar(&dryRun, "dry-run", false, "print the pools, send nothing")
	load.MarkFlagFilename("file", "xml")
	cmd.AddCommand(
		list,
		&cobra.Command{
			Use: "show NAME", Short: "a pool", Args: nargs("NAME"), ValidArgsFunction: names,
			RunE: func(c *cobra.Command, a []string) error {
				raw, err := s.call(c, "GET", "/v1/pools/"+pathEsc(a[0]), nil)
				if err != nil {
					return err
				}
				if s.output == "json" {
					return s.printJSON(raw)
				}
				return printYAML[model.Pool](s, raw)
			},
		},
		write("create", "create pools", func(c *cobra.Command, p model.Pool) ([]byte, error) {
			return s.call(c, "POST", "/v1/pools", p)
		}),
		write("update", "replace pools (by name)", func(c *cobra.Command, p model.Pool) ([]byte, error) {
			return s.call(c, "PUT", "/v1/pools/"+pathEsc(p.Name), p)
		}),
		&cobra.Command{
			Use: "delete NAME", Short: "delete an empty pool", Args: nargs("NAME"), ValidArgsFunction: names,
			RunE: func(c *cobra.Command, a []string) error {
				raw, err := s.call(c, "DELETE", "/v1/pools/"+pathEsc(a[0]), nil)
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
		load,
	)
	return cmd
}

// eachPool sends pools in order and stops at the first refusal, naming
// the pool (and the field the server named).
func (s *schedCLI) eachPool(c *cobra.Command, pools []model.Pool, send func(model.Pool) (string, []byte, error)) error {
	var answers []json.RawMessage
	for _, p := range pools {
		did, raw, err := send(p)
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) {
				return fmt.Errorf("pool %s: %w", p.Name, err)
			}
			return err
		}
		if s.output == "json" {
			if len(strings.TrimSpace(string(raw))) > 0 {
				answers = append(answers, raw)
			}
			continue
		}
		fmt.Fprintf(s.stdout, "%s %s\n", did, p.Name)
	}
	if s.output == "json" {
		return s.printJSON(answers)
	}
	return nil
}

func (s *schedCLI) printPools(pools []model.Pool) {
	tw := tabwriter.NewWriter(s.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tWEIGHT\tPOLICY\tMIN\tMAX\tMAX INSTANCES\tPREEMPTIBLE\tSUBMITTERS")
	for _, p := range pools {
		maxi := "-"
		if p.MaxInstances > 0 {
			maxi = strconv.Itoa(p.MaxInstances)
		}
		fmt.Fprintf(tw, "%s\t%g\t%s\t%s\t%s\t%s\t%v\t%s\n", p.Name, p.EffectiveWeight(), p.EffectivePolicy(), vec(p.Min), vec(p.Max),
			maxi, p.PreemptableFrom(), dash(strings.Join(p.Submitters, ",")))
	}
	tw.Flush()
}

// printYAML decodes raw as T and prints it as YAML.
func printYAML[T any](s *schedCLI, raw []byte) error {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	out, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	_, err = s.stdout.Write(out)
	return err
}
