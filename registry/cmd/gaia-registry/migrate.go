package main

import (
	"os"

	"github.com/gaia-registry/gaia/registry/metadata"
	"github.com/gaia-registry/gaia/registry/pgmigrate"
)

// migrateCmd runs `gaia-registry migrate [up | down N | status]`.
func migrateCmd(args []string) error {
	return pgmigrate.Command("gaia-registry", "the PostgreSQL metadata schema", metadata.Schema, args, os.Stdout)
}
