package nbd

import "context"

// Device is the block device an export serves. The server calls its methods
// concurrently from many goroutines; implementations must be safe for that.
//
// Errors: a method returns an error that wraps a syscall.Errno to choose the
// NBD error code sent to the client (EPERM, EIO, ENOMEM, EINVAL, ENOSPC,
// EOVERFLOW, ENOTSUP, ESHUTDOWN); any other error is sent as EIO. An error
// fails only the request it belongs to; the connection goes on.
//
// Buffers: p is owned by the server and valid only for the duration of the
// call; a device that needs the bytes later must copy them.
type Device interface {
	// Size is the export size in bytes; constant for the life of the export.
	Size() int64
	// ReadAt fills p with the bytes at off. The server has already checked
	// that [off, off+len(p)) lies within Size().
	ReadAt(ctx context.Context, p []byte, off int64) error
	// WriteAt writes p at off. With fua the data must be durable when
	// WriteAt returns.
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
	// Trim discards [off, off+length); the range may read back as zeroes or
	// old data afterwards (blockmirror's devices return zeroes).
	Trim(ctx context.Context, off, length int64, fua bool) error
	// WriteZeroes makes [off, off+length) read back as zeroes.
	WriteZeroes(ctx context.Context, off, length int64, flags ZeroFlags) error
	// Flush makes every write that completed before Flush was called
	// durable, on whichever connection it was made (a disk cache flush).
	Flush(ctx context.Context) error
}

// OwningWriter is implemented by a Device that keeps the data of a write
// after the write returns (a journal holding recent records in memory):
// the server then calls WriteOwned instead of WriteAt and never reuses p,
// so the device need not copy it. p is the request's payload, exactly
// its length; the rules of WriteAt apply.
type OwningWriter interface {
	WriteOwned(ctx context.Context, p []byte, off int64, fua bool) error
}

// ZeroFlags are the request flags that modify WriteZeroes.
type ZeroFlags struct {
	// FUA: durable before the call returns.
	FUA bool
	// NoHole: the range must stay allocated (no punching of holes).
	NoHole bool
	// FastZero: fail at once with an error wrapping syscall.ENOTSUP unless
	// zeroing is faster than writing zeroes would be.
	FastZero bool
}
