package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/blockmirror/blockmirror/transport"
)

const certsUsage = `Usage: blockmirror certs init   --out DIR NAME...                            the cluster CA and a key pair per node
       blockmirror certs client --certs DIR --out DIR NAME                   an NBD client's certificate (qemu, libnbd)
       blockmirror certs server --certs DIR --out DIR [--host HOST]... NAME  an NBD server certificate naming the hosts clients dial

Run ` + "`blockmirror certs COMMAND -h`" + ` for the flags.`

func runCerts(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, certsUsage)
		return errUsage
	}
	switch args[0] {
	case "init":
		return certsInit(args[1:], stdout, stderr)
	case "client", "server":
		return certsNBD(args[0], args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, certsUsage)
		return flag.ErrHelp
	}
	fmt.Fprintf(stderr, "unknown certs command %q\n%s\n", args[0], certsUsage)
	return errUsage
}

func certsInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("certs init", "certs init --out DIR NAME...", stderr)
	out := fs.String("out", "", "directory for ca.crt, ca.key and NAME.crt/NAME.key (created; an existing CA there is reused)")
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if *out == "" || fs.NArg() == 0 {
		fmt.Fprintln(stderr, "--out and at least one node NAME are required")
		fs.Usage()
		return errUsage
	}
	issued, err := transport.InitCertsWith(*out, fs.Args(), transport.CertOptions{})
	if err != nil {
		return err
	}
	for _, n := range fs.Args() {
		state := "exists"
		for _, i := range issued {
			if i == n {
				state = "issued"
			}
		}
		fmt.Fprintf(stdout, "%s: %s (%s/%s.crt)\n", n, state, *out, n)
	}
	return nil
}

// hostList is the repeatable --host flag.
type hostList []string

func (h *hostList) String() string { return strings.Join(*h, ",") }

func (h *hostList) Set(v string) error {
	for _, x := range strings.Split(v, ",") {
		x = strings.TrimSpace(x)
		if x == "" {
			continue
		}
		if net.ParseIP(x) == nil && transport.ValidateNodeName(x) != nil {
			return fmt.Errorf("%q is neither an IP address nor a host name", x)
		}
		*h = append(*h, x)
	}
	return nil
}

// certsNBD is `certs client` and `certs server`: a certificate from the
// cluster CA for an NBD client or an NBD server, in the directory layout
// qemu's tls-creds-x509 and libnbd's tls-certificates read.
func certsNBD(kind string, args []string, stdout, stderr io.Writer) error {
	server := kind == "server"
	synopsis := "certs client --certs DIR --out DIR NAME"
	if server {
		synopsis = "certs server --certs DIR --out DIR [--host HOST]... NAME"
	}
	fs := newFlagSet("certs "+kind, synopsis, stderr)
	certs := fs.String("certs", "", "the cluster's certificate directory (ca.crt and ca.key, from `certs init`)")
	out := fs.String("out", "", "directory to write ca-cert.pem and the "+kind+"-cert.pem / "+kind+"-key.pem pair to (created 0700; existing files are never replaced)")
	var hosts hostList
	if server {
		fs.Var(&hosts, "host", "a host name or IP address NBD clients connect to (repeatable, or comma-separated); NAME is always included")
	}
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if *certs == "" || *out == "" || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "--certs, --out and exactly one NAME are required")
		fs.Usage()
		return errUsage
	}
	name := fs.Arg(0)
	ca, err := transport.LoadCA(*certs)
	if err != nil {
		return err
	}
	var id *transport.Identity
	if server {
		id, err = ca.IssueServer(name, hosts, transport.KeyECDSAP256, 0)
	} else {
		id, err = ca.IssueClient(name, transport.KeyECDSAP256, 0)
	}
	if err != nil {
		return err
	}
	if err := transport.WritePEMDir(*out, id, server); err != nil {
		return err
	}
	if server {
		fmt.Fprintf(stdout, "NBD server certificate %s for %s in %s (%s, %s, %s)\nuse: blockmirror serve ... --nbd-tls require --nbd-tls-cert %s/%s --nbd-tls-key %s/%s\n",
			name, strings.Join(append([]string{name}, hosts...), ", "), *out, transport.PEMCACert, transport.PEMServerCert, transport.PEMServerKey,
			*out, transport.PEMServerCert, *out, transport.PEMServerKey)
		return nil
	}
	fmt.Fprintf(stdout, "NBD client certificate %s in %s (%s, %s, %s); give the directory to the client:\n"+
		"  nbdinfo 'nbds://HOST:10809/EXPORT?tls-certificates=%s'\n"+
		"  qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir=%s --image-opts driver=nbd,server.type=inet,server.host=HOST,server.port=10809,export=EXPORT,tls-creds=tls0\n"+
		"(the key is 0600: make it readable by the client's user, e.g. chown libvirt-qemu)\n",
		name, *out, transport.PEMCACert, transport.PEMClientCert, transport.PEMClientKey, *out, *out)
	return nil
}
