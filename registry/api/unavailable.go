package api

import (
	"errors"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	"github.com/gaia-registry/gaia/registry/metadata"
)

// Backends that are down answer the spec's 503 UNAVAILABLE, saying which,
// so clients retry (docker does) and operators see the cause in the log;
// never 500 UNKNOWN, which means a bug.
var (
	errDatabaseDown = errcode.ErrorCodeUnavailable.WithMessage(
		"the registry's database (PostgreSQL) is unavailable; retry later")
	errStorageDown = errcode.ErrorCodeUnavailable.WithMessage(
		"the registry's blob storage is unavailable; retry later (manifests, tags and the catalog are still served)")
)

// unavailable maps a failure of PostgreSQL or of the storage driver to
// its 503. A storage driver's storagedriver.Error is any failure other
// than an answer about the path (not found, invalid path or offset): a
// NameNode that is down, a DataNode lost mid-write, HDFS in safe mode
// after a restart, a network that failed.
func unavailable(err error) (errcode.Error, bool) {
	if metadata.Unavailable(err) {
		return errDatabaseDown, true
	}
	if errors.As(err, new(storagedriver.Error)) {
		return errStorageDown, true
	}
	return errcode.Error{}, false
}
