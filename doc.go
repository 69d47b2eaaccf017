// Package blockmirror is the module root of blockmirror, a block-device
// mirroring agent; the code lives in cmd/, nbd/, journal/, store/,
// transport/ and mirror/ (see README.md). This file only anchors the
// repository-wide tests (deps_test.go).
package blockmirror
