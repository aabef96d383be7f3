//! Native stacks: captured behind one seam ([`capture`]), interned so that each distinct stack
//! crosses the stream once, and recorded with the acquisition that needed them.
//!
//! The intern table maps 64-bit stack hashes to ids: open addressing in static memory (zero
//! pages until touched), lock-free, no allocation. It is a series of levels, each four times
//! the size of the one before (4096 entries up to a million): new stacks go to the newest level
//! in use until it is half full, then to the next, and lookups try each level in use. Entries
//! land at random places in their level, so a single big table would commit a page per stack
//! (12 MiB for a few thousand stacks); the levels keep what is touched in proportion to the
//! stacks seen. Two threads may intern the same new stack in two levels at once: it then has
//! two ids and is sent twice (correct, a few bytes more).
//!
//! A thread that inserts a new hash owns sending its `Stack` record; another thread may
//! reference the id before that record is flushed, which the collector allows (it resolves
//! stack ids at report time). Two different stacks sharing a 64-bit hash would share an id: at
//! a million distinct stacks the odds are about 1 in 30 billion. When the last level is full,
//! new stacks are sent without interning (correct, larger trace) and a notice says so.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use residue_protocol::{Api, Encoder, Kind, MAX_FRAMES, MAX_SMALL_RECORD};
use residue_unwind::pages::PageAligned;
pub use residue_unwind::Entry;
use residue_unwind::{Kept, KEPT};

use crate::python;
use crate::state::Thread;
use crate::transport::emit;

const MAX_PROBES: usize = 64;
/// Frames of our own (hook, recording, unwinder) that may precede the first frame we report.
const OWN_FRAMES: usize = 16;

/// A hash and its id, side by side: one cache line per lookup.
struct Interned {
    key: AtomicU64,
    id: AtomicU32,
}

impl Interned {
    const fn empty() -> Interned {
        Interned { key: AtomicU64::new(0), id: AtomicU32::new(0) }
    }
}

/// One page: a C program's few distinct stacks write one page, not one each (with 4096
/// entries first, W4's wrote 5).
static L0: PageAligned<[Interned; 1 << 8]> = PageAligned([const { Interned::empty() }; 1 << 8]);
static L1: [Interned; 1 << 12] = [const { Interned::empty() }; 1 << 12];
static L2: [Interned; 1 << 14] = [const { Interned::empty() }; 1 << 14];
static L3: [Interned; 1 << 16] = [const { Interned::empty() }; 1 << 16];
static L4: [Interned; 1 << 18] = [const { Interned::empty() }; 1 << 18];
static L5: [Interned; 1 << 20] = [const { Interned::empty() }; 1 << 20];
static LEVELS: [&[Interned]; 6] = [&L0.0, &L1, &L2, &L3, &L4, &L5];
/// Entries inserted into each level.
static FILLED: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];
/// The level new stacks go to.
static NEWEST: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU32 = AtomicU32::new(1);
static FULL_NOTICE: AtomicBool = AtomicBool::new(false);

static DEPTH: AtomicUsize = AtomicUsize::new(64);
/// Bumped when a module is unloaded: the same addresses may then belong to another module, so
/// stacks captured afterwards must not share ids with earlier ones.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// The interposer's own text, whose frames are cut from the top of every stack.
static SELF_START: AtomicU64 = AtomicU64::new(0);
static SELF_END: AtomicU64 = AtomicU64::new(0);

/// Bumped when a stack sent before may no longer be a base for one sent after: a forked child
/// starts its own stream, an exec its own image (near.rs, `LastSent`).
static BASE_EPOCH: AtomicU64 = AtomicU64::new(1);

/// An exec is about to replace the image (if it fails, recording goes on in the old one).
pub fn exec_attempt() {
    BASE_EPOCH.fetch_add(1, Ordering::Relaxed);
}

pub fn configure(depth: usize, self_range: (u64, u64)) {
    DEPTH.store(depth.clamp(1, MAX_FRAMES), Ordering::Relaxed);
    SELF_START.store(self_range.0, Ordering::Relaxed);
    SELF_END.store(self_range.1, Ordering::Relaxed);
}

/// A forked child starts its own stream: the stack ids interned so far were sent on the
/// parent's, so from now on every stack is new (the generation is part of the hash).
pub fn new_stream() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    BASE_EPOCH.fetch_add(1, Ordering::Relaxed);
}

pub fn module_unloaded() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    residue_unwind::invalidate();
}

/// The seam: return addresses of the current thread, innermost first; from the caller of the
/// hook entered at `entry` where the hook says where that was, with what this thread derived
/// from the same frames before (see [`Derived`]).
#[inline(always)]
fn capture(t: &Thread, out: &mut [u64], entry: Option<Entry>) -> (usize, Kept) {
    match entry {
        Some(e) => residue_unwind::capture_from_kept(&t.unwind, out, e),
        None => (residue_unwind::capture_in(&t.unwind, out), Kept::default()),
    }
}

/// What a capture derived from its native frames, kept with the unwinder's record of the walk
/// ([`residue_unwind::Kept`]): a capture that is the same walk again (a loop's allocation from
/// the same place, at the same depth) whose other frames (Python's, the foreign function) hash
/// as they did then has the same stack, and takes its id from here instead of hashing every
/// frame and looking the hash up. Valid for the stack generation it was kept in.
#[derive(Clone, Copy)]
struct Derived {
    /// Whether our ffi_call hook's frame is among the native frames, where a capture asked (one
    /// made outside any foreign call does not look).
    hook: Option<bool>,
    /// [`hash_rest`] of the other frames of the latest stack these native frames were part of
    /// (0: not known), and that stack's id.
    rest: u64,
    id: u32,
    /// How many of the leading native frames were our own (cut from the stack): a capture
    /// that repeats the walk ([`residue_unwind::repeat`]) has no frames to count them in.
    skip: u16,
}

impl Derived {
    /// Kept words: the generation + 1 first, so that zeros (nothing kept) never match.
    fn words(&self) -> [u64; KEPT] {
        let generation = GENERATION.load(Ordering::Relaxed).wrapping_add(1);
        let hook = match self.hook {
            None => 0,
            Some(false) => 1,
            Some(true) => 3,
        };
        [generation, self.rest, u64::from(self.id) | hook << 32 | u64::from(self.skip) << 40]
    }

    #[inline(always)]
    fn from(w: [u64; KEPT]) -> Option<Derived> {
        let generation = GENERATION.load(Ordering::Relaxed).wrapping_add(1);
        (w[0] == generation).then_some(Derived {
            rest: w[1],
            id: w[2] as u32,
            hook: (w[2] >> 32 & 1 != 0).then_some(w[2] >> 33 & 1 != 0),
            skip: (w[2] >> 40) as u16,
        })
    }
}

/// A 64-bit hash of a stack (never 0: 0 marks an empty entry of the intern table). Four
/// independent multiply lanes, so that the work per frame is not one long chain of dependent
/// multiplies; the lanes are mixed at the end.
fn hash(frames: &[u64]) -> u64 {
    const K: [u64; 4] = [0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f, 0x1656_67b1_9e37_79f9, 0x27d4_eb2f_1656_67c5];
    #[inline(always)]
    fn step(lane: u64, frame: u64, k: u64) -> u64 {
        (lane.rotate_left(23) ^ frame).wrapping_mul(k)
    }
    let seed = K[0] ^ frames.len() as u64 ^ GENERATION.load(Ordering::Relaxed).rotate_left(32);
    let mut lanes = [seed, seed ^ K[1], seed ^ K[2], seed ^ K[3]];
    let mut chunks = frames.chunks_exact(4);
    for c in &mut chunks {
        for k in 0..4 {
            lanes[k] = step(lanes[k], c[k], K[k]);
        }
    }
    for (k, &f) in chunks.remainder().iter().enumerate() {
        lanes[k] = step(lanes[k], f, K[k]);
    }
    let h = lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48);
    let h = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h ^ (h >> 32)) | 1
}

/// The frames after a stack's native ones (its Python frames and foreign function), hashed to
/// tell whether they are the ones kept (never 0, which stands for not known): one lane, as they
/// are a few. Two different rests under the same native frames that hash alike would share a
/// stack id, as two stacks sharing a full hash would (about 1 in 2^64 a pair).
#[inline(always)]
fn hash_rest(frames: &[u64]) -> u64 {
    let mut h = REST_SEED ^ frames.len() as u64;
    for &f in frames {
        h = (h.rotate_left(29) ^ f).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    h | 1
}

const REST_SEED: u64 = 0x5851_f42d_4c95_7f2d;
/// [`hash_rest`] of no frames.
const EMPTY_REST: u64 = REST_SEED | 1;

/// The stack's id, and whether this call is the first to see it (and so must send it). The
/// thread's near cache answers for its recent stacks without touching the global table.
fn intern(t: &Thread, frames: &[u64]) -> (u32, bool) {
    let h = hash(frames);
    // SAFETY: recording runs under the thread's guard; this is the only borrow of its caches.
    let Some(near) = (unsafe { t.near() }).map(|n| &mut n.stacks) else { return intern_global(h) };
    if let Some(id) = near.get(h) {
        return (id, false);
    }
    let (id, new) = intern_global(h);
    near.put(h, id);
    (id, new)
}

fn intern_global(h: u64) -> (u32, bool) {
    let newest = NEWEST.load(Ordering::Acquire);
    for level in &LEVELS[..newest] {
        if let Probe::Found(id) = probe(level, h, false) {
            return (id, false);
        }
    }
    for (n, level) in LEVELS.iter().enumerate().skip(newest) {
        match probe(level, h, true) {
            Probe::Found(id) => return (id, false),
            Probe::Inserted(id) => {
                if FILLED[n].fetch_add(1, Ordering::Relaxed) + 1 > level.len() / 2 {
                    let _ =
                        NEWEST.compare_exchange(n, (n + 1).min(LEVELS.len() - 1), Ordering::AcqRel, Ordering::Relaxed);
                }
                return (id, true);
            }
            // Crowded around this hash: on to the next level.
            Probe::Absent => {}
        }
    }
    if !FULL_NOTICE.swap(true, Ordering::Relaxed) {
        crate::lifecycle::notice(
            b"the stack table is full: further distinct stacks are sent uninterned (larger trace)",
        );
    }
    (NEXT_ID.fetch_add(1, Ordering::Relaxed), true)
}

enum Probe {
    Found(u32),
    Inserted(u32),
    Absent,
}

/// Looks `h` up in one level, inserting it (with a new id) if `insert` and a free entry comes
/// first.
fn probe(level: &[Interned], h: u64, insert: bool) -> Probe {
    let mask = level.len() - 1;
    let mut i = (h as usize ^ (h >> 32) as usize) & mask;
    for _ in 0..MAX_PROBES {
        let e = &level[i];
        let mut k = e.key.load(Ordering::Acquire);
        if k == 0 {
            if !insert {
                return Probe::Absent;
            }
            match e.key.compare_exchange(0, h, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                    e.id.store(id, Ordering::Release);
                    return Probe::Inserted(id);
                }
                Err(now) => k = now,
            }
        }
        if k == h {
            // The inserting thread publishes the id right after its key.
            let mut spins = 0;
            loop {
                let id = e.id.load(Ordering::Acquire);
                if id != 0 {
                    return Probe::Found(id);
                }
                crate::sync::backoff(&mut spins);
            }
        }
        i = (i + 1) & mask;
    }
    Probe::Absent
}

/// Records that `kind` resource `id` was acquired: captures and interns the stack, then encodes
/// the stack (if new) and the acquisition into this thread's batch. Returns the stack's id, for
/// further acquisitions made by the same call ([`acquired_with`]).
#[inline]
pub fn acquired(t: &Thread, seq: u64, kind: Kind, api: Api, id: u64, size: u64) -> u32 {
    walked(t, None, seq, kind, api, id, size)
}

/// As [`acquired`], for a heap block from a hook that knows where it was entered (its stack
/// pointer `sp` and rbp `fp` at its first instruction; `sp` 0: it does not): the stack is
/// walked from its caller on, without the hook's frames. The sequence number is taken here.
/// [`quick`]'s answer is recorded here; the walk is out of line ([`walked`]), so that this
/// path saves and spills no more than it uses, and every argument comes in a register.
#[inline(never)]
pub fn heap_acquired_at(t: &Thread, sp: u64, fp: u64, api: Api, id: u64, size: u64) -> u32 {
    let seq = crate::seq::next_for(t);
    let entry = (sp != 0).then_some(Entry { sp, fp });
    if let Some(stack) = entry.and_then(|e| quick(t, e)) {
        emit(t, MAX_SMALL_RECORD, |enc, b, pos| enc.acquire_inline(b, pos, seq, Kind::HEAP, api, id, size, stack));
        return stack;
    }
    walked(t, entry, seq, Kind::HEAP, api, id, size)
}

/// [`heap_acquired_at`] where [`quick`] does not answer: the stack is walked, or its walk repeated.
#[inline(never)]
fn walked(t: &Thread, entry: Option<Entry>, seq: u64, kind: Kind, api: Api, id: u64, size: u64) -> u32 {
    const _: () = assert!(OWN_FRAMES + MAX_FRAMES + python::MAX_PY_FRAMES < crate::state::FRAME_BUF);
    // A skip (at most a capture's frames) fits Derived's 16 bits.
    const _: () = assert!(crate::state::FRAME_BUF <= u16::MAX as usize);
    // SAFETY: recording runs under the thread's guard, and this is its only use of the buffer.
    let buf = unsafe { t.frame_buf() };
    let depth = DEPTH.load(Ordering::Relaxed);
    let foreign = t.foreign.get();
    let remember = quick_may_answer(foreign);
    let mut native = match entry.and_then(|e| repeated(t, e, depth, foreign, remember)) {
        Some(native) => native,
        None => captured(t, buf, depth, entry),
    };
    loop {
        if let Some((stack, new, end)) = stack_of(t, buf, depth, foreign, native) {
            // A closure each: one shared by both calls is built in memory, field by field.
            if new {
                send_new(t, stack, &buf[native.skip..end], |enc, b, pos| {
                    enc.acquire(b, pos, seq, kind, api, id, size, stack)
                });
            } else {
                emit(t, MAX_SMALL_RECORD, |enc, b, pos| enc.acquire(b, pos, seq, kind, api, id, size, stack));
            }
            return stack;
        }
        // The repeated walk's frames were needed and are gone (a signal handler captured in
        // between): walk them. A walk fills them, so this goes round once.
        native = captured(t, buf, depth, entry);
    }
}

/// The native part of a stack: `n` return addresses, the first `skip` of them our own (the
/// hook's, when it was not entered through its stub), and what was derived from them before
/// where the walk is the same as then (`known`). `filled`: they are in the frame buffer; a
/// repeated walk's are not until they are needed ([`residue_unwind::fill`]).
#[derive(Clone, Copy)]
struct Native {
    n: usize,
    skip: usize,
    kept: Kept,
    known: Option<Derived>,
    filled: bool,
}

/// A loop's allocation from the same place at the same depth: the walk is the thread's latest
/// from there again, and what was derived from its frames then holds (same stack generation),
/// found without walking or writing a frame (see [`residue_unwind::repeat`]). `None` where it
/// is not, or where our ffi_call hook's presence among the frames must be looked for and never
/// was (a capture inside a foreign call whose walk was kept outside any).
///
/// `remember`: the walk is kept for [`quick`].
#[inline(always)]
fn repeated(t: &Thread, e: Entry, depth: usize, foreign: u64, remember: bool) -> Option<Native> {
    let r = residue_unwind::repeat(&t.unwind, e, depth + OWN_FRAMES, remember)?;
    let d = Derived::from(r.words)?;
    (foreign == 0 || d.hook.is_some()).then_some(Native {
        n: r.n,
        skip: usize::from(d.skip),
        kept: r.kept,
        known: Some(d),
        filled: false,
    })
}

/// The stack of a capture from `e` whose walk is one [`repeated`] kept before
/// ([`residue_unwind::quick`]), where what was derived from it then still answers, found from
/// the walk's kept words alone (one place of the memo), in two cases:
/// - a C program's loop: outside any foreign call, in a process without a Python runtime. The
///   stack has its native frames only: it is the stack of those frames with no others after
///   them, looked for outside any foreign call;
/// - an allocation inside a foreign call (a ctypes function's): the frames after the native
///   ones (Python's, the foreign function) are the same for every capture made in the call,
///   and are walked and hashed once per call ([`call_rest`], kept in [`Thread::call_rest`]).
///   The stack is that of the native frames, with our ffi_call hook's among them, and those
///   frames after them: the kept answer holds if they hash as they did when it was kept.
///
/// Either way, in this stack generation (the kept words say which).
#[inline(always)]
fn quick(t: &Thread, e: Entry) -> Option<u32> {
    let foreign = t.foreign.get();
    if !quick_may_answer(foreign) {
        return None;
    }
    let depth = DEPTH.load(Ordering::Relaxed);
    let d = Derived::from(residue_unwind::quick(&t.unwind, e, depth + OWN_FRAMES)?)?;
    if foreign == 0 {
        return (d.hook.is_none() && d.rest == EMPTY_REST).then_some(d.id);
    }
    // Inside a foreign call, with our ffi_call hook's frame among the native ones: the frames
    // after them are the call's, hashed by its first capture.
    if d.hook != Some(true) {
        return None;
    }
    let call = t.foreign_call.get();
    let rest = match t.call_rest.get() {
        (c, rest) if c == call && call != 0 => rest,
        _ => call_rest(t, foreign, call),
    };
    (d.rest == rest).then_some(d.id)
}

/// Whether [`quick`] may answer a capture made in foreign call `foreign` (0: none), and so
/// whether a walk is worth keeping for it: inside a foreign call, or outside any where no
/// Python runtime adds frames after the native ones (a C program).
#[inline(always)]
fn quick_may_answer(foreign: u64) -> bool {
    foreign != 0 || python::off()
}

/// The hash of the frames after the native ones in foreign call `call` (of function
/// `foreign`): the thread's Python frames and the function, as [`stack_of`] hashes them, kept
/// for the call's later captures ([`Thread::call_rest`]).
#[inline(never)]
fn call_rest(t: &Thread, foreign: u64, call: u64) -> u64 {
    const _: () = assert!(python::MAX_PY_FRAMES < crate::state::FRAME_BUF);
    // SAFETY: recording runs under the thread's guard, and this is its only use of the buffer.
    let buf = unsafe { t.frame_buf() };
    let mut end = python::frames(t, &mut buf[..python::MAX_PY_FRAMES], call);
    buf[end] = residue_protocol::frame::foreign(foreign);
    end += 1;
    let rest = hash_rest(&buf[..end]);
    t.call_rest.set((call, rest));
    rest
}

/// The native frames walked into `buf`.
#[inline(always)]
fn captured(t: &Thread, buf: &mut [u64], depth: usize, entry: Option<Entry>) -> Native {
    let (n, kept) = capture(t, &mut buf[..depth + OWN_FRAMES], entry);
    let (lo, hi) = (SELF_START.load(Ordering::Relaxed), SELF_END.load(Ordering::Relaxed));
    let skip = buf[..n].iter().take_while(|&&a| a >= lo && a < hi).count();
    let known = if kept.same() { residue_unwind::kept_words(&t.unwind, kept).and_then(Derived::from) } else { None };
    Native { n, skip, kept, known, filled: true }
}

/// The id of the stack made of `native`'s frames and the Python frames and foreign function
/// after them, whether this call is the first to see it, and where its frames end in `buf`
/// (they start at `native.skip`). `None` if `native`'s frames were not filled, were needed,
/// and could not be ([`residue_unwind::fill`]).
#[inline(always)]
fn stack_of(t: &Thread, buf: &mut [u64], depth: usize, foreign: u64, native: Native) -> Option<(u32, bool, usize)> {
    let Native { n, skip, kept, known, filled } = native;
    let native_end = n.min(skip + depth);
    // Inside a foreign call our ffi_call hook's frame is on the stack, below the leading frames
    // of ours that were cut; after a longjmp out of the call (which skips the hook's restore)
    // it is not, and the remembered function (and call) is stale. Frames not filled come with
    // the answer known (`repeated`).
    let hook = match known.and_then(|d| d.hook) {
        Some(hook) => Some(hook),
        None if foreign != 0 => {
            let (lo, hi) = (SELF_START.load(Ordering::Relaxed), SELF_END.load(Ordering::Relaxed));
            Some(buf[skip..native_end].iter().any(|&a| a >= lo && a < hi))
        }
        None => None,
    };
    let mut end = native_end;
    let in_call = foreign != 0 && hook == Some(true);
    let call = if in_call { t.foreign_call.get() } else { 0 };
    end += python::frames(t, &mut buf[end..end + python::MAX_PY_FRAMES], call);
    if in_call {
        buf[end] = residue_protocol::frame::foreign(foreign);
        end += 1;
    }
    // Hashed where it may be compared: with what was kept for the same native frames, or by a
    // later capture in the same foreign call ([`quick`]). Elsewhere it is hashed if the same
    // native frames come again.
    let rest = if known.is_some() || in_call { hash_rest(&buf[native_end..end]) } else { 0 };
    if in_call {
        t.call_rest.set((call, rest));
    }
    if let Some(d) = known {
        // The same native frames: the same stack if the rest hashes as it did.
        if d.rest == rest && d.hook == hook {
            return Some((d.id, false, end));
        }
    }
    if !filled && !residue_unwind::fill(&t.unwind, kept, &mut buf[..native_end]) {
        return None;
    }
    let (stack, new) = intern(t, &buf[skip..end]);
    residue_unwind::keep(&t.unwind, kept, Derived { hook, rest, id: stack, skip: skip as u16 }.words());
    Some((stack, new, end))
}

/// Sends new stack `id` and then, in the same batch, the record `then` encodes (the
/// acquisition that needed the stack). A stack shares most of its outer frames with the one
/// the thread sent before it (the interpreter's, the program's main loop): it is sent as the
/// frames that differ, against that one, when they share at least [`MIN_SHARED`].
#[cold]
#[inline(never)]
fn send_new(t: &Thread, id: u32, frames: &[u64], then: impl FnOnce(&mut Encoder, &mut [u8], usize) -> usize) {
    /// Fewer shared frames are not worth a base's two varints.
    const MIN_SHARED: usize = 3;
    let epoch = BASE_EPOCH.load(Ordering::Relaxed);
    // SAFETY: recording runs under the thread's guard; this is the only borrow of its caches.
    let last = unsafe { t.near() }.map(|n| &mut n.last_sent);
    let base = match last.as_deref() {
        Some(l) if l.epoch == epoch && l.len > 0 => {
            let shared = frames.iter().rev().zip(l.frames[..l.len].iter().rev()).take_while(|(a, b)| a == b).count();
            (shared >= MIN_SHARED).then_some((l.id, shared))
        }
        _ => None,
    };
    let need = MAX_SMALL_RECORD + Encoder::stack_shared_len_bound(frames.len());
    // A stack that did not go out (no stream) is no base for the next.
    let mut sent = false;
    emit(t, need, |enc, b, mut pos| {
        sent = true;
        pos = match base {
            Some((base, shared)) => enc.stack_shared(b, pos, id, base, shared, &frames[..frames.len() - shared]),
            None => enc.stack(b, pos, id, frames),
        };
        then(enc, b, pos)
    });
    if let Some(l) = last {
        if sent && frames.len() <= l.frames.len() {
            l.frames[..frames.len()].copy_from_slice(frames);
            (l.epoch, l.id, l.len) = (epoch, id, frames.len());
        } else {
            l.len = 0;
        }
    }
}

/// Records an acquisition whose stack is already interned: a second resource acquired by the
/// same call (fopen's descriptor beside its stream), or what is left of a mapping after a
/// partial unmap (it keeps the stack of the mmap that made it).
#[inline]
pub fn acquired_with(t: &Thread, seq: u64, kind: Kind, api: Api, id: u64, size: u64, stack: u32) {
    emit(t, MAX_SMALL_RECORD, |enc, b, pos| enc.acquire(b, pos, seq, kind, api, id, size, stack));
}

/// As [`released`], for `free`, the busiest release: a closure of its own, in which the
/// record's kind and API are constants (the shared one of [`released`] stays out of line and
/// gets them through memory).
#[inline(always)]
pub fn freed(t: &Thread, seq: u64, id: u64) {
    emit(t, MAX_SMALL_RECORD, |enc, b, pos| enc.release(b, pos, seq, Kind::HEAP, Api::FREE, id));
}

/// Records that `kind` resource `id` was released. Releases need no stack.
#[inline]
pub fn released(t: &Thread, seq: u64, kind: Kind, api: Api, id: u64) {
    emit(t, MAX_SMALL_RECORD, |enc, b, pos| enc.release(b, pos, seq, kind, api, id));
}
