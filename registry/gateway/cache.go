package gateway

import (
	"container/list"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gaia-registry/gaia/registry/coalesce"
	"github.com/gaia-registry/gaia/registry/metadata"
)

// The gateway's cache holds what never changes while it exists: manifests
// fetched by digest and the answers to blob HEADs by digest, per
// repository, bounded in bytes, least recently used out first. Tags are
// never cached. An entry leaves when the registry deletes that manifest
// (or unlinks that blob from the repository): every server announces it
// on PostgreSQL's DeletedChannel at commit, and every gateway LISTENs.
// While the gateway is not listening (starting, or its connection broke)
// the cache is empty and unused, since a deletion could go unheard.

// entry is one cached answer.
type entry struct {
	key       string
	status    int
	header    http.Header
	body      []byte // nil for a blob HEAD
	mediaType string
	size      int64 // what it counts against cache.maxbytes
	elem      *list.Element
}

// entryOverhead approximates the bookkeeping of an entry beyond its
// bytes (map slot, list element, header maps).
const entryOverhead = 512

type cache struct {
	max   int64
	m     *metrics
	log   *slog.Logger
	group coalesce.Group[string, *entry]

	mu      sync.Mutex
	used    int64
	entries map[string]*entry
	lru     *list.List // front: most recently used
	// epoch counts invalidations: a fill stores its answer only if none
	// happened since it asked, so a deletion heard while the fill was
	// under way cannot be undone by it.
	epoch uint64
	live  bool // listening for deletions
}

func newCache(max int64, m *metrics, log *slog.Logger) *cache {
	c := &cache{max: max, m: m, log: log, entries: map[string]*entry{}, lru: list.New()}
	c.group.Timeout = time.Minute
	return c
}

func manifestKey(repo, dgst string) string { return "manifest " + repo + "@" + dgst }
func blobKey(repo, dgst string) string     { return "blob " + repo + "@" + dgst }

// get returns the entry for key, or nil.
func (c *cache) get(key string) *entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	if e != nil {
		c.lru.MoveToFront(e.elem)
	}
	return e
}

// begin is called before a fill's upstream request: its result is
// stored only if put gets the same epoch back.
func (c *cache) begin() (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch, c.live
}

func (c *cache) put(e *entry, epoch uint64) {
	e.size = int64(len(e.key)+len(e.body)+len(e.mediaType)) + entryOverhead
	for k, vs := range e.header {
		e.size += int64(len(k))
		for _, v := range vs {
			e.size += int64(len(v))
		}
	}
	if e.size > c.max/4 {
		return // one entry must not flush the cache
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.live || c.epoch != epoch {
		return
	}
	if old := c.entries[e.key]; old != nil {
		c.removeLocked(old)
	}
	e.elem = c.lru.PushFront(e)
	c.entries[e.key] = e
	c.used += e.size
	for c.used > c.max {
		c.removeLocked(c.lru.Back().Value.(*entry))
		c.m.cacheEvictions.WithLabelValues("size").Inc()
	}
}

func (c *cache) removeLocked(e *entry) {
	c.lru.Remove(e.elem)
	delete(c.entries, e.key)
	c.used -= e.size
}

// drop removes key (a deletion was heard, or made through this gateway).
func (c *cache) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	if e := c.entries[key]; e != nil {
		c.removeLocked(e)
		c.m.cacheEvictions.WithLabelValues("deleted").Inc()
	}
}

// setLive starts or stops using the cache; either way it starts empty.
func (c *cache) setLive(live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	c.live = live
	if n := len(c.entries); n > 0 {
		c.m.cacheEvictions.WithLabelValues("reset").Add(float64(n))
	}
	c.entries = map[string]*entry{}
	c.lru.Init()
	c.used = 0
}

func (c *cache) stats() (bytes, entries int64, live bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used, int64(len(c.entries)), c.live
}

// heard handles a DeletedChannel payload: "manifest repo@digest" or
// "blob repo@digest".
func (c *cache) heard(payload string) {
	c.m.cacheDeletions.Inc()
	kind, ref, ok := strings.Cut(payload, " ")
	repo, dgst, ok2 := strings.Cut(ref, "@")
	if !ok || !ok2 {
		c.log.Warn("cache: unreadable deletion notice; emptying the cache", "payload", payload)
		c.setLive(true)
		return
	}
	switch kind {
	case "manifest":
		c.drop(manifestKey(repo, dgst))
	case "blob":
		c.drop(blobKey(repo, dgst))
	default:
		c.drop("") // unknown kind: still a new epoch
	}
}

// listen follows PostgreSQL's deletion notices until ctx ends, keeping
// the cache live only while it is connected.
func (c *cache) listen(ctx context.Context, url string) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.listenOnce(ctx, url)
		c.setLive(false)
		if ctx.Err() != nil {
			return
		}
		c.m.cacheListenErrors.Inc()
		c.log.Warn("cache: not listening for deletions (cache off until reconnected)", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (c *cache) listenOnce(ctx context.Context, url string) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, url)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+metadata.DeletedChannel); err != nil {
		return err
	}
	c.setLive(true)
	c.log.Info("cache: listening for deletions", "channel", metadata.DeletedChannel, "maxbytes", c.max)
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		c.heard(n.Payload)
	}
}
