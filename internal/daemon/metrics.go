package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/internal/metrics"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror"
)

// enableMetrics serves reg at /metrics on the admin endpoint.
func (a *adminServer) enableMetrics(reg *metrics.Registry) {
	a.mux.Handle("GET /metrics", reg.Handler())
}

// volumeHooks wires one volume's metrics.
type volumeHooks struct {
	reg    *metrics.Registry
	volume string
	nbd    *metrics.NBDMetrics
	j      *metrics.JournalMetrics

	mu    sync.Mutex
	peers map[string]*metrics.PeerMetrics // one per peer: it keeps the state series
}

func (h *volumeHooks) peer(name string) *metrics.PeerMetrics {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.peers[name]
	if p == nil {
		p = h.reg.Peer(h.volume, name)
		h.peers[name] = p
	}
	return p
}

func newVolumeHooks(reg *metrics.Registry, volume string) *volumeHooks {
	if reg == nil {
		return nil
	}
	return &volumeHooks{reg: reg, volume: volume, nbd: reg.NBD(volume), j: reg.Journal(volume),
		peers: make(map[string]*metrics.PeerMetrics)}
}

func (h *volumeHooks) onSync(d time.Duration) {
	if h != nil {
		h.j.ObserveFsync(d)
	}
}

func (h *volumeHooks) onAppend(durable bool, d time.Duration) {
	if h == nil {
		return
	}
	if durable {
		h.j.ObserveAppend(metrics.LevelDurable, d)
	} else {
		h.j.ObserveAppend(metrics.LevelWritten, d)
	}
}

func (h *volumeHooks) observeNBD(op string, bytes int, d time.Duration, err error) {
	if h != nil {
		h.nbd.Observe(op, bytes, d, err)
	}
}

func (h *volumeHooks) onAck(peer string, d time.Duration) {
	if h != nil {
		h.peer(peer).ObserveAck(d)
	}
}

// run refreshes the gauges every second until ctx ends.
func (h *volumeHooks) run(ctx context.Context, j *journal.Journal, repl func() *mirror.ReplicationStatus) {
	if h == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastRecs, lastBytes uint64
	for {
		st := j.Stats()
		h.j.SetSize(uint64(st.Bytes), st.Segments)
		if st.RecordsWritten >= lastRecs {
			h.j.AddRecords(int(st.RecordsWritten-lastRecs), int(st.BytesWritten-lastBytes))
		}
		lastRecs, lastBytes = st.RecordsWritten, st.BytesWritten
		if rs := repl(); rs != nil {
			for _, p := range rs.Peers {
				pm := h.peer(p.Name)
				pm.SetLag(p.LagRecords, p.LagBytes, p.LagSeconds)
				pm.SetConnected(p.Connected)
				if q := p.QUIC; q != nil {
					pm.SetQUIC(time.Duration(q.SmoothedRTTMicros)*time.Microsecond, q.CongestionWindow, q.PacketsSent, q.PacketsLost)
				} else {
					pm.SetQUIC(0, 0, 0, 0)
				}
				pm.SetState(p.State)
				if p.Resync != nil {
					pm.SetResync(uint64(p.Resync.DoneBytes), uint64(p.Resync.TotalBytes))
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
