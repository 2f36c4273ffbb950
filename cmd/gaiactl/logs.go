package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/gaia-registry/gaia/nodeagent/execproto"
	"github.com/gaia-registry/gaia/scheduler/model"
)

// logsCmd is gaiactl app logs: an instance's output streamed from the
// node agent running it (found through the scheduler: the instance's node,
// the node's address), authenticated with the node token.
func logsCmd(s *schedCLI, names cobra.CompletionFunc) *cobra.Command {
	var instance, nodeToken string
	var follow bool
	var tail, agentPort int
	cmd := &cobra.Command{
		Use:   "logs NAME [--instance ID] [--follow] [--tail N]",
		Short: "instances' output, from the node agents (every instance on a node, lines prefixed, without --instance)",
		Args:  nargs("NAME"), ValidArgsFunction: names,
		RunE: func(c *cobra.Command, a []string) error {
			if nodeToken == "" {
				nodeToken = os.Getenv("GAIA_NODE_TOKEN")
			}
			if nodeToken == "" {
				return usagef("the node agents want the node token: --node-token or $GAIA_NODE_TOKEN")
			}
			var ins []model.Instance
			if instance != "" {
				var in model.Instance
				if _, err := s.get(c, "/v1/instances/"+pathEsc(instance), &in); err != nil {
					return err
				}
				if in.App != a[0] {
					return usagef("--instance %s is an instance of %s, not %s", instance, in.App, a[0])
				}
				ins = append(ins, in)
			} else {
				items, err := s.list(c, "/v1/apps/"+pathEsc(a[0])+"/instances", 0)
				if err != nil {
					return err
				}
				all, err := decodeItems[model.Instance](items)
				if err != nil {
					return err
				}
				for _, in := range all {
					if in.Node != "" && in.State != model.Stopped && in.State != model.Lost {
						ins = append(ins, in)
					}
				}
				if len(ins) == 0 {
					return fmt.Errorf("%s has no instance on a node", a[0])
				}
			}
			q := url.Values{}
			if tail >= 0 {
				q.Set("tail", strconv.Itoa(tail))
			}
			if follow {
				q.Set("follow", "1")
			}
			addrs := map[string]string{}
			for _, in := range ins {
				if _, ok := addrs[in.Node]; ok {
					continue
				}
				addr, err := nodeAddress(c, s, in)
				if err != nil {
					return err
				}
				addrs[in.Node] = addr
			}
			var mu sync.Mutex
			var wg sync.WaitGroup
			errs := make([]error, len(ins))
			for i, in := range ins {
				u := "http://" + net.JoinHostPort(addrs[in.Node], strconv.Itoa(agentPort)) +
					"/v1/instances/" + pathEsc(in.ID) + "/logs?" + q.Encode()
				prefix := ""
				if len(ins) > 1 {
					prefix = in.ID + " | "
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = streamLogs(c, u, nodeToken, prefix, &mu, s.stdout)
				}()
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&instance, "instance", "", "one instance (default: every instance of the app on a node)")
	f.BoolVar(&follow, "follow", false, "keep streaming new output")
	f.IntVar(&tail, "tail", -1, "the last N lines (-1: all)")
	f.IntVar(&agentPort, "agent-port", 5300, "the node agents' HTTP port (their http.addr) on the nodes' addresses")
	f.StringVar(&nodeToken, "node-token", "", "the node token the agents check (default $GAIA_NODE_TOKEN)")
	return cmd
}

// streamLogs copies one instance's log stream to out, line by line (each
// with prefix), under mu so that streams do not interleave mid-line.
func streamLogs(c *cobra.Command, u, token, prefix string, mu *sync.Mutex, out io.Writer) error {
	req, err := http.NewRequestWithContext(c.Context(), "GET", u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("GET %s: %s: %s", u, resp.Status, bytesTrim(b))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mu.Lock()
		fmt.Fprintf(out, "%s%s\n", prefix, sc.Text())
		mu.Unlock()
	}
	return sc.Err()
}

func bytesTrim(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return string(b)
}

// nodeAddress is the address of the node the instance is on, from the
// scheduler's node record.
func nodeAddress(c *cobra.Command, s *schedCLI, in model.Instance) (string, error) {
	if in.Node == "" {
		return "", fmt.Errorf("instance %s is on no node (%s)", in.ID, in.State)
	}
	var n model.Node
	if _, err := s.get(c, "/v1/nodes/"+pathEsc(in.Node), &n); err != nil {
		return "", err
	}
	if n.Address == "" {
		return "", fmt.Errorf("node %s registered no address", in.Node)
	}
	return n.Address, nil
}

// execCmd is gaiactl app exec: a command run in an instance's container by
// its node agent, output streamed back, gaiactl exiting with its code.
// With -i its standard input goes to the command; with -t it runs on a
// terminal (an interactive shell); both are on when gaiactl's own stdin
// is a terminal.
func execCmd(s *schedCLI, names cobra.CompletionFunc) *cobra.Command {
	var instance, nodeToken string
	var agentPort int
	var stdin, tty bool
	cmd := &cobra.Command{
		Use:   "exec NAME --instance ID [-i] [-t] -- CMD [ARG...]",
		Short: "run a command in an instance's container (a shell on a terminal when stdin is one); exits with its code",
		Args: func(c *cobra.Command, a []string) error {
			if len(a) < 2 || c.ArgsLenAtDash() != 1 {
				return usagef("want NAME, then -- and the command")
			}
			return nil
		},
		ValidArgsFunction: names,
		RunE: func(c *cobra.Command, a []string) error {
			if instance == "" {
				return usagef("--instance ID is needed")
			}
			if nodeToken == "" {
				nodeToken = os.Getenv("GAIA_NODE_TOKEN")
			}
			if nodeToken == "" {
				return usagef("the node agents want the node token: --node-token or $GAIA_NODE_TOKEN")
			}
			fd := int(os.Stdin.Fd())
			if isTerm := term.IsTerminal(fd); isTerm {
				if !c.Flags().Changed("stdin") {
					stdin = true
				}
				if !c.Flags().Changed("tty") {
					tty = true
				}
			} else if tty {
				return usagef("-t: the standard input is not a terminal")
			}
			if tty && !stdin {
				return usagef("-t needs -i (a terminal with no input)")
			}
			var in model.Instance
			if _, err := s.get(c, "/v1/instances/"+pathEsc(instance), &in); err != nil {
				return err
			}
			if in.App != a[0] {
				return usagef("--instance %s is an instance of %s, not %s", instance, in.App, a[0])
			}
			addr, err := nodeAddress(c, s, in)
			if err != nil {
				return err
			}
			u := "http://" + net.JoinHostPort(addr, strconv.Itoa(agentPort)) + "/v1/instances/" + pathEsc(in.ID) + "/exec"
			var code int
			if stdin {
				code, err = execInteractive(c.Context(), u, nodeToken, a[1:], tty, s.stdout)
			} else {
				code, err = execOutput(c.Context(), u, nodeToken, a[1:], s.stdout)
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&instance, "instance", "", "the instance (required)")
	f.IntVar(&agentPort, "agent-port", 5300, "the node agents' HTTP port (their http.addr) on the nodes' addresses")
	f.StringVar(&nodeToken, "node-token", "", "the node token the agents check (default $GAIA_NODE_TOKEN)")
	f.BoolVarP(&stdin, "stdin", "i", false, "send the standard input to the command (default: when it is a terminal)")
	f.BoolVarP(&tty, "tty", "t", false, "run the command on a terminal (default: when the standard input is one)")
	return cmd
}

// execOutput runs cmd without input: its output streamed, its exit code
// from the trailer.
func execOutput(ctx context.Context, u, token string, cmd []string, stdout io.Writer) (int, error) {
	body, _ := json.Marshal(execproto.Request{Cmd: cmd})
	req, err := http.NewRequestWithContext(ctx, "POST", u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return 0, fmt.Errorf("POST %s: %s: %s", u, resp.Status, bytesTrim(b))
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		return 0, err
	}
	code, err := strconv.Atoi(resp.Trailer.Get(execproto.ExitCodeTrailer))
	if err != nil {
		return 0, fmt.Errorf("the agent sent no exit code (the command may still run)")
	}
	return code, nil
}

// execInteractive runs cmd with gaiactl's standard input, on a terminal
// when tty (the local terminal in raw mode meanwhile, its size followed).
func execInteractive(ctx context.Context, u, token string, cmd []string, tty bool, stdout io.Writer) (int, error) {
	req := execproto.Request{Cmd: cmd, TTY: tty}
	fd := int(os.Stdin.Fd())
	var started func(string)
	if tty {
		if w, h, err := term.GetSize(fd); err == nil {
			req.Width, req.Height = uint(w), uint(h)
		}
		old, err := term.MakeRaw(fd)
		if err != nil {
			return 0, fmt.Errorf("the terminal: %w", err)
		}
		defer term.Restore(fd, old)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		started = func(statusURL string) {
			go func() {
				for {
					select {
					case <-winch:
						if w, h, err := term.GetSize(fd); err == nil {
							execproto.Resize(ctx, statusURL, token, uint(h), uint(w))
						}
					case <-ctx.Done():
						return
					}
				}
			}()
		}
	}
	return execproto.Interactive(ctx, u, token, req, os.Stdin, stdout, started)
}
