package faultproxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Handler returns the HTTP control interface (see the package
// documentation). Errors are reported as 400 with a plain-text message;
// successful POSTs answer 200 with the new Stats as JSON.
func (p *Proxy) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /partition", func(w http.ResponseWriter, r *http.Request) {
		dir, err := ParseDirection(r.URL.Query().Get("dir"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p.Partition(dir)
		p.writeStats(w)
	})
	mux.HandleFunc("POST /heal", func(w http.ResponseWriter, r *http.Request) {
		p.Heal()
		p.writeStats(w)
	})
	mux.HandleFunc("POST /faults", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		dir, err := ParseDirection(q.Get("dir"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f, err := parseFaults(q)
		if err == nil {
			err = p.SetFaults(dir, f)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p.writeStats(w)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) { p.writeStats(w) })
	return mux
}

func (p *Proxy) writeStats(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(p.Stats())
}

func parseFaults(q url.Values) (Faults, error) {
	var f Faults
	for key, vals := range q {
		v := vals[len(vals)-1]
		var err error
		switch key {
		case "dir":
		case "drop":
			f.Drop, err = strconv.ParseFloat(v, 64)
		case "dup":
			f.Duplicate, err = strconv.ParseFloat(v, 64)
		case "reorder":
			f.Reorder, err = strconv.ParseFloat(v, 64)
		case "delay":
			f.Delay, err = time.ParseDuration(v)
		case "jitter":
			f.Jitter, err = time.ParseDuration(v)
		case "reorder_delay":
			f.ReorderDelay, err = time.ParseDuration(v)
		default:
			return f, fmt.Errorf("faultproxy: unknown parameter %q (want dir, drop, delay, jitter, dup, reorder, reorder_delay)", key)
		}
		if err != nil {
			return f, fmt.Errorf("faultproxy: parameter %s=%q: %w", key, v, err)
		}
	}
	return f, f.validate()
}
