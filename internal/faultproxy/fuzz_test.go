package faultproxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
)

// FuzzFaultsQuery feeds arbitrary query strings to POST /faults: it must
// never panic, must answer 200 or 400, and a 200 must leave valid settings.
// Seeds are encodings of valid Faults, which must round-trip exactly.
func FuzzFaultsQuery(f *testing.F) {
	p, err := faultproxy.New(faultproxy.Config{Listen: "127.0.0.1:0", Target: "127.0.0.1:9"})
	if err != nil {
		f.Fatal(err)
	}
	h := p.Handler()
	encode := func(fl faultproxy.Faults) string {
		return fmt.Sprintf("dir=up&drop=%v&dup=%v&reorder=%v&delay=%v&jitter=%v&reorder_delay=%v",
			fl.Drop, fl.Duplicate, fl.Reorder, fl.Delay, fl.Jitter, fl.ReorderDelay)
	}
	f.Add(encode(faultproxy.Faults{Drop: 0.1, Delay: 5 * time.Millisecond, Jitter: time.Millisecond, Duplicate: 0.01}))
	f.Add(encode(faultproxy.Faults{Reorder: 1, ReorderDelay: time.Second}))
	f.Add("dir=both&drop=NaN")
	f.Add("delay=-1s")
	f.Fuzz(func(t *testing.T, q string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/faults?"+url.PathEscape(q), nil))
		rec = httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/faults", nil)
		req.URL.RawQuery = q
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200:
			var st faultproxy.Stats
			if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
				t.Fatal(err)
			}
			for _, fl := range []faultproxy.Faults{st.UpState.Faults, st.DownState.Faults} {
				if !(fl.Drop >= 0 && fl.Drop <= 1 && fl.Duplicate >= 0 && fl.Duplicate <= 1 && fl.Reorder >= 0 && fl.Reorder <= 1) ||
					fl.Delay < 0 || fl.Jitter < 0 || fl.ReorderDelay < 0 {
					t.Fatalf("accepted invalid faults %+v from %q", fl, q)
				}
			}
			// Round trip: re-encoding the accepted settings yields them again.
			want := p.Stats().UpState.Faults
			rec2 := httptest.NewRecorder()
			req2 := httptest.NewRequest(http.MethodPost, "/faults", nil)
			req2.URL.RawQuery = encode(want)
			h.ServeHTTP(rec2, req2)
			if got := p.Stats().UpState.Faults; rec2.Code != 200 || got != want {
				t.Fatalf("round trip of %+v gave %+v (%d)", want, got, rec2.Code)
			}
		case 400:
		default:
			t.Fatalf("status %d for %q", rec.Code, q)
		}
	})
}
