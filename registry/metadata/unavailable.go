package metadata

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// Unavailable reports whether err means PostgreSQL could not serve the
// query, rather than answered it: unreachable, shutting down, restarting
// or starting up, the connection lost, out of connections or resources.
// Such a request can succeed later, unchanged; the pool replaces broken
// connections by itself.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false // the request's client went away: not PostgreSQL's doing
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:min(2, len(pgErr.Code))] {
		case "08", // connection exception
			"53", // insufficient resources: too many connections, disk full
			"57": // operator intervention: 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now, 57014 canceled
			return true
		}
		return false // an answer: a constraint, a syntax error, ...
	}
	if errors.As(err, new(*pgconn.ConnectError)) || errors.Is(err, pgconn.ErrConnClosed) || pgconn.Timeout(err) {
		return true
	}
	// pgconn's own errors (a socket that failed mid-query, a connection
	// found broken) are the ones that say whether a retry is safe.
	var conn interface{ SafeToRetry() bool }
	return errors.As(err, &conn)
}
