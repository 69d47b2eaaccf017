package mirror

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkIndirectRewrite measures what the overwrite rule costs: 256 KiB
// writes at queue depth 1 on a real file system, each over the block
// written ring/256 KiB writes before (ring = 256K: the same block every
// time; 16M: a ring of 64 blocks), with the indirect path on (min=256K) and
// off (min=0). go test ./mirror -run XXX -bench IndirectRewrite
func BenchmarkIndirectRewrite(b *testing.B) {
	for _, ring := range []int64{256 << 10, 16 << 20, 256 << 20} {
		for _, min := range []int{0, 256 << 10} {
			b.Run(fmt.Sprintf("ring=%dK/min=%dK", ring>>10, min>>10), func(b *testing.B) {
				n, err := OpenNode(context.Background(), NodeOptions{Dir: b.TempDir(), Size: 512 << 20})
				if err != nil {
					b.Fatal(err)
				}
				defer n.Close()
				v, err := NewVolume(n, nil, VolumeOptions{CheckpointInterval: 5 * time.Second, IndirectMin: min})
				if err != nil {
					b.Fatal(err)
				}
				defer v.Close()
				p := make([]byte, 256<<10)
				b.SetBytes(int64(len(p)))
				b.ResetTimer()
				for i := range b.N {
					p[0] = byte(i)
					if err := v.WriteAt(b.Context(), p, int64(i)*int64(len(p))%ring, false); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
