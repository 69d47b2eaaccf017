package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// handshakeTimeout bounds the wait for a HelloReply.
const handshakeTimeout = 10 * time.Second

// heartbeatEvery is the default period of heartbeats on a session.
const heartbeatEvery = time.Second

// peerLink keeps one mirror connected: it dials with backoff, handshakes,
// and runs sessions. Fields below mu-comment are guarded by r.mu.
type peerLink struct {
	r    *Replication
	addr PeerAddr
	log  *slog.Logger

	// guarded by r.mu
	sess        *session
	connected   bool
	lastErr     string
	rtt         time.Duration
	durable     uint64
	needsResync bool
	resync      *resyncer
	lastResync  ResyncProgress
	splitBrain  string
	acked       uint64 // last ack at the ack level seen in this session
	// confirmed is the send time of the last heartbeat the mirror echoed
	// (zero: none in the current session).
	confirmed time.Time
}

// session is one connected stream to the mirror.
type session struct {
	conn    streamConn
	st      frameStream
	writeMu sync.Mutex
	startCh chan uint64 // capacity 1: the seq to stream from
	flushCh chan uint64 // capacity 1: the highest flush to send
	start   time.Time   // heartbeat times are measured from here
	// begin, when set, is sent on the log stream before the first record.
	begin *wire.ResyncBegin
	// flags are the mirror's HelloReply flags.
	flags uint32
	// win bounds the record bytes sent and not yet received.
	win *sendWindow
	// laneConns are the connections of lanes 1.. (guarded by r.mu; the
	// session's status sums their statistics with conn's).
	laneConns []streamConn
}

func (l *peerLink) run(ctx context.Context) {
	defer l.r.wg.Done()
	bo := transport.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	var lastLogged string
	for ctx.Err() == nil {
		up, err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		msg := "session ended"
		if err != nil {
			msg = err.Error()
		}
		l.r.mu.Lock()
		l.lastErr = msg
		l.r.mu.Unlock()
		// Log a repeated failure once, not at every retry.
		if msg != lastLogged {
			l.log.Warn("mirror connection lost or refused; retrying with backoff", "err", msg)
			lastLogged = msg
		}
		if up {
			bo.Reset()
		}
		if bo.Wait(ctx) != nil {
			return
		}
	}
}

// session dials, handshakes and replicates until the connection fails. It
// reports whether the handshake succeeded.
func (l *peerLink) session(ctx context.Context) (bool, error) {
	r := l.r
	conn, release, err := r.opts.Pool.get(ctx, l.addr.Addr, l.addr.Name, r.opts.Transport)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", l.addr.Addr, err)
	}
	// The connection may be shared with other volumes: ending this session
	// cancels only its own streams.
	defer release()
	st, err := conn.OpenStream(ctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	defer st.Cancel(0)
	// A dead connection or a cancelled ctx unblocks the handshake's reads.
	hctx, hcancel := context.WithCancel(ctx)
	stopH := context.AfterFunc(hctx, func() { st.Cancel(0) })
	defer func() { stopH(); hcancel() }()
	m := r.node.Meta()
	r.mu.Lock()
	last := r.core.LastSeq()
	r.mu.Unlock()
	hello := wire.Hello{
		Version: wire.ProtoVersion, Role: wire.PeerRolePrimary, Mode: r.opts.Mode, AckLevel: r.opts.AckLevel,
		Volume: m.Volume, Size: uint64(m.Size), Epoch: m.Epoch, LastSeq: last,
		Node: r.opts.NodeName, VolumeName: r.opts.VolumeName, History: m.History,
	}
	buf, err := wire.AppendHello(nil, &hello)
	if err != nil {
		return false, err
	}
	if err := st.WriteFrame(uint8(wire.MsgHello), buf); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	if err := st.Flush(); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	st.SetReadDeadline(time.Now().Add(handshakeTimeout))
	typ, p, err := st.ReadFrame(nil)
	if err != nil {
		return false, fmt.Errorf("read hello reply: %w", err)
	}
	st.SetReadDeadline(time.Time{})
	switch wire.MsgType(typ) {
	case wire.MsgHelloReply:
	case wire.MsgError:
		e, derr := wire.DecodeError(p)
		if derr != nil {
			return false, fmt.Errorf("mirror sent a malformed error: %w", derr)
		}
		r.mu.Lock()
		err = r.core.PeerError(l.addr.Name, e)
		r.processLocked()
		r.mu.Unlock()
		return false, err
	default:
		return false, fmt.Errorf("mirror answered the hello with %v", wire.MsgType(typ))
	}
	reply, err := wire.DecodeHelloReply(p)
	if err != nil {
		return false, fmt.Errorf("bad hello reply: %w", err)
	}
	// Dirty regions pending (verify found differences, or records were
	// dropped while the mirror was away)? Then it is resynced even if its
	// journal could catch up.
	dirty := false
	if reply.Code == wire.CodeOK {
		b, _ := r.node.LoadBitmap(l.addr.Name)
		dirty = b != nil && b.Count() > 0
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Ending the session (or replication) unblocks reads on the stream; the
	// shared connection stays up for the other volumes.
	defer context.AfterFunc(sctx, func() { st.Cancel(0) })()
	s := &session{conn: conn, st: st, startCh: make(chan uint64, 1), flushCh: make(chan uint64, 1), start: time.Now(), flags: reply.Flags,
		win: newSendWindow(r.opts.MaxInFlight)}
	r.mu.Lock()
	l.sess = s // before the core's StartStreams reach it
	kind, perr := r.core.PeerReply(l.addr.Name, reply, dirty)
	if kind == core.SessionRefused {
		l.sess = nil
	} else {
		l.connected = true
		l.lastErr = ""
		l.acked = reply.LastSeq
	}
	r.processLocked()
	r.mu.Unlock()
	if kind == core.SessionRefused {
		return false, perr
	}
	needResync := kind == core.SessionResync
	l.log.Info("mirror connected", "last_seq", reply.LastSeq, "durable_seq", reply.DurableSeq, "flags", reply.Flags, "session", kind)
	defer func() {
		r.mu.Lock()
		l.sess = nil
		l.connected, l.confirmed = false, time.Time{}
		r.core.PeerDown(l.addr.Name)
		r.processLocked()
		r.mu.Unlock()
	}()

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	if needResync {
		begin, bm, err := l.prepareResync(reply)
		if err != nil {
			return true, fmt.Errorf("prepare resync: %w", err)
		}
		s.begin = &begin
		// What the journal still keeps for this mirror stays until the
		// resync is done, even when the resync starts past it.
		var kept uint64
		if rel, ok := r.j.Consumer(peerConsumer(l.addr.Name)); ok {
			kept = max(rel+1, r.j.FirstSeq())
		}
		r.mu.Lock()
		err = r.core.StartResync(l.addr.Name, begin.From, kept)
		r.processLocked()
		r.mu.Unlock()
		if err != nil {
			return true, err
		}
		l.log.Info("resyncing mirror", "from_seq", begin.From, "reset_journal", begin.Reset, "chunks", bm.Count())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.runResync(sctx, conn, bm, begin.From); err != nil && sctx.Err() == nil {
				errc <- fmt.Errorf("resync: %w", err)
				cancel()
				st.Cancel(0)
			}
		}()
	}
	wg.Add(2)
	// A sender that stops (records gone, a write failed) ends the session:
	// the next handshake decides anew. Left up, nobody would send.
	send := func(f func(context.Context, *session) error) {
		defer wg.Done()
		err := f(sctx, s)
		errc <- err
		if sctx.Err() == nil {
			cancel()
			st.Cancel(0)
		}
	}
	go send(l.sendRecords)
	go send(l.sendControl)
	rerr := l.receive(sctx, s)
	cancel()
	st.Cancel(0)
	wg.Wait()
	close(errc)
	for e := range errc {
		if e != nil && !errors.Is(e, context.Canceled) && rerr == nil {
			rerr = e
		}
	}
	return true, rerr
}

// startStream is called under r.mu by processLocked.
func (l *peerLink) startStream(from uint64) {
	if l.sess == nil {
		return
	}
	select {
	case l.sess.startCh <- from:
	default:
	}
}

// queueFlush is called under r.mu by processLocked; flushes coalesce to
// the highest seq asked.
func (l *peerLink) queueFlush(through uint64) {
	s := l.sess
	if s == nil {
		return
	}
	offer(s.flushCh, through, maxSeq)
}

// sendFrame writes one frame and flushes it, holding mu (the stream's
// writer lock: several goroutines send on a session's stream).
func sendFrame(mu *sync.Mutex, st frameStream, typ wire.MsgType, p []byte) error {
	mu.Lock()
	defer mu.Unlock()
	if err := st.WriteFrame(uint8(typ), p); err != nil {
		return err
	}
	return st.Flush()
}

// sendRecords streams journal records from the seq the core names, on the
// session's lanes when the mirror offers them (else on the log stream).
// Encoding is pipelined with sending: while lane writers have frames on
// the wire, the next ones are read from the journal and encoded.
func (l *peerLink) sendRecords(ctx context.Context, s *session) error {
	var from uint64
	select {
	case from = <-s.startCh:
	case <-ctx.Done():
		return ctx.Err()
	}
	rd, err := l.r.j.NewReader(from)
	if err != nil {
		if errors.Is(err, journal.ErrGone) {
			l.markNeedsResync()
		}
		return fmt.Errorf("read journal from %d: %w", from, err)
	}
	defer rd.Close()
	if s.begin != nil {
		if err := sendFrame(&s.writeMu, s.st, wire.MsgResyncBegin, wire.AppendResyncBegin(nil, *s.begin)); err != nil {
			return fmt.Errorf("send resync begin: %w", err)
		}
	}
	lanes, closeLanes := l.openLanes(ctx, s, from)
	spread := spreadMin
	if l.r.opts.spreadAll {
		spread = 0
	}
	p := newLanePipe(ctx, lanes, spread)
	defer func() {
		// Returning ends the session (see session's send): cancelling the
		// streams first releases a writer blocked on one.
		p.cancel()
		closeLanes()
		s.st.Cancel(0)
		p.wg.Wait()
	}()
	var wrecs []wire.Record
	for {
		recs, err := rd.Next(p.ctx, wire.MaxRecordsPerFrame, l.r.opts.BatchBytes)
		if err != nil {
			if errors.Is(err, journal.ErrGone) {
				l.markNeedsResync()
			}
			return p.err(fmt.Errorf("read journal: %w", err))
		}
		buf, err := p.buffer()
		if err != nil {
			return p.err(err)
		}
		if recs, err = l.r.resolveIndirect(ctx, recs); err != nil {
			return err
		}
		wrecs = wireRecords(wrecs, recs)
		*buf, err = wire.AppendRecords((*buf)[:0], wrecs)
		if err != nil {
			return err
		}
		if err := s.win.reserve(p.ctx, recs[len(recs)-1].Seq, len(*buf)); err != nil {
			return p.err(err)
		}
		if err := p.send(buf); err != nil {
			return p.err(err)
		}
	}
}

func (l *peerLink) markNeedsResync() {
	l.r.mu.Lock()
	l.needsResync = true
	// The next handshake must see the journal as it is now, not as of
	// the last tick: the mirror is resynced instead of streamed to again.
	l.r.core.JournalFirst(l.r.journalFirstLocked(l.r.j.FirstSeq()))
	l.r.mu.Unlock()
	l.log.Warn("records this mirror needs were dropped from the journal; it needs a resync")
}

// sendControl sends flushes and heartbeats.
func (l *peerLink) sendControl(ctx context.Context, s *session) error {
	t := time.NewTicker(l.r.opts.HeartbeatEvery)
	defer t.Stop()
	var buf []byte
	for {
		var typ wire.MsgType
		select {
		case <-ctx.Done():
			return ctx.Err()
		case through := <-s.flushCh:
			typ, buf = wire.MsgFlush, wire.AppendFlush(buf[:0], wire.Flush{Through: through})
		case <-t.C:
			if !l.r.opts.Lease.Valid() {
				continue // fenced: no contact (coord's Node contract)
			}
			l.r.mu.Lock()
			last := l.r.core.LastSeq()
			l.r.mu.Unlock()
			typ, buf = wire.MsgHeartbeat, wire.AppendHeartbeat(buf[:0], wire.Heartbeat{Time: uint64(time.Since(s.start)), LastSeq: last})
		}
		if err := sendFrame(&s.writeMu, s.st, typ, buf); err != nil {
			return fmt.Errorf("send %v: %w", typ, err)
		}
	}
}

// receive handles acks, heartbeat echoes and errors from the mirror.
func (l *peerLink) receive(ctx context.Context, s *session) error {
	r := l.r
	buf := make([]byte, 4096)
	for {
		typ, p, err := s.st.ReadFrame(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read from mirror: %w", err)
		}
		switch wire.MsgType(typ) {
		case wire.MsgAck:
			a, err := wire.DecodeAck(p)
			if err != nil {
				return fmt.Errorf("bad ack: %w", err)
			}
			s.win.acked(a.Received)
			r.mu.Lock()
			prev := l.acked
			err = r.core.PeerAck(l.addr.Name, a)
			if lv := a.Level(r.opts.AckLevel); lv > prev {
				l.acked = lv
				r.observeAck(l.addr.Name, prev, lv)
			}
			r.processLocked()
			r.mu.Unlock()
			if err != nil {
				return err
			}
		case wire.MsgHeartbeatEcho:
			h, err := wire.DecodeHeartbeat(p)
			if err != nil {
				return fmt.Errorf("bad heartbeat echo: %w", err)
			}
			rtt := time.Since(s.start) - time.Duration(h.Time)
			if rtt < 0 {
				return errors.New("heartbeat echo from the future (not a time this session sent)")
			}
			r.mu.Lock()
			l.rtt = rtt
			l.confirmed = s.start.Add(time.Duration(h.Time))
			r.mu.Unlock()
		case wire.MsgHeartbeat:
			// Mirrors do not send heartbeats of their own; ignore.
		case wire.MsgError:
			e, err := wire.DecodeError(p)
			if err != nil {
				return fmt.Errorf("mirror sent a malformed error: %w", err)
			}
			r.mu.Lock()
			err = r.core.PeerError(l.addr.Name, e)
			r.processLocked()
			r.mu.Unlock()
			return err
		default:
			return fmt.Errorf("unexpected %v from mirror", wire.MsgType(typ))
		}
	}
}

// lagBytes is the record data between the mirror's ack and the last seq.
func (l *peerLink) lagBytes(acked, last uint64) uint64 {
	return l.r.bytesBetween(acked, last)
}

// openSideStream opens a resync or verify stream on conn and names the
// volume in its first frame (StreamVolume), so a mirror host routes it to
// the right volume. Ending ctx cancels the stream; done (call it once)
// cancels it too and releases the context watcher.
func (l *peerLink) openSideStream(ctx context.Context, conn streamConn) (frameStream, func(), error) {
	buf, err := wire.AppendStreamVolume(nil, wire.StreamVolume{Name: l.r.opts.VolumeName})
	if err != nil {
		return nil, nil, fmt.Errorf("name the stream's volume: %w", err)
	}
	st, done, err := openStreamWith(ctx, conn, wire.MsgStreamVolume, buf)
	if err != nil {
		return nil, nil, fmt.Errorf("name the stream's volume: %w", err)
	}
	return st, done, nil
}

// openStreamWith opens a stream on conn and sends its first frame (typ,
// first). Ending ctx cancels the stream; done (call it once) cancels it
// too and releases the context watcher.
func openStreamWith(ctx context.Context, conn streamConn, typ wire.MsgType, first []byte) (frameStream, func(), error) {
	st, err := conn.OpenStream(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("open stream: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { st.Cancel(0) })
	done := func() { stop(); st.Cancel(0) }
	err = st.WriteFrame(uint8(typ), first)
	if err == nil {
		err = st.Flush()
	}
	if err != nil {
		done()
		return nil, nil, err
	}
	return st, done, nil
}
