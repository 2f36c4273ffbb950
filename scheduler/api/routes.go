package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/store"
)

func (h *handler) listPools(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	after, limit, err := paging(r)
	if err != nil {
		return nil, err
	}
	return h.o.Store.Pools(r.Context(), after, limit)
}

func (h *handler) getPool(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	p, err := h.o.Store.Pool(r.Context(), r.PathValue("name"))
	if err != nil {
		return nil, notFound(err, "pool %q", r.PathValue("name"))
	}
	return p, nil
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, store.ErrNotFound) {
		return NotFound("no "+format, args...)
	}
	return err
}

func (h *handler) listApps(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	after, limit, err := paging(r)
	if err != nil {
		return nil, err
	}
	return h.o.Store.Apps(r.Context(), after, limit)
}

func (h *handler) getApp(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	a, err := h.o.Store.App(r.Context(), r.PathValue("name"))
	if err != nil {
		return nil, notFound(err, "app %q", r.PathValue("name"))
	}
	return a, nil
}

func (h *handler) listInstances(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	after, limit, err := paging(r)
	if err != nil {
		return nil, err
	}
	name := r.PathValue("name")
	if _, err := h.o.Store.App(r.Context(), name); err != nil {
		return nil, notFound(err, "app %q", name)
	}
	return h.o.Store.Instances(r.Context(), name, r.URL.Query().Get("all") == "true", after, limit)
}

func (h *handler) listVersions(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	after, limit, err := paging(r)
	if err != nil {
		return nil, err
	}
	name := r.PathValue("name")
	if _, err := h.o.Store.App(r.Context(), name); err != nil {
		return nil, notFound(err, "app %q", name)
	}
	return h.o.Store.Versions(r.Context(), name, after, limit)
}

func (h *handler) getInstance(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	in, err := h.o.Store.Instance(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, notFound(err, "instance %q", r.PathValue("id"))
	}
	return in, nil
}

func (h *handler) listNodes(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	after, limit, err := paging(r)
	if err != nil {
		return nil, err
	}
	return h.o.Store.Nodes(r.Context(), after, limit)
}

func (h *handler) getNode(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	n, err := h.o.Store.Node(r.Context(), r.PathValue("name"))
	if err != nil {
		return nil, notFound(err, "node %q", r.PathValue("name"))
	}
	return n, nil
}

func (h *handler) createPool(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	if err := adminOnly(c); err != nil {
		return nil, err
	}
	var p model.Pool
	if err := decode(r, &p, "pool"); err != nil {
		return nil, err
	}
	if err := fieldError(p.Validate()); err != nil {
		return nil, err
	}
	return h.o.Backend.PutPool(r.Context(), p, true)
}

func (h *handler) putPool(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	if err := adminOnly(c); err != nil {
		return nil, err
	}
	var p model.Pool
	if err := decode(r, &p, "pool"); err != nil {
		return nil, err
	}
	if p.Name == "" {
		p.Name = r.PathValue("name")
	}
	if p.Name != r.PathValue("name") {
		return nil, Invalid("name", "%q differs from the pool in the path, %q", p.Name, r.PathValue("name"))
	}
	if err := fieldError(p.Validate()); err != nil {
		return nil, err
	}
	return h.o.Backend.PutPool(r.Context(), p, false)
}

func (h *handler) deletePool(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	if err := adminOnly(c); err != nil {
		return nil, err
	}
	if err := h.o.Backend.DeletePool(r.Context(), r.PathValue("name")); err != nil {
		return nil, err
	}
	return noContent{http.StatusNoContent}, nil
}

func (h *handler) submitApp(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	var spec model.AppSpec
	if err := decode(r, &spec, ""); err != nil {
		return nil, err
	}
	if err := fieldError(spec.Validate()); err != nil {
		return nil, err
	}
	if err := h.mayUse(r.Context(), c, spec.Pool); err != nil {
		return nil, err
	}
	return h.o.Backend.SubmitApp(r.Context(), spec)
}

// appOf checks c may manage the app and returns it.
func (h *handler) appOf(r *http.Request, c *caller) (*model.App, error) {
	name := r.PathValue("name")
	a, err := h.o.Store.App(r.Context(), name)
	if err != nil {
		return nil, notFound(err, "app %q", name)
	}
	return a, h.mayUse(r.Context(), c, a.Spec.Pool)
}

func (h *handler) deleteApp(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	if _, err := h.appOf(r, c); err != nil {
		return nil, err
	}
	if err := h.o.Backend.DeleteApp(r.Context(), r.PathValue("name")); err != nil {
		return nil, err
	}
	return noContent{http.StatusNoContent}, nil
}

func (h *handler) appAction(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	name, action := r.PathValue("name"), r.PathValue("action")
	switch action {
	case "scale", "restart", "update", "promote", "rollback", "stop", "start":
	default:
		return nil, NotFound("no app action %q (scale, restart, update, promote, rollback, stop, start)", action)
	}
	if _, err := h.appOf(r, c); err != nil {
		return nil, err
	}
	switch action {
	case "scale":
		var req ScaleRequest
		if err := decode(r, &req, ""); err != nil {
			return nil, err
		}
		if req.Instances == nil {
			return nil, Invalid("instances", "required")
		}
		if *req.Instances < 0 {
			return nil, Invalid("instances", "must not be negative, got %d", *req.Instances)
		}
		return h.o.Backend.ScaleApp(r.Context(), name, *req.Instances)
	case "update":
		var spec model.AppSpec
		if err := decode(r, &spec, ""); err != nil {
			return nil, err
		}
		if spec.Name == "" {
			spec.Name = name
		}
		if spec.Name != name {
			return nil, Invalid("name", "%q differs from the app in the path, %q (an app cannot be renamed)", spec.Name, name)
		}
		if err := fieldError(spec.Validate()); err != nil {
			return nil, err
		}
		if err := h.mayUse(r.Context(), c, spec.Pool); err != nil {
			return nil, err
		}
		return h.o.Backend.UpdateApp(r.Context(), name, spec)
	case "rollback":
		var req RollbackRequest
		if r.ContentLength != 0 {
			if err := decode(r, &req, ""); err != nil {
				return nil, err
			}
		}
		return h.o.Backend.RollbackApp(r.Context(), name, req.Version)
	default:
		return h.o.Backend.AppAction(r.Context(), name, action)
	}
}

func (h *handler) stopInstance(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	in, err := h.o.Store.Instance(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, notFound(err, "instance %q", r.PathValue("id"))
	}
	if a, err := h.o.Store.App(r.Context(), in.App); err == nil {
		if err := h.mayUse(r.Context(), c, a.Spec.Pool); err != nil {
			return nil, err
		}
	} else if err := adminOnly(c); err != nil {
		return nil, err
	}
	if err := h.o.Backend.StopInstance(r.Context(), in.ID); err != nil {
		return nil, err
	}
	return noContent{http.StatusAccepted}, nil
}

func (h *handler) drainNode(w http.ResponseWriter, r *http.Request, c *caller) (any, error) {
	if err := adminOnly(c); err != nil {
		return nil, err
	}
	return h.o.Backend.DrainNode(r.Context(), r.PathValue("name"))
}

func (h *handler) register(w http.ResponseWriter, r *http.Request) (any, error) {
	var req RegisterRequest
	if err := decode(r, &req, ""); err != nil {
		return nil, err
	}
	n := model.Node{Name: req.Name, IDC: req.IDC, Labels: req.Labels, Address: req.Address,
		Capacity: req.Capacity, Reserved: req.Reserved, State: model.NodeReady}
	if err := fieldError(n.Validate()); err != nil {
		return nil, err
	}
	return h.o.Backend.RegisterNode(r.Context(), n)
}

func (h *handler) desired(w http.ResponseWriter, r *http.Request) (any, error) {
	q := r.URL.Query()
	var wait time.Duration
	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return nil, Invalid("wait", "%q is not a duration such as 30s", s)
		}
		wait = min(d, h.o.MaxWait)
	}
	body, changed, err := h.o.Backend.Desired(r.Context(), r.PathValue("name"), q.Get("version"), wait)
	if err != nil {
		return nil, err
	}
	if !changed {
		return noContent{http.StatusNotModified}, nil
	}
	return body, nil
}

func (h *handler) report(w http.ResponseWriter, r *http.Request) (any, error) {
	var rep Report
	if err := decode(r, &rep, ""); err != nil {
		return nil, err
	}
	for i, in := range rep.Instances {
		if in.ID == "" {
			return nil, Invalid("instances["+strconv.Itoa(i)+"].id", "required")
		}
		switch in.State {
		case model.Pending, model.Assigned, model.Pulling, model.Starting, model.Running, model.Healthy,
			model.Stopping, model.Stopped, model.Failed, model.Lost:
		default:
			return nil, Invalid("instances["+strconv.Itoa(i)+"].state", "%q is not an instance state", in.State)
		}
	}
	if err := h.o.Backend.Report(r.Context(), r.PathValue("name"), &rep); err != nil {
		return nil, err
	}
	return noContent{http.StatusNoContent}, nil
}
