//! The thread's previous walk, kept so that the next one can replay it instead of looking up
//! a rule for every frame.
//!
//! A walk is a pure function of its state (return address, CFA, rbp) after each step, of the
//! rules (fixed until the rule cache is invalidated: [`Walk::generation`]), and of the stack
//! words it reads. When a new walk reaches a state the previous walk also passed through, the
//! previous walk's next steps tell where the next reads are (the CFA follows from the state and
//! the rule; the rbp slot from the CFA and the rule): the replay reads the same words and, as
//! long as they hold what they held last time, the state stays equal and no rule is looked up.
//! The first word that differs is still read correctly, and the walk goes on with lookups from
//! there (and may fall back in step further out). So the result is exactly the plain walk's;
//! only the rule lookups (a random access into a 1 MiB table) are saved.
//!
//! Consecutive allocations share most of their stack (the program's outer frames, the
//! interpreter's evaluation loop), so most frames are replayed.

use std::cell::Cell;

/// Steps remembered per walk: the starting state, the interposer's default depth (64) and its
/// own frames. Deeper frames are walked with lookups.
pub(crate) const CAP: usize = 81;

/// One step of a walk: the frame's CFA, the return address read at CFA-8, rbp after the step,
/// and in `slot` where rbp was read (0: the rule left it unchanged), with [`CFA_FROM_RBP`] in
/// the low bits (a slot that was read is 8-aligned).
#[derive(Clone, Copy)]
pub(crate) struct Step {
    pub cfa: u64,
    pub ra: u64,
    pub fp: u64,
    pub slot: u64,
}

/// The step's CFA was computed from rbp.
pub(crate) const CFA_FROM_RBP: u64 = 1;
pub(crate) const SLOT_FLAGS: u64 = 7;

impl Step {
    /// Where rbp was reloaded from, or 0.
    #[inline(always)]
    pub fn fp_slot(&self) -> u64 {
        self.slot & !SLOT_FLAGS
    }
}

/// Laid out in this order, so that a short walk (a C program's few frames) touches one or two
/// pages of its record: the flags, then the first steps, then the first words.
#[repr(C)]
pub(crate) struct Walk {
    /// The rule cache's generation the walk ran under.
    pub generation: u64,
    /// Steps recorded (at most CAP). Step 0 is the starting state (CFA: the stack pointer,
    /// return address: the pc's key), so that a capture from the same place at the same depth
    /// replays from its first frame; the frames proper are steps 1 and on.
    pub len: usize,
    /// The walk ended on an END rule right after its last recorded step: a walk in that step's
    /// state ends there too.
    pub ended: bool,
    /// What the caller keeps with this walk ([`crate::Kept`]), if `kept_valid`: cleared for a
    /// new record, and for a record rewritten in place by a walk that is not the same walk
    /// (`Walked`).
    pub kept: [u64; KEPT],
    pub kept_valid: bool,
    /// The words a whole replay of steps 2 on reads, as (address, value) pairs in the order it
    /// reads them, if `words_valid` (module `x86_64`, `again`): checking a flat list costs
    /// less than half of stepping through the steps. Made once a record has been replayed whole, so that
    /// a record rewritten at every capture never pays for it; cleared wherever steps 2 on may
    /// change (a new record, a rewrite in place).
    pub words_valid: bool,
    /// The walk's [`Hit`] was made from this record as it is (its words and kept words): a
    /// repeat need not make it again while its pair still holds it. Cleared with
    /// `words_valid`, and where the kept words change.
    pub hit_made: bool,
    pub words_len: usize,
    pub steps: [Step; CAP],
    pub words: [[u64; 2]; WORDS],
}

/// Room for a record's [`Walk::words`]: every step after the first two reads its return
/// address, and rbp's slot where it reloads it.
pub(crate) const WORDS: usize = 2 * CAP;

/// Words a caller keeps per walk record.
pub const KEPT: usize = 3;

#[cfg(test)]
const EMPTY_STEP: Step = Step { cfa: 0, ra: 0, fp: 0, slot: 0 };
#[cfg(test)]
pub(crate) const EMPTY_WALK: Walk = Walk {
    generation: u64::MAX,
    len: 0,
    ended: false,
    kept: [0; KEPT],
    kept_valid: false,
    words_valid: false,
    hit_made: false,
    words_len: 0,
    words: [[0; 2]; WORDS],
    steps: [EMPTY_STEP; CAP],
};

impl Walk {
    /// Whether a walk in state (`cfa`, `ra`, `fp`) is in this walk's state after step `j`, as
    /// far as the rest of the walk can tell. rbp may differ where it is dead: the following
    /// steps reload it before any of them computes a CFA from it, or the walk ends on an END
    /// rule first (which reads nothing). Steps past the record (the walk went on) count as
    /// using it.
    #[inline(always)]
    pub fn matches(&self, j: usize, cfa: u64, ra: u64, fp: u64) -> bool {
        let s = &self.steps[j];
        if s.cfa != cfa || s.ra != ra {
            return false;
        }
        s.fp == fp || self.fp_dead_after(j)
    }

    /// Whether rbp is dead after step `j` ([`Walk::matches`]): the following steps reload it
    /// before any of them computes a CFA from it, or the walk ends on an END rule first.
    #[inline(always)]
    pub fn fp_dead_after(&self, j: usize) -> bool {
        for later in &self.steps[j + 1..self.len] {
            if later.slot & CFA_FROM_RBP != 0 {
                return false;
            }
            if later.fp_slot() != 0 {
                return true;
            }
        }
        self.ended
    }
}

/// Entries of the thread's own rule cache: enough for the return addresses an allocation-heavy
/// loop keeps meeting, small enough to stay in L1.
const NEAR: usize = 256;

/// A small two-way cache of rules in front of the global table (module `cache`): the global
/// table is a megabyte of hashed slots, so each of its lookups is likely a cache miss; a
/// thread's hot return addresses are a few hundred. Tagged with the generation like a `Walk`.
pub(crate) struct Near {
    generation: u64,
    /// Rules asked for: one per step that was not replayed (for tests, [`crate::thread_lookups`]).
    lookups: u64,
    entries: [(u64, u64); NEAR],
}

impl Near {
    #[cfg(test)]
    pub(crate) const fn new() -> Near {
        Near { generation: u64::MAX, lookups: 0, entries: [(0, 0); NEAR] }
    }

    /// The rule for `key`, from here or from `slow` (which is then remembered here).
    #[inline(always)]
    pub(crate) fn rule(&mut self, key: u64, generation: u64, slow: impl FnOnce(u64) -> Option<u64>) -> Option<u64> {
        self.lookups = self.lookups.wrapping_add(1);
        if self.generation != generation {
            self.entries = [(0, 0); NEAR];
            self.generation = generation;
        }
        // Sets of two entries: with one, two return addresses of a loop that land on the same
        // entry would evict each other on every turn. A hit in the second place stays there.
        let i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - NEAR.trailing_zeros())) as usize & !1;
        let (a, b) = (self.entries[i], self.entries[i + 1]);
        if a.0 == key {
            return Some(a.1);
        }
        if b.0 == key {
            return Some(b.1);
        }
        let rule = slow(key)?;
        self.entries[i + 1] = a;
        self.entries[i] = (key, rule);
        Some(rule)
    }
}

/// Answers kept per thread for [`quick_in`], one per (call site, stack pointer) pair, in sets of
/// two picked by a hash of the pair: a new pair takes the set's first place and moves the pair
/// there to the second, so that two pairs of a loop that hash alike do not evict each other.
const HITS: usize = 16;
/// Words a walk may depend on to be kept as a [`Hit`] (a multiple of four): a C program's
/// stacks list a few (W4's, four; a Rust thread's, about ten), a ctypes call's native stack
/// under CPython's evaluation loop some thirty (W3's, 27). Deeper walks are not kept.
pub(crate) const HIT_WORDS: usize = 32;
const _: () = assert!(HIT_WORDS.is_multiple_of(4));

/// A walk from a hook's entry that [`repeat_in`] found whole, reduced to what decides it: the
/// state it starts in, the stack words it depends on, the rule generation, and the words the
/// caller kept with it at the time. A walk from the same place in the same state, with the same
/// words on the stack, is the same walk (module comment): [`quick_in`] answers it from here, in
/// one place of memory, without the record's steps and flags, without the slot scan, and
/// without touching the records (it changes nothing, so the records stay as the last walk left
/// them).
///
/// Laid out in this order, so that a hit of up to four words reads two cache lines: the first
/// holds everything but the words. 576 bytes, 9 KiB for all: a thread makes resident only the
/// pages of the hits it uses.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Hit {
    /// The return address at `sp` (the call site) and `sp`; `sp` is 0 in an empty entry, which
    /// no aligned stack address in a mapped stack equals.
    site: u64,
    sp: u64,
    /// rbp at the entry, unless `fp_dead`: the walk reloads rbp before any step computes a CFA
    /// from it (or ends first), so any rbp gives the same walk ([`Walk::matches`]).
    fp: u64,
    generation: u64,
    kept: [u64; KEPT],
    /// Return addresses the walk has (as [`repeat_in`] counts them).
    n: u16,
    /// Fours of words in `words`: the walk's, then as many copies of its first as make the
    /// last four whole (a word that holds holds again), so that they are checked four at a
    /// time without a remainder ([`crate::x86_64::fours_hold`]).
    fours: u8,
    fp_dead: bool,
    words: [[u64; 2]; HIT_WORDS],
}

/// Previous walks kept, one per call site and depth. A walk from a hooked function's entry
/// replays the latest walk that started from the same return address (the hook's caller) at the
/// same stack pointer: a slot per (site, stack pointer) pair for sixteen pairs, a new pair
/// taking the slots in turn, and one more record receives the walk under way. A program that
/// allocates from a few places in turn then replays each place's own previous walk from its
/// first frame, instead of looking rules up until its stack joins another place's walk.
///
/// A C loop (W4) or a ctypes function that allocates twice (W3) meets each site at one depth.
/// A Python program's allocations come from a dozen or so functions that call the object
/// allocator (with PYTHONMALLOC=malloc, `_PyMem_RawMalloc` tail-calls malloc, so the site is
/// in the allocator's caller), several of them at more than one depth. Rules looked up on W1
/// (3 rounds, 0.98 M captures): 3.53 M with a slot per site for eight sites; 3.76 M with a
/// slot per pair for eight pairs (more pairs than slots: each takes another's); 0.64 M with
/// sixteen pairs, 0.57 M with 32. Sixteen pairs against eight sites: W1 -6.2% instructions and
/// -6.5% time (interposer alone, medians of 7), W3 and W4 unchanged.
///
/// Measured and not kept: the three latest walks, each compared at every step, cost more than
/// the lookups they saved; the site's record only where its first step matches, else the
/// latest walk, cost W1 twice as much; 32 slots in four-way sets picked by a hash of the pair
/// ran 0.6% fewer instructions on W1 than sixteen scanned in turn, and no faster.
const SLOTS: usize = 16;

/// What a thread keeps between captures. In pages of its own (module `pages`), not in TLS:
/// about 100 KiB, which in the static TLS block of a preloaded library would come out of every
/// thread's stack (a thread created with a 16 KiB stack would not be created at all).
/// Allocated on the thread's first capture (see [`allocate`]), freed by [`thread_exit`].
///
/// Laid out in this order: what every capture reads first, then the tables, each touched only
/// where it is used (pages of their own: see `allocate`).
#[repr(C)]
pub(crate) struct Memo {
    /// The call site (return address) each slot's walks started from, and the stack pointer
    /// they started at (the address of that return address); 0 for none yet.
    sites: [u64; SLOTS],
    sps: [u64; SLOTS],
    /// Which of `walks` is each slot's newest walk; `spare` is the one that receives the walk
    /// under way, and trades places with its slot's when it completes.
    slot_walk: [u8; SLOTS],
    spare: u8,
    /// The slot a new pair takes next (in turn).
    victim: u8,
    /// The slot of the thread's latest walk, and of the latest from another slot before it
    /// (two places taking turns, a ctypes function's two allocations, find their slots without
    /// a scan).
    latest: u8,
    before: u8,
    /// Walks completed: a [`crate::Kept`]'s token, so that words kept after a capture go to
    /// that capture's record and to no later one.
    captures: u64,
    near: Near,
    hits: [Hit; HITS],
    walks: [Walk; SLOTS + 1],
}

/// What the unwinder keeps per thread, a few words: in this crate's own TLS for [`crate::capture`],
/// or in the caller's (the interposer keeps one in its per-thread state, so that a capture
/// costs no second TLS lookup). Each thread must use its own: the stack range is the thread's.
pub struct ThreadState {
    /// The thread's stack range (module `stack`).
    lo: Cell<usize>,
    hi: Cell<usize>,
    memo: Cell<*mut Memo>,
    busy: Cell<bool>,
    /// [`thread_exit`] ran: later captures (destructors that allocate) walk without a memo.
    retired: Cell<bool>,
}

impl ThreadState {
    /// Empty: the range is fetched and the memo allocated on the first capture. All zero bytes
    /// (the interposer keeps one in a zero-filled TLS section).
    pub const fn new() -> ThreadState {
        ThreadState {
            lo: Cell::new(0),
            hi: Cell::new(0),
            memo: Cell::new(std::ptr::null_mut()),
            busy: Cell::new(false),
            retired: Cell::new(false),
        }
    }
}

impl Default for ThreadState {
    fn default() -> ThreadState {
        ThreadState::new()
    }
}

thread_local! {
    // Const-initialized, no Drop: plain TLS, nothing registered, usable until the thread's
    // last instruction.
    static THREAD: ThreadState = const { ThreadState::new() };
}

/// What a walk with a memo gets: the rule cache, the previous walk and room for its own record.
/// The walk may instead make the previous walk's record its own (see [`Walked`]).
pub(crate) type Parts<'a> = (&'a mut Near, &'a mut Walk, &'a mut Walk);

/// A walk's result: how many return addresses it wrote, whether its record is the previous
/// walk's, rewritten in place, and whether it is the previous walk itself (its starting state
/// matched the previous walk's and every step after it was replayed to the same end: the same
/// return addresses; what the caller kept with the record holds for it). A walk that replays the
/// previous one from some step to its end, at the same step numbers, shares that whole tail
/// with it: copying its own few first steps over the previous record costs less than copying
/// the tail into the other (a ctypes call's capture: 3 steps instead of 20).
pub(crate) type Walked = (usize, bool, bool);

/// Runs a walk with this thread's stack range and memo; a successful walk (`Some`) becomes the
/// newest (its own record, or the previous one it rewrote in place). `None` without calling `walk` (the caller falls back to libgcc) if re-entered (a
/// signal handler capturing while this thread captures) or if the thread has no memo: its
/// allocation failed, or the thread is ending (destructors that allocate after
/// [`thread_exit`]), both rare enough that one walk without a memo is not worth a second copy
/// of the hot loop.
#[inline(always)]
pub(crate) fn with(key: u64, walk: impl FnOnce((usize, usize), Parts<'_>) -> Option<Walked>) -> Option<usize> {
    THREAD.with(|t| with_state(t, key, walk).map(|(n, _)| n))
}

/// As [`with`], with the calling thread's own `t`. `key` picks the previous walk to replay
/// (see [`SLOTS`]): the address of the return address a walk from a hook's entry starts at,
/// whose word is read here once the stack's range is known; 0 for a walk from inside the
/// unwinder.
#[inline(always)]
pub(crate) fn with_state(
    t: &ThreadState,
    key: u64,
    walk: impl FnOnce((usize, usize), Parts<'_>) -> Option<Walked>,
) -> Option<(usize, crate::Kept)> {
    {
        if t.busy.replace(true) {
            return None;
        }
        // Fetching the range may allocate and so re-enter (pthread_getattr_np, asked on every
        // thread but the main one, reallocs a CPU set): `busy` sends that capture to libgcc.
        // So may allocating the memo.
        let Some(bounds) = crate::stack::bounds(&t.lo, &t.hi) else {
            t.busy.set(false);
            return None;
        };
        let mut m = t.memo.get();
        if m.is_null() && !t.retired.get() {
            m = allocate();
            t.memo.set(m);
        }
        let r = if m.is_null() {
            None
        } else {
            // SAFETY: `m` is this thread's own live memo (allocated above or earlier, freed
            // only by thread_exit, which clears the pointer first), and `busy` makes this the
            // only borrow of it.
            let Memo { near, walks, sites, sps, slot_walk, spare, victim, latest, before, captures, .. } =
                unsafe { &mut *m };
            let site = if key >= bounds.0 as u64 && key < bounds.1 as u64 - 8 && key & 7 == 0 {
                // SAFETY: an aligned word inside this thread's stack, which is mapped.
                unsafe { std::ptr::read_volatile(key as *const u64) }
            } else {
                0
            };
            let slot = match find(sites, sps, (*latest, *before), site, key) {
                Some(i) => i,
                None => {
                    let i = *victim as usize % SLOTS;
                    *victim = victim.wrapping_add(1);
                    sites[i] = site;
                    sps[i] = key;
                    i
                }
            };
            let (base, free) = (slot_walk[slot] as usize, *spare as usize);
            let (prev, next) = two(walks, base, free);
            match walk(bounds, (near, prev, next)) {
                Some((n, in_place, same)) => {
                    // Rewritten in place, the site's record holds this walk already.
                    if !in_place {
                        (slot_walk[slot], *spare) = (free as u8, base as u8);
                    }
                    let token = settle(latest, before, captures, slot);
                    let same = same && walks[slot_walk[slot] as usize].kept_valid;
                    Some((n, crate::Kept::new(token, same)))
                }
                None => None,
            }
        };
        t.busy.set(false);
        r
    }
}

/// The slot of pair (`site`, `key`): the latest walk's or the one before it first (two places
/// taking turns find theirs without a scan), else a scan of all.
#[inline(always)]
fn find(sites: &[u64; SLOTS], sps: &[u64; SLOTS], (latest, before): (u8, u8), site: u64, key: u64) -> Option<usize> {
    let (last, other) = (latest as usize % SLOTS, before as usize % SLOTS);
    if sites[last] == site && sps[last] == key {
        Some(last)
    } else if sites[other] == site && sps[other] == key {
        Some(other)
    } else {
        (0..SLOTS).position(|k| sites[k] == site && sps[k] == key)
    }
}

/// A walk of `slot` completed: it becomes the latest, and the count of captures (its token,
/// see [`crate::Kept`]) moves on.
#[inline(always)]
fn settle(latest: &mut u8, before: &mut u8, captures: &mut u64, slot: usize) -> u64 {
    if slot != *latest as usize {
        (*before, *latest) = (*latest, slot as u8);
    }
    *captures = captures.wrapping_add(1);
    *captures
}

/// The fast path of a capture from a hook's entry (`e`): where the walk is its slot's latest
/// walk again, with words kept for it, the walk's count and the kept words, without walking
/// or writing a frame; `None` for the general capture. It checks what the general walk's
/// whole replay (`again`, module `x86_64`) checks, on a record whose word list is made, and
/// leaves the memo as that replay would (but for the frames it does not write). At most `cap`
/// frames, as a general capture into room for `cap`.
///
/// The general walk reaches the same answer through the stack's bounds, the choice of a spare
/// record, the walk's start, the frames' copy and a second visit to the memo for the kept
/// words: on W4 (callgrind) this path takes 106 instructions fewer a malloc/free pair, 873 to
/// 767.
#[inline(always)]
pub(crate) fn repeat_in(t: &ThreadState, e: crate::Entry, cap: usize, remember: bool) -> Option<crate::Repeat> {
    let m = t.memo.get();
    if m.is_null() || e.sp & 7 != 0 || t.busy.get() {
        return None;
    }
    t.busy.set(true);
    // SAFETY: `m` is this thread's own live memo (freed only by thread_exit, which clears the
    // pointer first and leaves it alone while `busy`), and `busy` makes this the only borrow.
    let Memo { hits, walks, sites, sps, slot_walk, latest, before, captures, .. } = unsafe { &mut *m };
    // SAFETY: the hook's return address, which its caller's call pushed at `e.sp`: mapped,
    // and aligned (checked above).
    let site = unsafe { std::ptr::read_volatile(e.sp as *const u64) };
    let r = find(sites, sps, (*latest, *before), site, e.sp).and_then(|slot| {
        let w = &mut walks[slot_walk[slot] as usize];
        let n = crate::x86_64::repeats(w, cap, (e.sp, site, e.fp))?;
        if remember && w.words_len <= HIT_WORDS && !(w.hit_made && holds(hits, site, e.sp)) {
            remember_hit(hits, w, (e.sp, site, e.fp), n);
            w.hit_made = true;
        }
        let words = w.kept;
        let token = settle(latest, before, captures, slot);
        Some(crate::Repeat { n, kept: crate::Kept::new(token, true), words })
    });
    t.busy.set(false);
    r
}

/// The first of the two places pair (`site`, `sp`) may have in [`Memo::hits`].
#[inline(always)]
fn hit_set(site: u64, sp: u64) -> usize {
    let h = (site ^ sp.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (64 - HITS.trailing_zeros())) as usize & !1
}

/// Whether one of the places of pair (`site`, `sp`) in `hits` holds that pair's hit.
#[inline(always)]
fn holds(hits: &[Hit; HITS], site: u64, sp: u64) -> bool {
    let i = hit_set(site, sp);
    hits[i..i + 2].iter().any(|h| h.site == site && h.sp == sp)
}

/// Keeps record `w`, which [`crate::x86_64::repeats`] just found whole from (`sp`, `site`, `fp`)
/// with `n` frames, as that pair's [`Hit`]. `w`'s word list fits (the caller checked).
#[cold]
#[inline(never)]
fn remember_hit(hits: &mut [Hit; HITS], w: &Walk, (sp, site, fp): (u64, u64, u64), n: usize) {
    let i = hit_set(site, sp);
    if !(hits[i].site == site && hits[i].sp == sp) {
        hits[i + 1] = hits[i];
    }
    let h = &mut hits[i];
    (h.site, h.sp, h.fp, h.fp_dead) = (site, sp, fp, w.fp_dead_after(1));
    let len = w.words_len;
    let whole = len.div_ceil(4) * 4;
    (h.fours, h.n, h.generation, h.kept) = ((whole / 4) as u8, n as u16, w.generation, w.kept);
    h.words[..len].copy_from_slice(&w.words[..len]);
    if len > 0 {
        h.words[len..whole].fill(w.words[0]);
    }
}

/// The quickest capture from a hook's entry (`e`): where a walk from the same place in the same
/// state was kept as a [`Hit`] and the words it depends on still hold, the words the caller
/// kept with it then; `None` otherwise (the caller goes on to [`repeat_in`]). It checks what
/// [`crate::x86_64::repeats`] checks, on the copies a hit keeps: the start (call site, stack
/// pointer, rbp unless dead), the rule generation, the depth, and every listed word. It writes
/// nothing in the memo.
#[inline(always)]
pub(crate) fn quick_in(t: &ThreadState, e: crate::Entry, cap: usize) -> Option<[u64; KEPT]> {
    let m = t.memo.get();
    if m.is_null() || e.sp & 7 != 0 || t.busy.get() {
        return None;
    }
    // Kept up while reading: a signal handler's capture in between would rewrite the hit.
    t.busy.set(true);
    // SAFETY: as in `repeat_in`: this thread's own live memo, and `busy` makes this the only
    // borrow of it.
    let hits = unsafe { &(*m).hits };
    // SAFETY: the hook's return address, which its caller's call pushed at `e.sp`: mapped,
    // and aligned (checked above).
    let site = unsafe { std::ptr::read_volatile(e.sp as *const u64) };
    let i = hit_set(site, e.sp);
    let h = if hits[i].site == site && hits[i].sp == e.sp { &hits[i] } else { &hits[i + 1] };
    let found = h.site == site
        && h.sp == e.sp
        && (h.fp == e.fp || h.fp_dead)
        && h.generation == crate::cache::generation()
        && usize::from(h.n) < cap
        && crate::x86_64::fours_hold(&h.words[..(usize::from(h.fours) * 4).min(HIT_WORDS)]);
    let kept = h.kept;
    t.busy.set(false);
    found.then_some(kept)
}

/// Writes the return addresses of the walk `kept` came from ([`repeat_in`]) into `out`, as
/// many as it holds (at most the walk's); `false` if that is no longer the thread's latest
/// walk (a signal handler captured since).
pub(crate) fn fill_in(t: &ThreadState, kept: crate::Kept, out: &mut [u64]) -> bool {
    with_kept(t, kept, |w| {
        let n = w.len.saturating_sub(1).min(CAP - 1);
        if out.len() > n {
            return false;
        }
        for (o, s) in out.iter_mut().zip(&w.steps[1..]) {
            *o = s.ra;
        }
        true
    })
    .unwrap_or(false)
}

/// Two distinct elements of `walks`, mutably.
#[inline(always)]
fn two(walks: &mut [Walk; SLOTS + 1], a: usize, b: usize) -> (&mut Walk, &mut Walk) {
    debug_assert_ne!(a, b);
    if a < b {
        let (lo, hi) = walks.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = walks.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

/// A new thread's memo: zeroed (no walks: generation 0 is the cache's first, and a record of
/// length 0 replays nothing), each slot with a record of its own and the last one spare. In
/// pages of its own (module `pages`): a thread that meets a few call sites makes resident only
/// the records and rules it uses, not all 100 KiB.
fn allocate() -> *mut Memo {
    let m = crate::pages::zeroed::<Memo>();
    // SAFETY: null or a fresh zeroed block, which is a valid Memo but for the slots' records,
    // set right after (u8 fields, no drop); nothing else can see it yet.
    if let Some(memo) = unsafe { m.as_mut() } {
        for (i, w) in memo.slot_walk.iter_mut().enumerate() {
            *w = i as u8;
        }
        memo.spare = SLOTS as u8;
    }
    m
}

/// Runs `f` on the record of the walk `kept` came from, if that is still the thread's latest
/// walk (no capture of this thread came between); `None` otherwise.
#[inline(always)]
fn with_kept<R>(t: &ThreadState, kept: crate::Kept, f: impl FnOnce(&mut Walk) -> R) -> Option<R> {
    if t.busy.replace(true) {
        return None;
    }
    let m = t.memo.get();
    // SAFETY: this thread's own memo, live until thread_exit clears the pointer, and `busy`
    // makes this the only borrow of it.
    let r = match unsafe { m.as_mut() } {
        Some(memo) if kept.token() != 0 && memo.captures == kept.token() => {
            Some(f(&mut memo.walks[memo.slot_walk[memo.latest as usize % SLOTS] as usize]))
        }
        _ => None,
    };
    t.busy.set(false);
    r
}

/// The words kept with the walk `kept` came from, if it is the same walk as theirs.
pub(crate) fn kept_words_in(t: &ThreadState, kept: crate::Kept) -> Option<[u64; KEPT]> {
    if !kept.same() {
        return None;
    }
    with_kept(t, kept, |w| w.kept_valid.then_some(w.kept)).flatten()
}

/// Keeps `words` with the walk `kept` came from.
#[inline(never)]
pub(crate) fn keep_in(t: &ThreadState, kept: crate::Kept, words: [u64; KEPT]) {
    with_kept(t, kept, |w| (w.kept, w.kept_valid, w.hit_made) = (words, true, false));
}

/// Rules the calling thread's walks have asked for so far (see [`crate::thread_lookups`]).
pub fn thread_lookups() -> u64 {
    THREAD.with(|t| {
        let m = t.memo.get();
        if m.is_null() || t.busy.get() {
            0
        } else {
            // SAFETY: this thread's own memo, live until thread_exit clears the pointer, and no
            // capture of this thread borrows it (`busy` is clear).
            unsafe { (*m).near.lookups }
        }
    })
}

/// The calling thread is ending: its memo is freed, and its later captures walk without one.
/// For the interposer's thread-exit hook; harmless to call twice or on a thread that never
/// captured.
pub fn thread_exit() {
    THREAD.with(thread_exit_in);
}

/// As [`thread_exit`], for the calling thread's own `t`.
pub fn thread_exit_in(t: &ThreadState) {
    {
        if t.busy.get() {
            // Called from inside a capture (a signal handler): leave the memo in use alone.
            return;
        }
        t.retired.set(true);
        let m = t.memo.replace(std::ptr::null_mut());
        if !m.is_null() {
            // SAFETY: allocated by `allocate`, and no longer reachable; Memo has no destructor.
            unsafe { crate::pages::release(m) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ThreadState;

    /// The interposer keeps a `ThreadState` in a zero-filled TLS section: zero bytes must be
    /// the state `new` makes.
    #[test]
    fn zero_bytes_are_a_new_state() {
        // SAFETY: Cells of integers, bools and a raw pointer: zero bytes are valid for each.
        let z: ThreadState = unsafe { std::mem::zeroed() };
        let n = ThreadState::new();
        assert_eq!(
            (z.lo.get(), z.hi.get(), z.memo.get(), z.busy.get(), z.retired.get()),
            (n.lo.get(), n.hi.get(), n.memo.get(), n.busy.get(), n.retired.get())
        );
    }

    /// A thread's memo makes resident only the pages its walks write: a thread that captures
    /// from one place leaves most of the 100 KiB untouched (a zeroed heap block would be resident
    /// whole, and is not page-aligned, so `mincore` would refuse it).
    #[test]
    fn a_thread_capturing_from_one_place_leaves_most_of_its_memo_unresident() {
        std::thread::spawn(|| {
            let mut out = [0u64; 64];
            for _ in 0..3 {
                assert!(crate::capture(&mut out) > 0);
            }
            let m = super::THREAD.with(|t| t.memo.get());
            assert!(!m.is_null(), "the thread has a memo after capturing");
            let len = std::mem::size_of::<super::Memo>();
            let mut resident = vec![0u8; len.div_ceil(4096)];
            // SAFETY: `m` is this thread's live memo, `len` bytes from its start; mincore writes
            // one byte a page into `resident`, which has one a page.
            let r = unsafe { libc::mincore(m.cast(), len, resident.as_mut_ptr()) };
            assert_eq!(r, 0, "mincore on the memo: {}", std::io::Error::last_os_error());
            let n = resident.iter().filter(|&&b| b & 1 != 0).count();
            assert!(n * 2 <= resident.len(), "{n} of the memo's {} pages resident", resident.len());
        })
        .join()
        .unwrap();
    }
}
