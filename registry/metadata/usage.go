package metadata

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Usage is the storage a repository or a namespace accounts for:
// deduplicated (each blob once) and logical (what pulling every manifest
// would transfer). Maintained by triggers (migration 0009).
type Usage struct {
	Name         string `json:"name"`
	DedupBytes   int64  `json:"dedup_bytes"`
	LogicalBytes int64  `json:"logical_bytes"`
	QuotaBytes   *int64 `json:"quota_bytes,omitempty"` // namespaces with a quota
}

// Namespace is a repository's namespace: its first path component.
func Namespace(repo string) string {
	ns, _, _ := strings.Cut(repo, "/")
	return ns
}

type querier interface {
	QueryRow(context.Context, string, ...any) pgx.Row
	Query(context.Context, string, ...any) (pgx.Rows, error)
}

// StorageUsage returns the usage of the namespaces and of the repositories
// whose names start with prefix (all: ""), from the folded totals plus the
// deltas not folded yet.
func StorageUsage(ctx context.Context, q querier, prefix string) (namespaces, repos []Usage, err error) {
	if namespaces, err = NamespaceUsage(ctx, q, prefix); err != nil {
		return nil, nil, err
	}
	rows, _ := q.Query(ctx, `
		SELECT r.name, coalesce(u.dedup_bytes, 0) + coalesce(d.dedup, 0), coalesce(u.logical_bytes, 0) + coalesce(d.logical, 0)
		FROM repositories r
		LEFT JOIN repository_usage u ON u.repository_id = r.id
		LEFT JOIN (SELECT repository_id, sum(repo_dedup) AS dedup, sum(logical) AS logical FROM storage_usage_deltas GROUP BY repository_id) d
		       ON d.repository_id = r.id
		WHERE r.name LIKE $1 ORDER BY r.name`, likePrefix(prefix))
	repos, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Usage, error) {
		var u Usage
		return u, r.Scan(&u.Name, &u.DedupBytes, &u.LogicalBytes)
	})
	return namespaces, repos, err
}

func likePrefix(prefix string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(prefix) + "%"
}

// NamespaceUsage returns the usage (and quota) of the namespaces that
// repositories starting with prefix are in.
func NamespaceUsage(ctx context.Context, q querier, prefix string) ([]Usage, error) {
	like := likePrefix(prefix)
	rows, _ := q.Query(ctx, `
		SELECT n.namespace, n.dedup + coalesce(d.dedup, 0), n.logical + coalesce(d.logical, 0), qu.bytes
		FROM (SELECT namespace, dedup_bytes AS dedup, logical_bytes AS logical FROM namespace_usage
		      UNION SELECT DISTINCT namespace, 0, 0 FROM storage_usage_deltas WHERE namespace NOT IN (SELECT namespace FROM namespace_usage)) n
		LEFT JOIN (SELECT namespace, sum(ns_dedup) AS dedup, sum(logical) AS logical FROM storage_usage_deltas GROUP BY namespace) d
		       ON d.namespace = n.namespace
		LEFT JOIN namespace_quotas qu ON qu.namespace = n.namespace
		WHERE n.namespace LIKE $1 OR starts_with($2, n.namespace || '/')
		ORDER BY n.namespace`, like, prefix)
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Usage, error) {
		var u Usage
		return u, r.Scan(&u.Name, &u.DedupBytes, &u.LogicalBytes, &u.QuotaBytes)
	})
}

// FoldUsage folds the pending usage deltas into the totals.
func FoldUsage(ctx context.Context, q querier) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, `SELECT storage_usage_fold()`).Scan(&n)
	return n, err
}

// SetQuota sets (bytes >= 0) or removes (bytes < 0) a namespace's quota.
func SetQuota(ctx context.Context, db *pgxpool.Pool, namespace string, bytes int64) error {
	if bytes < 0 {
		_, err := db.Exec(ctx, `DELETE FROM namespace_quotas WHERE namespace = $1`, namespace)
		return err
	}
	_, err := db.Exec(ctx, `INSERT INTO namespace_quotas (namespace, bytes) VALUES ($1, $2)
		ON CONFLICT (namespace) DO UPDATE SET bytes = EXCLUDED.bytes, updated_at = now()`, namespace, bytes)
	return err
}

// CheckQuota refuses (DENIED, with the numbers) adding blob d of size
// bytes to repo when its namespace has a quota the addition would pass;
// a blob the namespace already holds adds nothing. d "" checks only that
// the namespace is within its quota (a manifest PUT). Concurrent
// additions may each pass: the quota is checked, not reserved.
func CheckQuota(ctx context.Context, q querier, repo string, d string, size int64) error {
	ns := Namespace(repo)
	var quota, used int64
	var held bool
	err := q.QueryRow(ctx, `
		SELECT qu.bytes,
		       coalesce((SELECT dedup_bytes FROM namespace_usage WHERE namespace = $1), 0)
		     + coalesce((SELECT sum(ns_dedup) FROM storage_usage_deltas WHERE namespace = $1), 0),
		       EXISTS (SELECT 1 FROM namespace_blobs WHERE namespace = $1 AND digest = $2)
		FROM namespace_quotas qu WHERE qu.namespace = $1`, ns, d).Scan(&quota, &used, &held)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	switch {
	case d == "" && used > quota:
		return errcode.ErrorCodeDenied.WithMessage(fmt.Sprintf(
			"namespace %q is over its storage quota: %d bytes used of %d", ns, used, quota))
	case d != "" && !held && used+size > quota:
		return errcode.ErrorCodeDenied.WithMessage(fmt.Sprintf(
			"namespace %q storage quota: %d bytes used of %d; this blob (%d bytes) would make %d", ns, used, quota, size, used+size))
	}
	return nil
}
