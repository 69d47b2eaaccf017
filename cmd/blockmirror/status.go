package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blockmirror/blockmirror/internal/daemon"
)

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", "status [--admin ADDR | --control PATH] [--json] [--watch]", stderr)
	admin := fs.String("admin", defaultAdmin, "admin endpoint of the node (a mirror's default is 127.0.0.1:7481)")
	control := fs.String("control", "", "read the status from the node's control socket instead (works with --admin '')")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	watch := fs.Bool("watch", false, "refresh every --interval until interrupted")
	interval := fs.Duration("interval", time.Second, "refresh period for --watch")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		var st *daemon.NodeStatus
		var raw []byte
		var err error
		if *control != "" {
			st, raw, err = daemon.ControlStatus(ctx, *control)
		} else {
			st, raw, err = daemon.FetchStatus(ctx, client, *admin)
		}
		if err != nil {
			return err
		}
		if *watch {
			fmt.Fprint(stdout, "\033[H\033[2J")
			fmt.Fprintf(stdout, "%s  (every %v; Ctrl-C to stop)\n\n", time.Now().Format(time.TimeOnly), *interval)
		}
		if *asJSON {
			stdout.Write(raw)
		} else {
			printStatus(stdout, st)
		}
		if !*watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*interval):
		}
	}
}

// progressLine renders a resync's progress as a bar with numbers.
func progressLine(done, total, sent int64, rate, eta float64, active bool) string {
	const width = 30
	frac := float64(done) / float64(total)
	n := min(width, int(frac*width))
	bar := strings.Repeat("#", n) + strings.Repeat(".", width-n)
	s := fmt.Sprintf("[%s] %5.1f%%  %s of %s compared, %s sent", bar, 100*frac, humanBytes(done), humanBytes(total), humanBytes(sent))
	if active {
		s += fmt.Sprintf(", %s/s, ETA %s", humanBytes(int64(rate)), (time.Duration(eta) * time.Second).String())
	}
	return s
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func printStatus(w io.Writer, st *daemon.NodeStatus) {
	if len(st.Volumes) > 0 {
		if st.Control != "" {
			fmt.Fprintf(w, "control:      %s\n", st.Control)
		}
		if c := st.Connections; c != nil {
			fmt.Fprintf(w, "connections:  %d open, %d dialed, %d accepted\n", c.Open, c.Dialed, c.Accepted)
		}
		names := make([]string, 0, len(st.Volumes))
		for n := range st.Volumes {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			v := st.Volumes[n]
			fmt.Fprintf(w, "\n== volume %s ==\n", n)
			printStatus(w, &v)
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	if st.Control != "" {
		fmt.Fprintf(tw, "control:\t%s\n", st.Control)
	}
	if m := st.Mirror; m != nil {
		fmt.Fprintf(tw, "role:\tmirror\n")
		if m.Volume == "" {
			fmt.Fprintf(tw, "volume:\tnone yet (waiting for a primary)\n")
			return
		}
		conn := "no primary connected"
		if m.Connected {
			conn = "connected to " + m.Primary
		}
		fmt.Fprintf(tw, "volume:\t%s (%d bytes)\nepoch:\t%d\nprimary:\t%s\n", m.Volume, m.Size, m.Epoch, conn)
		disk := "consistent (write-order prefix of the primary)"
		if m.NeedsResync {
			disk = "needs resync"
		}
		if m.Inconsistent {
			disk = "INCONSISTENT (resync in progress; not promotable without --force)"
		}
		fmt.Fprintf(tw, "disk:\t%s\n", disk)
		if m.SplitBrain != "" {
			fmt.Fprintf(tw, "SPLIT BRAIN:\t%s\n", m.SplitBrain)
		}
		for _, q := range m.Quarantined {
			fmt.Fprintf(tw, "quarantined:\t%d records (seq %d..%d, %d bytes) in %s\n", q.Records, q.FirstSeq, q.LastSeq, q.DataBytes, q.File)
		}
		fmt.Fprintf(tw, "seqs:\treceived %d, written %d, durable %d, applied %d\n", m.Received, m.Written, m.Durable, m.Applied)
		return
	}
	p := st.Primary
	if p == nil {
		fmt.Fprintln(tw, "unknown status")
		return
	}
	fmt.Fprintf(tw, "role:\tprimary\nvolume:\t%s (%d bytes)\nepoch:\t%d\nnbd:\t%s\n", p.Volume, p.Size, p.Epoch, p.NBD)
	if p.SplitBrain != "" {
		fmt.Fprintf(tw, "SPLIT BRAIN:\t%s\n", p.SplitBrain)
	}
	r := p.Replication
	if r == nil {
		fmt.Fprintf(tw, "replication:\tnone (no --mirror)\n")
		return
	}
	var flags []string
	if r.Degraded {
		flags = append(flags, "DEGRADED")
	}
	if r.Throttled {
		flags = append(flags, "THROTTLED")
	}
	if r.Fenced {
		flags = append(flags, "FENCED (writes fail)")
	}
	state := "ok"
	if len(flags) > 0 {
		state = strings.Join(flags, ", ")
	}
	fmt.Fprintf(tw, "replication:\t%s, %d of %d mirrors at ack level %s (allow degraded: %v)\nstate:\t%s\n",
		r.Mode, r.SyncAcks, len(r.Peers), r.AckLevel, r.AllowDegraded, state)
	fmt.Fprintf(tw, "seqs:\tlast %d, local durable %d, quorum %d, journal from %d\n\n", r.LastSeq, r.LocalDurable, r.QuorumSeq, r.JournalFirst)
	fmt.Fprintf(tw, "MIRROR\tADDRESS\tSTATE\tACKED\tLAG RECORDS\tLAG BYTES\tLAG SECONDS\tRTT\tLAST ERROR\n")
	for _, m := range r.Peers {
		acked := m.Written
		switch r.AckLevel {
		case "received":
			acked = m.Received
		case "durable":
			acked = m.Durable
		}
		state := m.State
		if !m.Connected && state != "disconnected" {
			state += " (disconnected)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%.2f\t%dµs\t%s\n", m.Name, m.Addr, state, acked,
			m.LagRecords, m.LagBytes, m.LagSeconds, m.RTTMicros, m.LastError)
	}
	for _, m := range r.Peers {
		if rs := m.Resync; rs != nil && rs.TotalBytes > 0 {
			what := "resync"
			if !rs.Active {
				what = "last resync"
			}
			fmt.Fprintf(tw, "\n%s %s:\t%s\n", m.Name, what, progressLine(rs.DoneBytes, rs.TotalBytes, rs.SentBytes, rs.Rate, rs.ETASeconds, rs.Active))
		}
	}
}
