package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"

	"github.com/blockmirror/blockmirror/mirror"
)

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", "verify [--admin ADDR | --control PATH] [--volume NAME] [--resync] [--json]", stderr)
	var target controlTarget
	target.register(fs, defaultAdmin, "the primary")
	resync := fs.Bool("resync", false, "resync the differing ranges (by default verify changes nothing)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	volume := fs.String("volume", "", "the volume to verify, on a process serving several")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	q := url.Values{}
	if *resync {
		q.Set("resync", "1")
	}
	if *volume != "" {
		q.Set("volume", *volume)
	}
	path := "/v1/verify"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var rep mirror.VerifyReport
	if err := target.post(ctx, path, &rep); err != nil {
		return err
	}
	bad := false
	for _, p := range rep.Peers {
		if p.Error != "" || len(p.Differing) > 0 {
			bad = true
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
		if bad {
			return errVerifyFailed
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "MIRROR\tCOMPARED\tDIFFERING\tSECONDS\tRESULT\n")
	for _, p := range rep.Peers {
		result := "identical"
		switch {
		case p.Error != "":
			result = "error: " + p.Error
		case len(p.Differing) > 0:
			result = fmt.Sprintf("%d ranges differ", len(p.Differing))
			if p.Resync {
				result += "; resync started"
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.2f\t%s\n", p.Name, p.ComparedBytes, p.DifferingBytes, p.Seconds, result)
	}
	tw.Flush()
	for _, p := range rep.Peers {
		for _, g := range p.Differing {
			fmt.Fprintf(stdout, "%s differs at [%d, %d) (%d bytes)\n", p.Name, g.Offset, g.Offset+g.Length, g.Length)
		}
	}
	if bad {
		return errVerifyFailed
	}
	return nil
}
