package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// schedCLI talks to gaia-scheduler's user API (scheduler/DESIGN.md).
type schedCLI struct {
	*globals
	client *http.Client
	base   string // resolved on first use
}

func newSched(g *globals) *schedCLI {
	return &schedCLI{globals: g, client: &http.Client{Timeout: 60 * time.Second}}
}

// resolve finds the scheduler: --server, else --cluster through Consul,
// else $GAIA_SCHEDULER_URL, else $GAIA_CLUSTER through Consul.
func (s *schedCLI) resolve(c *cobra.Command) error {
	if s.base != "" {
		return nil
	}
	if s.token == "" {
		s.token = os.Getenv("GAIA_TOKEN")
	}
	f := c.Flags()
	if f.Changed("server") && f.Changed("cluster") {
		return usagef("give --cluster NAME or --server URL, not both")
	}
	switch {
	case s.server != "":
		s.base = s.server
	case f.Changed("cluster"):
		if s.cluster == "" {
			return usagef("--cluster: a name is needed")
		}
		u, err := resolveCluster(s.consul, s.cluster)
		if err != nil {
			return err
		}
		s.base = u
	case os.Getenv("GAIA_SCHEDULER_URL") != "":
		s.base = os.Getenv("GAIA_SCHEDULER_URL")
	case s.cluster != "":
		u, err := resolveCluster(s.consul, s.cluster)
		if err != nil {
			return err
		}
		s.base = u
	default:
		return usagef("which scheduler? give --cluster NAME (or $GAIA_CLUSTER) or --server URL (or $GAIA_SCHEDULER_URL)")
	}
	s.base = strings.TrimRight(s.base, "/")
	return nil
}

// apiError is the API's error body: {"error": {code, field, message}}.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e *apiError) Error() string {
	msg := e.Message
	if e.Field != "" {
		msg = e.Field + ": " + msg
	}
	if e.Code != "" {
		msg += " (" + e.Code + ")"
	}
	return msg
}

// call sends body (JSON-encoded unless nil or []byte) and returns the
// answer's body; an error answer becomes *apiError, naming the field.
func (s *schedCLI) call(c *cobra.Command, method, path string, body any) ([]byte, error) {
	if err := s.resolve(c); err != nil {
		return nil, err
	}
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(c.Context(), method, s.base+path, rd)
	if err != nil {
		return nil, err
	}
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error *apiError `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != nil && (e.Error.Message != "" || e.Error.Code != "") {
			e.Error.Status = resp.StatusCode
			if e.Error.Message == "" {
				e.Error.Message = http.StatusText(resp.StatusCode)
			}
			return nil, e.Error
		}
		return nil, fmt.Errorf("%s %s: %s", method, s.base+path, resp.Status)
	}
	return raw, nil
}

// get decodes a GET's answer into v.
func (s *schedCLI) get(c *cobra.Command, path string, v any) ([]byte, error) {
	raw, err := s.call(c, "GET", path, nil)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return raw, nil
}

// list follows the list's next cursors until it ends or limit (> 0)
// items were read, and returns the items' raw JSON.
func (s *schedCLI) list(c *cobra.Command, path string, limit int) ([]json.RawMessage, error) {
	var items []json.RawMessage
	after := ""
	for {
		q := url.Values{}
		if limit > 0 {
			q.Set("limit", strconv.Itoa(limit-len(items)))
		}
		if after != "" {
			q.Set("after", after)
		}
		p := path
		if len(q) > 0 {
			sep := "?"
			if strings.Contains(p, "?") {
				sep = "&"
			}
			p += sep + q.Encode()
		}
		var page struct {
			Items []json.RawMessage `json:"items"`
			Next  string            `json:"next"`
		}
		if _, err := s.get(c, p, &page); err != nil {
			return nil, err
		}
		items = append(items, page.Items...)
		if limit > 0 && len(items) >= limit {
			return items[:limit], nil
		}
		if page.Next == "" || page.Next == after || len(page.Items) == 0 {
			return items, nil
		}
		after = page.Next
	}
}

// decodeItems decodes raw list items into []T.
func decodeItems[T any](items []json.RawMessage) ([]T, error) {
	out := make([]T, len(items))
	for i, it := range items {
		if err := json.Unmarshal(it, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// printJSON prints v (or raw JSON) indented.
func (s *schedCLI) printJSON(v any) error {
	var raw []byte
	switch b := v.(type) {
	case []byte:
		raw = b
	case []json.RawMessage:
		if b == nil {
			b = []json.RawMessage{}
		}
		var err error
		if raw, err = json.Marshal(b); err != nil {
			return err
		}
	default:
		var err error
		if raw, err = json.Marshal(v); err != nil {
			return err
		}
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		s.stdout.Write(raw)
		return nil
	}
	buf.WriteByte('\n')
	_, err := s.stdout.Write(buf.Bytes())
	return err
}

func pathEsc(s string) string { return url.PathEscape(s) }

// completeNames completes a NAME argument from a list endpoint: the first
// page, quietly nothing when the scheduler cannot be reached.
func (s *schedCLI) completeNames(path string, name func(json.RawMessage) string) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		s.client.Timeout = 5 * time.Second
		var page struct {
			Items []json.RawMessage `json:"items"`
		}
		if _, err := s.get(c, path+"?limit=500", &page); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, it := range page.Items {
			if n := name(it); strings.HasPrefix(n, prefix) {
				out = append(out, n)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}
