package metadata

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// AdvisoryLock takes the PostgreSQL session advisory lock named key on a
// connection of pool, polling a try-lock so a waiter holds no connection
// (and leaves no backend queued in PostgreSQL if it gives up). Between
// tries, done (if not nil) may say the work the lock guards was finished
// by its holder: AdvisoryLock then returns done=true without the lock.
// unlock releases the lock and the connection; an unlock that fails ends
// the session, which would otherwise keep the lock.
func AdvisoryLock(ctx context.Context, pool *pgxpool.Pool, key string, done func(context.Context) (bool, error)) (unlock func(), finished bool, err error) {
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, false, err
		}
		var got bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, key).Scan(&got); err != nil {
			conn.Release()
			return nil, false, err
		}
		if got {
			return func() {
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer cancel()
				if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, key); err != nil {
					conn.Conn().Close(uctx)
				}
				conn.Release()
			}, false, nil
		}
		conn.Release()
		if done != nil {
			if ok, err := done(ctx); err != nil || ok {
				return nil, ok, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, false, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// BlobLockKey names the IDC-wide lock for blob d's bytes in idc's storage
// (an advisory lock; session or transaction scope share one space). Whoever
// puts the bytes at the blob's path and records the IDC's placement holds
// it (an upload finishing, a cross-IDC fill), and so does whoever deletes
// them (garbage collection, the storage walk): a deleter that sees no
// placement under the lock knows no writer is about to record one.
func BlobLockKey(idc, d string) string { return "gaia-fill:" + idc + ":" + d }
