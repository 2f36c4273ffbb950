package main

import (
	"crypto/sha256"
	"encoding/binary"
	"io"

	"github.com/opencontainers/go-digest"
)

// genBufSize is how many bytes the generator produces per refill.
const genBufSize = 256 << 10

// genReader yields size bytes of a deterministic pseudo-random stream
// (splitmix64), produced on the fly: a 1 GiB blob never sits in memory.
// The same seed and size always give the same bytes, whatever the sizes
// of the Read calls.
type genReader struct {
	state     uint64
	remaining int64
	buf       []byte
	off       int // next unread byte in buf; len(buf) means empty
}

func newGen(seed uint64, size int64) *genReader {
	b := make([]byte, genBufSize)
	return &genReader{state: seed, remaining: size, buf: b, off: len(b)}
}

func (g *genReader) fill() {
	s := g.state
	b := g.buf
	for i := 0; i+8 <= len(b); i += 8 {
		s += 0x9e3779b97f4a7c15
		z := s
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		binary.LittleEndian.PutUint64(b[i:], z)
	}
	g.state = s
	g.off = 0
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.remaining {
		p = p[:g.remaining]
	}
	n := 0
	for n < len(p) {
		if g.off == len(g.buf) {
			g.fill()
		}
		c := copy(p[n:], g.buf[g.off:])
		g.off += c
		n += c
	}
	g.remaining -= int64(n)
	return n, nil
}

// genDigest streams the generator once through sha256 (no network, not
// timed) and returns the blob's digest.
func genDigest(seed uint64, size int64) (digest.Digest, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(h, newGen(seed, size), buf)
	if err != nil {
		return "", err
	}
	if n != size {
		return "", io.ErrUnexpectedEOF
	}
	return digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)), nil
}
