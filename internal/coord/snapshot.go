package coord

import (
	"context"
	"fmt"
	"strings"

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
	bad := func(key string, err error) { s.bad = append(s.bad, fmt.Sprintf("%s: %v", key, err)) }
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		switch {
		case strings.HasPrefix(key, k.Election()+"/"):
			if s.leader == nil || kv.CreateRevision < s.leader.createRev {
				s.leader = &leaderKey{key: key, node: string(kv.Value), createRev: kv.CreateRevision, lease: clientv3.LeaseID(kv.Lease)}
			}
		case strings.HasPrefix(key, k.Members()):
			m, err := decodeMember(kv.Value)
			if err != nil || k.Member(m.Node) != key {
				bad(key, err)
				continue
			}
			m.Rev = kv.ModRevision
			s.members[m.Node] = m
		case key == k.Epoch():
			e, err := decodeEpoch(kv.Value)
			if err != nil {
				bad(key, err)
				continue
			}
			e.Rev = kv.ModRevision
			s.epoch = &e
		case key == k.Sync():
			v, err := decodeSync(kv.Value)
			if err != nil {
				bad(key, err)
				continue
			}
			v.Rev = kv.ModRevision
			s.sync = &v
		case key == k.Pause():
			p, err := decodePause(kv.Value)
			if err != nil {
				// A pause key that does not parse still pauses.
				p = PauseRecord{Reason: "unreadable pause record"}
			}
			s.pause = &p
		case key == k.Failover():
			f, err := decodeFailover(kv.Value)
			if err != nil {
				bad(key, err)
				continue
			}
			f.Rev = kv.ModRevision
			s.failover = &f
		case key == k.Switchover():
			w, err := decodeSwitchover(kv.Value)
			if err != nil {
				bad(key, err)
				continue
			}
			w.Rev = kv.ModRevision
			s.switchover = &w
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
