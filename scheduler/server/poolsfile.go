package server

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/gaia-registry/gaia/scheduler/allocfile"
	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/model"
	"github.com/gaia-registry/gaia/scheduler/store"
)

// The allocation file (pools.file). Every scheduler process watches it;
// the leader applies it at the start of its term and after each change.
// The rule between the file and the API: the pools the file names are the
// file's, and the API refuses to change or delete them (409 naming the
// pool and the file); every other pool is the API's. A pool that leaves
// the file (seen by this process while it ran) is deleted when it is
// empty, else kept, logged, and from then on the API's.

// filePools is the file's last good set, in the file's order (parents
// first), and the names it dropped that the leader has not dealt with.
type filePools struct {
	pools   []model.Pool
	names   map[string]bool
	removed map[string]bool
}

func (s *Server) watchPoolsFile() error {
	if s.cfg.Pools.File == "" {
		return nil
	}
	w, err := allocfile.NewWatcher(s.cfg.Pools.File, s.onPoolsFile)
	if err != nil {
		return fmt.Errorf("pools.file: %w", err)
	}
	s.poolsWatcher = w
	pools, warnings := w.Pools()
	for _, warn := range warnings {
		s.log.Warn("pools.file", "file", s.cfg.Pools.File, "warning", warn)
	}
	s.metrics.poolsFile.WithLabelValues("ok").Inc()
	s.setFilePools(pools)
	return nil
}

func (s *Server) setFilePools(pools []model.Pool) {
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	names := make(map[string]bool, len(pools))
	for _, p := range pools {
		names[p.Name] = true
	}
	removed := map[string]bool{}
	if s.file != nil {
		removed = s.file.removed
		for name := range s.file.names {
			if !names[name] {
				removed[name] = true
			}
		}
	}
	for name := range names {
		delete(removed, name)
	}
	s.file = &filePools{pools: pools, names: names, removed: removed}
}

// onPoolsFile is the watcher's callback: a new good set is applied at once
// by the leader; a bad one is logged and counted, and the last good set
// stays in force.
func (s *Server) onPoolsFile(pools []model.Pool, warnings []string, err error) {
	if err != nil {
		s.metrics.poolsFile.WithLabelValues("error").Inc()
		s.log.Error("pools.file: not loaded, the last good set of pools stays in force", "file", s.cfg.Pools.File, "err", err)
		return
	}
	for _, warn := range warnings {
		s.log.Warn("pools.file", "file", s.cfg.Pools.File, "warning", warn)
	}
	s.metrics.poolsFile.WithLabelValues("ok").Inc()
	s.setFilePools(pools)
	s.log.Info("pools.file: loaded", "file", s.cfg.Pools.File, "pools", len(pools))
	if s.cur.Load() != nil {
		if err := s.locked(s.applyFilePools); err != nil {
			s.log.Error("pools.file: applying", "err", err)
		}
	}
}

// fileOwns refuses an API change to a pool the allocation file manages.
func (s *Server) fileOwns(name string) error {
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	if s.file != nil && s.file.names[name] {
		return api.Conflict("name", "pool %q is managed by the allocation file %s (pools.file): change it there", name, s.cfg.Pools.File)
	}
	return nil
}

// applyFilePools brings the leader's pools in line with the file, in one
// fenced write. Called with ls.mu held.
func (s *Server) applyFilePools(ls *leaderState) error {
	s.fileMu.Lock()
	if s.file == nil {
		s.fileMu.Unlock()
		return nil
	}
	pools := s.file.pools
	removed := make([]string, 0, len(s.file.removed))
	for name := range s.file.removed {
		removed = append(removed, name)
	}
	s.fileMu.Unlock()

	holdsApps := func(pool string) string {
		for _, a := range ls.apps {
			if a.Spec.Pool == pool {
				return a.Name()
			}
		}
		return ""
	}
	var b store.Batch
	known := map[string]bool{}
	for name := range ls.pools {
		known[name] = true
	}
	for _, p := range pools {
		if parent := p.Parent(); parent != "" {
			if !known[parent] {
				s.log.Error("pools.file: pool skipped, its parent does not exist", "pool", p.Name, "parent", parent)
				continue
			}
			if app := holdsApps(parent); app != "" && ls.pools[p.Name] == nil {
				s.log.Error("pools.file: pool skipped, its parent holds apps (apps live in leaf pools)", "pool", p.Name, "parent", parent, "app", app)
				continue
			}
		}
		known[p.Name] = true
		if cur := ls.pools[p.Name]; cur == nil || !reflect.DeepEqual(*cur, p) {
			b.Pools = append(b.Pools, p)
		}
	}
	// Dropped pools, deepest first; kept if not empty.
	sort.Slice(removed, func(i, j int) bool {
		return strings.Count(removed[i], ".") > strings.Count(removed[j], ".")
	})
	gone := map[string]bool{}
	for _, name := range removed {
		if ls.pools[name] == nil || name == model.RootPool {
			continue
		}
		child := ""
		for c := range ls.pools {
			if model.ParentPool(c) == name && !gone[c] {
				child = c
			}
		}
		if app := holdsApps(name); app != "" || child != "" {
			s.log.Warn("pools.file: a pool left the file but is not empty: kept, managed through the API from now on", "pool", name, "app", app, "child", child)
			continue
		}
		gone[name] = true
		b.DeletePools = append(b.DeletePools, name)
	}
	if len(b.Pools)+len(b.DeletePools) > 0 {
		if err := s.write(ls.ctx, ls.term, "pool", &b); err != nil {
			return err
		}
		for i := range b.Pools {
			p := b.Pools[i]
			ls.pools[p.Name] = &p
			ls.eng.UpsertPool(p)
		}
		for _, name := range b.DeletePools {
			delete(ls.pools, name)
			ls.eng.RemovePool(name)
		}
		s.log.Info("pools.file: applied", "upserted", len(b.Pools), "deleted", len(b.DeletePools))
	}
	s.fileMu.Lock()
	for _, name := range removed {
		delete(s.file.removed, name)
	}
	s.fileMu.Unlock()
	return nil
}
