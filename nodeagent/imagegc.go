package nodeagent

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"golang.org/x/sys/unix"
)

// Image garbage collection: when the filesystem of the node's data
// directory is fuller than ImageGCHigh percent, images no container uses
// and no instance of the desired set needs are removed, least recently
// used first, until it is at most ImageGCLow percent full. Only images
// the agent pulled (from its gateway, or this process's pulls) are
// candidates: an operator's own images are left alone.

// diskUsedPercent is how full the data directory's filesystem is.
func (a *Agent) diskUsedPercent() (float64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(a.o.DataDir, &st); err != nil {
		return 0, err
	}
	if st.Blocks == 0 {
		return 0, nil
	}
	return float64(st.Blocks-st.Bavail) * 100 / float64(st.Blocks), nil
}

// noteUsed records that an image was used until now (its last instance
// stopped).
func (a *Agent) noteUsed(imageID string) {
	if imageID == "" {
		return
	}
	a.mu.Lock()
	a.lastUsed[imageID] = time.Now()
	a.mu.Unlock()
}

// gcImages removes unused images, least recently used first, while the
// disk is fuller than low percent, if it is fuller than high percent. It
// returns the IDs removed, in order.
func (a *Agent) gcImages(ctx context.Context, high, low float64) ([]string, error) {
	used, err := a.diskUsedPercent()
	if err != nil || used <= high {
		return nil, err
	}
	inUse := map[string]bool{}
	list, err := a.o.Docker.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, err
	}
	for _, c := range list {
		inUse[c.ImageID] = true
	}
	a.mu.Lock()
	var needed []string
	for _, in := range a.insts {
		needed = append(needed, PullRef(in.d.Image, a.o.Gateway))
	}
	a.mu.Unlock()
	for _, ref := range needed {
		if img, err := a.o.Docker.ImageInspect(ctx, ref); err == nil {
			inUse[img.ID] = true
		}
	}
	imgs, err := a.o.Docker.ImageList(ctx, image.ListOptions{})
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	pulled := a.o.Puller.pulledRefs()
	when := func(img image.Summary) time.Time {
		if t, ok := a.lastUsed[img.ID]; ok {
			return t
		}
		return time.Unix(img.Created, 0)
	}
	var cands []image.Summary
	for _, img := range imgs {
		if !inUse[img.ID] && a.agentImage(img, pulled) {
			cands = append(cands, img)
		}
	}
	sort.SliceStable(cands, func(i, j int) bool { return when(cands[i]).Before(when(cands[j])) })
	a.mu.Unlock()
	var removed []string
	for _, img := range cands {
		if _, err := a.o.Docker.ImageRemove(ctx, img.ID, image.RemoveOptions{Force: false, PruneChildren: true}); err != nil {
			a.o.Log.Warn("removing an unused image failed", "image", short(img.ID), "err", err)
			continue
		}
		removed = append(removed, img.ID)
		a.o.Metrics.containerOp.WithLabelValues("image_remove").Inc()
		a.o.Log.Info("removed an unused image", "image", short(img.ID), "refs", append(img.RepoDigests, img.RepoTags...), "diskUsedPercent", used)
		a.mu.Lock()
		delete(a.lastUsed, img.ID)
		a.mu.Unlock()
		if used, err = a.diskUsedPercent(); err != nil || used <= low {
			break
		}
	}
	return removed, nil
}

// agentImage: the image came through the agent (its gateway, or a pull
// of this process).
func (a *Agent) agentImage(img image.Summary, pulled map[string]bool) bool {
	for _, r := range append(append([]string(nil), img.RepoDigests...), img.RepoTags...) {
		if pulled[r] || (a.o.Gateway != "" && strings.HasPrefix(r, strings.TrimRight(a.o.Gateway, "/")+"/")) {
			return true
		}
	}
	return false
}
