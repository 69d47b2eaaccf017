// Package journal is blockmirror's write-ahead journal: every block write is
// appended (and, as the caller requires, made durable) before it is
// acknowledged; mirrors are fed from it by Readers; after a restart the
// records after the store's checkpoint are replayed with Scan.
//
// # Model
//
// Records carry a gapless seq chosen by the caller (Submit: LastSeq()+1) or
// by the journal (SubmitNext). Submit only queues: one flush goroutine takes
// every queued record, encodes them into one buffer and issues one write
// per segment touched. A writer that waits for its own record anyway can
// skip that hand-off: SubmitDeferred queues without waking the flusher and
// WriteThrough then does the same pass in the caller's goroutine — unless
// a pass is already under way, in which case it waits for that writer, so
// concurrent callers still share batches. A sync goroutine, whenever a
// waiter asked for Durable (Wait, Append, Sync), issues one fdatasync
// covering everything written so far (group commit); the next batch is
// written while it runs. A Durable request for a record already written
// causes a sync only. Segment rotation (create the new segment with its
// header, fsync it and the directory) happens in the pass that fills a
// segment; a new segment reserves its blocks up front (fallocate, size
// unchanged). Two watermarks (Watermarks) report how far records are
// Written (handed to the kernel, survives a process crash) and Durable
// (fdatasync'd, survives power loss).
//
// Durability is where it is asked for, and per segment: rotation does not
// fsync the segment it closes. What a sync has to write back is bounded
// all the same by the dirty window (Options.WritebackBytes, default
// 8 MiB): once more than that was written to the active segment since
// writeback was last started, the flusher starts the writeback of those
// bytes (sync_file_range WRITE: it does not wait and promises nothing,
// so no durability rule depends on it), and of a segment's rest when
// rotation closes it; a FLUSH after a long run of writes then waits for
// at most about the window, not for everything since the previous sync.
// (A node's checkpoint makes the journal durable through the records it
// releases, so on a primary or a mirror every journal byte reaches the
// disk anyway; the window only decides when.) A segment closed with records
// no sync covered stays open on an unsynced list; the next sync
// fdatasyncs each such segment, oldest first, then the active one, and
// only then moves the Durable watermark (a segment whose removal was
// already made durable is skipped). That sync also sets FlagOlderDurable
// in the active segment's header before its fdatasync. Segments of the
// older formats (1 and 2), appended to after an upgrade, are still synced
// when they are closed, as their format promises.
//
// A failed write or fsync is sticky (ErrFailed): the journal refuses all
// further work, because after a failed fsync the kernel may have discarded
// the dirty pages and the file contents can no longer be trusted. Close and
// Open again (Open re-verifies the files).
//
// # Concurrency, goroutines and buffers
//
// All Journal methods are safe for concurrent use. The journal owns two
// goroutines (flusher and syncer), started by Open and stopped by Close.
// Waiters are woken individually when their condition holds. A Reader
// is used by one goroutine at a time; many Readers may run at once.
// Submit takes ownership of Record.Data: the caller must not modify it
// afterwards. Records returned by Reader.Next and Scan share the journal's
// buffers (the memory tail or a buffer freshly read from a segment): they
// stay valid but must not be modified. OnDrop runs on the flusher.
//
// # Files
//
// Dir holds segment files named by the seq of their first record, as 20
// decimal digits plus ".seg" (e.g. 00000000000000000001.seg). A segment is
// closed and a new one started when the next record would push it past
// SegmentBytes; a record larger than that gets a segment of its own.
// Segments chain: each starts at the seq following the previous one's last.
//
// Segment header (SegmentHeaderSize = 40 bytes, little endian):
//
//	 0      4        6      8                  24          32       36     40
//	+------+--------+------+------------------+-----------+--------+------+
//	| BMJS |version | flags|  volume UUID (16)| first seq | reserv.| crc  |
//	+------+--------+------+------------------+-----------+--------+------+
//	crc = CRC-32C (Castagnoli) of bytes 0..35; version = FormatVersion (4)
//	for new segments, 1 to 3 for segments of earlier builds (all are read;
//	a segment keeps its version when appended to);
//	flags (u16): bit 0 FlagOlderDurable (version 3 and 4: every record before
//	this segment's first seq was durable when the header was written),
//	other bits zero, and all zero before version 3; reserved is zero.
//
// Record (RecordHeaderSize = 40 bytes of header, then the payload):
//
//	 0      4         8        16       24        32       36  37        40
//	+------+---------+--------+--------+---------+--------+---+---------+---------+
//	| crc  | data len| epoch  |  seq   | offset  | length | op| sync lag| data... |
//	+------+---------+--------+--------+---------+--------+---+---------+---------+
//	crc = CRC-32C of bytes 4.. to the end of the data; data len <= MaxRecordData
//	(32 MiB) and equals length for OpWrite, zero for OpTrim, OpZero and
//	OpEpoch. OpIndirect (5, version 4 only): the data is 4 bytes per
//	IndirectPiece-aligned piece of [offset, offset+length), the CRC-32C of
//	that piece of the write, whose data is in the disk image, not here.
//	sync lag (u24, version 2 and 3) = seq minus the journal's durable seq
//	when the record was written, capped at MaxSyncLag; 0 means unknown, and
//	is what version-1 segments and records outside segments (AppendRecord)
//	hold.
//
// The decoder checks every length against MaxRecordData before reading or
// allocating for it.
//
// # Indirect records
//
// A caller that wrote a large write's data to its disk image submits it as
// an OpWrite with Sums (IndirectSums): the memory tail keeps Data, for
// readers, and the segment (format 4) gets an OpIndirect record holding
// only the sums. A sync that covers such a record calls Options.BeforeSync
// (fdatasync the image) before any fdatasync of its own, so an indirect
// record is durable only once its data is; Submit refuses Sums without
// BeforeSync. Into a segment of an older format (an upgrade appending to
// it) the write goes with its data, as that format knows it. Readers and
// Scan return OpIndirect records read from the files as they are; turning
// them back into data (and verifying them after a crash) is the caller's
// (mirror: indirect.go).
//
// # Recovery
//
// Open verifies every record of every segment (checksums, seq chain,
// volume UUID, version) and finds where the chain of records breaks: a
// record cut short, zeroed or failing its checksum, or a segment that does
// not start where the previous one ends. That break starts a torn tail
// (the previous process died mid-write, or a power loss kept only part of
// what was written since the last fdatasync that reached the disk — in
// format 3 possibly in an older segment than the last, with newer segments
// surviving), and the journal is cut there, with a log message: the
// damaged segment is truncated and every later segment removed — unless
// something proves that the first lost record had been durable, which
// makes it damage to durable data (ErrCorrupt): an intact record after it,
// in the same segment or a later one, whose seq minus its sync lag
// reaches the lost seq (it was written after an fdatasync covered the lost
// one), or a later segment whose header carries FlagOlderDurable. After a
// power loss, unsynced pages can reach the disk out of order, so intact
// records may follow a lost one in the unsynced tail; none of them was
// ever durable (a sync covering them would have covered the lost one too)
// and they go with the torn tail. Damage to a record of the last sync
// window of the last segment with nothing written after that sync cannot
// be told from a torn tail and is treated as one. Segments of formats 1
// and 2 were synced when closed: damage inside one that is not the last
// is ErrCorrupt, and so is a gap behind one followed by any intact record;
// a last version-1 segment, without sync lags, keeps the older rule (a
// valid record with the following seq beyond the damage means corruption).
// An empty segment followed by a gap is what an interrupted SetStart
// leaves; the earlier start is kept. So is a first segment whose header
// never reached the disk in front of the old segments (a SetStart below
// the old start creates the new segment before it removes the old ones):
// shorter than a header, or a header's worth of zeros, it never held a
// record and is removed, like a last segment with a torn header; anywhere
// else a header-less segment is ErrCorrupt. Errors wrapping ErrCorrupt name the
// file and byte offset; records are never skipped silently. A segment with
// another volume UUID fails with ErrForeignVolume. The header of a segment
// is fsync'd before any record is written into it, so a power loss cannot
// leave a damaged header in front of surviving records (its one later
// rewrite, setting FlagOlderDurable, changes a single sector). Open then
// fdatasyncs every segment, so what a crashed process left in the page
// cache is durable before anything new is written.
//
// # Finding records
//
// Segments are kept in memory ordered by first seq (binary search); each
// carries a sparse index of record offsets, one entry per 64 KiB, built at
// open and on append. A reader seeks with it and then reads sequentially.
// Recent records (TailBytes) are served from memory.
//
// # Retention
//
// Named consumers (AddConsumer) hold records until they Release them. A
// segment that every consumer has released entirely is removed (never the
// last one): it leaves the journal at once (FirstSeq moves, readers get
// ErrGone), and a goroutine of its own then unlinks the file and syncs the
// directory, so writes never wait for an unlink (tens of milliseconds for
// a 64 MiB file on ext4 with discard); Close and SetStart wait for it.
// With no consumers, segments are removed only by the size
// bound. The size bound is enforced whenever a segment starts (and after
// every release) while the files exceed MaxBytes: the oldest segments
// whose removal brings the journal back within the bound must go. Every
// droppable consumer that has not released them is dropped past them at
// once, whether or not the segments can be removed yet: OnDrop is called
// with the coalesced regions its unreleased records there touched, and
// its position moves to their last seq. A non-droppable consumer is never
// dropped past: OnPressure asks it to release them (for the store's
// consumer, a checkpoint), and the journal logs a warning. What may still
// exceed MaxBytes: the active segment (up to SegmentBytes, or one record
// larger than that), and the records a non-droppable consumer holds until
// it releases them — a checkpoint's time after OnPressure, if its owner
// kicks one. Consumers are not persisted: they are registered again after
// every Open.
package journal
