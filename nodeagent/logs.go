package nodeagent

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/gaia-registry/gaia/nodeagent/execproto"
)

// LogsHandler serves GET /v1/instances/{id}/logs: the output (stdout and
// stderr, demultiplexed, as text) of the instance's container on this
// node, ?tail=N last lines (default all), ?follow=1 to keep streaming
// until the container stops or the client goes. The caller must show the
// node token (Authorization: Bearer TOKEN, the token the agent gives the
// scheduler); only a container with this node's label is served.
func (a *Agent) LogsHandler(token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !authorized(w, r, token) {
			return
		}
		id := r.PathValue("id")
		q := r.URL.Query()
		tail := "all"
		if t := q.Get("tail"); t != "" {
			if n, err := strconv.Atoi(t); err != nil || n < 0 {
				http.Error(w, "tail: not a number of lines: "+t, http.StatusBadRequest)
				return
			}
			tail = t
		}
		follow := q.Get("follow") == "1" || q.Get("follow") == "true"
		ctx := r.Context()
		c, ok := a.instanceContainer(w, r, id)
		if !ok {
			return
		}
		rc, err := a.o.Docker.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true, Follow: follow, Tail: tail})
		if err != nil {
			http.Error(w, "reading the container's logs: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		fw := &flushWriter{w: w}
		if f, ok := w.(http.Flusher); ok {
			fw.f = f
			f.Flush()
		}
		if c.Config.Tty {
			io.Copy(fw, rc)
			return
		}
		stdcopy.StdCopy(fw, fw, rc)
	})
}

// flushWriter flushes after each write, so a followed log streams.
type flushWriter struct {
	w io.Writer
	f http.Flusher
}

func (fw *flushWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	if fw.f != nil {
		fw.f.Flush()
	}
	return n, err
}

// authorized: the request shows the node token as its bearer token; else
// 401 is answered.
func authorized(w http.ResponseWriter, r *http.Request, token string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="gaia-nodeagent"`)
		http.Error(w, "the node token is needed", http.StatusUnauthorized)
		return false
	}
	return true
}

// instanceContainer is the instance's container on this node (404 or 502
// answered when there is none or dockerd fails).
func (a *Agent) instanceContainer(w http.ResponseWriter, r *http.Request, id string) (container.InspectResponse, bool) {
	c, err := a.o.Docker.ContainerInspect(r.Context(), ContainerName(id))
	if err != nil || c.Config == nil || c.Config.Labels[LabelNode] != a.o.Node {
		if err != nil && !errdefs.IsNotFound(err) {
			http.Error(w, "inspecting the container: "+err.Error(), http.StatusBadGateway)
			return c, false
		}
		http.Error(w, "no container of instance "+id+" on node "+a.o.Node, http.StatusNotFound)
		return c, false
	}
	return c, true
}

// ExecRequest is POST /v1/instances/{id}/exec's body.
type ExecRequest = execproto.Request

// ExitCodeTrailer is the trailer carrying an exec's exit code.
const ExitCodeTrailer = execproto.ExitCodeTrailer

// ExecHandler serves POST /v1/instances/{id}/exec ({"cmd": [...]}, the
// node token as bearer token): the command is run in the instance's
// running container on this node. Without stdin its output (stdout and
// stderr) is streamed as text, its exit code in the Gaia-Exit-Code
// trailer. With stdin (and a TTY when asked) the connection is upgraded
// (execproto) and carries its input and output both ways.
func (a *Agent) ExecHandler(token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !authorized(w, r, token) {
			return
		}
		var req ExecRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Cmd) == 0 {
			http.Error(w, `the body is {"cmd": ["command", "arg", ...]}`, http.StatusBadRequest)
			return
		}
		if req.Stdin && !strings.EqualFold(r.Header.Get("Upgrade"), execproto.Upgrade) {
			http.Error(w, "an exec with stdin needs Connection: Upgrade, Upgrade: "+execproto.Upgrade, http.StatusBadRequest)
			return
		}
		c, ok := a.instanceContainer(w, r, r.PathValue("id"))
		if !ok {
			return
		}
		if c.State == nil || !c.State.Running {
			http.Error(w, "the instance's container is not running", http.StatusConflict)
			return
		}
		ctx := r.Context()
		opts := container.ExecOptions{Cmd: req.Cmd, AttachStdout: true, AttachStderr: true, AttachStdin: req.Stdin, Tty: req.TTY}
		if req.TTY && req.Height > 0 && req.Width > 0 {
			opts.ConsoleSize = &[2]uint{req.Height, req.Width}
		}
		ex, err := a.o.Docker.ContainerExecCreate(ctx, c.ID, opts)
		if err != nil {
			http.Error(w, "creating the exec: "+err.Error(), http.StatusBadGateway)
			return
		}
		att, err := a.o.Docker.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{Tty: req.TTY, ConsoleSize: opts.ConsoleSize})
		if err != nil {
			http.Error(w, "attaching to the exec: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer att.Close()
		a.o.Log.Info("exec", "instance", r.PathValue("id"), "cmd", req.Cmd, "stdin", req.Stdin, "tty", req.TTY, "remote", r.RemoteAddr)
		if opts.ConsoleSize != nil {
			// Also after the start: dockerd before API 1.42 ignores ConsoleSize.
			a.o.Docker.ContainerExecResize(ctx, ex.ID, container.ResizeOptions{Height: req.Height, Width: req.Width})
		}
		if req.Stdin {
			a.execInteractive(w, att, ex.ID, req.TTY)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Trailer", ExitCodeTrailer)
		w.WriteHeader(http.StatusOK)
		fw := &flushWriter{w: w}
		if f, ok := w.(http.Flusher); ok {
			fw.f = f
			f.Flush()
		}
		stdcopy.StdCopy(fw, fw, att.Reader)
		// The output ended; dockerd may take a moment to mark it done.
		for range 50 {
			in, err := a.o.Docker.ContainerExecInspect(ctx, ex.ID)
			if err != nil {
				return
			}
			if !in.Running {
				w.Header().Set(ExitCodeTrailer, strconv.Itoa(in.ExitCode))
				return
			}
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return
			}
		}
	})
}

// execInteractive upgrades the client's connection and joins it to the
// exec's: the client's bytes go to the command's stdin (closed when the
// client half-closes), the command's output (raw with a TTY, stdout and
// stderr together without) to the client, until the command ends.
func (a *Agent) execInteractive(w http.ResponseWriter, att types.HijackedResponse, execID string, tty bool) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "this server cannot upgrade connections", http.StatusInternalServerError)
		return
	}
	conn, rw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	conn.SetDeadline(time.Time{}) // the server's read and write timeouts do not apply to a session
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %s\r\n\r\n",
		execproto.Upgrade, execproto.ExecIDHeader, execID)
	if err := rw.Flush(); err != nil {
		return
	}
	go func() {
		io.Copy(att.Conn, rw.Reader) // what the client already sent, then the rest
		if tty {
			// The client went (a terminal's client never half-closes):
			// hang the session up, as a terminal closing would, or an idle
			// shell would hold it and its process for good.
			att.Close()
			a.hangUp(execID)
			return
		}
		att.CloseWrite() // EOF on the command's stdin
	}()
	if tty {
		io.Copy(conn, att.Reader)
	} else {
		stdcopy.StdCopy(conn, conn, att.Reader)
	}
}

// hangUp sends an exec's process SIGHUP, then SIGKILL if it is still
// there 2 s later: dockerd has no call to end an exec, and keeps a TTY
// exec's process when its attachment closes.
func (a *Agent) hangUp(execID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	in, err := a.o.Docker.ContainerExecInspect(ctx, execID)
	if err != nil || !in.Running || in.Pid <= 0 {
		return
	}
	syscall.Kill(in.Pid, syscall.SIGHUP)
	select {
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
		return
	}
	if in, err := a.o.Docker.ContainerExecInspect(ctx, execID); err == nil && in.Running && in.Pid > 0 {
		syscall.Kill(in.Pid, syscall.SIGKILL)
	}
}

// ExecStatusHandler serves GET /v1/instances/{id}/exec/{exec}: whether
// an exec of the instance's container still runs, and its exit code.
func (a *Agent) ExecStatusHandler(token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		execID, ok := a.instanceExec(w, r, token)
		if !ok {
			return
		}
		in, err := a.o.Docker.ContainerExecInspect(r.Context(), execID)
		if err != nil {
			http.Error(w, "inspecting the exec: "+err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(execproto.Status{Running: in.Running, ExitCode: in.ExitCode})
	})
}

// ExecResizeHandler serves POST /v1/instances/{id}/exec/{exec}/resize?h=&w=:
// the exec's terminal size.
func (a *Agent) ExecResizeHandler(token string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		execID, ok := a.instanceExec(w, r, token)
		if !ok {
			return
		}
		h, herr := strconv.ParseUint(r.URL.Query().Get("h"), 10, 16)
		wd, werr := strconv.ParseUint(r.URL.Query().Get("w"), 10, 16)
		if herr != nil || werr != nil || h == 0 || wd == 0 {
			http.Error(w, "h and w: the terminal's rows and columns", http.StatusBadRequest)
			return
		}
		if err := a.o.Docker.ContainerExecResize(r.Context(), execID, container.ResizeOptions{Height: uint(h), Width: uint(wd)}); err != nil {
			http.Error(w, "resizing the exec: "+err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// instanceExec checks the token and that the path's exec runs in the
// path's instance's container on this node.
func (a *Agent) instanceExec(w http.ResponseWriter, r *http.Request, token string) (string, bool) {
	if !authorized(w, r, token) {
		return "", false
	}
	c, ok := a.instanceContainer(w, r, r.PathValue("id"))
	if !ok {
		return "", false
	}
	execID := r.PathValue("exec")
	in, err := a.o.Docker.ContainerExecInspect(r.Context(), execID)
	if err != nil || in.ContainerID != c.ID {
		http.Error(w, "no exec "+execID+" in instance "+r.PathValue("id"), http.StatusNotFound)
		return "", false
	}
	return execID, true
}
