// Package store is the local disk image of a node: a regular file (sparse
// where the filesystem allows) or a block device, accessed with pread and
// pwrite.
//
// Trim punches holes (FALLOC_FL_PUNCH_HOLE; BLKDISCARD on block devices) and
// zeroing uses FALLOC_FL_ZERO_RANGE (BLKZEROOUT on block devices). When the
// filesystem or device refuses those, the store falls back to writing zero
// buffers, so callers never see EOPNOTSUPP from Trim or Zero unless they
// asked for a fast path only (ZeroFast).
//
// Create and Open use the operating system's file system; CreateFS and
// OpenFS take any vfs.FS (tests use the crashable in-memory one). The fast
// paths are the optional methods of vfs.OS files (punch hole, zero range,
// SEEK_DATA); on a file system whose files lack them, Trim and Zero write
// zeroes, ZeroFast reports ENOTSUP and DataRanges reports the whole range.
// Block devices are recognised, and driven with ioctls, on vfs.OS only.
//
// A *File is safe for concurrent use: every method is a positioned system
// call or a sequence of them, and nothing is cached in user space. Buffers
// passed in are not retained.
package store
