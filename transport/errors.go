package transport

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"
)

// Sentinel errors. Errors returned by this package wrap one of these (or are
// one of the typed errors below) so callers can branch with errors.Is/As.
var (
	// ErrFrameTooLarge: a frame's length exceeds the reader's or writer's
	// maximum. Returned before any payload buffer is allocated. After a
	// reader returns it the stream is out of sync and must be abandoned.
	ErrFrameTooLarge = errors.New("transport: frame too large")
	// ErrPeerName: the server presented a valid certificate for a node
	// other than the one the dialer asked for.
	ErrPeerName = errors.New("transport: peer name mismatch")
	// ErrPeerNotAllowed: the client's certificate is valid but its node
	// name is not in Config.AllowPeers.
	ErrPeerNotAllowed = errors.New("transport: peer not in allow-list")
	// ErrUntrustedPeer: the peer presented no certificate, or one that does
	// not chain to the cluster CA (or lacks the required key usage, or is
	// expired).
	ErrUntrustedPeer = errors.New("transport: peer certificate not trusted by the cluster CA")
	// ErrRejected: the remote side refused our certificate during the
	// handshake (we are signed by another CA, or are not on its
	// allow-list). The reason is only in the remote side's log.
	ErrRejected = errors.New("transport: handshake rejected by peer")
	// ErrIdleTimeout: the connection saw no traffic for the idle timeout.
	ErrIdleTimeout = errors.New("transport: idle timeout")
	// ErrHandshakeTimeout: the handshake did not complete in time.
	ErrHandshakeTimeout = errors.New("transport: handshake timeout")
	// ErrClosed: the listener, connection or stream was closed locally.
	ErrClosed = errors.New("transport: closed")
	// ErrConfig: invalid Config or options; the message says which field.
	ErrConfig = errors.New("transport: invalid config")
)

// CloseError reports that a connection was closed by the application on
// either side with Conn.Close(code, reason).
type CloseError struct {
	Code   uint64
	Reason string
	Remote bool // closed by the peer
}

func (e *CloseError) Error() string {
	who := "local"
	if e.Remote {
		who = "peer"
	}
	return fmt.Sprintf("transport: connection closed by %s (code %d): %s", who, e.Code, e.Reason)
}

// Is makes errors.Is(err, ErrClosed) true for locally closed connections.
func (e *CloseError) Is(target error) bool { return target == ErrClosed && !e.Remote }

// StreamError reports that a stream was cancelled with Stream.Cancel (or
// because its connection closed while the stream was cancelled) by either side.
type StreamError struct {
	Code   uint64
	Remote bool
}

func (e *StreamError) Error() string {
	who := "local"
	if e.Remote {
		who = "peer"
	}
	return fmt.Sprintf("transport: stream cancelled by %s (code %d)", who, e.Code)
}

// TLS alert numbers (RFC 8446 §6) that mean "your certificate was refused".
const (
	alertBadCertificate     = 42
	alertUnsupportedCert    = 43
	alertCertificateRevoked = 44
	alertCertificateExpired = 45
	alertCertificateUnknown = 46
	alertUnknownCA          = 48
	alertAccessDenied       = 49
	alertCertificateReqd    = 116
)

// mapErr converts quic-go errors into this package's errors, keeping the
// original in the chain (so errors.As with quic-go types still works).
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var appErr *quic.ApplicationError
	if errors.As(err, &appErr) {
		return &CloseError{Code: uint64(appErr.ErrorCode), Reason: appErr.ErrorMessage, Remote: appErr.Remote}
	}
	var streamErr *quic.StreamError
	if errors.As(err, &streamErr) {
		return &StreamError{Code: uint64(streamErr.ErrorCode), Remote: streamErr.Remote}
	}
	var idle *quic.IdleTimeoutError
	if errors.As(err, &idle) {
		return fmt.Errorf("%w: %w", ErrIdleTimeout, err)
	}
	var hs *quic.HandshakeTimeoutError
	if errors.As(err, &hs) {
		return fmt.Errorf("%w: %w", ErrHandshakeTimeout, err)
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode >= 0x100 && te.ErrorCode < 0x200 {
		switch tls.AlertError(te.ErrorCode - 0x100) {
		case alertBadCertificate, alertUnsupportedCert, alertCertificateRevoked, alertCertificateExpired,
			alertCertificateUnknown, alertUnknownCA, alertAccessDenied, alertCertificateReqd:
			return fmt.Errorf("%w (our certificate is not signed by the peer's cluster CA, or we are not on its allow-list): %w", ErrRejected, err)
		}
	}
	return err
}
