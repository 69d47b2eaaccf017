// Package e2e holds blockmirror's end-to-end tests: they build the real
// blockmirror binary, run `blockmirror serve` on loopback TCP addresses or
// unix sockets in temporary directories, and drive it with real NBD clients
// (nbdinfo, nbdsh and python3-libnbd, qemu-io, qemu-img, nbdcopy, fio's nbd
// engine, nbdfuse + a loop device + ext4) and with a small raw NBD client
// written here for the cases tools cannot produce (dropping a connection
// with requests in flight).
//
// The package has no non-test code besides this file. Run it with
//
//	go test ./internal/e2e            # everything (fio and ext4 take longest)
//	go test -short ./internal/e2e     # skips the slow tests
//	E2E_SERVER=nbdkit go test ./internal/e2e
//
// E2E_SERVER=nbdkit runs the same tests against `nbdkit file` instead of
// blockmirror, which checks the tests themselves against a reference server.
// BLOCKMIRROR_BIN=/path/to/blockmirror uses a prebuilt binary instead of
// building ./cmd/blockmirror in TestMain.
//
// Each test skips, naming what is missing, when a client tool, root, /dev/fuse
// or loop devices are unavailable; scripts/setup.sh installs all the tools.
//
// Servers run as child processes with their stderr captured to a log file
// that is printed when a test fails (see internal/testutil). Only loopback
// addresses are used.
package e2e
