module github.com/blockmirror/blockmirror

go 1.26.8

require (
	github.com/pojntfx/go-nbd v0.3.2 // indirect
	github.com/quic-go/quic-go v0.65.0 // indirect
	golang.org/x/crypto v0.54.0 // indirect
	golang.org/x/net v0.56.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
