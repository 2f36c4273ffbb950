package nodeagent

import (
	"crypto/subtle"
	"io"
	"net/http"
	"strconv"
	"strings"

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
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gaia-nodeagent"`)
			http.Error(w, "the node token is needed", http.StatusUnauthorized)
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
		c, err := a.o.Docker.ContainerInspect(ctx, ContainerName(id))
		if err != nil || c.Config == nil || c.Config.Labels[LabelNode] != a.o.Node {
			if err != nil && !errdefs.IsNotFound(err) {
				http.Error(w, "inspecting the container: "+err.Error(), http.StatusBadGateway)
				return
			}
			http.Error(w, "no container of instance "+id+" on node "+a.o.Node, http.StatusNotFound)
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
