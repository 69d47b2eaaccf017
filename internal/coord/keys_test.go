package coord

import (
	"errors"
	"strings"
	"testing"
)

func TestKeysFor(t *testing.T) {
	k, err := KeysFor("", "db")
	if err != nil || k.Election() != "/blockmirror/db/leader" || k.Member("m1") != "/blockmirror/db/members/m1" {
		t.Fatalf("KeysFor: %+v %v", k, err)
	}
	for _, bad := range [][2]string{{"noslash", "db"}, {"/p", ""}, {"/p", "a/b"}, {"/p", strings.Repeat("x", 200)}} {
		if _, err := KeysFor(bad[0], bad[1]); err == nil {
			t.Errorf("KeysFor(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

func TestDecodeRecords(t *testing.T) {
	good := []string{
		encode(Member{Node: "m1", Role: RoleMirror, Epoch: 2, Seq: 9, Consistent: true}),
		encode(SyncSet{Mode: ModeSync, K: 1, Members: []string{"a", "b"}}),
	}
	if _, err := decodeMember([]byte(good[0])); err != nil {
		t.Errorf("member: %v", err)
	}
	if _, err := decodeSync([]byte(good[1])); err != nil {
		t.Errorf("sync: %v", err)
	}
	bad := map[string]func([]byte) error{
		`{"node":"m1","role":"boss","epoch":1}`:     func(b []byte) error { _, err := decodeMember(b); return err },
		`{"node":"../x","role":"mirror"}`:           func(b []byte) error { _, err := decodeMember(b); return err },
		`{"node":"m1","role":"mirror"} {}`:          func(b []byte) error { _, err := decodeMember(b); return err },
		`{"node":"m1","role":"mirror","extra":1}`:   func(b []byte) error { _, err := decodeMember(b); return err },
		`{"mode":"sync","k":3,"members":["a","b"]}`: func(b []byte) error { _, err := decodeSync(b); return err },
		`{"mode":"sync","k":1,"members":["a","a"]}`: func(b []byte) error { _, err := decodeSync(b); return err },
		`{"mode":"async","k":1,"members":["a"]}`:    func(b []byte) error { _, err := decodeSync(b); return err },
		`{"epoch":0,"node":"a"}`:                    func(b []byte) error { _, err := decodeEpoch(b); return err },
		`{"from":"a","to":"","seq":1}`:              func(b []byte) error { _, err := decodeSwitchover(b); return err },
		`"` + strings.Repeat("x", MaxRecord) + `"`:  func(b []byte) error { _, err := decodePause(b); return err },
	}
	for in, dec := range bad {
		if err := dec([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%.60s: err %v, want ErrMalformed", in, err)
		}
	}
}

// FuzzDecodeRecords: no input makes a decoder panic, and whatever one
// accepts encodes and decodes to itself.
func FuzzDecodeRecords(f *testing.F) {
	f.Add([]byte(encode(Member{Node: "m1", Role: RolePrimary, Epoch: 2, Peers: []PeerView{{Name: "b", InSync: true}}})))
	f.Add([]byte(encode(SyncSet{Mode: ModeSync, K: 1, Members: []string{"a", "b"}})))
	f.Add([]byte(encode(EpochRecord{Epoch: 3, Node: "a"})))
	f.Add([]byte(encode(SwitchoverRecord{From: "a", To: "b", Seq: 4})))
	f.Add([]byte(encode(FailoverRecord{To: "b", Epoch: 4, Automatic: true})))
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := decodeMember(b); err == nil {
			if m2, err := decodeMember([]byte(encode(m))); err != nil || encode(m2) != encode(m) {
				t.Fatalf("member round trip: %v", err)
			}
		}
		if s, err := decodeSync(b); err == nil {
			if s.Need() < 1 || s.Need() > len(s.Members)+1 {
				t.Fatalf("need %d of %d", s.Need(), len(s.Members))
			}
			if s2, err := decodeSync([]byte(encode(s))); err != nil || encode(s2) != encode(s) {
				t.Fatalf("sync round trip: %v", err)
			}
		}
		decodeEpoch(b)
		decodePause(b)
		decodeFailover(b)
		decodeSwitchover(b)
	})
}
