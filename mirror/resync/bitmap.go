package resync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"os"

	"github.com/blockmirror/blockmirror/internal/atomicfile"
	"github.com/blockmirror/blockmirror/internal/vfs"
)

// Bitmap marks fixed-size chunks of a volume, e.g. the chunks a mirror
// must be resynced on. It is not safe for concurrent use.
//
// File format (little endian), replaced atomically on every Save:
//
//	| magic "BMBM" | version u16 (1) | reserved u16 | chunk size u64 | volume size u64 |
//	| words u64 | words × u64 bits | crc32c u32 over everything before |
//
// These constants are part of the on-disk format.
type Bitmap struct {
	chunk int64
	size  int64
	words []uint64
	count int64
}

const (
	bitmapMagic   = "BMBM"
	bitmapVersion = 1
	bitmapHeader  = 4 + 2 + 2 + 8 + 8 + 8
)

// NewBitmap returns an empty bitmap over a volume of size bytes in chunks
// of chunk bytes.
func NewBitmap(size, chunk int64) *Bitmap {
	n := (size + chunk - 1) / chunk
	return &Bitmap{chunk: chunk, size: size, words: make([]uint64, (n+63)/64)}
}

// Chunks is the number of chunks.
func (b *Bitmap) Chunks() int64 { return (b.size + b.chunk - 1) / b.chunk }

// ChunkSize is the size of a chunk in bytes.
func (b *Bitmap) ChunkSize() int64 { return b.chunk }

// Count is the number of marked chunks.
func (b *Bitmap) Count() int64 { return b.count }

// Bytes is the number of volume bytes the marked chunks cover.
func (b *Bitmap) Bytes() int64 {
	n := b.count * b.chunk
	last := b.Chunks() - 1
	if b.Test(last) {
		n -= b.chunk*(last+1) - b.size
	}
	return n
}

// Test reports whether chunk i is marked.
func (b *Bitmap) Test(i int64) bool {
	if i < 0 || i >= b.Chunks() {
		return false
	}
	return b.words[i/64]&(1<<(i%64)) != 0
}

// SetChunk marks chunk i.
func (b *Bitmap) SetChunk(i int64) {
	if i < 0 || i >= b.Chunks() || b.Test(i) {
		return
	}
	b.words[i/64] |= 1 << (i % 64)
	b.count++
}

// ClearChunk unmarks chunk i.
func (b *Bitmap) ClearChunk(i int64) {
	if !b.Test(i) {
		return
	}
	b.words[i/64] &^= 1 << (i % 64)
	b.count--
}

// SetRange marks every chunk that [off, off+n) touches.
func (b *Bitmap) SetRange(off, n int64) {
	if n <= 0 {
		return
	}
	for i := off / b.chunk; i <= (off+n-1)/b.chunk; i++ {
		b.SetChunk(i)
	}
}

// SetAll marks every chunk.
func (b *Bitmap) SetAll() {
	for i := int64(0); i < b.Chunks(); i++ {
		b.SetChunk(i)
	}
}

// Next returns the first marked chunk ≥ i, or -1.
func (b *Bitmap) Next(i int64) int64 {
	if i < 0 {
		i = 0
	}
	n := b.Chunks()
	for i < n {
		w := b.words[i/64] >> (i % 64)
		if w != 0 {
			j := i + int64(bits.TrailingZeros64(w))
			if j < n {
				return j
			}
			return -1
		}
		i = (i/64 + 1) * 64
	}
	return -1
}

// Or marks every chunk marked in o (same geometry).
func (b *Bitmap) Or(o *Bitmap) {
	for i := int64(0); i < o.Chunks(); i++ {
		if o.Test(i) {
			b.SetChunk(i)
		}
	}
}

var errBitmap = errors.New("bad bitmap file")

// castagnoli is the CRC32C table of the file format.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Clone returns a copy of b.
func (b *Bitmap) Clone() *Bitmap {
	c := *b
	c.words = append([]uint64(nil), b.words...)
	return &c
}

// Size is the volume size the bitmap covers.
func (b *Bitmap) Size() int64 { return b.size }

// Save writes the bitmap to path on fsys atomically.
func (b *Bitmap) Save(fsys vfs.FS, path string) error {
	buf := make([]byte, 0, bitmapHeader+8*len(b.words)+4)
	buf = append(buf, bitmapMagic...)
	buf = binary.LittleEndian.AppendUint16(buf, bitmapVersion)
	buf = binary.LittleEndian.AppendUint16(buf, 0)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(b.chunk))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(b.size))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(b.words)))
	for _, w := range b.words {
		buf = binary.LittleEndian.AppendUint64(buf, w)
	}
	buf = binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli))
	if err := atomicfile.WriteFS(fsys, path, buf, 0o600); err != nil {
		return fmt.Errorf("mirror: save bitmap: %w", err)
	}
	return nil
}

// LoadBitmap reads a bitmap saved by Save from the operating system's file
// system; it must match size and chunk. A missing file returns (nil, nil).
func LoadBitmap(path string, size, chunk int64) (*Bitmap, error) {
	return LoadBitmapFS(vfs.OS, path, size, chunk)
}

// LoadBitmapFS is LoadBitmap from fsys.
func LoadBitmapFS(fsys vfs.FS, path string, size, chunk int64) (*Bitmap, error) {
	data, err := vfs.ReadFile(fsys, path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mirror: load bitmap: %w", err)
	}
	b, err := decodeBitmap(data)
	if err != nil {
		return nil, fmt.Errorf("mirror: load bitmap %s: %w", path, err)
	}
	if b.size != size || b.chunk != chunk {
		return nil, fmt.Errorf("mirror: load bitmap %s: geometry %d/%d, want %d/%d: %w", path, b.size, b.chunk, size, chunk, errBitmap)
	}
	return b, nil
}

func decodeBitmap(data []byte) (*Bitmap, error) {
	if len(data) < bitmapHeader+4 || string(data[:4]) != bitmapMagic {
		return nil, fmt.Errorf("%w: short or bad magic", errBitmap)
	}
	body, sum := data[:len(data)-4], binary.LittleEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", errBitmap)
	}
	if v := binary.LittleEndian.Uint16(data[4:]); v != bitmapVersion {
		return nil, fmt.Errorf("%w: version %d", errBitmap, v)
	}
	chunk := int64(binary.LittleEndian.Uint64(data[8:]))
	size := int64(binary.LittleEndian.Uint64(data[16:]))
	words := binary.LittleEndian.Uint64(data[24:])
	if chunk <= 0 || size <= 0 || size/chunk > 1<<40 {
		return nil, fmt.Errorf("%w: geometry %d/%d", errBitmap, size, chunk)
	}
	b := NewBitmap(size, chunk)
	if words != uint64(len(b.words)) || uint64(len(body)-bitmapHeader) != 8*words {
		return nil, fmt.Errorf("%w: %d words for %d chunks", errBitmap, words, b.Chunks())
	}
	for i := range b.words {
		b.words[i] = binary.LittleEndian.Uint64(body[bitmapHeader+8*i:])
	}
	// Bits past the last chunk must be clear.
	if n := b.Chunks(); n%64 != 0 && b.words[len(b.words)-1]>>(n%64) != 0 {
		return nil, fmt.Errorf("%w: bits beyond the volume", errBitmap)
	}
	for _, w := range b.words {
		b.count += int64(bits.OnesCount64(w))
	}
	return b, nil
}
