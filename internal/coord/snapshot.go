package coord

import (
	"context"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// snapshot is one consistent read of a volume's keys (one Get at one
// revision).
type snapshot struct {
	rev        int64
	leader     *leaderKey
	epoch      *EpochRecord
	sync       *SyncSet
	pause      *PauseRecord
	failover   *FailoverRecord
	switchover *SwitchoverRecord
	members    map[string]Member
	// bad lists records that could not be decoded (they are ignored).
	bad []string
}

// leaderKey is the election key with the lowest create revision.
type leaderKey struct {
	key       string
	node      string
	createRev int64
	lease     clientv3.LeaseID
}

// others returns the member records of every node but self.
func (s *snapshot) others(self string) []Member {
	var out []Member
	for name, m := range s.members {
		if name != self {
			out = append(out, m)
		}
	}
	return out
}

// readSnapshot reads every key of the volume in one Get.
func readSnapshot(ctx context.Context, kv clientv3.KV, k Keys) (*snapshot, error) {
	resp, err := kv.Get(ctx, k.Base+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", k.Base, err)
	}
	s := &snapshot{rev: resp.Header.Revision, members: map[string]Member{}}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case strings.HasPrefix(key, k.Election()+"/"):
			if s.leader == nil || kv.CreateRevision < s.leader.createRev {
				s.leader = &leaderKey{key: key, node: string(kv.Value), createRev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
			}
		case strings.HasPrefix(key, k.Members()):
			if m := parse(s, kv, decodeMember); m != nil {
				if k.Member(m.Node) != key {
					s.bad = append(s.bad, fmt.Sprintf("%s: names node %q", key, m.Node))
					continue
				}
				s.members[m.Node] = *m
			}
		case key == k.Epoch():
			s.epoch = parse(s, kv, decodeEpoch)
		case key == k.Sync():
			s.sync = parse(s, kv, decodeSync)
		case key == k.Pause():
			if s.pause = parse(s, kv, decodePause); s.pause == nil {
				// A pause key that does not parse still pauses.
				s.pause = &PauseRecord{Reason: "unreadable pause record"}
			}
		case key == k.Failover():
			s.failover = parse(s, kv, decodeFailover)
		case key == k.Switchover():
			s.switchover = parse(s, kv, decodeSwitchover)
		}
	}
	return s, nil
}

// unchanged is the Txn comparison that key still has the mod revision rev
// (0: still absent).
func unchanged(key string, rev int64) clientv3.Cmp {
	if rev == 0 {
		return clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(key), "=", rev)
}

// parse decodes one record with its mod revision, or notes why it cannot
// and returns nil.
func parse[T any, P interface {
	*T
	setRev(int64)
}](s *snapshot, kv *mvccpb.KeyValue, dec func([]byte) (T, error)) *T {
	v, err := dec(kv.Value)
	if err != nil {
		s.bad = append(s.bad, fmt.Sprintf("%s: %v", kv.Key, err))
		return nil
	}
	P(&v).setRev(kv.ModRevision)
	return &v
}

func (m *Member) setRev(r int64)           { m.Rev = r }
func (e *EpochRecord) setRev(r int64)      { e.Rev = r }
func (s *SyncSet) setRev(r int64)          { s.Rev = r }
func (p *PauseRecord) setRev(int64)        {}
func (f *FailoverRecord) setRev(r int64)   { f.Rev = r }
func (w *SwitchoverRecord) setRev(r int64) { w.Rev = r }

// modRev is the record's mod revision, 0 for an absent (nil) record.
func (e *EpochRecord) modRev() int64 { return modRev(e, func(e *EpochRecord) int64 { return e.Rev }) }
func (s *SyncSet) modRev() int64     { return modRev(s, func(s *SyncSet) int64 { return s.Rev }) }
func (f *FailoverRecord) modRev() int64 {
	return modRev(f, func(f *FailoverRecord) int64 { return f.Rev })
}
func (w *SwitchoverRecord) modRev() int64 {
	return modRev(w, func(w *SwitchoverRecord) int64 { return w.Rev })
}

func modRev[T any](p *T, f func(*T) int64) int64 {
	if p == nil {
		return 0
	}
	return f(p)
}
