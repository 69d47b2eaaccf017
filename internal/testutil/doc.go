// Package testutil holds helpers shared by blockmirror's integration tests:
// building the blockmirror binary, choosing free loopback addresses, and
// running a child process whose output is captured to a log file.
//
// # Processes
//
// [Start] runs a program with its stdout and stderr appended to a log file in
// the test's temporary directory, waits until it is ready (a log line
// appeared and/or an address accepts connections) and registers a cleanup
// that kills it if the test did not stop it. When a test fails, the tail of
// every log is printed with the test's output, so a failure in CI shows what
// the server said. [Proc.Stop] sends a signal (SIGTERM for a graceful stop)
// and escalates to SIGKILL after a grace period.
//
// # Addresses
//
// Tests use loopback only. [FreeTCPAddr] picks a random address in
// 127.0.0.0/8 and lets the kernel choose a free port on it: binding to a
// random 127.x.y.z makes collisions with other processes that bind
// 127.0.0.1 impossible and collisions between parallel tests unlikely.
// [SocketDir] returns a short directory for unix sockets (sun_path is
// limited to 107 bytes, too short for some t.TempDir paths).
//
// # Concurrency
//
// A [Proc] may be used from several goroutines; Start and Stop must be called
// from the test goroutine (they call t.Fatal).
package testutil
