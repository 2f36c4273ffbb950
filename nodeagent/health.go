package nodeagent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/gaia-registry/gaia/scheduler/model"
)

func healthInterval(h *model.Health) time.Duration {
	if h.Interval > 0 {
		return h.Interval.D()
	}
	return 10 * time.Second
}

func healthTimeout(h *model.Health) time.Duration {
	if h.Timeout > 0 {
		return h.Timeout.D()
	}
	return 2 * time.Second
}

// checkHealth runs the instance's health check once: tcp connects to the
// named port's host port on host, http GETs path there (2xx and 3xx
// pass), exec runs the command in the container (exit 0 passes).
func checkHealth(ctx context.Context, docker client.APIClient, containerID string, d *DesiredInstance, host string) error {
	h := d.Health
	ctx, cancel := context.WithTimeout(ctx, healthTimeout(h))
	defer cancel()
	addr := net.JoinHostPort(host, strconv.Itoa(hostPortOf(d, h.Port)))
	switch h.Type {
	case model.HealthTCP:
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	case model.HealthHTTP:
		path := h.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		if err != nil {
			return err
		}
		resp, err := healthClient.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return nil
	case model.HealthExec:
		ex, err := docker.ContainerExecCreate(ctx, containerID, container.ExecOptions{
			Cmd: h.Command, AttachStdout: true, AttachStderr: true})
		if err != nil {
			return err
		}
		att, err := docker.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
		if err != nil {
			return err
		}
		var out bytes.Buffer
		stdcopy.StdCopy(&out, &out, io.LimitReader(att.Reader, 4<<10))
		att.Close()
		in, err := docker.ContainerExecInspect(ctx, ex.ID)
		if err != nil {
			return err
		}
		if in.Running {
			return fmt.Errorf("%v: still running after %s", h.Command, healthTimeout(h))
		}
		if in.ExitCode != 0 {
			return fmt.Errorf("%v exited with code %d: %s", h.Command, in.ExitCode, strings.TrimSpace(out.String()))
		}
		return nil
	}
	return fmt.Errorf("unknown health check type %q", h.Type)
}

var healthClient = &http.Client{
	Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}
