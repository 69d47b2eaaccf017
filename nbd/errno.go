package nbd

import (
	"context"
	"errors"
	"syscall"
)

// ErrnoOf maps a Device error to the NBD error value sent to the client.
//
//	nil                              → 0
//	EPERM, EROFS, EACCES             → EPERM (1)
//	EIO                              → EIO (5)
//	ENOMEM                           → ENOMEM (12)
//	EINVAL                           → EINVAL (22)
//	ENOSPC, EDQUOT, EFBIG            → ENOSPC (28)
//	EOVERFLOW                        → EOVERFLOW (75)
//	ENOTSUP/EOPNOTSUPP               → ENOTSUP (95)
//	ESHUTDOWN, context.Canceled      → ESHUTDOWN (108)
//	anything else                    → EIO (5)
//
// The syscall.Errno is found with errors.As, so wrapped errors work. The
// returned numbers are the protocol's values, not the host's.
func ErrnoOf(err error) uint32 {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		switch e {
		case syscall.EPERM, syscall.EROFS, syscall.EACCES:
			return errnoPerm
		case syscall.EIO:
			return errnoIO
		case syscall.ENOMEM:
			return errnoNoMem
		case syscall.EINVAL:
			return errnoInval
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return errnoNoSpc
		case syscall.EOVERFLOW:
			return errnoOverflow
		case syscall.ENOTSUP:
			return errnoNotSup
		case syscall.ESHUTDOWN:
			return errnoShutdown
		}
		if e == syscall.EOPNOTSUPP {
			return errnoNotSup
		}
		return errnoIO
	}
	if errors.Is(err, context.Canceled) {
		return errnoShutdown
	}
	return errnoIO
}
