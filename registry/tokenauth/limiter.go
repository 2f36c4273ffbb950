package tokenauth

import (
	"sync"
	"time"
)

// LimiterConfig configures a Limiter (`auth.builtin.loginlimit`).
type LimiterConfig struct {
	// PairFailures is how many failed logins a user may have from one
	// address per Window (default 10). Per pair rather than per user so
	// that a flood from one address cannot lock a user out everywhere.
	PairFailures int `yaml:"pairfailures"`
	// AddressFailures is how many failed logins, whatever the user, one
	// address may have per Window (default 100): password spraying.
	AddressFailures int `yaml:"addressfailures"`
	// Window is the period over which the allowances refill (default 1m).
	Window time.Duration `yaml:"window"`
	// MaxKeys caps the users+addresses tracked (default 100000): at the
	// cap, fully refilled entries are dropped, then random ones.
	MaxKeys int `yaml:"maxkeys"`
}

// Limiter slows down password guessing: each (user, address) pair and each
// address has a token bucket of failures that refills over Window; an
// empty bucket refuses further attempts of that pair or address before
// the backend is asked, so a flood costs no bcrypt or LDAP bind. Only
// failures take from the buckets.
type Limiter struct {
	cfg LimiterConfig
	now func() time.Time

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	level float64 // failures still allowed
	at    time.Time
}

// NewLimiter makes a Limiter; now is the clock (nil: time.Now).
func NewLimiter(cfg LimiterConfig, now func() time.Time) *Limiter {
	if cfg.PairFailures <= 0 {
		cfg.PairFailures = 10
	}
	if cfg.AddressFailures <= 0 {
		cfg.AddressFailures = 100
	}
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 100000
	}
	if now == nil {
		now = time.Now
	}
	return &Limiter{cfg: cfg, now: now, buckets: map[string]*bucket{}}
}

func pairKey(user, addr string) string { return "p\x00" + user + "\x00" + addr }
func addrKey(addr string) string       { return "a\x00" + addr }

// level refills b to t and returns it (capacity limit).
func (l *Limiter) level(b *bucket, limit int, t time.Time) float64 {
	if d := t.Sub(b.at); d > 0 {
		b.level += float64(limit) * float64(d) / float64(l.cfg.Window)
		b.at = t
	}
	if b.level > float64(limit) {
		b.level = float64(limit)
	}
	return b.level
}

// Allow reports whether user may try to log in from addr now, and if not,
// how long until one more attempt is allowed.
func (l *Limiter) Allow(user, addr string) (retryAfter time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.now()
	for _, c := range []struct {
		key   string
		limit int
	}{{pairKey(user, addr), l.cfg.PairFailures}, {addrKey(addr), l.cfg.AddressFailures}} {
		b := l.buckets[c.key]
		if b == nil {
			continue
		}
		if lv := l.level(b, c.limit, t); lv < 1 {
			wait := time.Duration((1 - lv) * float64(l.cfg.Window) / float64(c.limit))
			retryAfter = max(retryAfter, wait)
		}
	}
	return retryAfter, retryAfter == 0
}

// Fail records a failed login of user from addr.
func (l *Limiter) Fail(user, addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.now()
	l.take(pairKey(user, addr), l.cfg.PairFailures, t)
	l.take(addrKey(addr), l.cfg.AddressFailures, t)
}

func (l *Limiter) take(key string, limit int, t time.Time) {
	b := l.buckets[key]
	if b == nil {
		l.makeRoom(t)
		b = &bucket{level: float64(limit), at: t}
		l.buckets[key] = b
	}
	if l.level(b, limit, t) >= 1 {
		b.level--
	} else {
		b.level = 0
	}
}

// makeRoom keeps the map under MaxKeys: first drop the buckets that have
// refilled (the same as no entry; at most one sweep per tenth of a
// Window), then, if still full, random ones (Go's map order).
func (l *Limiter) makeRoom(t time.Time) {
	if len(l.buckets) < l.cfg.MaxKeys {
		return
	}
	if t.Sub(l.lastSweep) >= l.cfg.Window/10 {
		l.lastSweep = t
		for k, b := range l.buckets {
			limit := l.cfg.AddressFailures
			if k[0] == 'p' {
				limit = l.cfg.PairFailures
			}
			if l.level(b, limit, t) >= float64(limit) {
				delete(l.buckets, k)
			}
		}
	}
	for k := range l.buckets {
		if len(l.buckets) < l.cfg.MaxKeys {
			break
		}
		delete(l.buckets, k)
	}
}

// tracked is the number of buckets kept (tests).
func (l *Limiter) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
