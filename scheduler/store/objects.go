package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gaia-registry/gaia/scheduler/model"
)

// ErrNotFound: no such object.
var ErrNotFound = errors.New("store: not found")

// ExistsError is a create of a name already taken.
type ExistsError struct {
	Name, Pool string
}

func (e *ExistsError) Error() string {
	return fmt.Sprintf("app %q already exists in pool %q", e.Name, e.Pool)
}

// State is everything a new leader loads.
type State struct {
	Term  int64
	Nodes []model.Node
	Pools []model.Pool
	Apps  []model.App
	// Instances still on a node or owed to one: every instance but those
	// stopped or failed, and lost ones whose node has not yet said they
	// are gone.
	Instances []model.Instance
}

// Load reads the whole state in one snapshot.
func (s *Store) Load(ctx context.Context) (*State, error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	st := &State{}
	if err := tx.QueryRow(ctx, `SELECT term FROM scheduler_term WHERE id = 1`).Scan(&st.Term); err != nil {
		return nil, err
	}
	if st.Nodes, err = scanAll[model.Node](ctx, tx, `SELECT node || jsonb_build_object('state', state, 'lastHeartbeat', last_heartbeat) FROM nodes ORDER BY name`); err != nil {
		return nil, err
	}
	if st.Pools, err = scanAll[model.Pool](ctx, tx, `SELECT pool FROM pools ORDER BY name`); err != nil {
		return nil, err
	}
	if st.Apps, err = scanAll[model.App](ctx, tx, `SELECT app FROM apps ORDER BY name`); err != nil {
		return nil, err
	}
	if st.Instances, err = scanAll[model.Instance](ctx, tx, `SELECT instance FROM instances WHERE live ORDER BY id`); err != nil {
		return nil, err
	}
	return st, tx.Commit(ctx)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func scanAll[T any](ctx context.Context, q querier, sql string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var raw []byte
		if err := rows.Scan(&raw); err != nil {
			return nil, err
		}
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Batch is a set of writes committed together under one term.
type Batch struct {
	Nodes       []model.Node // upserted (state and lastHeartbeat included)
	Pools       []model.Pool // upserted
	DeletePools []string
	Apps        []model.App // upserted
	// NewVersions are recorded in the apps' history (app_versions).
	NewVersions []model.App
	DeleteApps  []string
	// Instances are upserted whole; their state changes are recorded as
	// events (with Transitions' last entry when present).
	Instances []model.Instance
	term      int64
}

// Empty reports whether the batch writes nothing.
func (b *Batch) Empty() bool {
	return len(b.Nodes)+len(b.Pools)+len(b.DeletePools)+len(b.Apps)+len(b.NewVersions)+len(b.DeleteApps)+len(b.Instances) == 0
}

// Write commits the batch under term (ErrDeposed when it is not the
// database's). A batch is written in a handful of statements whatever its
// size.
func (s *Store) Write(ctx context.Context, term int64, b *Batch) error {
	if b.Empty() {
		return nil
	}
	return s.Fenced(ctx, term, func(tx pgx.Tx) error { return writeBatch(ctx, tx, term, b) })
}

// CreateApp records a new app (version 1) under term, refusing a name
// already taken with *ExistsError.
func (s *Store) CreateApp(ctx context.Context, term int64, app model.App) error {
	return s.Fenced(ctx, term, func(tx pgx.Tx) error {
		var pool string
		err := tx.QueryRow(ctx, `SELECT pool FROM apps WHERE name = $1`, app.Name()).Scan(&pool)
		if err == nil {
			return &ExistsError{Name: app.Name(), Pool: pool}
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		return writeBatch(ctx, tx, term, &Batch{Apps: []model.App{app}, NewVersions: []model.App{app}})
	})
}

func jsons[T any](vs []T) ([][]byte, error) {
	out := make([][]byte, len(vs))
	for i, v := range vs {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

func writeBatch(ctx context.Context, tx pgx.Tx, term int64, b *Batch) error {
	if len(b.Nodes) > 0 {
		names, states := make([]string, len(b.Nodes)), make([]string, len(b.Nodes))
		beats := make([]*time.Time, len(b.Nodes))
		for i, n := range b.Nodes {
			names[i], states[i] = n.Name, string(n.State)
			if !n.LastHeartbeat.IsZero() {
				t := n.LastHeartbeat
				beats[i] = &t
			}
		}
		js, err := jsons(b.Nodes)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO nodes (name, state, node, last_heartbeat)
SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[])
ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, node = EXCLUDED.node,
    last_heartbeat = greatest(nodes.last_heartbeat, EXCLUDED.last_heartbeat)`, names, states, js, beats); err != nil {
			return fmt.Errorf("writing nodes: %w", err)
		}
	}
	if len(b.DeletePools) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM pools WHERE name = ANY($1)`, b.DeletePools); err != nil {
			return err
		}
	}
	if len(b.Pools) > 0 {
		names := make([]string, len(b.Pools))
		for i, p := range b.Pools {
			names[i] = p.Name
		}
		js, err := jsons(b.Pools)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pools (name, pool) SELECT * FROM unnest($1::text[], $2::jsonb[])
ON CONFLICT (name) DO UPDATE SET pool = EXCLUDED.pool, updated_at = now()`, names, js); err != nil {
			return fmt.Errorf("writing pools: %w", err)
		}
	}
	if len(b.DeleteApps) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM apps WHERE name = ANY($1)`, b.DeleteApps); err != nil {
			return err
		}
	}
	if len(b.Apps) > 0 {
		names, pools := make([]string, len(b.Apps)), make([]string, len(b.Apps))
		for i, a := range b.Apps {
			names[i], pools[i] = a.Name(), a.Spec.Pool
		}
		js, err := jsons(b.Apps)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO apps (name, pool, app) SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])
ON CONFLICT (name) DO UPDATE SET pool = EXCLUDED.pool, app = EXCLUDED.app, updated_at = now()`, names, pools, js); err != nil {
			return fmt.Errorf("writing apps: %w", err)
		}
	}
	for _, a := range b.NewVersions {
		spec, err := json.Marshal(a.Spec)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO app_versions (app, version, spec, digest) VALUES ($1, $2, $3, $4)
ON CONFLICT (app, version) DO UPDATE SET spec = EXCLUDED.spec, digest = EXCLUDED.digest`, a.Name(), a.Version, spec, a.Digest); err != nil {
			return fmt.Errorf("writing app versions: %w", err)
		}
	}
	if len(b.Instances) > 0 {
		n := len(b.Instances)
		ids, apps, nodes, states, desired := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		live := make([]bool, n)
		reasons := make([]string, n)
		slim := make([]model.Instance, n)
		for i, in := range b.Instances {
			ids[i], apps[i], nodes[i], states[i], desired[i] = in.ID, in.App, in.Node, string(in.State), string(in.Desired)
			live[i] = Live(in)
			reasons[i] = in.Reason
			in.Transitions = nil // kept as events
			slim[i] = in
		}
		js, err := jsons(slim)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO instance_events (instance, state, reason)
SELECT v.id, v.state, v.reason FROM unnest($1::text[], $2::text[], $3::text[]) AS v(id, state, reason)
LEFT JOIN instances i ON i.id = v.id
WHERE i.id IS NULL OR i.state <> v.state`, ids, states, reasons); err != nil {
			return fmt.Errorf("writing instance events: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO instances (id, app, node, state, desired, live, instance, term)
SELECT v.*, $8::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], $7::jsonb[]) AS v
ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node, state = EXCLUDED.state, desired = EXCLUDED.desired,
    live = EXCLUDED.live, instance = EXCLUDED.instance, term = EXCLUDED.term, updated_at = now()`,
			ids, apps, nodes, states, desired, live, js, term); err != nil {
			return fmt.Errorf("writing instances: %w", err)
		}
	}
	return nil
}

// Live reports whether an instance is still on (or owed to) a node: not
// stopped or failed. A lost instance stays live until its node, if it
// comes back, says it is gone.
func Live(in model.Instance) bool {
	return in.State != model.Stopped && in.State != model.Failed
}

// Page is one page of a list.
type Page[T any] struct {
	Items []T    `json:"items"`
	Next  string `json:"next"`
}

func page[T any](ctx context.Context, s *Store, sql string, limit int, key func(T) string, args ...any) (*Page[T], error) {
	items, err := scanAll[T](ctx, s.pool, sql, append(args, limit+1)...)
	if err != nil {
		return nil, err
	}
	p := &Page[T]{Items: items}
	if p.Items == nil {
		p.Items = []T{}
	}
	if len(items) > limit {
		p.Items = items[:limit]
		p.Next = key(items[limit-1])
	}
	return p, nil
}

// Apps lists apps by name after the cursor.
func (s *Store) Apps(ctx context.Context, after string, limit int) (*Page[model.App], error) {
	return page(ctx, s, `SELECT app FROM apps WHERE name > $1 ORDER BY name LIMIT $2`, limit,
		func(a model.App) string { return a.Name() }, after)
}

// App reads one app.
func (s *Store) App(ctx context.Context, name string) (*model.App, error) {
	return one[model.App](ctx, s, `SELECT app FROM apps WHERE name = $1`, name)
}

// AppVersion is one entry of an app's history.
type AppVersion struct {
	Version   int64         `json:"version"`
	Digest    string        `json:"digest"`
	CreatedAt time.Time     `json:"createdAt"`
	Spec      model.AppSpec `json:"spec"`
}

// Versions lists an app's history, newest first, before the cursor.
func (s *Store) Versions(ctx context.Context, app, after string, limit int) (*Page[AppVersion], error) {
	before := int64(1 << 62)
	if after != "" {
		fmt.Sscan(after, &before)
	}
	return page(ctx, s, `SELECT jsonb_build_object('version', version, 'digest', digest, 'createdAt', created_at, 'spec', spec)
FROM app_versions WHERE app = $1 AND version < $2 ORDER BY version DESC LIMIT $3`, limit,
		func(v AppVersion) string { return fmt.Sprint(v.Version) }, app, before)
}

// Version reads one version of an app's spec.
func (s *Store) Version(ctx context.Context, app string, version int64) (*AppVersion, error) {
	return one[AppVersion](ctx, s, `SELECT jsonb_build_object('version', version, 'digest', digest, 'createdAt', created_at, 'spec', spec)
FROM app_versions WHERE app = $1 AND version = $2`, app, version)
}

// Instances lists an app's instances by id after the cursor; all
// includes stopped and failed ones.
func (s *Store) Instances(ctx context.Context, app string, all bool, after string, limit int) (*Page[model.Instance], error) {
	return page(ctx, s, `SELECT instance FROM instances WHERE app = $1 AND (live OR $2) AND id > $3 ORDER BY id LIMIT $4`, limit,
		func(i model.Instance) string { return i.ID }, app, all, after)
}

// Instance reads one instance with its transitions.
func (s *Store) Instance(ctx context.Context, id string) (*model.Instance, error) {
	in, err := one[model.Instance](ctx, s, `SELECT instance FROM instances WHERE id = $1`, id)
	if err != nil {
		return nil, err
	}
	in.Transitions, err = scanAll[model.Transition](ctx, s.pool, `SELECT jsonb_build_object('state', state, 'at', at, 'reason', reason)
FROM instance_events WHERE instance = $1 ORDER BY id`, id)
	return in, err
}

// Nodes lists nodes by name after the cursor.
func (s *Store) Nodes(ctx context.Context, after string, limit int) (*Page[model.Node], error) {
	return page(ctx, s, `SELECT node || jsonb_build_object('state', state, 'lastHeartbeat', last_heartbeat) FROM nodes WHERE name > $1 ORDER BY name LIMIT $2`, limit,
		func(n model.Node) string { return n.Name }, after)
}

// Node reads one node.
func (s *Store) Node(ctx context.Context, name string) (*model.Node, error) {
	return one[model.Node](ctx, s, `SELECT node || jsonb_build_object('state', state, 'lastHeartbeat', last_heartbeat) FROM nodes WHERE name = $1`, name)
}

// Pools lists pools by name after the cursor.
func (s *Store) Pools(ctx context.Context, after string, limit int) (*Page[model.Pool], error) {
	return page(ctx, s, `SELECT pool FROM pools WHERE name > $1 ORDER BY name LIMIT $2`, limit,
		func(p model.Pool) string { return p.Name }, after)
}

// Pool reads one pool.
func (s *Store) Pool(ctx context.Context, name string) (*model.Pool, error) {
	return one[model.Pool](ctx, s, `SELECT pool FROM pools WHERE name = $1`, name)
}

func one[T any](ctx context.Context, s *Store, sql string, args ...any) (*T, error) {
	vs, err := scanAll[T](ctx, s.pool, sql, args...)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		return nil, ErrNotFound
	}
	return &vs[0], nil
}
