package nodeagent

import (
	"crypto/subtle"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"
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
type ExecRequest struct {
	Cmd []string `json:"cmd"`
}

// ExitCodeTrailer is the trailer carrying an exec's exit code.
const ExitCodeTrailer = "Gaia-Exit-Code"

// ExecHandler serves POST /v1/instances/{id}/exec ({"cmd": [...]}, the
// node token as bearer token): the command is run in the instance's
// running container on this node without a TTY nor standard input, its
// output (stdout and stderr) streamed as text, its exit code in the
// Gaia-Exit-Code trailer.
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
		c, ok := a.instanceContainer(w, r, r.PathValue("id"))
		if !ok {
			return
		}
		if c.State == nil || !c.State.Running {
			http.Error(w, "the instance's container is not running", http.StatusConflict)
			return
		}
		ctx := r.Context()
		ex, err := a.o.Docker.ContainerExecCreate(ctx, c.ID, container.ExecOptions{Cmd: req.Cmd, AttachStdout: true, AttachStderr: true})
		if err != nil {
			http.Error(w, "creating the exec: "+err.Error(), http.StatusBadGateway)
			return
		}
		att, err := a.o.Docker.ContainerExecAttach(ctx, ex.ID, container.ExecAttachOptions{})
		if err != nil {
			http.Error(w, "attaching to the exec: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer att.Close()
		a.o.Log.Info("exec", "instance", r.PathValue("id"), "cmd", req.Cmd, "remote", r.RemoteAddr)
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
