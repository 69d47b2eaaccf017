package journal_test

import (
	"fmt"
	"github.com/blockmirror/blockmirror/journal"
	"os"
	"path/filepath"
)

func dumpDir(dir string) {
	m, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, p := range m {
		b, _ := os.ReadFile(p)
		fmt.Printf("%s size %d:", filepath.Base(p), len(b))
		off := journal.SegmentHeaderSize
		for off < len(b) {
			r, n, err := journal.DecodeRecord(b[off:])
			if err != nil {
				fmt.Printf(" ERR@%d %v", off, err)
				break
			}
			fmt.Printf(" %d@%d", r.Seq, off)
			off += n
		}
		fmt.Println()
	}
}
