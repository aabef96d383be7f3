//! The resolved trace format: what `residue run --output` writes (ARCHITECTURE.md, "Saved
//! traces"). The live stream's acquire and release records carry block addresses, which are
//! most of its entropy and which the report never shows. A saved trace instead logs the
//! ledger's own decisions, as the collector makes them: a heap block became live with an
//! interned `(api, size, stack)` tuple ("+ tuple"), a live block went away ("- tuple"). No
//! address and no sequence number is written per heap event. Resources of the other kinds
//! (descriptors, streams, mappings: few) are logged with their id and their whole entry, since
//! descriptions and the open-at-exit list refer to them. Every other record of the stream
//! (header, image start, modules, stacks, code objects, fork, exec, exit, notices,
//! descriptions, open at exit) is copied as it came.
//!
//! Reading it needs no matching: the reader applies the decisions. It keeps, per image, how
//! many live blocks each tuple has and how many releases of unseen origin there are, and turns
//! them into ledger entries at the end ([`crate::ledger::Ledger::finish`]): the report, which
//! aggregates live entries by stack, kind and API, comes out the same as the live run's.
//!
//! Records (collector-private tags; no length field, the tag says what follows):
//! - `TUPLE api:u8 size:varint dstack:varint`: defines the next tuple index (0, 1, ...); its
//!   stack id is the previous `TUPLE`'s plus `unzigzag(dstack)`.
//! - `ALLOC d:varint`: an acquire event made tuple `prev + unzigzag(d)` live (heap).
//! - `FREE d:varint`: a release event ended a live block of tuple `prev + unzigzag(d)`.
//!   `prev` is the tuple of the previous `ALLOC` or `FREE`.
//! - `HEAP flags:u8 [removed:ref] [added:ref]`: any other heap decision. Flags: acquire event,
//!   fix-up (a merge's decision, not an event: not counted, applies to the last image),
//!   removes a live tuple, adds one, one more release of unseen origin, one fewer. A `ref` is
//!   `varint v`: tuple `v - 1`, or for `v == 0` an inline `api:u8 size:varint stack:varint`
//!   (tuples beyond [`MAX_TUPLES`] are not interned).
//! - `OTHER flags:u8 kind:u8 id:varint [seq size stack:varint api live origin_seen:u8]`: the
//!   entry of `(kind, id)` after an event of another kind (flags: acquire, fix-up, present).
//!   A released entry whose acquire was seen is as good as absent for the report: absent.
//! - `MERGE`: the image left tentative after an exec is merged back into the one before (the
//!   exec failed); the fix-ups that follow say what that did to its entries.
//! - `STACK len:varint id:varint frames:varint prefix:varint suffix:varint middle...`: the
//!   protocol's `Stack` record, written against the previous one (stacks arrive in runs that
//!   differ in a few frames): its first `prefix` and last `suffix` frames are the previous
//!   stack's first and last ones; the `frames - prefix - suffix` in between are zigzag deltas,
//!   each from the frame before it (0 before the first frame). `id` is a zigzag delta from the
//!   previous stack's id.

use residue_protocol::{Api, Kind};

use crate::ledger::{Entry, FxMap};

/// First bytes of a resolved trace: this magic, then one zstd frame holding the protocol
/// header and the records above and the stream's other records, then raw records appended
/// after the frame (the command and the exit status).
pub const MAGIC: [u8; 8] = *b"RESIDUER";

/// Tags of the resolved records (0xc0..=0xcf: never used by the protocol's records, which
/// this format also holds).
pub mod tag {
    pub const TUPLE: u8 = 0xc0;
    pub const ALLOC: u8 = 0xc1;
    pub const FREE: u8 = 0xc2;
    pub const HEAP: u8 = 0xc3;
    pub const OTHER: u8 = 0xc4;
    pub const MERGE: u8 = 0xc5;
    pub const STACK: u8 = 0xc6;
}

/// `HEAP` and `OTHER` flags.
pub mod flag {
    pub const ACQUIRE: u8 = 1;
    pub const FIXUP: u8 = 2;
    pub const REMOVE: u8 = 4;
    pub const ADD: u8 = 8;
    pub const UNSEEN_UP: u8 = 16;
    pub const UNSEEN_DOWN: u8 = 32;
    /// `OTHER`: the entry follows.
    pub const PRESENT: u8 = 4;
}

/// Tuples interned at most (the writer's map and the reader's table): a program that
/// allocates ever new sizes from one stack does not make them grow without bound; tuples
/// beyond are written inline.
pub const MAX_TUPLES: usize = 1 << 18;

/// A heap block's tuple: what the report aggregates it by (with its kind).
pub type Tuple = (Api, u64, u32);

/// What the report can see of one ledger entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Visible {
    /// No entry, or a released one whose acquire was seen.
    Gone,
    Live(Tuple),
    /// A release whose acquire was never seen.
    Unseen,
}

impl Visible {
    #[inline(always)]
    pub fn of(e: Option<&Entry>) -> Visible {
        match e {
            Some(e) if e.live => Visible::Live((e.api, e.size, e.stack)),
            Some(e) if !e.origin_seen => Visible::Unseen,
            _ => Visible::Gone,
        }
    }
}

#[inline(always)]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline(always)]
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The writer: the ledger reports its decisions here, and the stream reader the records it
/// passes through; [`Journal::take`] hands the bytes to the file.
#[derive(Debug)]
pub struct Journal {
    out: Vec<u8>,
    tuples: FxMap<Tuple, u32>,
    prev: u32,
    /// Stack id of the last `TUPLE`.
    prev_tuple_stack: u32,
    /// The last stack written (`STACK` records are written against it).
    prev_stack: Vec<u64>,
    prev_stack_id: u32,
    scratch: Vec<u8>,
    /// [`MAX_TUPLES`] (smaller in tests).
    max_tuples: usize,
}

impl Journal {
    pub fn new() -> Self {
        Self::with_max_tuples(MAX_TUPLES)
    }

    pub fn with_max_tuples(max_tuples: usize) -> Self {
        Journal {
            out: Vec::new(),
            tuples: FxMap::default(),
            prev: 0,
            prev_tuple_stack: 0,
            prev_stack: Vec::new(),
            prev_stack_id: 0,
            scratch: Vec::new(),
            max_tuples: max_tuples.min(MAX_TUPLES),
        }
    }

    pub fn pending(&self) -> &[u8] {
        &self.out
    }

    pub fn clear(&mut self) {
        self.out.clear();
    }

    /// A record of the stream, copied as it came.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The tuple's index, defining it first if it is new; `None` past [`MAX_TUPLES`].
    #[inline(always)]
    fn intern(&mut self, t: Tuple) -> Option<u32> {
        if let Some(&i) = self.tuples.get(&t) {
            return Some(i);
        }
        if self.tuples.len() >= self.max_tuples {
            return None;
        }
        let i = self.tuples.len() as u32;
        self.tuples.insert(t, i);
        self.out.push(tag::TUPLE);
        self.out.push(t.0 .0);
        put_varint(&mut self.out, t.1);
        put_varint(&mut self.out, zigzag(i64::from(t.2) - i64::from(self.prev_tuple_stack)));
        self.prev_tuple_stack = t.2;
        Some(i)
    }

    #[inline(always)]
    fn delta(&mut self, tag: u8, i: u32) {
        self.out.push(tag);
        put_varint(&mut self.out, zigzag(i64::from(i) - i64::from(self.prev)));
        self.prev = i;
    }

    /// One heap decision: the entry went from `before` to `after`.
    #[inline(always)]
    pub fn heap(&mut self, acquire: bool, fixup: bool, before: Visible, after: Visible) {
        if !fixup {
            match (before, after) {
                (Visible::Gone, Visible::Live(t)) if acquire => {
                    if let Some(i) = self.intern(t) {
                        return self.delta(tag::ALLOC, i);
                    }
                }
                (Visible::Live(t), Visible::Gone) if !acquire => {
                    if let Some(&i) = self.tuples.get(&t) {
                        return self.delta(tag::FREE, i);
                    }
                }
                _ => {}
            }
        } else if before == after {
            return;
        }
        let mut flags = if acquire { flag::ACQUIRE } else { 0 } | if fixup { flag::FIXUP } else { 0 };
        let (removed, added) = match (before, after) {
            (Visible::Live(a), Visible::Live(b)) if a == b => (None, None),
            (b, a) => (
                if let Visible::Live(t) = b { Some(t) } else { None },
                if let Visible::Live(t) = a { Some(t) } else { None },
            ),
        };
        if removed.is_some() {
            flags |= flag::REMOVE;
        }
        if added.is_some() {
            flags |= flag::ADD;
        }
        if after == Visible::Unseen && before != Visible::Unseen {
            flags |= flag::UNSEEN_UP;
        }
        if before == Visible::Unseen && after != Visible::Unseen {
            flags |= flag::UNSEEN_DOWN;
        }
        // Define new tuples before the record that refers to them.
        let refs: Vec<Option<u32>> = [removed, added].iter().flatten().map(|&t| self.intern(t)).collect();
        self.out.push(tag::HEAP);
        self.out.push(flags);
        for (t, i) in [removed, added].iter().flatten().zip(refs) {
            match i {
                Some(i) => put_varint(&mut self.out, u64::from(i) + 1),
                None => {
                    self.out.push(0);
                    self.out.push(t.0 .0);
                    put_varint(&mut self.out, t.1);
                    put_varint(&mut self.out, u64::from(t.2));
                }
            }
        }
    }

    /// One decision on a resource of another kind: its entry afterwards (`None`: gone).
    pub fn other(&mut self, acquire: bool, fixup: bool, kind: Kind, id: u64, after: Option<&Entry>) {
        let after = after.filter(|e| e.live || !e.origin_seen);
        let flags = if acquire { flag::ACQUIRE } else { 0 }
            | if fixup { flag::FIXUP } else { 0 }
            | if after.is_some() { flag::PRESENT } else { 0 };
        self.out.push(tag::OTHER);
        self.out.push(flags);
        self.out.push(kind.0);
        put_varint(&mut self.out, id);
        if let Some(e) = after {
            put_varint(&mut self.out, e.seq);
            put_varint(&mut self.out, e.size);
            put_varint(&mut self.out, u64::from(e.stack));
            self.out.push(e.api.0);
            self.out.push(u8::from(e.live));
            self.out.push(u8::from(e.origin_seen));
        }
    }

    /// The tentative image is merged back (fix-ups follow).
    pub fn merge(&mut self) {
        self.out.push(tag::MERGE);
    }

    /// A `Stack` record of the stream, written against the previous one.
    pub fn stack(&mut self, id: u32, frames: &[u64]) {
        let prev = &self.prev_stack;
        let prefix = frames.iter().zip(prev).take_while(|(a, b)| a == b).count();
        let room = frames.len().min(prev.len()) - prefix;
        let suffix = frames.iter().rev().zip(prev.iter().rev()).take(room).take_while(|(a, b)| a == b).count();
        let p = &mut self.scratch;
        p.clear();
        put_varint(p, zigzag(i64::from(id) - i64::from(self.prev_stack_id)));
        put_varint(p, frames.len() as u64);
        put_varint(p, prefix as u64);
        put_varint(p, suffix as u64);
        let mut last = if prefix > 0 { frames[prefix - 1] } else { 0 };
        for &f in &frames[prefix..frames.len() - suffix] {
            put_varint(p, zigzag(f.wrapping_sub(last) as i64));
            last = f;
        }
        self.out.push(tag::STACK);
        put_varint(&mut self.out, self.scratch.len() as u64);
        self.out.extend_from_slice(&self.scratch);
        self.prev_stack.clear();
        self.prev_stack.extend_from_slice(frames);
        self.prev_stack_id = id;
    }
}

/// The reader's side of `STACK` records: the previous stack.
#[derive(Debug, Default)]
pub struct StackChain {
    prev: Vec<u64>,
    prev_id: u32,
}

impl StackChain {
    /// The stack a `STACK` record describes: `(id, frames)`.
    pub fn expand(&mut self, s: &StackDiff) -> Result<(u32, &[u64]), &'static str> {
        let id =
            u32::try_from(i64::from(self.prev_id).wrapping_add(s.id_delta)).map_err(|_| "a stack id out of range")?;
        let (n, prefix, suffix) = (s.frames, s.prefix, s.suffix);
        if prefix + suffix > n.min(self.prev.len()) || prefix + suffix + s.middle.len() != n {
            return Err("a stack that does not fit the one before it");
        }
        let mut frames = Vec::with_capacity(n);
        frames.extend_from_slice(&self.prev[..prefix]);
        let mut last = if prefix > 0 { frames[prefix - 1] } else { 0 };
        for &d in &s.middle {
            last = last.wrapping_add(d as u64);
            frames.push(last);
        }
        frames.extend_from_slice(&self.prev[self.prev.len() - suffix..]);
        self.prev = frames;
        self.prev_id = id;
        Ok((id, &self.prev))
    }
}

/// A parsed `STACK` record.
#[derive(Clone, Debug)]
pub struct StackDiff {
    id_delta: i64,
    frames: usize,
    prefix: usize,
    suffix: usize,
    middle: Vec<i64>,
}

/// A resolved record, parsed.
#[derive(Clone, Debug)]
pub enum Op {
    /// A tuple, its stack id a delta from the previous `TUPLE`'s.
    Tuple(Api, u64, i64),
    Stack(StackDiff),
    Alloc(i64),
    Free(i64),
    Heap {
        flags: u8,
        removed: Option<Ref>,
        added: Option<Ref>,
    },
    Other {
        flags: u8,
        kind: Kind,
        id: u64,
        entry: Option<Entry>,
    },
    Merge,
}

/// A tuple reference of a `HEAP` record.
#[derive(Clone, Copy, Debug)]
pub enum Ref {
    Index(u64),
    Inline(Tuple),
}

/// Longest resolved record: `HEAP` with two inline tuples.
pub const MAX_OP: usize = 2 + 2 * (2 + 2 * 10);

/// What the parser made of the bytes at the start of a buffer.
pub enum Parsed {
    Done(usize, Op),
    /// The buffer ends inside the record.
    More,
    /// Not a resolved record: the protocol's decoder takes it.
    NotOurs,
    /// A resolved record that does not parse.
    Bad,
}

#[inline(always)]
fn varint(b: &[u8], pos: &mut usize) -> Result<u64, bool> {
    // Err(true): ran out of bytes; Err(false): beyond 64 bits.
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let byte = *b.get(*pos).ok_or(true)?;
        *pos += 1;
        if shift == 63 && byte > 1 {
            return Err(false);
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

#[inline(always)]
fn byte(b: &[u8], pos: &mut usize) -> Result<u8, bool> {
    let v = *b.get(*pos).ok_or(true)?;
    *pos += 1;
    Ok(v)
}

#[inline(always)]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn tuple(b: &[u8], pos: &mut usize) -> Result<Tuple, bool> {
    let api = Api(byte(b, pos)?);
    let size = varint(b, pos)?;
    let stack = u32::try_from(varint(b, pos)?).map_err(|_| false)?;
    Ok((api, size, stack))
}

fn reference(b: &[u8], pos: &mut usize) -> Result<Ref, bool> {
    match varint(b, pos)? {
        0 => Ok(Ref::Inline(tuple(b, pos)?)),
        v => Ok(Ref::Index(v - 1)),
    }
}

/// Parses a `STACK` record.
fn stack(b: &[u8]) -> Parsed {
    let mut pos = 1;
    let len = match varint(b, &mut pos) {
        Ok(l) => l,
        Err(true) if b.len() < 11 => return Parsed::More,
        Err(_) => return Parsed::Bad,
    };
    if len > residue_protocol::MAX_RECORD_LEN as u64 {
        return Parsed::Bad;
    }
    let end = pos + len as usize;
    if b.len() < end {
        return Parsed::More;
    }
    let p = &b[pos..end];
    let mut i = 0;
    let r = (|| -> Result<StackDiff, bool> {
        let id_delta = unzigzag(varint(p, &mut i)?);
        let frames = usize::try_from(varint(p, &mut i)?).map_err(|_| false)?;
        let prefix = usize::try_from(varint(p, &mut i)?).map_err(|_| false)?;
        let suffix = usize::try_from(varint(p, &mut i)?).map_err(|_| false)?;
        // Each middle frame takes a byte at least.
        let middle_len = frames.checked_sub(prefix).and_then(|m| m.checked_sub(suffix)).ok_or(false)?;
        if middle_len > p.len() - i {
            return Err(false);
        }
        let mut middle = Vec::with_capacity(middle_len);
        for _ in 0..middle_len {
            middle.push(unzigzag(varint(p, &mut i)?));
        }
        Ok(StackDiff { id_delta, frames, prefix, suffix, middle })
    })();
    match r {
        Ok(s) if i == p.len() => Parsed::Done(end, Op::Stack(s)),
        _ => Parsed::Bad,
    }
}

/// Parses the resolved record at the start of `b`.
#[inline(always)]
pub fn parse(b: &[u8]) -> Parsed {
    let Some(&t) = b.first() else { return Parsed::More };
    let mut pos = 1;
    let r: Result<Op, bool> = match t {
        tag::ALLOC => varint(b, &mut pos).map(|v| Op::Alloc(unzigzag(v))),
        tag::FREE => varint(b, &mut pos).map(|v| Op::Free(unzigzag(v))),
        tag::TUPLE => (|| {
            let api = Api(byte(b, &mut pos)?);
            let size = varint(b, &mut pos)?;
            Ok(Op::Tuple(api, size, unzigzag(varint(b, &mut pos)?)))
        })(),
        tag::STACK => return stack(b),
        tag::HEAP => (|| {
            let flags = byte(b, &mut pos)?;
            if flags & !0x3f != 0 {
                return Err(false);
            }
            let removed = if flags & flag::REMOVE != 0 { Some(reference(b, &mut pos)?) } else { None };
            let added = if flags & flag::ADD != 0 { Some(reference(b, &mut pos)?) } else { None };
            Ok(Op::Heap { flags, removed, added })
        })(),
        tag::OTHER => (|| {
            let flags = byte(b, &mut pos)?;
            if flags & !0x07 != 0 {
                return Err(false);
            }
            let kind = Kind(byte(b, &mut pos)?);
            if kind == Kind::HEAP {
                return Err(false);
            }
            let id = varint(b, &mut pos)?;
            let entry = if flags & flag::PRESENT != 0 {
                let seq = varint(b, &mut pos)?;
                let size = varint(b, &mut pos)?;
                let stack = u32::try_from(varint(b, &mut pos)?).map_err(|_| false)?;
                let api = Api(byte(b, &mut pos)?);
                let live = byte(b, &mut pos)?;
                let origin_seen = byte(b, &mut pos)?;
                if live > 1 || origin_seen > 1 {
                    return Err(false);
                }
                Some(Entry { seq, size, stack, api, live: live == 1, origin_seen: origin_seen == 1 })
            } else {
                None
            };
            Ok(Op::Other { flags, kind, id, entry })
        })(),
        tag::MERGE => Ok(Op::Merge),
        0xc7..=0xcf => Err(false),
        _ => return Parsed::NotOurs,
    };
    match r {
        Ok(op) => Parsed::Done(pos, op),
        Err(true) if b.len() < MAX_OP => Parsed::More,
        Err(_) => Parsed::Bad,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use residue_protocol::{header, Api, Encoder, Kind, HEADER_LEN};

    use super::*;
    use crate::ledger::Ledger;
    use crate::stream::StreamState;

    /// xorshift64*: deterministic, no dependency.
    pub struct Rng(pub u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random stream: any order of events, ids reused, releases of what was never acquired,
    /// descriptors beside heap blocks, execs that succeed and fail, forks, descriptions. What
    /// the ledger makes of it does not matter here; that the resolved trace makes the same does.
    pub fn random_stream(rng: &mut Rng, records: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 64 * records + 4096];
        buf[..HEADER_LEN].copy_from_slice(&header());
        let mut e = Encoder::default();
        let mut p = HEADER_LEN;
        let argv: [&[u8]; 1] = [b"host"];
        p = e.image_start(&mut buf, p, 77, 1, true, false, 0, b"/opt/host", &argv);
        // Seqs are unique per image and arrive somewhat out of order (other threads' batches):
        // each record takes one of the next few at random.
        let mut next = 1u64;
        let mut pool: Vec<u64> = Vec::new();
        let mut last_acquire = 0;
        for _ in 0..records {
            while pool.len() < 12 {
                pool.push(next);
                next += 1;
            }
            let s = pool.swap_remove(rng.below(pool.len() as u64) as usize);
            let kind = if rng.below(8) == 0 { Kind::FD } else { Kind::HEAP };
            let id = 0x1000 + 16 * rng.below(24);
            match rng.below(100) {
                0..=44 => {
                    let api = if rng.below(4) == 0 { Api::CALLOC } else { Api::MALLOC };
                    p = e.acquire(&mut buf, p, s, kind, api, id, 8 * rng.below(5), rng.below(6) as u32);
                    if kind != Kind::HEAP {
                        // Only handles are described.
                        last_acquire = s;
                    }
                }
                45..=89 => p = e.release(&mut buf, p, s, kind, Api::FREE, id),
                90..=92 => p = e.batch(&mut buf, p, rng.below(3) as u32),
                93 => {
                    // Runs of frames shared with the previous stack at either end, or not.
                    let frames: Vec<u64> = (0..rng.below(7)).map(|_| 0x7f00_0000_1000 + 0x10 * rng.below(4)).collect();
                    p = e.stack(&mut buf, p, rng.below(6) as u32, &frames);
                }
                94 if last_acquire > 0 => p = e.describe(&mut buf, p, last_acquire, b"/some/path"),
                95 => p = e.fork(&mut buf, p, s, 900 + rng.below(3) as u32),
                96 => p = e.exec(&mut buf, p, s, b"/bin/next"),
                97 if rng.below(3) == 0 => {
                    // The seqs go on (records queued before an image start may be either
                    // image's: they must not collide with the next image's).
                    p = e.image_start(&mut buf, p, 77, 1, false, true, 0, b"/bin/next", &argv);
                }
                98 if rng.below(4) == 0 => p = e.image_exit(&mut buf, p, s),
                _ => {}
            }
        }
        buf.truncate(p);
        buf
    }

    /// Feeds `bytes` in random chunks.
    fn feed(rng: &mut Rng, state: &mut StreamState, bytes: &[u8], out: &mut Vec<u8>) {
        let mut at = 0;
        while at < bytes.len() {
            let n = (1 + rng.below(300) as usize).min(bytes.len() - at);
            state.feed(&bytes[at..at + n]);
            at += n;
            if let Some(j) = state.ledger.journal.as_deref_mut() {
                out.extend_from_slice(j.pending());
                j.clear();
            }
        }
    }

    /// Everything of a ledger the report reads, heap blocks by what they are, not by address.
    fn summary(l: &Ledger) -> String {
        let mut out = format!("complete {} header {}\n", l.complete(), l.header_seen);
        for (n, i) in l.images.iter().enumerate() {
            out += &format!(
                "image {n}: pid {} exec {} exited {} tentative {} untracked {} exec_path {:?} forks {:?} fork_seqs {:?} acquires {} releases {} live_at_exec {:?} exe {:?} stacks {:?} desc {:?}\n",
                i.pid, i.exec, i.exited, i.tentative, i.untracked, i.exec_path, i.forks, i.fork_seqs, i.acquires, i.releases, i.live_at_exec, i.exe,
                (0..6).map(|s| i.stacks.get(&s).map(<[u64]>::to_vec)).collect::<Vec<_>>(),
                { let mut d: Vec<_> = i.descriptions.keys().collect(); d.sort(); d },
            );
        }
        if let Some(img) = l.final_image() {
            let mut heap: BTreeMap<(u8, u64, u32), u64> = BTreeMap::new();
            let mut other = Vec::new();
            for (kind, id, e) in img.live() {
                if kind == Kind::HEAP {
                    *heap.entry((e.api.0, e.size, e.stack)).or_default() += 1;
                } else {
                    other.push((kind, id, e.seq, e.size, e.stack, e.api, img.descriptions.get(&e.seq).cloned()));
                }
            }
            other.sort();
            out += &format!("live heap {heap:?}\nlive other {other:?}\nunseen {:?}\n", img.released_origin_unseen());
            let mut d: Vec<_> = img.descriptions.keys().collect();
            d.sort();
            out += &format!("descriptions {d:?}\n");
        }
        out
    }

    fn round_trip(seed: u64, records: usize, max_tuples: usize, cut: bool) {
        let mut rng = Rng(seed);
        let raw = random_stream(&mut rng, records);
        let mut w = StreamState::with_journal(Journal::with_max_tuples(max_tuples));
        let mut resolved = Vec::new();
        feed(&mut rng, &mut w, &raw, &mut resolved);
        w.finish();
        let j = w.ledger.journal.take().expect("the journal");
        resolved.extend_from_slice(j.pending());
        assert!(w.error.is_none(), "seed {seed}: {:?}", w.error);
        let mut r = StreamState::resolved_reader();
        feed(&mut rng, &mut r, &resolved, &mut Vec::new());
        r.finish();
        assert!(r.error.is_none(), "seed {seed}: {:?}", r.error);
        assert_eq!(summary(&r.ledger), summary(&w.ledger), "seed {seed}");
        if cut {
            // Cut anywhere: what was decoded stands, never a panic.
            let at = HEADER_LEN + rng.below((resolved.len() - HEADER_LEN) as u64) as usize;
            let mut c = StreamState::resolved_reader();
            c.feed(&resolved[..at]);
            c.finish();
            let _ = summary(&c.ledger);
            // Damaged anywhere: an error or an answer, never a panic.
            for _ in 0..4 {
                let mut m = resolved.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = HEADER_LEN + rng.below((m.len() - HEADER_LEN) as u64) as usize;
                    m[i] = rng.next() as u8;
                }
                let mut c = StreamState::resolved_reader();
                c.feed(&m);
                c.finish();
                let _ = summary(&c.ledger);
            }
        }
    }

    /// The resolved trace gives the ledger the live stream gives, whatever the stream.
    #[test]
    fn resolved_trace_reads_as_the_stream_it_came_from() {
        for seed in 1..3000 {
            round_trip(seed, 1500, MAX_TUPLES, true);
        }
        // Tuples beyond the limit are written inline.
        for seed in 300..400 {
            round_trip(seed, 400, 3, false);
        }
    }

    /// A malloc/free loop resolves to two bytes an event, the same two over and over.
    #[test]
    fn pairs_are_two_bytes_each() {
        let mut buf = vec![0u8; 1 << 16];
        buf[..HEADER_LEN].copy_from_slice(&header());
        let mut e = Encoder::default();
        let argv: [&[u8]; 1] = [b"host"];
        let mut p = e.image_start(&mut buf, HEADER_LEN, 77, 1, true, false, 0, b"/opt/host", &argv);
        let start = p;
        p = e.batch(&mut buf, p, 77);
        for i in 0..1000u64 {
            p = e.acquire(&mut buf, p, 2 * i + 1, Kind::HEAP, Api::MALLOC, 0x5000 + 16 * (i % 3), 24, 1);
            p = e.release(&mut buf, p, 2 * i + 2, Kind::HEAP, Api::FREE, 0x5000 + 16 * (i % 3));
        }
        let mut w = StreamState::with_journal(Journal::new());
        w.feed(&buf[..p]);
        let j = w.ledger.journal.as_deref().unwrap().pending().to_vec();
        // Header and image start as they came, the batch, one TUPLE, then ALLOC 0 / FREE 0.
        assert_eq!(j[..start], buf[..start]);
        let rest = &j[start..];
        assert_eq!(rest[..3], [residue_protocol::tag::BATCH, 1, 77]);
        assert_eq!(rest[3..7], [tag::TUPLE, Api::MALLOC.0, 24, 2]);
        assert_eq!(rest.len(), 7 + 4 * 1000);
        assert!(rest[7..].chunks(4).all(|c| c == [tag::ALLOC, 0, tag::FREE, 0]));
    }
}
