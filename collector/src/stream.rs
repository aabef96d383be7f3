//! Reading the event stream: decode bytes into the ledger as they arrive, live from the pipe
//! (in a thread, while the target runs) or from a saved trace.
//!
//! Decoding live matters: the target blocks when the pipe is full, so the collector must keep
//! up, and holding raw events until the end would make memory grow with the event count.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use residue_protocol::{tag, Api, DecodeError, DecodeErrorKind, Decoder, Kind, Recent, Record, MAX_RECORD_LEN};

use crate::ledger::Ledger;
use crate::resolved::{self, Journal, Op, Parsed};

/// Longest LEB128 encoding of a u64 (the protocol's limit).
const MAX_VARINT: usize = 10;

/// Decoder + ledger, fed arbitrary chunks of the stream.
///
/// The hot records (`Batch`, `Acquire`, `Release`: all but a few hundred of millions) are
/// decoded here, in place and straight into the ledger: no [`Record`] is built for them. Every
/// other record, and any hot record that does not parse, goes through the protocol's
/// [`Decoder`], which builds the record or the exact error. Parse errors do not depend on the
/// batch's delta state, so handing a bad hot record to it gives the same error it would have
/// given had it decoded everything.
#[derive(Debug, Default)]
pub struct StreamState {
    decoder: Decoder,
    /// Delta state of the current batch (the protocol decoder never sees hot records, so it
    /// lives here).
    last_seq: u64,
    last_id: u64,
    recent: Recent,
    /// Bytes decoded so far (the protocol decoder only counts the records it decoded).
    offset: u64,
    header_seen: bool,
    /// Bytes of an incomplete record, waiting for the rest.
    pending: Vec<u8>,
    pub ledger: Ledger,
    /// The first decode error; decoding stops there (the rest is unreadable).
    pub error: Option<DecodeError>,
    pub bytes: u64,
    /// The input is a resolved trace (resolved.rs), not the interposer's stream.
    resolved: bool,
    /// Resolved tuple index of the last `ALLOC` or `FREE`.
    prev_tuple: u64,
    /// Stack id of the last resolved `TUPLE`.
    prev_tuple_stack: u32,
    stacks: resolved::StackChain,
}

/// A decoded hot record, waiting to be applied.
#[derive(Clone, Copy)]
enum Event {
    Batch(u32),
    Acquire { seq: u64, kind: Kind, api: Api, id: u64, size: u64, stack: u32 },
    Release { seq: u64, kind: Kind, api: Api, id: u64 },
}

/// Hot records are decoded this many ahead of applying them, their ledger slots prefetched:
/// enough to overlap the cache misses of a large ledger.
const LOOKAHEAD: usize = 16;

/// What the hot path made of the record at the start of a buffer.
enum Hot {
    /// Decoded (and queued); this many bytes.
    Done(usize, Event),
    /// The buffer ends inside the record.
    More,
    /// Not a hot record, or one that does not parse: the protocol decoder takes it.
    Other,
}

/// LEB128, as the protocol reads it: `None` past the end or beyond 64 bits.
#[inline(always)]
fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *b.get(*pos)?;
    *pos += 1;
    if first < 0x80 {
        return Some(u64::from(first));
    }
    let mut v = u64::from(first & 0x7f);
    let mut shift = 7u32;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

#[inline(always)]
fn unzigzag(v: u64) -> u64 {
    ((v >> 1) as i64 ^ -((v & 1) as i64)) as u64
}

impl StreamState {
    pub fn new() -> Self {
        Self::default()
    }

    /// A state that also logs the resolved trace into `journal` (what `--output` writes).
    pub fn with_journal(journal: Journal) -> Self {
        let mut s = Self::default();
        s.ledger.journal = Some(Box::new(journal));
        s
    }

    /// A state that reads a resolved trace (what follows [`resolved::MAGIC`], decompressed).
    pub fn resolved_reader() -> Self {
        let mut s = Self { resolved: true, ..Self::default() };
        s.ledger.resolved = true;
        s
    }

    /// Decodes every whole record in `chunk` (plus what was pending) into the ledger.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if self.error.is_some() {
            return;
        }
        if self.pending.is_empty() {
            // The common case: decode straight from the chunk, keep only a cut-off tail.
            let used = self.decode(chunk);
            if self.error.is_none() {
                self.pending.extend_from_slice(&chunk[used..]);
            }
        } else {
            // A record was cut at the end of the last chunk: one copy of this chunk (memcpy
            // speed, far below the decoding cost) completes it.
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(chunk);
            let used = self.decode(&buf);
            if self.error.is_none() {
                buf.drain(..used);
                self.pending = buf;
            }
        }
    }

    /// Decodes the whole records at the start of `buf`; returns how many bytes they took.
    fn decode(&mut self, buf: &[u8]) -> usize {
        let mut queue = [Event::Batch(0); LOOKAHEAD];
        let mut queued = 0;
        let pos = self.decode_into(buf, &mut queue, &mut queued);
        self.apply(&queue[..queued]);
        pos
    }

    /// Applies queued hot records in stream order.
    #[inline(always)]
    fn apply(&mut self, events: &[Event]) {
        for e in events {
            match *e {
                Event::Acquire { seq, kind, api, id, size, stack } => {
                    self.ledger.acquire(seq, kind, api, id, size, stack)
                }
                Event::Release { seq, kind, api, id } => self.ledger.release(seq, kind, api, id),
                Event::Batch(tid) => {
                    self.ledger.batch();
                    if let Some(j) = self.ledger.journal.as_deref_mut() {
                        let mut b = [0u8; residue_protocol::MAX_SMALL_RECORD];
                        let n = residue_protocol::Encoder::default().batch(&mut b, 0, tid);
                        j.raw(&b[..n]);
                    }
                }
            }
        }
    }

    /// Decodes whole records from the start of `buf`: hot ones into `queue` (applied when it
    /// fills, and before any other record), the others straight into the ledger. Returns the
    /// bytes consumed.
    fn decode_into(&mut self, buf: &[u8], queue: &mut [Event; LOOKAHEAD], queued: &mut usize) -> usize {
        let mut pos = 0;
        while pos < buf.len() {
            if self.resolved && self.header_seen {
                match resolved::parse(&buf[pos..]) {
                    Parsed::Done(n, op) => {
                        self.apply(&queue[..*queued]);
                        *queued = 0;
                        if let Err(what) = self.apply_op(op) {
                            self.error =
                                Some(DecodeError { offset: self.offset, kind: DecodeErrorKind::Corrupt(what) });
                            return pos;
                        }
                        pos += n;
                        self.offset += n as u64;
                        continue;
                    }
                    Parsed::More => break,
                    Parsed::Bad => {
                        self.error = Some(DecodeError {
                            offset: self.offset,
                            kind: DecodeErrorKind::Corrupt("a resolved record that residue cannot read"),
                        });
                        return pos;
                    }
                    Parsed::NotOurs
                        if matches!(
                            buf[pos],
                            tag::ACQUIRE
                                | tag::RELEASE
                                | tag::MALLOC
                                | tag::FREE
                                | tag::MALLOC_NEXT
                                | tag::FREE_NEXT
                                | tag::MALLOC_SAME
                                | tag::FREE_RECENT..=tag::FREE_RECENT_LAST
                        ) =>
                    {
                        self.error = Some(DecodeError {
                            offset: self.offset,
                            kind: DecodeErrorKind::Corrupt(
                                "an event record of the live stream inside a resolved trace",
                            ),
                        });
                        return pos;
                    }
                    Parsed::NotOurs => {}
                }
            }
            if self.header_seen {
                match self.hot(&buf[pos..]) {
                    Hot::Done(n, e) => {
                        pos += n;
                        self.offset += n as u64;
                        if let Event::Acquire { kind, id, .. } | Event::Release { kind, id, .. } = e {
                            self.ledger.prefetch(kind, id);
                        }
                        queue[*queued] = e;
                        *queued += 1;
                        if *queued == LOOKAHEAD {
                            self.apply(&queue[..]);
                            *queued = 0;
                        }
                        continue;
                    }
                    Hot::More => break,
                    Hot::Other => {}
                }
            }
            // Any other record applies after the hot ones before it.
            self.apply(&queue[..*queued]);
            *queued = 0;
            let before = self.decoder.offset();
            match self.decoder.next(&buf[pos..]) {
                Ok(Some((record, n))) => {
                    let raw = &buf[pos..pos + n];
                    pos += n;
                    self.offset += n as u64;
                    match record {
                        Record::Header { .. } => self.header_seen = true,
                        Record::Batch { .. } | Record::Acquire { .. } | Record::Release { .. } => {
                            // The hot path decodes every valid one of these itself.
                            self.error = Some(DecodeError {
                                offset: self.offset - n as u64,
                                kind: DecodeErrorKind::Corrupt("an event record that residue cannot read"),
                            });
                            return pos;
                        }
                        _ => {}
                    }
                    // Stacks are written against the one before (the ledger logs them, once
                    // whole); the other records as they came, after what applying them logged (a
                    // merge's fix-ups, say).
                    match (&record, self.ledger.journal.as_deref_mut()) {
                        (Record::Stack { .. } | Record::StackShared { .. }, _) => self.ledger.apply(record),
                        (_, Some(_)) => {
                            self.ledger.apply(record);
                            if let Some(j) = self.ledger.journal.as_deref_mut() {
                                j.raw(raw);
                            }
                        }
                        (_, None) => self.ledger.apply(record),
                    }
                }
                Ok(None) => break,
                Err(mut e) => {
                    // Its offsets count only the records it decoded.
                    e.offset = e.offset.saturating_sub(before) + self.offset;
                    self.error = Some(e);
                    return pos;
                }
            }
        }
        pos
    }

    /// Applies one record of a resolved trace.
    #[inline(always)]
    fn apply_op(&mut self, op: Op) -> Result<(), &'static str> {
        match op {
            Op::Alloc(d) | Op::Free(d) => {
                let i = self.prev_tuple.wrapping_add(d as u64);
                self.prev_tuple = i;
                self.ledger.resolved_event(matches!(op, Op::Alloc(_)), i)
            }
            Op::Tuple(api, size, d) => {
                let stack = u32::try_from(i64::from(self.prev_tuple_stack).wrapping_add(d))
                    .map_err(|_| "a stack id out of range")?;
                self.prev_tuple_stack = stack;
                self.ledger.define_tuple((api, size, stack))
            }
            Op::Stack(s) => {
                let (id, frames) = self.stacks.expand(&s)?;
                self.ledger.stack(id, frames);
                Ok(())
            }
            Op::Heap { flags, removed, added } => self.ledger.resolved_heap(flags, removed, added),
            Op::Other { flags, kind, id, entry } => self.ledger.resolved_other(flags, kind, id, entry),
            Op::Merge => {
                self.ledger.resolved_merge();
                Ok(())
            }
        }
    }

    /// Decodes a hot record at the start of `b`.
    #[inline(always)]
    fn hot(&mut self, b: &[u8]) -> Hot {
        let t = b[0];
        if matches!(t, tag::MALLOC_NEXT | tag::FREE_NEXT | tag::MALLOC_SAME | tag::FREE_RECENT..=tag::FREE_RECENT_LAST)
        {
            return self.hot_next(t, b);
        }
        if !matches!(t, tag::MALLOC | tag::FREE | tag::ACQUIRE | tag::RELEASE | tag::BATCH) {
            return Hot::Other;
        }
        let mut pos = 1;
        let Some(len) = varint(b, &mut pos) else {
            return if b.len() < 1 + MAX_VARINT { Hot::More } else { Hot::Other };
        };
        if len > MAX_RECORD_LEN as u64 {
            return Hot::Other;
        }
        let end = pos + len as usize;
        if b.len() < end {
            return Hot::More;
        }
        let p = &b[pos..end];
        let mut i = 0;
        let ok = match t {
            tag::ACQUIRE | tag::MALLOC => (|| {
                let ds = varint(p, &mut i)?;
                let (kind, api) = Self::kind_api(t, p, &mut i)?;
                let did = varint(p, &mut i)?;
                let size = varint(p, &mut i)?;
                let stack = u32::try_from(varint(p, &mut i)?).ok()?;
                (i == p.len()).then_some(())?;
                let (seq, id) = self.advance(ds, did);
                self.recent.push(id);
                Some(Event::Acquire { seq, kind, api, id, size, stack })
            })(),
            tag::RELEASE | tag::FREE => (|| {
                let ds = varint(p, &mut i)?;
                let (kind, api) = Self::kind_api(t, p, &mut i)?;
                let did = varint(p, &mut i)?;
                (i == p.len()).then_some(())?;
                let (seq, id) = self.advance(ds, did);
                Some(Event::Release { seq, kind, api, id })
            })(),
            _ => (|| {
                let tid = u32::try_from(varint(p, &mut i)?).ok()?;
                (i == p.len()).then_some(())?;
                self.last_seq = 0;
                self.last_id = 0;
                self.recent = Recent::default();
                Some(Event::Batch(tid))
            })(),
        };
        match ok {
            Some(e) => Hot::Done(end, e),
            None => Hot::Other,
        }
    }

    /// A malloc or free record whose sequence number is the batch's last plus one
    /// ([`tag::MALLOC_NEXT`], [`tag::MALLOC_SAME`], [`tag::FREE_NEXT`], [`tag::FREE_RECENT`]):
    /// varints without a length. One that is not valid numbers goes to the general decoder,
    /// which says why.
    #[inline(always)]
    fn hot_next(&mut self, t: u8, b: &[u8]) -> Hot {
        // The sequence delta `advance` takes zigzag-encoded: 2 is +1.
        const NEXT: u64 = 2;
        if t >= tag::FREE_RECENT {
            let id = self.recent.get(usize::from(t - tag::FREE_RECENT));
            self.last_seq = self.last_seq.wrapping_add(1);
            self.last_id = id;
            return Hot::Done(1, Event::Release { seq: self.last_seq, kind: Kind::HEAP, api: Api::FREE, id });
        }
        let mut i = 1;
        let did = if t == tag::MALLOC_SAME {
            0
        } else {
            let Some(did) = varint(b, &mut i) else { return self.short_or_other(b, 1) };
            did
        };
        if t == tag::FREE_NEXT {
            let (seq, id) = self.advance(NEXT, did);
            return Hot::Done(i, Event::Release { seq, kind: Kind::HEAP, api: Api::FREE, id });
        }
        let Some(size) = varint(b, &mut i) else { return self.short_or_other(b, 3) };
        let Some(stack) = varint(b, &mut i) else { return self.short_or_other(b, 3) };
        let Ok(stack) = u32::try_from(stack) else { return Hot::Other };
        let (seq, id) = self.advance(NEXT, did);
        self.recent.push(id);
        Hot::Done(i, Event::Acquire { seq, kind: Kind::HEAP, api: Api::MALLOC, id, size, stack })
    }

    /// A varint of a length-less record ran out: more bytes may come if `b` is shorter than
    /// its `fields` longest encodings, else it is not a valid record.
    #[inline(always)]
    fn short_or_other(&self, b: &[u8], fields: usize) -> Hot {
        if b.len() < 1 + fields * MAX_VARINT {
            Hot::More
        } else {
            Hot::Other
        }
    }

    /// The kind and API of an event record: implied by the tag of a malloc or free record,
    /// else its next two bytes.
    #[inline(always)]
    fn kind_api(t: u8, p: &[u8], i: &mut usize) -> Option<(Kind, Api)> {
        match t {
            tag::MALLOC => Some((Kind::HEAP, Api::MALLOC)),
            tag::FREE => Some((Kind::HEAP, Api::FREE)),
            _ => {
                let (&kind, &api) = (p.get(*i)?, p.get(*i + 1)?);
                *i += 2;
                Some((Kind(kind), Api(api)))
            }
        }
    }

    /// The sequence number and id of an event record from their deltas to the batch's last.
    #[inline(always)]
    fn advance(&mut self, ds: u64, did: u64) -> (u64, u64) {
        self.last_seq = self.last_seq.wrapping_add(unzigzag(ds));
        self.last_id = self.last_id.wrapping_add(unzigzag(did));
        (self.last_seq, self.last_id)
    }

    /// End of input: a partial record left over means the stream was cut inside it.
    pub fn finish(&mut self) {
        self.ledger.finish();
        if self.error.is_none() && !self.pending.is_empty() {
            self.error = Some(DecodeError::truncated(self.offset));
        }
    }
}

/// First bytes of a compressed trace, the format `residue run --output` wrote before resolved
/// traces ([`resolved::MAGIC`]), still read: this magic, then one zstd frame holding the raw
/// stream (protocol header and records), then optionally
/// raw records appended after the frame (the collector appends the exit status once the
/// target is reaped). A file that starts with the protocol's own magic is a raw stream, also
/// read.
///
/// Why zstd: the stream is highly repetitive (the same stacks, sizes and address deltas over
/// and over), and zstd's default level compresses it 30x (a Python workload) to 5000x (a C
/// loop) at about 1 GB/s, so the reader thread keeps up; LZ4 compresses the same streams
/// only 17-150x, and DEFLATE (flate2/miniz_oxide) is 4x slower for 1.5x larger output.
pub const COMPRESSED_MAGIC: [u8; 8] = *b"RESIDUEZ";

/// zstd's default level: what `--output` compressed the raw stream with before resolved traces.
#[cfg(test)]
const TRACE_LEVEL: i32 = 3;

/// The level resolved traces are compressed at. A resolved trace is a quarter of the raw
/// stream's bytes (W1: 71 MB against 289 MB) and far more repetitive: logging and compressing
/// it at level 6 costs the collector about what compressing the raw stream at level 3 did
/// (W1: 24-28 M events/s decoded, matched, logged and compressed, against 34 without
/// `--output`). Level 6 gives 16% less than level 3 on W1 for 3 MiB more of the collector's
/// memory (zstd's match tables); level 5 would be worse than 3 on W4 (35 KB against 6 KB).
/// Level 6's own match finder (lazy, 8 attempts) is erratic on a C loop's periodic trace:
/// W4's came out at 6 KB or 29 KB (heaptrack's: 15 KB) depending on nothing the run controls
/// (the environment's size). Level 8's finder ([`RESOLVED_STRATEGY`], 16 attempts) on level 6's
/// tables gives 5.5-6 KB every time, and 3% less on W1, for no more memory (level 8 itself takes
/// 3.5 MiB more, past the collector's 64 MiB on W1).
const RESOLVED_LEVEL: i32 = 6;
/// See [`RESOLVED_LEVEL`]: lazy2, searchLog 4.
const RESOLVED_STRATEGY: (zstd::zstd_safe::Strategy, u32) = (zstd::zstd_safe::Strategy::ZSTD_lazy2, 4);

impl StreamState {
    /// The input ended inside the compressed frame: the trace was cut (the collector was
    /// killed). Records decoded so far stand, as for a cut raw trace.
    fn cut(&mut self) {
        if self.error.is_none() {
            self.error = Some(DecodeError::truncated(self.offset));
        }
    }

    /// A saved trace ends with the `ProcessEnd` record `residue run` appends once the target
    /// is reaped. Without it, the file was cut, possibly exactly at a record boundary (where
    /// nothing else tells): it is truncated there.
    fn require_exit_record(&mut self) {
        if self.error.is_none() && self.ledger.header_seen && self.ledger.process_end.is_none() {
            self.error = Some(DecodeError::truncated(self.offset));
        }
    }

    /// The compressed data does not decompress: what follows the damage is unreadable.
    fn damaged(&mut self) {
        if self.error.is_none() {
            self.error = Some(DecodeError {
                offset: self.offset,
                kind: DecodeErrorKind::Corrupt("the compressed data is damaged here (it does not decompress)"),
            });
        }
    }
}

/// Feeds everything `r` yields into `state`; stops at the first decode error.
fn feed_all(r: &mut impl Read, state: &mut StreamState, buf: &mut [u8]) -> std::io::Result<()> {
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        state.feed(&buf[..n]);
        if state.error.is_some() {
            return Ok(());
        }
    }
}

/// Reads `buf.len()` bytes or up to the end of input; returns how many.
fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match f.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(have)
}

/// First bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Reads a saved trace: resolved ([`resolved::MAGIC`], what `residue run --output` writes, its
/// records compressed or not), compressed ([`COMPRESSED_MAGIC`], the stream as earlier
/// versions saved it) or the raw stream.
pub fn read_file(path: &std::path::Path) -> std::io::Result<StreamState> {
    let mut f = File::open(path)?;
    let mut state = StreamState::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut magic = [0u8; COMPRESSED_MAGIC.len()];
    let have = read_up_to(&mut f, &mut magic)?;
    let mut peek = [0u8; ZSTD_MAGIC.len()];
    let mut peeked = 0;
    if magic == resolved::MAGIC {
        state = StreamState::resolved_reader();
        peeked = read_up_to(&mut f, &mut peek)?;
    }
    if magic == resolved::MAGIC && peek != ZSTD_MAGIC {
        // Its records uncompressed (a tool's or a test's copy).
        state.feed(&peek[..peeked]);
        if state.error.is_none() {
            feed_all(&mut f, &mut state, &mut buf)?;
        }
        state.finish();
        state.require_exit_record();
        return Ok(state);
    }
    if magic != COMPRESSED_MAGIC && magic != resolved::MAGIC {
        state.feed(&magic[..have]);
        if state.error.is_none() {
            feed_all(&mut f, &mut state, &mut buf)?;
        }
        state.finish();
        state.require_exit_record();
        return Ok(state);
    }
    let mut z =
        zstd::stream::read::Decoder::new(std::io::Cursor::new(peek).take(peeked as u64).chain(f))?.single_frame();
    match feed_all(&mut z, &mut state, &mut buf) {
        Ok(()) if state.error.is_none() => {
            // The frame ended: raw records may follow it.
            let mut rest = z.finish();
            feed_all(&mut rest, &mut state, &mut buf)?;
        }
        Ok(()) => {}
        // zstd's reader says UnexpectedEof when the input ends inside the frame.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => state.cut(),
        Err(e) if e.kind() == std::io::ErrorKind::Other || e.kind() == std::io::ErrorKind::InvalidData => {
            state.damaged()
        }
        Err(e) => return Err(e),
    }
    state.finish();
    state.require_exit_record();
    Ok(state)
}

/// The `--output` file as it is written: [`resolved::MAGIC`], then the resolved trace (the
/// ledger's decisions, logged by its journal) through zstd.
struct TraceWriter(zstd::stream::write::Encoder<'static, File>);

impl TraceWriter {
    fn new(mut f: File) -> std::io::Result<Self> {
        f.write_all(&resolved::MAGIC)?;
        let mut z = zstd::stream::write::Encoder::new(f, RESOLVED_LEVEL)?;
        let (strategy, search_log) = RESOLVED_STRATEGY;
        z.set_parameter(zstd::stream::raw::CParameter::Strategy(strategy))?;
        z.set_parameter(zstd::stream::raw::CParameter::SearchLog(search_log))?;
        // A damaged file is then told from a valid one at the end of the frame at the latest.
        z.include_checksum(true)?;
        Ok(TraceWriter(z))
    }

    /// Writes what the journal logged since the last call.
    fn drain(&mut self, state: &mut StreamState) -> std::io::Result<()> {
        let Some(j) = state.ledger.journal.as_deref_mut() else { return Ok(()) };
        let r = self.0.write_all(j.pending());
        j.clear();
        r
    }
}

/// What the live reader ends with.
#[derive(Debug)]
pub struct LiveOutcome {
    pub state: StreamState,
    /// Writing the `--output` copy failed (the report is still complete).
    pub tee_error: Option<std::io::Error>,
    /// Stopped while a (grandchild) process still held the pipe open.
    pub stopped_on_idle: bool,
}

/// The reader's pause after each read that brought data (see its use).
const READ_PAUSE: Duration = Duration::from_micros(200);

/// How long the pipe may stay silent after the root process exited before we stop waiting for
/// a daemonized descendant that keeps it open.
const IDLE_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Starts the reader thread. `root_exited` is set by the launcher once waitpid returned.
pub fn spawn_live(
    fd: OwnedFd,
    tee: Option<File>,
    root_exited: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<LiveOutcome>> {
    std::thread::Builder::new().name("residue-reader".into()).spawn(move || {
        let mut state = StreamState::new();
        let mut tee_error = None;
        let mut tee = match tee.map(TraceWriter::new).transpose() {
            Ok(t) => t,
            Err(e) => {
                tee_error = Some(e);
                None
            }
        };
        if tee.is_some() {
            state = StreamState::with_journal(Journal::new());
        }
        // If the stream is a pipe, a larger one (the kernel caps it at
        // /proc/sys/fs/pipe-max-size, 1 MiB by default) means fewer wake-ups of the target's
        // writer and of us. On a socket (what `launch` makes; it sizes the socket buffers) this
        // fails, harmlessly: failure only costs speed.
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int argument.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        let mut buf = vec![0u8; 1 << 20];
        let mut last_data = Instant::now();
        let mut exit_noticed: Option<Instant> = None;
        let mut stopped_on_idle = false;
        let mut acked = false;
        let mut pipe = File::from(fd);
        loop {
            let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: pfd is a valid pollfd for the duration of the call; nfds is 1.
            let r = unsafe { libc::poll(&mut pfd, 1, 50) };
            if r < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if r == 0 {
                if root_exited.load(Ordering::Acquire) {
                    // Idle time counts from the later of the root's exit and the last byte.
                    let since = *exit_noticed.get_or_insert_with(Instant::now);
                    // The root is gone. Its final image wrote ImageExit and nothing more is
                    // buffered: done. Otherwise give stragglers a moment, then stop (a
                    // daemonized grandchild may hold the write end forever).
                    if state.ledger.complete() || state.error.is_some() {
                        break;
                    }
                    if since.max(last_data).elapsed() >= IDLE_AFTER_EXIT {
                        stopped_on_idle = true;
                        break;
                    }
                }
                continue;
            }
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            last_data = Instant::now();
            state.feed(&buf[..n]);
            if let Some(t) = tee.as_mut() {
                if let Err(e) = t.drain(&mut state) {
                    tee_error = Some(e);
                    tee = None;
                    state.ledger.journal = None;
                }
            }
            if !acked && state.ledger.complete() {
                // The final image's exit record is in: let it exit (see launch.rs).
                acked = true;
                let _ = pipe.write_all(b"!");
            }
            // While the target streams, pause before polling again: its next writes then find
            // no reader waiting and wake no one. A wake-up costs the writing target more than
            // the write (W4 at the weight, 32 KiB chunks: 437 ms woken at every chunk,
            // 419 with a reader that pauses). Throughput is unchanged (the next read takes
            // everything that came meanwhile, and the socket holds far more than a pause's
            // worth); a stream that went quiet costs one pause.
            std::thread::sleep(READ_PAUSE);
        }
        state.finish();
        // What the end decided (a merge's fix-ups), then the end of the compressed frame: the
        // launcher appends the exit status after it.
        if let Some(mut t) = tee {
            if let Err(e) = t.drain(&mut state).and_then(|()| t.0.finish()).and_then(|mut f| f.flush()) {
                tee_error = Some(e);
            }
        }
        state.ledger.journal = None;
        // Keep the idle rule honest: a stop with a complete ledger is a normal end.
        if state.ledger.complete() {
            stopped_on_idle = false;
        }
        LiveOutcome { state, tee_error, stopped_on_idle }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use residue_protocol::{header, tag, Api, Encoder, Kind, HEADER_LEN};
    use std::os::fd::FromRawFd;

    pub(crate) fn sample_trace() -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 14];
        buf[..HEADER_LEN].copy_from_slice(&header());
        let mut e = Encoder::default();
        let mut pos = HEADER_LEN;
        let argv: [&[u8]; 2] = [b"host", b"arg"];
        pos = e.image_start(&mut buf, pos, 77, 1, true, false, 0, b"/opt/host", &argv);
        pos = e.batch(&mut buf, pos, 77);
        pos = e.acquire(&mut buf, pos, 1, Kind::HEAP, Api::STRDUP, 0x1000, 6, 5);
        pos = e.acquire(&mut buf, pos, 2, Kind::HEAP, Api::MALLOC, 0x2000, 100, 6);
        pos = e.release(&mut buf, pos, 3, Kind::HEAP, Api::FREE, 0x2000);
        pos = e.stack(&mut buf, pos, 5, &[0x10, 0x20]);
        pos = e.image_exit(&mut buf, pos, 4);
        buf.truncate(pos);
        buf
    }

    #[test]
    fn byte_at_a_time_equals_all_at_once() {
        let t = sample_trace();
        let mut a = StreamState::new();
        a.feed(&t);
        a.finish();
        let mut b = StreamState::new();
        for byte in &t {
            b.feed(std::slice::from_ref(byte));
        }
        b.finish();
        assert!(a.error.is_none() && b.error.is_none());
        assert!(a.ledger.complete() && b.ledger.complete());
        let live = |s: &StreamState| s.ledger.final_image().unwrap().live().map(|(_, id, _)| id).collect::<Vec<_>>();
        assert_eq!(live(&a), vec![0x1000]);
        assert_eq!(live(&b), vec![0x1000]);
    }

    /// A loop's frees of recent blocks and mallocs of the block just freed, in their shortest
    /// records ([`tag::FREE_RECENT`], [`tag::MALLOC_SAME`]), over two batches: the hot decoder
    /// finds the same blocks as the protocol's decoder, whole or a byte at a time.
    #[test]
    fn a_loops_shortest_records_decode_as_the_protocol_decodes_them() {
        let mut buf = vec![0u8; 1 << 14];
        buf[..HEADER_LEN].copy_from_slice(&header());
        let mut e = Encoder::default();
        let mut pos = HEADER_LEN;
        let argv: [&[u8]; 1] = [b"loop"];
        pos = e.image_start(&mut buf, pos, 5, 1, true, false, 0, b"/opt/loop", &argv);
        pos = e.batch(&mut buf, pos, 5);
        let blocks = [0x7000_1000u64, 0x7000_2000, 0x7000_3000, 0x7000_4000];
        let mut seq = 0;
        // The next event, numbered after the one before.
        let mut next = |e: &mut Encoder, buf: &mut [u8], pos: usize, api: Api, id: u64| {
            seq += 1;
            if api == Api::FREE {
                e.release(buf, pos, seq, Kind::HEAP, api, id)
            } else {
                e.acquire(buf, pos, seq, Kind::HEAP, api, id, 16, 1)
            }
        };
        for &id in &blocks {
            pos = next(&mut e, &mut buf, pos, Api::MALLOC, id);
        }
        for turn in 0..10 {
            pos = next(&mut e, &mut buf, pos, Api::FREE, blocks[turn % 4]);
            pos = next(&mut e, &mut buf, pos, Api::MALLOC, blocks[turn % 4]);
        }
        // Places moved round by other than whole turns, then a new batch.
        pos = next(&mut e, &mut buf, pos, Api::CALLOC, 0x7000_5000);
        pos = e.batch(&mut buf, pos, 6);
        pos = next(&mut e, &mut buf, pos, Api::MALLOC, 0x7000_6000);
        pos = next(&mut e, &mut buf, pos, Api::FREE, blocks[0]);
        pos = next(&mut e, &mut buf, pos, Api::FREE, 0x7000_6000);
        pos = next(&mut e, &mut buf, pos, Api::FREE, blocks[1]);
        pos = e.image_exit(&mut buf, pos, 4);
        buf.truncate(pos);
        assert!(buf.contains(&tag::MALLOC_SAME) && buf.contains(&tag::FREE_RECENT), "the shortest records are used");

        // The protocol's decoder: what stays live.
        let mut d = Decoder::new();
        let mut live = std::collections::BTreeSet::new();
        let mut at = 0;
        while let Some((r, n)) = d.next(&buf[at..]).unwrap() {
            match r {
                Record::Acquire { id, .. } => assert!(live.insert(id), "{id:#x} acquired twice"),
                Record::Release { id, .. } => assert!(live.remove(&id), "{id:#x} released while not live"),
                _ => {}
            }
            at += n;
        }
        let want: Vec<u64> = live.into_iter().collect();
        assert_eq!(want, vec![0x7000_3000, 0x7000_4000, 0x7000_5000]);

        let mut whole = StreamState::new();
        whole.feed(&buf);
        whole.finish();
        let mut bytes = StreamState::new();
        for byte in &buf {
            bytes.feed(std::slice::from_ref(byte));
        }
        bytes.finish();
        for s in [&whole, &bytes] {
            assert!(s.error.is_none() && s.ledger.complete(), "{:?}", s.error);
            let mut got: Vec<u64> = s.ledger.final_image().unwrap().live().map(|(_, id, _)| id).collect();
            got.sort();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn cut_trace_is_truncated() {
        let t = sample_trace();
        let mut s = StreamState::new();
        s.feed(&t[..t.len() - 1]);
        s.finish();
        let e = s.error.expect("truncated");
        assert_eq!(e.kind, residue_protocol::DecodeErrorKind::Truncated);
        assert!(!s.ledger.complete());
        assert_eq!(s.ledger.final_image().unwrap().live().count(), 1);
    }

    fn pipe() -> (OwnedFd, File) {
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid 2-element array for pipe2 to fill.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: pipe2 just returned these descriptors; we own them.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from(OwnedFd::from_raw_fd(fds[1]))) }
    }

    /// A daemonized grandchild keeps the write end open: once the root exited and its final
    /// image's exit record is in, the reader stops without waiting for EOF.
    #[test]
    fn live_reader_stops_after_root_exit_without_eof() {
        let (r, mut w) = pipe();
        let exited = Arc::new(AtomicBool::new(false));
        let h = spawn_live(r, None, exited.clone()).unwrap();
        w.write_all(&sample_trace()).unwrap();
        exited.store(true, Ordering::Release);
        let t = Instant::now();
        let out = h.join().unwrap();
        assert!(t.elapsed() < Duration::from_millis(800), "{:?}", t.elapsed());
        assert!(out.state.ledger.complete() && !out.stopped_on_idle);
        drop(w);

        // Without the exit record (root killed), it waits about a second of silence.
        let (r, mut w) = pipe();
        let exited = Arc::new(AtomicBool::new(false));
        let h = spawn_live(r, None, exited.clone()).unwrap();
        let t = sample_trace();
        w.write_all(&t[..t.len() - 3]).unwrap(); // drop the image-exit record
        exited.store(true, Ordering::Release);
        let start = Instant::now();
        let out = h.join().unwrap();
        assert!(start.elapsed() >= IDLE_AFTER_EXIT, "{:?}", start.elapsed());
        assert!(out.stopped_on_idle && !out.state.ledger.complete());
        assert!(out.state.error.is_none(), "whole records only");
        drop(w);
    }

    /// EOF ends the stream even while the root runs; the tee gets the resolved trace, which
    /// reads back as the stream did (here, byte for byte what the journal logs).
    #[test]
    fn live_reader_eof_and_tee() {
        let (r, mut w) = pipe();
        let dir = std::env::temp_dir().join(format!("residue-tee-{}", std::process::id()));
        let tee = File::create(&dir).unwrap();
        let h = spawn_live(r, Some(tee), Arc::new(AtomicBool::new(false))).unwrap();
        w.write_all(&sample_trace()).unwrap();
        drop(w);
        let out = h.join().unwrap();
        assert!(out.state.ledger.complete());
        assert!(out.tee_error.is_none());
        assert!(out.state.ledger.journal.is_none(), "the journal ends with the reader");
        let saved = std::fs::read(&dir).unwrap();
        assert_eq!(saved[..8], resolved::MAGIC);
        let mut j = StreamState::with_journal(Journal::new());
        j.feed(&sample_trace());
        j.finish();
        let expected = j.ledger.journal.as_deref().unwrap().pending().to_vec();
        assert_eq!(zstd::decode_all(&saved[8..]).unwrap(), expected);
        let s = read_file(&dir).unwrap();
        // No exit record appended here: cut at a record boundary, as a raw trace would be.
        assert_eq!(s.error.as_ref().map(|e| &e.kind), Some(&residue_protocol::DecodeErrorKind::Truncated));
        assert!(s.ledger.complete());
        let img = s.ledger.final_image().unwrap();
        let live: Vec<_> = img.live().map(|(k, _, e)| (k, e.api, e.size, e.stack)).collect();
        assert_eq!(live, vec![(Kind::HEAP, Api::STRDUP, 6, 5)]);
        assert_eq!((img.acquires, img.releases), (2, 1));
        assert_eq!(img.stacks.get(&5), Some(&[0x10u64, 0x20][..]));
        std::fs::remove_file(&dir).unwrap();
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("residue-stream-{}-{name}", std::process::id()))
    }

    fn compressed(raw: &[u8]) -> Vec<u8> {
        let mut v = COMPRESSED_MAGIC.to_vec();
        v.extend(zstd::encode_all(raw, TRACE_LEVEL).unwrap());
        v
    }

    fn read(name: &str, bytes: &[u8]) -> StreamState {
        let p = temp(name);
        std::fs::write(&p, bytes).unwrap();
        let s = read_file(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        s
    }

    /// A compressed trace reads as its raw stream does, raw records appended after the frame
    /// included (the exit status); both formats stay readable.
    #[test]
    fn compressed_and_raw_traces_read_alike() {
        let raw = sample_trace();
        let mut z = compressed(&raw);
        let mut end = [0u8; residue_protocol::MAX_SMALL_RECORD];
        let n = Encoder::default().process_end(&mut end, 0, 77, 0, 6);
        z.extend_from_slice(&end[..n]);
        let mut raw_with_end = raw.clone();
        raw_with_end.extend_from_slice(&end[..n]);
        for (name, bytes) in [("z", &z), ("raw", &raw_with_end)] {
            let s = read(name, bytes);
            assert!(s.error.is_none(), "{name}: {:?}", s.error);
            assert!(s.ledger.complete(), "{name}");
            assert_eq!(s.ledger.process_end, Some((77, 0, 6)), "{name}");
            let live: Vec<_> = s.ledger.final_image().unwrap().live().map(|(_, id, _)| id).collect();
            assert_eq!(live, vec![0x1000], "{name}");
        }
        // Without the exit record the file was cut, even exactly at a record boundary (here,
        // at the end of the compressed frame): truncated, with what was decoded.
        for (name, bytes) in [("z-no-end", compressed(&raw)), ("raw-no-end", raw.clone())] {
            let s = read(name, &bytes);
            let err = s.error.expect(name);
            assert_eq!(err.kind, residue_protocol::DecodeErrorKind::Truncated, "{name}");
            assert_eq!(err.offset, raw.len() as u64, "{name}");
            assert_eq!(s.ledger.final_image().unwrap().live().count(), 1, "{name}");
        }
    }

    /// A compressed trace cut short is truncated (what was decoded stands); damaged compressed
    /// data is corrupt, with its own sentence.
    #[test]
    fn cut_and_damaged_compressed_traces() {
        // Enough records that the frame holds several blocks.
        let mut raw = vec![0u8; 1 << 22];
        raw[..HEADER_LEN].copy_from_slice(&header());
        let mut e = Encoder::default();
        let mut pos = e.image_start(&mut raw, HEADER_LEN, 77, 1, true, false, 0, b"/opt/host", &[b"host".as_slice()]);
        pos = e.batch(&mut raw, pos, 77);
        let mut x = 0x9e37_79b9u64;
        for i in 0..200_000u64 {
            // Scattered addresses, so that the frame does not compress to nothing.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            pos = e.acquire(&mut raw, pos, 2 * i + 1, Kind::HEAP, Api::MALLOC, x & 0xffff_fff0, 16, 1);
            pos = e.release(&mut raw, pos, 2 * i + 2, Kind::HEAP, Api::FREE, x & 0xffff_fff0);
        }
        raw.truncate(pos);
        let z = compressed(&raw);
        assert!(z.len() > 100_000, "{}", z.len());

        let s = read("cut", &z[..z.len() * 2 / 3]);
        let err = s.error.expect("cut");
        assert_eq!(err.kind, residue_protocol::DecodeErrorKind::Truncated);
        let img = s.ledger.final_image().expect("the records before the cut");
        assert!(img.acquires > 1000 && img.acquires < 200_000, "{}", img.acquires);

        let mut bad = z.clone();
        let mid = bad.len() / 2;
        bad[mid..mid + 64].fill(0xa5);
        let s = read("damaged", &bad);
        let err = s.error.expect("damaged");
        assert!(matches!(err.kind, residue_protocol::DecodeErrorKind::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("compressed data is damaged"), "{err}");
    }
}
