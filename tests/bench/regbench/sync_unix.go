//go:build unix

package main

import "syscall"

// syncDisks flushes dirty pages of every filesystem (sync(2)).
func syncDisks() { syscall.Sync() }
