package audit

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Filter selects events; empty fields select everything.
type Filter struct {
	Namespace, Actor, Action, Repository string
	Since, Until                         time.Time // at ≥ Since, at < Until
	Limit                                int       // default 100, at most 1000
	Cursor                               string    // a previous page's next
}

// Page sizes.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// Query returns the events f selects, newest first, and the cursor of the
// next page ("" on the last).
func Query(ctx context.Context, db *pgxpool.Pool, f Filter) (events []Event, next string, err error) {
	limit := f.Limit
	switch {
	case limit < 0:
		return nil, "", &FieldError{"limit", fmt.Sprintf("%d is negative", limit)}
	case limit == 0:
		limit = DefaultLimit
	case limit > MaxLimit:
		limit = MaxLimit
	}
	var where []string
	var args []any
	cond := func(sql string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(sql, len(args)))
	}
	ns := f.Namespace
	if ns == "" && f.Repository != "" {
		ns = NamespaceOf(f.Repository) // lets the namespace index serve it
	}
	if ns != "" {
		cond("namespace = $%d", ns)
	}
	if f.Repository != "" {
		cond("repository = $%d", f.Repository)
	}
	if f.Actor != "" {
		cond("actor = $%d", f.Actor)
	}
	if f.Action != "" {
		cond("action = $%d", f.Action)
	}
	if !f.Since.IsZero() {
		cond("at >= $%d", f.Since)
	}
	if !f.Until.IsZero() {
		cond("at < $%d", f.Until)
	}
	if f.Cursor != "" {
		at, id, err := decodeCursor(f.Cursor)
		if err != nil {
			return nil, "", err
		}
		args = append(args, at, id)
		where = append(where, fmt.Sprintf("(at, id) < ($%d, $%d)", len(args)-1, len(args)))
	}
	sql := `SELECT id, at, actor, actor_kind, action, namespace, repository, reference, remote, detail FROM audit_events`
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += fmt.Sprintf(" ORDER BY at DESC, id DESC LIMIT %d", limit+1)
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, "", err
	}
	events, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		err := r.Scan(&e.ID, &e.At, &e.Actor, &e.ActorKind, &e.Action, &e.Namespace, &e.Repository, &e.Reference, &e.Remote, &e.Detail)
		return e, err
	})
	if err != nil {
		return nil, "", err
	}
	if len(events) > limit {
		events = events[:limit]
		last := events[limit-1]
		next = encodeCursor(last.At, last.ID)
	}
	return events, next, nil
}

// A cursor is the (at, id) of a page's last event, opaque to clients.
func encodeCursor(at time.Time, id int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(at.UnixMicro(), 10) + "." + strconv.FormatInt(id, 10)))
}

func decodeCursor(s string) (time.Time, int64, error) {
	bad := &FieldError{"cursor", "not a cursor this server returned"}
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return time.Time{}, 0, bad
	}
	a, b, ok := strings.Cut(string(raw), ".")
	if !ok {
		return time.Time{}, 0, bad
	}
	us, err1 := strconv.ParseInt(a, 10, 64)
	id, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil {
		return time.Time{}, 0, bad
	}
	return time.UnixMicro(us), id, nil
}

// ParseTime reads a filter's time: RFC 3339, or a duration meaning that
// long before now ("24h"). Errors name field.
func ParseTime(field, s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, &FieldError{field, fmt.Sprintf("%q is neither an RFC 3339 time (2026-01-02T15:04:05Z) nor a duration before now (24h)", s)}
}
