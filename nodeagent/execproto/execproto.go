// Package execproto is the wire protocol of the node agent's exec endpoint
// (POST /v1/instances/{id}/exec) and its client, shared by the agent and
// gaiactl (which does not link the agent).
//
// Without stdin, the answer is the command's output as a streamed text
// body with its exit code in the Gaia-Exit-Code trailer. With stdin (an
// interactive command, a shell with a TTY), the client asks for a
// connection upgrade (Upgrade: gaia-exec); the agent answers 101 with the
// exec's id and the connection becomes the command's standard input (the
// client half-closes it at EOF) and output; the exit code is then read
// from GET .../exec/{exec}.
package execproto

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Protocol constants.
const (
	ExitCodeTrailer = "Gaia-Exit-Code" // a non-interactive exec's exit code
	Upgrade         = "gaia-exec"      // the Upgrade token of an interactive exec
	ExecIDHeader    = "Gaia-Exec-Id"   // the 101's exec id
)

// Request is the exec endpoint's body.
type Request struct {
	Cmd []string `json:"cmd"`
	// Stdin: the command reads standard input (needs the upgrade).
	Stdin bool `json:"stdin,omitempty"`
	// TTY: the command runs on a terminal (its output is raw, stdout and
	// stderr together); Height and Width are its first size.
	TTY    bool `json:"tty,omitempty"`
	Height uint `json:"height,omitempty"`
	Width  uint `json:"width,omitempty"`
}

// Status is GET .../exec/{exec}'s answer.
type Status struct {
	Running  bool `json:"running"`
	ExitCode int  `json:"exitCode"`
}

// Interactive runs req (Stdin set) through the agent's exec endpoint at
// url: stdin is copied to the command until EOF, its output to stdout,
// and its exit code returned. started, when set, gets the exec's status
// URL (for resizes: POST status URL + "/resize?h=H&w=W").
func Interactive(ctx context.Context, url, token string, req Request, stdin io.Reader, stdout io.Writer, started func(statusURL string)) (int, error) {
	req.Stdin = true
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	hreq.Header.Set("Authorization", "Bearer "+token)
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", Upgrade)
	host := hreq.URL.Host
	if hreq.URL.Port() == "" {
		host = net.JoinHostPort(host, "80")
	}
	conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", host)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := hreq.Write(conn); err != nil {
		return 0, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, hreq)
	if err != nil {
		return 0, fmt.Errorf("POST %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return 0, fmt.Errorf("POST %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	statusURL := url + "/" + resp.Header.Get(ExecIDHeader)
	if started != nil {
		started(statusURL)
	}
	go func() {
		io.Copy(conn, stdin)
		// EOF on the command's stdin; not on a terminal, where the
		// session would end with it (a terminal's EOF is a ^D typed).
		if cw, ok := conn.(interface{ CloseWrite() error }); ok && !req.TTY {
			cw.CloseWrite()
		}
	}()
	if _, err := io.Copy(stdout, br); err != nil && ctx.Err() == nil && !isClosed(err) {
		return 0, err
	}
	// The output ended; dockerd may take a moment to mark the exec done.
	for i := 0; ; i++ {
		st, err := status(ctx, statusURL, token)
		if err != nil {
			return 0, err
		}
		if !st.Running {
			return st.ExitCode, nil
		}
		if i == 50 {
			return 0, fmt.Errorf("the command's output ended but it still runs")
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func isClosed(err error) bool {
	return strings.Contains(err.Error(), "use of closed network connection")
}

func status(ctx context.Context, url, token string) (Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Status{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Status{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return Status{}, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	var st Status
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// Resize tells the exec at statusURL its terminal's new size.
func Resize(ctx context.Context, statusURL, token string, height, width uint) error {
	u := statusURL + "/resize?h=" + strconv.FormatUint(uint64(height), 10) + "&w=" + strconv.FormatUint(uint64(width), 10)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("POST %s: %s", u, resp.Status)
	}
	return nil
}
