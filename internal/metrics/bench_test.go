package metrics_test

import (
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/metrics"
)

func BenchmarkNBDObserve(b *testing.B) {
	m := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true}).NBD("db")
	b.SetBytes(4096)
	b.ReportAllocs()
	for b.Loop() {
		m.Observe(metrics.OpWrite, 4096, 120*time.Microsecond, nil)
	}
}

func BenchmarkNBDObserveParallel(b *testing.B) {
	m := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true}).NBD("db")
	b.SetBytes(4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Observe(metrics.OpWrite, 4096, 120*time.Microsecond, nil)
		}
	})
}

func BenchmarkJournalObserveAppend(b *testing.B) {
	j := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true}).Journal("db")
	b.ReportAllocs()
	for b.Loop() {
		j.ObserveAppend(metrics.LevelWritten, 8*time.Microsecond)
	}
}

func BenchmarkPeerObserveAck(b *testing.B) {
	p := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true}).Peer("db", "beta")
	b.ReportAllocs()
	for b.Loop() {
		p.ObserveAck(300 * time.Microsecond)
	}
}

func BenchmarkPeerSetLag(b *testing.B) {
	p := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true}).Peer("db", "beta")
	b.ReportAllocs()
	for b.Loop() {
		p.SetLag(10, 40960, 0.01)
	}
}
