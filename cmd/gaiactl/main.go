// Command gaiactl is Gaia's command-line client: mirror rules through
// gaia-mirror's admin API, and apps, pools, nodes and instances through
// gaia-scheduler's API. docs/cli.md is its manual.
//
//	gaiactl [global flags] mirror list | show | create | update | delete | run | history
//	gaiactl [global flags] app submit | list | show | scale | restart | update | promote | rollback | stop | start | delete | instances | versions | endpoints | logs | exec
//	gaiactl [global flags] pool list | show | create | update | delete | load
//	gaiactl [global flags] node list | show | drain
//	gaiactl [global flags] instance stop ID
//	gaiactl [global flags] gc status
//	gaiactl [global flags] retention list | show | set | delete | run [--dry-run]
//	gaiactl [global flags] storage usage [PREFIX] | quota NAMESPACE BYTES|none
//	gaiactl completion bash|zsh|fish|powershell
//
// Global flags: --cluster NAME, --server URL, --token TOKEN, -o table|json,
// --consul ADDR. Exit status: 0 on success and for help, 1 when the server
// or the network refuses (the message names the field at fault), 2 for
// usage errors.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a mistake in the command line: exit status 2, with the
// command's usage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// exitError is a remote command's non-zero exit (gaiactl app exec):
// gaiactl exits with its code, printing nothing more.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// execute runs gaiactl with args and returns the exit status.
func execute(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	var xe *exitError
	if errors.As(err, &xe) {
		return xe.code
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "%s: %v\n%s\nrun '%s --help' for more\n", cmd.CommandPath(), err, usageLine(cmd), cmd.CommandPath())
		return 2
	}
	fmt.Fprintf(stderr, "gaiactl: %v\n", err)
	return 1
}

// globals are the flags every command has.
type globals struct {
	cluster, server, token, output, consul string
	stdout, stderr                         io.Writer
}

// usageLine is the first line of a command's usage.
func usageLine(cmd *cobra.Command) string {
	if cmd.HasAvailableSubCommands() {
		return "usage: " + cmd.CommandPath() + " COMMAND"
	}
	return "usage: " + cmd.UseLine()
}

const usageTemplate = `usage: {{if .HasAvailableSubCommands}}{{.CommandPath}} COMMAND{{else}}{{.UseLine}}{{end}}{{if gt (len .Aliases) 0}}
aliases: {{.NameAndAliases}}{{end}}{{if .HasExample}}

examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}

commands:{{range .Commands}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

global flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableSubCommands}}

"{{.CommandPath}} COMMAND --help" tells more about a command.{{end}}
`

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	cobra.EnableCommandSorting = false // commands in the order they are added: the usual flow
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "gaiactl",
		Short: "Gaia's command-line client",
		Long: `gaiactl manages Gaia: mirror rules (gaia-mirror's admin API) and the
scheduler's apps, pools, nodes and instances (gaia-scheduler's API).

A scheduler is found by its cluster's name (--cluster, through Consul) or
its address (--server). Exit status: 0 on success, 1 when the server or the
network refuses, 2 for a usage error.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE:          groupRun,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.output != "table" && g.output != "json" {
				return usagef("-o: %q is not table or json", g.output)
			}
			return nil
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetUsageTemplate(usageTemplate)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.cluster, "cluster", os.Getenv("GAIA_CLUSTER"), "the scheduler's cluster, found through Consul (default $GAIA_CLUSTER)")
	pf.StringVar(&g.server, "server", "", "the API's base URL (default $GAIA_SCHEDULER_URL, or $GAIA_ADMIN_URL or http://127.0.0.1:5100 for mirror)")
	pf.StringVar(&g.token, "token", "", "bearer token (default $GAIA_TOKEN, or $GAIA_ADMIN_TOKEN for mirror)")
	pf.StringVarP(&g.output, "output", "o", "table", "output: table or json")
	pf.StringVar(&g.consul, "consul", os.Getenv("CONSUL_HTTP_ADDR"), "Consul's HTTP address, for --cluster (default $CONSUL_HTTP_ADDR, else 127.0.0.1:8500)")
	root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	root.AddCommand(mirrorCmd(g), appCmd(g), poolCmd(g), nodeCmd(g), instanceCmd(g), gcCmd(g), retentionCmd(g), storageCmd(g),
		userCmd(g), namespaceCmd(g), memberCmd(g), robotCmd(g), auditCmd(g))
	return root
}

// groupRun is the RunE of a command that only groups others: a missing or
// unknown command is a usage error (exit 2), not help.
func groupRun(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return usagef("a command is needed")
	}
	return usagef("unknown command %q", args[0])
}

func group(use, short string) *cobra.Command {
	return &cobra.Command{Use: use, Short: short, Args: cobra.ArbitraryArgs, RunE: groupRun}
}

// nargs checks the number of positional arguments: a usage error names
// what is missing or extra.
func nargs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usagef("%s is needed", names[len(args)])
		case len(args) > len(names):
			return usagef("unexpected argument %q", args[len(names)])
		}
		return nil
	}
}
