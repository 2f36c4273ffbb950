package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"

	"github.com/spf13/cobra"

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
				if in.Node == "" {
					return fmt.Errorf("instance %s is on no node (%s)", in.ID, in.State)
				}
				if _, ok := addrs[in.Node]; ok {
					continue
				}
				var n model.Node
				if _, err := s.get(c, "/v1/nodes/"+pathEsc(in.Node), &n); err != nil {
					return err
				}
				if n.Address == "" {
					return fmt.Errorf("node %s registered no address", in.Node)
				}
				addrs[in.Node] = n.Address
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
