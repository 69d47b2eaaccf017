"""Protocol checks run by the Go e2e tests with Debian's python3-libnbd.

Usage: /usr/bin/python3 libnbd_checks.py CHECK URI

Each check raises (non-zero exit, traceback on stderr) on any mismatch and
prints "ok CHECK" on success. Every check works inside the first 64 MiB of
the export plus its last few KiB, so the export must be at least 64 MiB.
"""

import errno
import random
import sys

import nbd

MiB = 1024 * 1024


def connect(uri, strict=True):
    h = nbd.NBD()
    if not strict:
        # libnbd checks bounds/alignment before sending by default; turn that
        # off so that bad requests really reach the server.
        h.set_strict_mode(0)
    # TLS URIs name a certificate directory (tls-certificates=).
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    return h


def pattern(seed, n):
    return random.Random(seed).randbytes(n)


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def expect_bytes(got, want, what):
    if bytes(got) != bytes(want):
        i = first_diff(got, want)
        raise AssertionError(
            "%s: mismatch at byte %d of %d (got %r want %r)"
            % (what, i, len(want), bytes(got[i:i + 8]), bytes(want[i:i + 8])))


def check_unaligned(uri):
    """Random unaligned writes/reads in a 4 MiB window against a local model."""
    h = connect(uri)
    base, span = 8 * MiB, 4 * MiB
    rng = random.Random(1)
    model = bytearray(h.pread(span, base))
    edge = [(0, 1), (1, 1), (511, 2), (4095, 4098), (4097, 65537), (span - 3, 3),
            (12345, 1 << 20), (777, 131071)]
    ops = [("w",) + e for e in edge]
    for _ in range(300):
        off = rng.randrange(span)
        n = rng.randrange(1, min(span - off, 300000) + 1)
        ops.append((rng.choice("wwr"), off, n))
    for i, (kind, off, n) in enumerate(ops):
        if kind == "w":
            buf = pattern(i, n)
            h.pwrite(buf, base + off, nbd.CMD_FLAG_FUA if i % 7 == 0 else 0)
            model[off:off + n] = buf
        else:
            expect_bytes(h.pread(n, base + off), model[off:off + n],
                         "op %d read %d@%d" % (i, n, off))
    expect_bytes(h.pread(span, base), model, "final read of window")
    # the very last bytes of the export
    size = h.get_size()
    h.pwrite(b"\xfe\xed\xfa", size - 3)
    expect_bytes(h.pread(5, size - 5)[2:], b"\xfe\xed\xfa", "tail bytes")
    # a second connection sees the same window
    h.flush()
    h2 = connect(uri)
    expect_bytes(h2.pread(span, base), model, "window from second connection")
    h2.shutdown()
    h.shutdown()


def expect_nbd_error(fn, what):
    try:
        fn()
    except nbd.Error as e:
        expect(e.errnum in (errno.EINVAL, errno.ENOSPC, errno.EOVERFLOW,
                            errno.EIO, errno.EPERM),
               "%s: unexpected error %s" % (what, e))
        return e
    raise AssertionError("%s: succeeded, want an error" % what)


def check_range(uri):
    """Out-of-range requests fail and the connection keeps working."""
    h = connect(uri, strict=False)
    size = h.get_size()
    marker = pattern(99, 4096)
    h.pwrite(marker, 0)
    cases = [
        ("read crossing end", lambda: h.pread(2, size - 1)),
        ("read past end", lambda: h.pread(4096, size)),
        ("read far past end", lambda: h.pread(512, size + 1000 * MiB)),
        ("read offset near 2^63", lambda: h.pread(512, (1 << 63) - 256)),
        ("write crossing end", lambda: h.pwrite(b"x" * 8192, size - 4096)),
        ("write past end", lambda: h.pwrite(b"y" * 65536, size + 4096)),
        ("trim past end", lambda: h.trim(8192, size - 4096)),
        ("zero past end", lambda: h.zero(8192, size)),
    ]
    for what, fn in cases:
        expect_nbd_error(fn, what)
        # the connection must still be usable after every error
        expect_bytes(h.pread(4096, 0), marker, "read after " + what)
    # the tail inside the export was not modified by the failed write
    expect(h.pread(4096, size - 4096).count(b"x") == 0,
           "failed write crossing the end changed data")
    h.shutdown()


def check_inflight(uri):
    """256 requests in flight on one connection, each verified."""
    h = connect(uri)
    n, sz, base = 256, 64 * 1024, 16 * MiB
    bufs = [nbd.Buffer.from_bytearray(pattern(1000 + i, sz)) for i in range(n)]
    # interleave offsets so neighbouring requests do not touch
    order = list(range(n))
    random.Random(5).shuffle(order)
    cookies = [h.aio_pwrite(bufs[i], base + i * sz) for i in order]
    peak = h.aio_in_flight()
    pending = set(cookies)
    while pending:
        h.poll(-1)
        for c in list(pending):
            if h.aio_command_completed(c):
                pending.discard(c)
    rbufs = [nbd.Buffer(sz) for _ in range(n)]
    cookies = [h.aio_pread(rbufs[i], base + i * sz) for i in order]
    pending = set(cookies)
    while pending:
        h.poll(-1)
        for c in list(pending):
            if h.aio_command_completed(c):
                pending.discard(c)
    for i in range(n):
        expect_bytes(rbufs[i].to_bytearray(), bufs[i].to_bytearray(),
                     "in-flight request %d" % i)
    print("peak in flight: %d" % peak)
    h.shutdown()


def check_multiconn(uri):
    """Two connections cross-reading each other's writes after flush."""
    a, b = connect(uri), connect(uri)
    expect(a.can_multi_conn(), "server does not advertise multi-conn")
    for round_ in range(20):
        off = 24 * MiB + round_ * 70000
        pa, pb = pattern(2 * round_, 65536 + round_), pattern(2 * round_ + 1, 4097)
        a.pwrite(pa, off)
        a.flush()
        expect_bytes(b.pread(len(pa), off), pa, "round %d: b reads a" % round_)
        b.pwrite(pb, off + 3)
        b.flush()
        want = bytearray(pa)
        want[3:3 + len(pb)] = pb
        expect_bytes(a.pread(len(pa), off), want, "round %d: a reads b" % round_)
    a.shutdown()
    b.shutdown()


def check_trim(uri):
    """Trimmed ranges read back as zeroes; neighbours are untouched."""
    h = connect(uri)
    expect(h.can_trim(), "server does not advertise trim")
    base, n = 32 * MiB, 1 * MiB
    data = pattern(7, n)
    h.pwrite(data, base)
    want = bytearray(data)
    for off, ln, flags in [(0, 4096, 0), (65536, 131072, nbd.CMD_FLAG_FUA),
                           (300001, 5000, 0), (n - 4096, 4096, 0)]:
        h.trim(ln, base + off, flags)
        want[off:off + ln] = bytes(ln)
        expect_bytes(h.pread(n, base), want, "after trim %d@%d" % (ln, off))
    h.flush()
    expect_bytes(h.pread(n, base), want, "after trim + flush")
    h.shutdown()


def check_zero(uri):
    """Write-zeroes with and without FAST_ZERO, NO_HOLE and FUA."""
    h = connect(uri)
    expect(h.can_zero(), "server does not advertise write-zeroes")
    base, n = 40 * MiB, 2 * MiB
    data = pattern(8, n)
    h.pwrite(data, base)
    want = bytearray(data)
    cases = [(0, 4096, 0), (10000, 70000, nbd.CMD_FLAG_NO_HOLE),
             (262144, 262144, nbd.CMD_FLAG_FUA), (1 * MiB + 1, 3, 0)]
    for off, ln, flags in cases:
        h.zero(ln, base + off, flags)
        want[off:off + ln] = bytes(ln)
        expect_bytes(h.pread(n, base), want, "after zero %d@%d flags %#x" % (ln, off, flags))
    if h.can_fast_zero():
        off, ln = 1536 * 1024, 262144
        try:
            h.zero(ln, base + off, nbd.CMD_FLAG_FAST_ZERO)
            want[off:off + ln] = bytes(ln)
            expect_bytes(h.pread(n, base), want, "after fast zero")
            print("fast zero: done")
        except nbd.Error as e:
            # NBD allows refusing a fast zero with ENOTSUP
            expect(e.errnum == errno.ENOTSUP, "fast zero failed: %s" % e)
            print("fast zero: refused with ENOTSUP")
            # the connection still works
            expect_bytes(h.pread(4096, base + 4096), want[4096:8192], "after refused fast zero")
    else:
        print("fast zero: not advertised")
    h.shutdown()


CHECKS = {
    "unaligned": check_unaligned,
    "range": check_range,
    "inflight": check_inflight,
    "multiconn": check_multiconn,
    "trim": check_trim,
    "zero": check_zero,
}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in CHECKS:
        sys.exit("usage: libnbd_checks.py {%s} URI" % ",".join(CHECKS))
    CHECKS[sys.argv[1]](sys.argv[2])
    print("ok", sys.argv[1])
