//! Native stack capture for the interposer: called on every allocation, so the hot path must
//! cost about what a frame-pointer walk costs while staying as correct as a DWARF unwinder.
//!
//! How (see ARCHITECTURE.md and the field notes):
//! - the starting registers (pc, rsp, rbp) come from inline asm in [`capture`] itself;
//! - each frame's unwind step is a compact rule (CFA = rsp or rbp + offset, return address at
//!   CFA-8, rbp at CFA+k or unchanged) looked up by return address in a global lock-free table
//!   (module `cache`), behind a small per-thread direct-mapped cache (module `memo`, `Near`);
//! - consecutive captures share most of their stack: while a walk is in a state (return
//!   address, CFA, rbp) the thread's previous walk also passed through, its next step is
//!   replayed from that walk's record, reading the same stack words, without a rule lookup
//!   (module `memo`; exact: the first word that differs is followed with lookups again);
//! - on a miss the rule is derived from the module's `.eh_frame` (found with glibc's lock-free
//!   `_dl_find_object`, evaluated with gimli without allocating) and inserted (module `eh`);
//! - whatever the compact form cannot express (signal trampolines, DWARF expressions, code no
//!   loaded module describes) makes the whole capture fall back to libgcc's `_Unwind_Backtrace`
//!   ([`capture_libgcc`]): slow but correct, and rare.
//!
//! Every stack read is bounded by the current thread's stack (fetched once per thread), so a
//! bad rule or a corrupt stack ends the walk instead of faulting.
//!
//! A return address that no FDE describes, neither a loaded module's nor one a JIT registered
//! with libgcc (V8's code), ends the walk after that frame, as libgcc's walk ends there.
//!
//! What goes to libgcc (counted in [`stats`]`().fallbacks`): a stack through a signal frame;
//! a frame whose CFA is not rsp/rbp + offset or whose rbp is restored other than from the
//! stack (hand-written asm: ld.so's lazy-binding trampoline, some of libcrypto); a return
//! address whose FDE only libgcc finds (registered at run time by a JIT); a capture while running on a
//! stack other than the thread's own (sigaltstack, makecontext fibers); a capture made while
//! the same thread is inside another one (a signal handler that interrupted it), including the
//! first capture of a thread re-entering itself from inside pthread_getattr_np; a capture on a
//! thread without a memo (its allocation failed, or the thread is past its exit hook). libgcc
//! may take its own mutex and sort registered frames with malloc when a JIT registered any, so
//! the caller's re-entrancy guard must cover `capture`.

// The fast path is per architecture; elsewhere every capture is a libgcc walk (correct, slow).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod cache;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod eh;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod file_tables;
mod libgcc;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod memo;
#[cfg(target_os = "linux")]
pub mod pages;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod stack;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86_64;

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the slow paths, for diagnostics and tests. Only the slow paths count (relaxed,
/// shared cache line), so the hot path stays free of shared writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Return addresses whose rule was not in the cache and had to be derived from `.eh_frame`.
    pub misses: u64,
    /// Captures that were handed to libgcc's unwinder as a whole.
    pub fallbacks: u64,
    /// Calls to [`invalidate`].
    pub invalidations: u64,
    /// Misses whose rule was derived from tables read from the module's file rather than
    /// through its mapping (module `file_tables`).
    pub file_rows: u64,
}

static MISSES: AtomicU64 = AtomicU64::new(0);
static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static INVALIDATIONS: AtomicU64 = AtomicU64::new(0);
static FILE_ROWS: AtomicU64 = AtomicU64::new(0);

/// Snapshot of the slow-path counters since process start.
pub fn stats() -> Stats {
    Stats {
        misses: MISSES.load(Ordering::Relaxed),
        fallbacks: FALLBACKS.load(Ordering::Relaxed),
        invalidations: INVALIDATIONS.load(Ordering::Relaxed),
        file_rows: FILE_ROWS.load(Ordering::Relaxed),
    }
}

/// Fills `out` with return addresses, innermost first, starting with `capture`'s own return
/// address (which lies in its caller); returns how many were written.
///
/// Never allocates after the first call on a thread (that one, on any thread but the main one,
/// asks pthread for the thread's stack bounds), takes no lock that the loader or malloc can
/// hold, never faults: stack reads stay inside the thread's stack, and walks that leave it stop
/// there.
#[inline(never)]
pub fn capture(out: &mut [u64]) -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let regs = x86_64::Regs::here();
        or_libgcc(memo::with(0, |bounds, memo| x86_64::walk(out, x86_64::Start::Here(regs), bounds, memo)), out)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        libgcc_capture(out)
    }
}

/// Where a hooked function was entered, as its first instructions see it: the stack pointer,
/// which points at its return address, and the frame pointer register (its caller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub sp: u64,
    pub fp: u64,
}

/// Like [`capture`], from the caller of the function entered at `entry` (which must still be
/// running, with everything it pushed since above `entry.sp` left alone): `out[0]` is that
/// function's return address. The frames between here and that function are not walked at
/// all. Where the fast walk cannot go, libgcc walks the whole stack instead, from this
/// function's caller on: the caller's own frames then come first, to be skipped as after
/// [`capture`].
#[inline(never)]
pub fn capture_from(out: &mut [u64], entry: Entry) -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        or_libgcc(
            memo::with(entry.sp, |bounds, memo| x86_64::walk(out, x86_64::Start::Entry(entry), bounds, memo)),
            out,
        )
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = entry;
        libgcc_capture(out)
    }
}

/// As [`capture`], with the calling thread's own unwinder state kept by the caller (see
/// [`ThreadState`]).
#[inline(never)]
pub fn capture_in(state: &ThreadState, out: &mut [u64]) -> usize {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let start = x86_64::Start::Here(x86_64::Regs::here());
        let walked = memo::with_state(state, 0, |bounds, memo| x86_64::walk(out, start, bounds, memo));
        or_libgcc(walked.map(|(n, _)| n), out)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = state;
        libgcc_capture(out)
    }
}

/// What a caller keeps with a walk: a few words stored beside the walk's record in the thread's
/// memo ([`keep`]), until the record holds another walk. A later capture that is the same walk
/// (from the same call site at the same stack pointer, every frame replayed from that record to
/// the same end: the same return addresses) finds them with [`kept_words`], so that what the
/// caller derived from those frames need not be derived again.
///
/// A capture's `Kept` names the capture (the thread's count of walks) and says whether it is
/// the same walk as the record's: both only hold until the thread's next capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept(u64);

impl Kept {
    #[cfg_attr(not(all(target_arch = "x86_64", target_os = "linux")), allow(dead_code))]
    pub(crate) fn new(token: u64, same: bool) -> Kept {
        Kept(token << 1 | u64::from(same))
    }

    /// The capture is the same walk as one the record kept words for.
    pub fn same(self) -> bool {
        self.0 & 1 != 0
    }

    /// Which capture of its thread this is (0: none, libgcc's, which keeps nothing).
    #[cfg_attr(not(all(target_arch = "x86_64", target_os = "linux")), allow(dead_code))]
    pub(crate) fn token(self) -> u64 {
        self.0 >> 1
    }
}

/// Words a caller keeps per walk ([`Kept`]).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use memo::KEPT;
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub const KEPT: usize = 3;

/// A capture from a hook's entry that is the thread's latest walk from the same place again,
/// found by [`repeat`] without walking.
#[derive(Clone, Copy, Debug)]
pub struct Repeat {
    /// How many return addresses the walk has. They are not written anywhere: [`fill`] writes
    /// them where they are needed.
    pub n: usize,
    /// The capture's [`Kept`]: always the same walk as the record's.
    pub kept: Kept,
    /// The words the caller kept with the walk ([`keep`]).
    pub words: [u64; KEPT],
}

/// The fast path of [`capture_from_kept`] (at most `cap` frames, as into room for `cap`): where
/// the capture from `entry` is the same walk as the thread's latest from that place, and words
/// were kept with it, the walk's count and kept words, with the frames left unwritten (a caller
/// whose kept words answer for the frames never reads them); `None` where it is not, for
/// [`capture_from_kept`]. Exactly as correct as that function's whole replay: the same checks.
///
/// `remember`: keep the walk found for [`quick`], where it depends on few enough words.
#[inline(always)]
pub fn repeat(state: &ThreadState, entry: Entry, cap: usize, remember: bool) -> Option<Repeat> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        memo::repeat_in(state, entry, cap, remember)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (state, entry, cap, remember);
        None
    }
}

/// The quickest capture from `entry` (at most `cap` frames): where [`repeat`] found the same
/// walk from the same place before, with `remember`, and every stack word that walk depends on
/// still holds, the words the caller had kept with it then ([`keep`]), without the frames and
/// without a change to the thread's records; `None` otherwise. As correct as [`repeat`]: the
/// same checks, on a copy of what they read. The kept words may be older than the record's
/// latest: the caller tells from them whether they still answer.
#[inline(always)]
pub fn quick(state: &ThreadState, entry: Entry, cap: usize) -> Option<[u64; KEPT]> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        memo::quick_in(state, entry, cap)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (state, entry, cap);
        None
    }
}

/// Writes the return addresses of the walk [`repeat`] found (`kept` is its [`Repeat::kept`])
/// into `out`, as many as `out` holds (no more than the walk has). `false`, with `out` left as
/// it was, if another capture of this thread came since (a signal handler's): the caller then
/// captures afresh.
#[inline(never)]
pub fn fill(state: &ThreadState, kept: Kept, out: &mut [u64]) -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        memo::fill_in(state, kept, out)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (state, kept, out);
        false
    }
}

/// As [`capture_from`], with the calling thread's own unwinder state kept by the caller (see
/// [`ThreadState`]), also returning the capture's [`Kept`]. A capture that libgcc makes keeps
/// nothing.
#[inline(never)]
pub fn capture_from_kept(state: &ThreadState, out: &mut [u64], entry: Entry) -> (usize, Kept) {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        let start = x86_64::Start::Entry(entry);
        match memo::with_state(state, entry.sp, |bounds, memo| x86_64::walk(out, start, bounds, memo)) {
            Some(done) => done,
            None => (libgcc_capture(out), Kept::default()),
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (state, entry);
        (libgcc_capture(out), Kept::default())
    }
}

/// The words kept with the walk of capture `kept` ([`capture_from_kept`]), if that capture is
/// the same walk as theirs and no capture of this thread came since.
#[inline]
pub fn kept_words(state: &ThreadState, kept: Kept) -> Option<[u64; KEPT]> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        memo::kept_words_in(state, kept)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (state, kept);
        None
    }
}

/// Keeps `words` with the walk of capture `kept` ([`capture_from_kept`]), if no capture of
/// this thread came since; otherwise does nothing.
#[inline(always)]
pub fn keep(state: &ThreadState, kept: Kept, words: [u64; KEPT]) {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if kept.token() != 0 {
        memo::keep_in(state, kept, words);
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    let _ = (state, kept, words);
}

/// A fast walk's result, or libgcc's walk where it could not go. Always inlined into the
/// public functions (each with its own walk inlined too): libgcc's walk skips its own frame and
/// theirs.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[inline(always)]
fn or_libgcc(walked: Option<usize>, out: &mut [u64]) -> usize {
    match walked {
        Some(n) => n,
        None => libgcc_capture(out),
    }
}

/// The whole capture by libgcc, skipping its walker's frame and the public function's (which
/// inlines this, and is never itself inlined; the counter update after the call keeps it from
/// being a tail call).
#[inline(always)]
fn libgcc_capture(out: &mut [u64]) -> usize {
    let n = libgcc::walk(out, 2);
    FALLBACKS.fetch_add(1, Ordering::Relaxed);
    std::hint::black_box(n)
}

/// Copies `src` into `dst` (the same length) element by element, for the hot path's copies
/// of a few elements (a walk's first steps, a Python stack of a few frames). Written as a plain
/// loop, LLVM turns such a copy into a call to the C library's `memcpy`, which for a few dozen
/// bytes costs more than the copy (an indirect call and its size dispatch: perf put the C
/// library's memmove at 0.8% of a ctypes loop's samples under the interposer, 0.1% plain); the
/// empty asm statement per element keeps the loop a loop.
#[inline(always)]
pub fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
        // SAFETY: an empty asm statement: it reads and writes nothing, it only stands in the
        // loop so that the loop is not rewritten into a library call.
        unsafe { std::arch::asm!("", options(nomem, nostack, preserves_flags)) };
    }
}

pub use libgcc::use_host_libgcc;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use memo::{thread_exit, thread_exit_in, ThreadState};

/// How many unwind rules the calling thread's walks through this crate's own per-thread state
/// ([`capture`], [`capture_from`]) have looked up: one per frame that was not replayed from a
/// previous walk. For tests of which walks replay; 0 where nothing is kept per thread.
pub fn thread_lookups() -> u64 {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        memo::thread_lookups()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        0
    }
}

/// A stack's readable addresses, `lo <= addr < hi`, as `(lo, hi)`.
pub type StackRange = (usize, usize);

/// The calling thread's stack range as this crate reads it, beside glibc's answer from
/// pthread_getattr_np: `(ours, glibc's)`, each `(lo, hi)`. `ours` is `None` off the main
/// thread, where the two are the same call. For tests.
#[doc(hidden)]
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub fn stack_ranges() -> (Option<StackRange>, Option<StackRange>) {
    stack::ranges()
}

/// The calling thread is ending (nothing is kept for it on this architecture).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub fn thread_exit() {}

/// As [`thread_exit`], for a caller-kept state.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub fn thread_exit_in(_: &ThreadState) {}

/// What the unwinder keeps per thread (nothing on this architecture).
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
#[derive(Default)]
pub struct ThreadState;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
impl ThreadState {
    pub const fn new() -> ThreadState {
        ThreadState
    }
}

/// Forget cached unwind rules. The interposer calls this after dlclose: a rule cached for an
/// address of the unloaded module must not be applied to whatever is mapped there next.
/// Rules are plain values (no pointers into module memory are kept), so captures running
/// concurrently stay memory-safe; at worst they re-derive a rule.
pub fn invalidate() {
    INVALIDATIONS.fetch_add(1, Ordering::Relaxed);
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    cache::invalidate();
}

/// The reference: the same walk via libgcc's `_Unwind_Backtrace` (slow but correct). Same
/// contract as [`capture`]: the first address is `capture_libgcc`'s own return address.
#[inline(never)]
pub fn capture_libgcc(out: &mut [u64]) -> usize {
    // Skip libgcc::walk's frame and ours; black_box keeps the call out of tail position so our
    // frame exists to be skipped.
    std::hint::black_box(libgcc::walk(out, 2))
}
